"""Reading 4D-Humans / PHALP tracking output: a file written here in that format (frame name -> per-person lists of
SMPL rotation matrices, betas, camera translation and boxes), posed with a tiny model file in the real SMPL
format (the real files cannot be shipped), must give back the same bodies in the clip's camera."""
from __future__ import annotations

import pickle

import joblib
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from humanim.stages.body_import import (
    HMR2_FOCAL_PER_PIXEL, TrackingFormatError, choose_track, load_tracking_results, person_tracks, source_to_clip,
    track_to_fit, tracking_file,
)
from humanim.stages.body_models import load_body_model
from humanim.stages.fit import reprojection_error
from humanim.synth.motion import project
from test_body_models import write_tiny_smplx_format_model

SOURCE_W, SOURCE_H = 1280, 720
CROP_BOX = (280.0, 0.0, 1000.0, 720.0)  # the centred square the decode stage cuts for a 256 x 256 clip
CLIP_SIZE = (256, 256)


def tracked_frame(time: int, people: dict[int, dict]) -> dict:
    return {"time": time, "tracked_ids": list(people), "smpl": [p["smpl"] for p in people.values()],
            "camera": [p["camera"] for p in people.values()], "tracked_bbox": [p["box"] for p in people.values()],
            "conf": [0.9] * len(people), "shot": 0}


def person(rng: np.random.Generator, camera, box) -> dict:
    return {"smpl": {"global_orient": Rotation.from_rotvec([np.pi, 0, 0]).as_matrix()[None].astype(np.float32),
                     "body_pose": Rotation.from_rotvec(rng.normal(0, 0.2, (23, 3))).as_matrix().astype(np.float32),
                     "betas": rng.normal(0, 0.5, 10).astype(np.float32)},
            "camera": np.asarray(camera, np.float32), "box": np.asarray(box, np.float32)}


@pytest.fixture(params=["joblib", "pickle"])
def results_file(tmp_path, request):
    """Two people over frames 10-15 of a 1280 x 720 video: track 3 stands in the middle of the crop, track 8 at
    the frame's left edge, outside it; track 3 is missed in frame 13. Written as PHALP writes it (joblib.dump,
    compress=3), and as a plain pickle."""
    rng = np.random.default_rng(0)
    results = {}
    for time in range(10, 16):
        people = {8: person(rng, [-3.0, 0.0, 20.0], [0, 200, 120, 400])}
        if time != 13:
            people[3] = person(rng, [0.1 * (time - 10), 0.2, 25.0], [560, 150, 160, 450])
        results[f"outputs/_DEMO/clip/img/{time + 1:06d}.jpg"] = tracked_frame(time, people)
    path = tmp_path / "demo_dance.pkl"
    if request.param == "joblib":
        joblib.dump(results, path, compress=3)
    else:
        with open(path, "wb") as file:
            pickle.dump(results, file)
    return path, results


def test_tracks_are_read_per_person_in_frame_order(results_file):
    path, results = results_file
    assert tracking_file(path.parent, "/videos/dance.mp4") == path
    tracks = person_tracks(load_tracking_results(path))
    assert sorted(tracks) == [3, 8]
    np.testing.assert_array_equal(tracks[3].frames, [10, 11, 12, 14, 15])
    assert tracks[3].body_pose.shape == (5, 23, 3, 3) and tracks[3].betas.shape == (5, 10)
    np.testing.assert_allclose(tracks[3].camera[1], [0.1, 0.2, 25.0], rtol=1e-6)


def test_subject_track_is_the_one_covering_the_clip_keypoints(results_file):
    tracks = person_tracks(load_tracking_results(results_file[0]))
    frames = list(range(10, 16))
    scale, offset = source_to_clip(CROP_BOX, CLIP_SIZE)
    keypoints = np.zeros((len(frames), 133, 3), np.float32)
    keypoints[:, :17, :2] = (np.array([640.0, 375.0]) + np.random.default_rng(1).normal(0, 40, (17, 2))) * scale \
        + offset
    keypoints[:, :17, 2] = 0.9
    assert choose_track(tracks, frames, CROP_BOX, CLIP_SIZE, keypoints).track_id == 3
    # Without keypoints, the track seen in most of the clip's frames.
    assert choose_track(tracks, frames, CROP_BOX, CLIP_SIZE).track_id == 8


