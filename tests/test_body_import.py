"""Reading 4D-Humans / PHALP tracking output: a file written here in the layout PHALP's tracker writes (frame name ->
lists aligned with `tid`, including tracks missed in that frame, of SMPL rotation matrices, betas, camera
translation, boxes and frame size), posed with a tiny model file in the real SMPL format (the real files cannot
be shipped), must give back the detected bodies where PHALP's camera puts them, in the clip's camera."""
from __future__ import annotations

import copy
import pickle

import joblib
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from humanim.stages.body_import import (
    TrackingFormatError, choose_track, load_tracking_results, person_tracks, source_to_clip, track_to_fit,
    tracking_file,
)
from humanim.stages.body_models import load_body_model
from humanim.stages.fit import reprojection_error
from humanim.synth.motion import project
from test_body_models import write_tiny_smplx_format_model

SOURCE_W, SOURCE_H = 1280, 720
CROP_BOX = (280.0, 0.0, 1000.0, 720.0)  # the centred square the decode stage cuts for a 256 x 256 clip
CLIP_SIZE = (256, 256)
# PHALP's camera, restated from its definition: the frame padded to a square of its long side (odd padding
# pixel at the bottom / right), resized to 256 px, a focal length of 5000 px and the principal point at the
# centre there; coordinates continuous (pixel i spans [i, i + 1)).
SQUARE, FOCAL = 256, 5000.0


