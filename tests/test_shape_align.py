"""Parametric shape alignment on synthetic Anny bodies: the reference's shape with the driving clip's joint
angles, framed like the reference; the aligned motion's skeleton."""
from __future__ import annotations

import numpy as np
import pytest

from humanim.schemas.keypoints import FACE
from humanim.stages.body import posed_vertices
from humanim.stages.body_models import load_body_model
from humanim.stages.fit import BodyFit, projected_keypoints
from humanim.stages.shape_align import align_keypoints_2d, align_shape, aligned_keypoints, projected_box
from humanim.synth.motion import random_motion

REF_H, REF_W = 512, 384


@pytest.fixture(scope="module")
def anny():
    return load_body_model("anny")


def as_fit(motion, camera) -> BodyFit:
    frames = len(motion.pose)
    return BodyFit("anny", motion.shape[0].numpy(), motion.pose.numpy(), motion.global_orient.numpy(),
                   motion.transl.numpy(), np.array([camera.fx, camera.fy, camera.cx, camera.cy], np.float32),
                   "frame_size", np.zeros(frames, np.float32), 0)


@pytest.fixture(scope="module")
def bodies(anny):
    reference = as_fit(*random_motion(anny, 1, 25.0, seed=3, height=REF_H, width=REF_W))
    driving = as_fit(*random_motion(anny, 10, 25.0, seed=4, height=256, width=256))
    return reference, driving


def test_aligned_fit_has_the_reference_shape_and_the_driving_angles(anny, bodies):
    reference, driving = bodies
    aligned = align_shape(reference, driving, anny, REF_H, REF_W)
    np.testing.assert_array_equal(aligned.shape, reference.shape)
    np.testing.assert_array_equal(aligned.pose, driving.pose)
    np.testing.assert_array_equal(aligned.global_orient, driving.global_orient)
    np.testing.assert_array_equal(aligned.camera, reference.camera)
    assert aligned.model == "anny" and np.isnan(aligned.error_px).all()


def test_frame_zero_is_framed_like_the_reference(anny, bodies):
    reference, driving = bodies
    aligned = align_shape(reference, driving, anny, REF_H, REF_W)
    target = projected_box(posed_vertices(anny, reference)[0], reference.camera)
    boxes = projected_box(posed_vertices(anny, aligned), aligned.camera)
    # Another pose has another width, but the same height and centre.
    assert abs((boxes[0, 3] - boxes[0, 1]) - (target[3] - target[1])) < 2.0
    np.testing.assert_allclose((boxes[0, :2] + boxes[0, 2:]) / 2, (target[:2] + target[2:]) / 2, atol=2.0)
    # Driving frame 0 in the reference's own pose: the whole box matches.
    same_start = BodyFit(**{**driving.__dict__, "pose": driving.pose.copy(),
                            "global_orient": driving.global_orient.copy()})
    same_start.pose[0], same_start.global_orient[0] = reference.pose[0], reference.global_orient[0]
    boxes = projected_box(posed_vertices(anny, align_shape(reference, same_start, anny, REF_H, REF_W)),
                          reference.camera)
    np.testing.assert_allclose(boxes[0], target, atol=2.0)


def test_later_frames_keep_the_driving_root_motion(anny, bodies):
    reference, driving = bodies
    aligned = align_shape(reference, driving, anny, REF_H, REF_W)
    motion, aligned_motion = driving.transl - driving.transl[0], aligned.transl - aligned.transl[0]
    assert np.abs(motion).max() > 0.01  # the driving body does travel
    # Each axis scaled by one factor over the clip, a positive one near 1 for bodies of human size.
    for axis in range(3):
        ratio = aligned_motion[1:, axis] / np.where(np.abs(motion[1:, axis]) > 1e-4, motion[1:, axis], np.nan)
        ratio = ratio[np.isfinite(ratio)]
        assert np.ptp(ratio) < 1e-3 and 0.3 < ratio.mean() < 3.0


def test_mismatched_inputs_are_refused(anny, bodies):
    reference, driving = bodies
    with pytest.raises(ValueError, match="one body model"):
        align_shape(BodyFit(**{**reference.__dict__, "model": "smpl"}), driving, anny, REF_H, REF_W)
    with pytest.raises(ValueError, match="principal point"):
        align_shape(reference, driving, anny, 100, 100)


def test_the_skeleton_is_the_aligned_body_and_the_face_follows_the_head(anny):
    model = anny
    motion, camera = random_motion(model, 3, 25.0, seed=2, height=256, width=256)
    driving = as_fit(motion, camera)
    kpts = np.concatenate([projected_keypoints(model, driving), np.ones((3, 133, 1))], -1).astype(np.float32)
    kpts[:, FACE, :2] = kpts[:, :1, :2] + np.random.default_rng(0).normal(0, 5, (3, 68, 2))  # around the nose
    kpts[0, 7, 2] = 0.1  # an unseen elbow stays unseen
    np.testing.assert_allclose(aligned_keypoints(model, driving, driving, kpts), kpts, atol=1e-3)
    moved = BodyFit(**{**driving.__dict__, "transl": driving.transl + np.array([0.2, 0.0, 0.5], np.float32)})
    out = aligned_keypoints(model, driving, moved, kpts)
    projected = projected_keypoints(model, moved)
    np.testing.assert_allclose(out[:, model.keypoint_mask, :2], projected[:, model.keypoint_mask], atol=1e-4)
    # Farther away: the face shrinks about the head as the head does.
    head_scale = np.ptp(projected[:, :5, 0], 1) / np.ptp(kpts[:, :5, 0], 1)
    face_scale = np.ptp(out[:, FACE, 0], 1) / np.ptp(kpts[:, FACE, 0], 1)
    np.testing.assert_allclose(face_scale, head_scale, rtol=0.05)
    assert out[0, 7, 2] == np.float32(0.1)


def test_without_fits_the_skeleton_stands_where_the_reference_stands():
    rng = np.random.default_rng(1)
    driving = np.concatenate([rng.uniform(50, 150, (4, 133, 2)), np.ones((4, 133, 1))], -1).astype(np.float32)
    reference = np.concatenate([rng.uniform(0, 300, (133, 2)), np.ones((133, 1))], -1).astype(np.float32)
    out = align_keypoints_2d(reference, driving)
    body, ref_body = out[0, :17, :2], reference[:17, :2]
    np.testing.assert_allclose(np.ptp(body[:, 1]), np.ptp(ref_body[:, 1]), rtol=1e-5)
    np.testing.assert_allclose((body.min(0) + body.max(0)) / 2, (ref_body.min(0) + ref_body.max(0)) / 2, atol=1e-3)