def test_track_becomes_a_fit_in_the_clip_camera_with_the_same_bodies(results_file, tmp_path):
    tracks = person_tracks(load_tracking_results(results_file[0]))
    frames = list(range(10, 16))
    fit = track_to_fit(tracks[3], frames, (SOURCE_W, SOURCE_H), CROP_BOX, CLIP_SIZE)
    assert fit.model == "smpl" and fit.focal_source == "given"
    assert fit.pose.shape == (6, 23, 3) and fit.shape.shape == (10,)
    # Rotation matrices became axis-angles of the same rotations; the missed frame 13 holds frame 12 or 14.
    np.testing.assert_allclose(Rotation.from_rotvec(fit.pose[0]).as_matrix(), tracks[3].body_pose[0], atol=1e-5)
    np.testing.assert_allclose(fit.transl[0], tracks[3].camera[0])
    assert np.isnan(fit.error_px[3]) and np.isfinite(np.delete(fit.error_px, 3)).all()
    np.testing.assert_allclose(fit.shape, tracks[3].betas.mean(0), rtol=1e-5)

    # A point of the body projects where it did in the source frame, carried through the crop and resize.
    model_path = tmp_path / "SMPL_NEUTRAL.pkl"
    write_tiny_smplx_format_model(model_path, "smpl")
    with pytest.warns(UserWarning, match="vertices"):
        model = load_body_model("smpl", model_path)
    with torch.no_grad():
        points = model.keypoints_only(torch.as_tensor(fit.shape)[None], torch.as_tensor(fit.pose[:1]),
                                      torch.as_tensor(fit.global_orient[:1]), torch.as_tensor(fit.transl[:1]))[0]
    point = points[model.keypoint_mask][0].numpy()
    focal = HMR2_FOCAL_PER_PIXEL * SOURCE_W
    source_pixel = point[:2] / point[2] * focal + np.array([(SOURCE_W - 1) / 2, (SOURCE_H - 1) / 2])
    scale, offset = source_to_clip(CROP_BOX, CLIP_SIZE)
    fx, fy, cx, cy = fit.camera
    np.testing.assert_allclose(point[:2] / point[2] * [fx, fy] + [cx, cy], source_pixel * scale + offset, atol=1e-3)

    # Measured against keypoints where those bodies project, the error is zero; NaN where the track is missing.
    with torch.no_grad():
        all_points = model.keypoints_only(torch.as_tensor(fit.shape)[None], torch.as_tensor(fit.pose),
                                          torch.as_tensor(fit.global_orient), torch.as_tensor(fit.transl)).numpy()
    pixels = project(all_points, fit.pinhole)
    keypoints = np.concatenate([np.nan_to_num(pixels), model.keypoint_mask[None, :, None].repeat(6, 0)], -1)
    error = reprojection_error(model, fit, keypoints.astype(np.float32), 0.3)
    assert error.max() < 1e-2


def test_files_that_are_not_tracking_output_are_refused_clearly(tmp_path):
    not_a_dict = tmp_path / "list.pkl"
    not_a_dict.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(TrackingFormatError, match="not 4D-Humans tracking output"):
        load_tracking_results(not_a_dict)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is no pickle")
    with pytest.raises(TrackingFormatError, match="not a readable tracking pickle"):
        load_tracking_results(garbage)
    with pytest.raises(TrackingFormatError, match="has no smpl"):
        person_tracks({"000001.jpg": {"time": 0, "tracked_ids": [1], "camera": [[0, 0, 5]]}})
    bad_pose = {"global_orient": np.eye(3)[None], "body_pose": np.zeros((21, 3, 3)), "betas": np.zeros(10)}
    with pytest.raises(TrackingFormatError, match=r"body_pose \[23, 3, 3\]"):
        person_tracks({"000001.jpg": {"time": 0, "tracked_ids": [1], "smpl": [bad_pose], "camera": [[0, 0, 5]]}})
    with pytest.raises(FileNotFoundError, match="demo_clip.pkl"):
        tracking_file(tmp_path, "clip.mp4")


def test_body_stage_reads_the_subjects_track_instead_of_fitting(results_file, tmp_path):
    from humanim.stages.base import Clip, ClipSpec
    from humanim.stages.body import Body
    from humanim.stages.fit import BodyFit

    path, _ = results_file
    model_path = tmp_path / "SMPL_NEUTRAL.pkl"
    write_tiny_smplx_format_model(model_path, "smpl")
    config = {"model": "smpl", "model_path": str(model_path), "iterations": 10, "score_threshold": 0.3,
              "focal": None, "max_error_px": 25.0, "bad_frame_px": 15.0, "on_bad_fit": "fail", "device": "cpu",
              "import_dir": str(path.parent)}
    with pytest.warns(UserWarning, match="vertices"):
        stage = Body(config)
    frames = tuple(range(10, 16))
    tracks = person_tracks(load_tracking_results(path))
    truth = track_to_fit(tracks[3], frames, (SOURCE_W, SOURCE_H), CROP_BOX, CLIP_SIZE)
    with torch.no_grad():
        points = stage.model.keypoints_only(torch.as_tensor(truth.shape)[None], torch.as_tensor(truth.pose),
                                            torch.as_tensor(truth.global_orient),
                                            torch.as_tensor(truth.transl)).numpy()
    keypoints = np.concatenate([np.nan_to_num(project(points, truth.pinhole)),
                                stage.model.keypoint_mask[None, :, None].repeat(len(frames), 0)], -1)
    spec = ClipSpec(key="0123456789abcdef_00000", video_id="0123456789abcdef", clip_index=0, split="train",
                    source="/videos/dance.mp4", source_sha256="", source_frame_indices=frames,
                    source_frame_pts=frames, source_frame_times=(), frame_times=(), fps=25.0)
    clip = Clip(spec=spec, frames=np.zeros((len(frames), *CLIP_SIZE, 3), np.uint8),
                fields={"kpts": keypoints.astype(np.float32)},
                meta={"source_info": {"width": SOURCE_W, "height": SOURCE_H},
                      "stages": {"decode": {"crop_box": list(CROP_BOX)}}})
    result = stage(clip)
    fit = BodyFit.from_npz_bytes(result.fields["body"])
    np.testing.assert_allclose(fit.transl, truth.transl)
    assert result.meta["focal_source"] == "given" and result.qa["fit_error_px"] < 0.01
    assert np.isnan(fit.error_px[3])  # the frame the tracker missed: held, not measured