def padding_before(width: int, height: int) -> np.ndarray:
    side = max(width, height)
    return np.array([(side - width) // 2, (side - height) // 2])


def phalp_camera(pred_cam, box, width: int, height: int) -> np.ndarray:
    """The `camera` PHALP writes for HMR 2.0's weak-perspective camera (scale, tx, ty) of a square crop of side
    max(w, h) centred on box (x0, y0, w, h): in the 256 px square, depth 2 f / (scale x crop side) and the
    crop centre's offset from the square's centre carried to that depth."""
    ratio = SQUARE / max(width, height)
    centre = (np.array(box[:2]) + np.array(box[2:]) / 2 + padding_before(width, height)) * ratio
    side = max(box[2:]) * ratio
    depth = 2 * FOCAL / (pred_cam[0] * side)
    return np.array([*(np.array(pred_cam[1:]) + (centre - SQUARE / 2) * depth / FOCAL), depth])


def phalp_pixel(point, width: int, height: int) -> np.ndarray:
    """Where PHALP's camera puts a camera-frame point in the frame, in our pixels (centres at integers)."""
    in_square = FOCAL * point[:2] / point[2] + SQUARE / 2
    return in_square * max(width, height) / SQUARE - padding_before(width, height) - 0.5


def where_hmr_puts_the_body_origin(pred_cam, box) -> np.ndarray:
    """HMR's weak-perspective camera puts the body's origin at the crop's centre + scale x (tx, ty) half-sides;
    in our pixels (centres at integers)."""
    return np.array(box[:2]) + np.array(box[2:]) / 2 + pred_cam[0] * np.array(pred_cam[1:]) * max(box[2:]) / 2 - 0.5


def person(rng: np.random.Generator, pred_cam, box, size=(SOURCE_W, SOURCE_H)) -> dict:
    """One detection's entries, as PHALP's get_human_features makes them."""
    return {"smpl": {"global_orient": Rotation.from_rotvec([np.pi, 0, 0]).as_matrix()[None].astype(np.float32),
                     "body_pose": Rotation.from_rotvec(rng.normal(0, 0.2, (23, 3))).as_matrix().astype(np.float32),
                     "betas": rng.normal(0, 0.5, 10).astype(np.float32)},
            "camera": phalp_camera(pred_cam, box, *size).astype(np.float32),
            "camera_bbox": np.asarray(pred_cam, np.float32), "bbox": np.asarray(box, np.float32),
            "center": np.asarray(box[:2]) + np.asarray(box[2:]) / 2, "scale": np.asarray(box[2:]),
            "size": [size[1], size[0]], "conf": 0.9}


PER_TRACK_KEYS = ("smpl", "camera", "camera_bbox", "bbox", "center", "scale", "size", "conf")


def tracked_frame(name: str, time: int, detected: dict[int, dict], missed: dict[int, tuple[int, dict]]) -> dict:
    """A frame as PHALP's tracker records it: every confirmed track in `tid` with its frames since detection,
    the per-track entries aligned with `tid` (a missed track repeats its last detection's), and only the
    detected ones in `tracked_ids` / `tracked_bbox`."""
    frame = {"time": time, "shot": 0, "frame_path": name, "tid": [], "tracked_time": [],
             "tracked_ids": [], "tracked_bbox": [], **{key: [] for key in PER_TRACK_KEYS}}
    alive = [(tid, 0, entries) for tid, entries in detected.items()] + \
        [(tid, since, entries) for tid, (since, entries) in missed.items()]
    for track_id, since, entries in sorted(alive, key=lambda row: row[0], reverse=True):
        frame["tid"].append(track_id)
        frame["tracked_time"].append(since)
        for key in PER_TRACK_KEYS:
            frame[key].append(entries[key])
        if since == 0:
            frame["tracked_ids"].append(track_id)
            frame["tracked_bbox"].append(entries["bbox"])
    return frame


PRED_CAM_3 = (0.8, 0.05, -0.1)  # HMR 2.0's crop camera for track 3: a little right of and above the crop centre


def frame_name(time: int) -> str:
    return f"outputs/_DEMO/dance/img/{time + 1:06d}.jpg"  # PHALP numbers the video's frames from 000001


@pytest.fixture(params=["joblib", "pickle"])
def results_file(tmp_path, request):
    """Two people over frames 10-15 of a 1280 x 720 video: track 3 stands in the middle of the crop, track 8 at
    the frame's left edge, outside it; track 3 is missed in frame 13, where PHALP keeps it in `tid` with its
    frame-12 entries and tracked_time 1. Written as PHALP writes it (joblib.dump, compress=3), and as a plain
    pickle."""
    rng = np.random.default_rng(0)
    results = {}
    last_seen_3 = None
    for time in range(10, 16):
        detected = {8: person(rng, (1.0, 0.0, 0.0), [0, 200, 120, 400])}
        missed = {}
        if time != 13:
            detected[3] = last_seen_3 = person(rng, PRED_CAM_3, [560 + 8 * (time - 10), 150, 160, 450])
        else:
            missed[3] = (1, copy.deepcopy(last_seen_3))
        results[frame_name(time)] = tracked_frame(frame_name(time), time, detected, missed)
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
    assert len(results[frame_name(13)]["tid"]) == 2 and results[frame_name(13)]["tracked_ids"] == [8]
    tracks = person_tracks(load_tracking_results(path))
    assert sorted(tracks) == [3, 8]
    # Frame 13's entry for track 3 repeats frame 12's detection: it is not a detection of frame 13.
    np.testing.assert_array_equal(tracks[3].frames, [10, 11, 12, 14, 15])
    np.testing.assert_array_equal(tracks[8].frames, np.arange(10, 16))
    assert tracks[3].body_pose.shape == (5, 23, 3, 3) and tracks[3].betas.shape == (5, 10)
    frame_11 = results[frame_name(11)]
    np.testing.assert_allclose(tracks[3].camera[1], frame_11["camera"][frame_11["tid"].index(3)], rtol=1e-6)
    np.testing.assert_allclose(tracks[3].boxes[3], [592, 150, 160, 450])
    np.testing.assert_array_equal(tracks[3].frame_sizes, [[SOURCE_H, SOURCE_W]] * 5)


def test_frames_without_time_are_placed_by_phalps_file_numbers():
    entries = person(np.random.default_rng(2), PRED_CAM_3, [560, 150, 160, 450])
    frame = tracked_frame(frame_name(11), 11, {5: entries}, {})
    del frame["time"]
    np.testing.assert_array_equal(person_tracks({frame_name(11): frame})[5].frames, [11])


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

    # The body's origin lands where HMR 2.0's crop camera put it, carried through the crop and resize.
    scale, offset = source_to_clip(CROP_BOX, CLIP_SIZE)
    fx, fy, cx, cy = fit.camera
    origin = fit.transl[0]
    np.testing.assert_allclose(origin[:2] / origin[2] * [fx, fy] + [cx, cy],
                               where_hmr_puts_the_body_origin(PRED_CAM_3, tracks[3].boxes[0]) * scale + offset,
                               atol=1e-3)

    # A point of the body projects where PHALP's camera put it in the source frame, carried through the crop.
    model_path = tmp_path / "SMPL_NEUTRAL.pkl"
    write_tiny_smplx_format_model(model_path, "smpl")
    with pytest.warns(UserWarning, match="vertices"):
        model = load_body_model("smpl", model_path)
    with torch.no_grad():
        points = model.keypoints_only(torch.as_tensor(fit.shape)[None], torch.as_tensor(fit.pose[:1]),
                                      torch.as_tensor(fit.global_orient[:1]), torch.as_tensor(fit.transl[:1]))[0]
    point = points[model.keypoint_mask][0].numpy()
    np.testing.assert_allclose(point[:2] / point[2] * [fx, fy] + [cx, cy],
                               phalp_pixel(point, SOURCE_W, SOURCE_H) * scale + offset, atol=1e-3)

    # Measured against keypoints where those bodies project, the error is zero; NaN where the track is missing.
    with torch.no_grad():
        all_points = model.keypoints_only(torch.as_tensor(fit.shape)[None], torch.as_tensor(fit.pose),
                                          torch.as_tensor(fit.global_orient), torch.as_tensor(fit.transl)).numpy()
    pixels = project(all_points, fit.pinhole)
    keypoints = np.concatenate([np.nan_to_num(pixels), model.keypoint_mask[None, :, None].repeat(6, 0)], -1)
    error = reprojection_error(model, fit, keypoints.astype(np.float32), 0.3)
    assert error.max() < 1e-2


@pytest.mark.parametrize("width, height", [(1280, 720), (1280, 721), (721, 1280), (1081, 1920), (640, 640)])
def test_camera_is_phalps_padded_square_camera(width, height):
    """With odd padding the padded square's centre is half a pixel off the frame's: PHALP's camera is the
    square's, and the body lands where HMR 2.0 put it in the crop."""
    crop_box, clip_size = (100.0, 50.0, 500.0, 450.0), (256, 256)
    pred_cam, box = (0.9, -0.2, 0.15), [180.0, 90.0, 200.0, 330.0]
    entries = person(np.random.default_rng(3), pred_cam, box, size=(width, height))
    track = person_tracks({frame_name(4): tracked_frame(frame_name(4), 4, {1: entries}, {})})[1]
    fit = track_to_fit(track, [4], (width, height), crop_box, clip_size)
    scale, offset = source_to_clip(crop_box, clip_size)
    fx, fy, cx, cy = fit.camera
    origin = fit.transl[0]
    np.testing.assert_allclose(origin[:2] / origin[2] * [fx, fy] + [cx, cy],
                               where_hmr_puts_the_body_origin(pred_cam, box) * scale + offset, atol=1e-3)
    np.testing.assert_allclose([fx, fy], 5000 / 256 * max(width, height) * scale, rtol=1e-6)
    point = origin + [0.3, -0.5, 0.2]
    np.testing.assert_allclose(point[:2] / point[2] * [fx, fy] + [cx, cy],
                               phalp_pixel(point, width, height) * scale + offset, atol=1e-3)


def test_tracks_of_other_frame_sizes_are_refused(results_file):
    tracks = person_tracks(load_tracking_results(results_file[0]))
    with pytest.raises(TrackingFormatError, match="read frames of 1280 x 720 pixels, the source is 720 x 1280"):
        track_to_fit(tracks[3], list(range(10, 16)), (SOURCE_H, SOURCE_W), CROP_BOX, CLIP_SIZE)
    with pytest.raises(TrackingFormatError, match="tracking has people in frames 10 to 15"):
        choose_track(tracks, list(range(2000, 2010)), CROP_BOX, CLIP_SIZE)


def test_files_that_are_not_tracking_output_are_refused_clearly(tmp_path):
    not_a_dict = tmp_path / "list.pkl"
    not_a_dict.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(TrackingFormatError, match="not 4D-Humans tracking output"):
        load_tracking_results(not_a_dict)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is no pickle")
    with pytest.raises(TrackingFormatError, match="not a readable tracking pickle"):
        load_tracking_results(garbage)
    entries = person(np.random.default_rng(4), PRED_CAM_3, [560, 150, 160, 450])
    frame = tracked_frame(frame_name(0), 0, {1: entries}, {})
    with pytest.raises(TrackingFormatError, match="has no smpl"):
        person_tracks({frame_name(0): {key: value for key, value in frame.items() if key != "smpl"}})
    # The layout PHALP's users sometimes assume, lists aligned with tracked_ids and no tid, is not PHALP's.
    with pytest.raises(TrackingFormatError, match="has no tid, tracked_time"):
        person_tracks({frame_name(0): {"time": 0, "tracked_ids": [1], "smpl": [entries["smpl"]],
                                       "camera": [entries["camera"]], "bbox": [entries["bbox"]]}})
    with pytest.raises(TrackingFormatError, match="differ in length"):
        person_tracks({frame_name(0): {**frame, "camera": []}})
    bad_pose = {**entries, "smpl": {**entries["smpl"], "body_pose": np.zeros((21, 3, 3))}}
    with pytest.raises(TrackingFormatError, match=r"body_pose \[23, 3, 3\]"):
        person_tracks({frame_name(0): tracked_frame(frame_name(0), 0, {1: bad_pose}, {})})
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
