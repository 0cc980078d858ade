"""The synthetic person generator: deterministic frames, ground truth that matches the pixels, files that read
back, and people that the offline pose back-end finds where the truth says they are."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.ndimage import distance_transform_edt
from scipy.spatial.transform import Rotation

from humanim.schemas.keypoints import BODY, BODY_NAMES, FEET
from humanim.stages.body_models import load_body_model
from humanim.stages.decode import cover_crop
from humanim.stages.fit import frame_size_camera
from humanim.stages.render import render_maps
from humanim.synth.evaluate import body_joint_errors, pose_agreement, to_clip_pixels
from humanim.synth.generator import shot_seed, synth_clip, synth_shots, write_synth
from humanim.synth.visibility import image_keypoints, keypoint_radii, keypoint_visibility

SIZE = 256


@pytest.fixture(scope="module")
def model():
    return load_body_model("anny")


@pytest.fixture(scope="module")
def clip(model):
    return synth_clip(8, 24.0, SIZE, SIZE, seed=5, model=model)


def test_same_seed_same_clip_other_seed_another(model, clip):
    again = synth_clip(8, 24.0, SIZE, SIZE, seed=5, model=model, threads=1)  # threads change speed only
    np.testing.assert_array_equal(again.frames, clip.frames)
    for name in ("pose", "global_orient", "transl", "shape", "keypoints", "visible", "vertices"):
        np.testing.assert_array_equal(getattr(again, name), getattr(clip, name), err_msg=name)
    for name in clip.maps:
        np.testing.assert_array_equal(again.maps[name], clip.maps[name], err_msg=name)
    other = synth_clip(8, 24.0, SIZE, SIZE, seed=6, model=model)
    assert np.abs(other.frames.astype(int) - clip.frames).mean() > 10
    assert not np.allclose(other.pose, clip.pose) and not np.allclose(other.shape, clip.shape)


def test_visible_keypoints_land_on_the_rendered_body(clip):
    assert clip.frames.shape == (8, SIZE, SIZE, 3) and clip.frames.dtype == np.uint8
    silhouette = clip.maps["face_id"] >= 0
    assert np.all((clip.maps["part"] > 0) == silhouette) and np.all((clip.maps["depth"] > 0) == silhouette)
    body_and_feet = slice(BODY.start, FEET.stop)
    assert np.all(clip.keypoints[:, body_and_feet, 2] == 1) and np.all(clip.keypoints[:, 23:91] == 0)  # no face
    for t in range(len(clip.frames)):
        # Distance of every pixel to the nearest body pixel, read at each visible body or foot keypoint.
        to_body = distance_transform_edt(~silhouette[t])
        seen = clip.visible[t, body_and_feet]
        x, y = np.rint(clip.keypoints[t, body_and_feet][seen, :2]).astype(int).T
        assert seen.sum() >= 12
        assert np.all(to_body[y, x] <= 2.0), (t, to_body[y, x])


def test_keypoints_behind_the_body_are_hidden(model):
    """Rest pose facing the camera, turned away, and in profile with its left side away from the camera."""
    shape = torch.full((1, len(model.shape_names)), 0.5)
    zero_pose = torch.zeros(1, len(model.pose_joints), 3)
    facing = Rotation.from_euler("x", np.pi)  # model frame (y up, facing +z) to camera frame, facing the camera
    turns = np.stack([(facing * Rotation.from_euler("y", yaw)).as_rotvec() for yaw in (0.0, np.pi, np.pi / 2)])
    with torch.no_grad():
        posed = model(shape, zero_pose.expand(3, -1, -1), torch.tensor(turns, dtype=torch.float32),
                      torch.tensor([[0.0, 0.0, 3.0]] * 3))
        rest = model(shape, zero_pose, torch.zeros(1, 3), torch.zeros(1, 3))
    camera = frame_size_camera(SIZE, SIZE)
    maps = render_maps(posed.vertices.numpy(), model.faces, camera, SIZE, SIZE, face_part=model.face_part)
    joints = posed.joints_wholebody.numpy()
    keypoints = image_keypoints(joints, model.keypoint_mask, camera)
    visible = keypoint_visibility(joints, keypoints, maps["depth"], maps["part"],
                                  keypoint_radii(model, rest.vertices[0].numpy(), rest.joints_wholebody[0].numpy()))
    face = [BODY_NAMES.index(name) for name in ("nose", "left_eye", "right_eye")]

    def limbs(side: str) -> list[int]:
        return [BODY_NAMES.index(f"{side}_{joint}") for joint in ("shoulder", "elbow", "hip", "knee", "ankle")]

    wrists = [BODY_NAMES.index("left_wrist"), BODY_NAMES.index("right_wrist")]
    # Facing: all seen, the wrists too although the rest pose points the forearms at the camera.
    assert visible[0, :17].all()
    assert not visible[1, face].any() and visible[1, limbs("left") + limbs("right") + wrists].all()
    assert not visible[2, limbs("left")].any() and visible[2, limbs("right")].all()  # the torso hides the far side
    assert not visible[:, 23:91].any()  # rows the model does not define are never visible


def test_written_video_and_truth_read_back(model, tmp_path):
    shots = synth_shots(6, 12.0, 96, 128, seed=3, shots=2, model=model)
    video, truth_path = write_synth(tmp_path, "people", shots, seed=3)
    assert (video.name, truth_path.name) == ("people.mp4", "people.gt.npz")
    truth = np.load(truth_path, allow_pickle=False)
    assert str(truth["model_kind"]) == "anny" and len(truth["pose_joints"]) == len(model.pose_joints)
    assert list(truth["shot_seeds"]) == [shot_seed(3, 0), shot_seed(3, 1)] and list(truth["shot_starts"]) == [0, 6]
    assert truth["fps"] == 12.0 and truth["camera"].shape == (2, 4) and truth["shape"].shape == (2, 6)
    for name in ("pose", "global_orient", "transl", "keypoints", "visible"):
        np.testing.assert_array_equal(truth[name], np.concatenate([getattr(s, name) for s in shots]), err_msg=name)
    for name in ("part", "face_id"):
        np.testing.assert_array_equal(truth[name], np.concatenate([s.maps[name] for s in shots]), err_msg=name)
    depth = np.concatenate([s.maps["depth"] for s in shots])
    assert truth["depth_mm"].dtype == np.uint16 and truth["part"].shape == (12, 96, 128)
    assert np.abs(truth["depth_mm"] / 1000.0 - depth).max() <= 0.0005 + 1e-6
    # Each shot's seed remakes that shot on its own.
    np.testing.assert_array_equal(synth_clip(6, 12.0, 96, 128, int(truth["shot_seeds"][1]), model).frames,
                                  shots[1].frames)

    import av

    with av.open(str(video)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(int)
    assert decoded.shape == (12, 96, 128, 3)
    original = np.concatenate([s.frames for s in shots])
    assert np.abs(decoded - original).mean() < 4  # crf 18
    # A hard cut between the shots: a jump far larger than any step within a shot.
    steps = np.abs(np.diff(decoded, axis=0)).mean(axis=(1, 2, 3))
    assert steps[5] > 3 * np.delete(steps, 5).max(), steps


def test_mediapipe_finds_the_person_where_the_truth_is(model, clip):
    """Measured on 16 seeds x 8 frames at 256 px: the person found in 128 of 128 frames, median error per clip
    1.4-2.4 px, 90th percentile at most 4.7 px. The bounds leave room for one lost frame and ~2x the error."""
    from humanim.pipeline.config import DEFAULTS
    from humanim.stages.base import Clip, ClipSpec
    from humanim.stages.pose_mediapipe import MediaPipePose

    stage = MediaPipePose(DEFAULTS["pose"])
    for synthetic in (clip, synth_clip(8, 24.0, SIZE, SIZE, seed=7, model=model)):
        spec = ClipSpec(key="synth_00000", video_id="synth", clip_index=0, split="train", source="",
                        source_sha256="", source_frame_indices=(), source_frame_pts=(), source_frame_times=(),
                        frame_times=(), fps=24.0)
        detected = stage(Clip(spec=spec, frames=synthetic.frames)).fields["kpts"]
        agreement = pose_agreement(detected, synthetic.keypoints, synthetic.visible)
        errors = body_joint_errors(detected, synthetic.keypoints, synthetic.visible)
        assert agreement.frames_found >= 7 and agreement.joints_compared >= 80, agreement
        assert agreement.median_error < 4.0 and np.percentile(errors, 90) < 8.0, (agreement, np.sort(errors))


def test_truth_moves_into_clip_pixels_as_the_decoder_cuts():
    crop = cover_crop(1024, 768, 384, 384)  # halved, then 128 source pixels cut from each side
    assert crop.box == (128.0, 0.0, 896.0, 768.0)
    centre = np.array([[[1023 / 2, 767 / 2, 1.0]]], np.float32)
    np.testing.assert_allclose(to_clip_pixels(centre, crop.box, 384, 384)[0, 0], [191.5, 191.5, 1.0], atol=1e-4)
    # Source pixels 128 and 129 average into clip pixel 0, so its centre is their shared edge, x = 128.5.
    np.testing.assert_allclose(to_clip_pixels(np.array([[[128.5, 1.5, 1.0]]]), crop.box, 384, 384)[0, 0],
                               [0.0, 0.5, 1.0], atol=1e-6)


def test_synth_command_writes_video_and_truth(tmp_path):
    from humanim.pipeline.cli import main

    result = CliRunner().invoke(main, ["synth", str(tmp_path), "--frames", "3", "--size", "64x48", "--shots", "2",
                                       "--seed", "1", "--name", "tiny"])
    assert result.exit_code == 0, result.output
    truth = np.load(tmp_path / "tiny.gt.npz", allow_pickle=False)
    assert truth["keypoints"].shape == (6, 133, 3) and truth["part"].shape == (6, 48, 64)
    assert (tmp_path / "tiny.mp4").stat().st_size > 0
    bad = CliRunner().invoke(main, ["synth", str(tmp_path), "--size", "64by48"])
    assert bad.exit_code == 2 and "WIDTHxHEIGHT" in bad.output
