"""Parametric shape alignment on synthetic Anny bodies: the reference's shape with the driving clip's joint
angles, framed like the reference."""
from __future__ import annotations

import numpy as np
import pytest

from humanim.stages.body import posed_vertices
from humanim.stages.body_models import load_body_model
from humanim.stages.fit import BodyFit
from humanim.stages.shape_align import align_shape, projected_box
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
