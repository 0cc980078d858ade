"""SMPL parameters from 4D-Humans (HMR 2.0 tracked by PHALP, its `track.py`) instead of fitting.

The tracker writes one pickle per video with joblib.dump, compressed (`outputs/results/demo_<video>.pkl`): a
dict from frame name (the path of the frame image it read) to that frame's results. Checked against the code
that writes and reads it (PHALP's tracker in PHALP.py, its `track` and `get_human_features` methods; the
tracks reader `get_tracks` of its utils_tracks.py; its visualizer's `render_video`; 4D-Humans' track.py),
each frame holds:
- `time`: the frame's index among those the tracker read (`shot`, `frame_path` beside);
- `tid`, `tracked_time`: every confirmed track alive at that frame and the frames since it was last detected,
  with, aligned to them, one entry per track of `bbox` ([x0, y0, w, h] of the detection in the frame's pixels,
  continuous: pixel i spans [i, i + 1)), `size` ([height, width] of the frame), `smpl` ({"global_orient":
  [1, 3, 3], "body_pose": [23, 3, 3] rotation matrices, "betas": [10]}, HMR 2.0's prediction as it is),
  `camera` ([3] the translation that puts the posed SMPL body, transl 0, into the camera frame), `camera_bbox`
  (HMR 2.0's weak-perspective camera of its crop), `center`, `scale`, `conf`, joints and a mask;
- `tracked_ids`, `tracked_bbox`: the tracks detected in that frame, a shorter list that is NOT aligned with
  `smpl`: a track missed in a frame (tracked_time > 0) stays in `tid` for up to cfg.phalp.max_age_track (50)
  frames with the entries of its last detection repeated. Only entries with tracked_time 0 are read here, as
  PHALP's own reader does; PHALP's optional smoothing (results_temporal/) marks the frames it filled in with
  -1, also skipped.
The camera: PHALP pads the frame to a square of its long side S (the odd pixel of padding at the bottom or
right), resizes that to cfg.render.res (256) and turns HMR 2.0's crop camera into a translation for a focal
length of cfg.EXTRA.FOCAL_LENGTH (5000) pixels there, the principal point at the square's centre (HMAR's
`get_3d_parameters` in hmar.py; 4D-Humans' config leaves both as they are). In the frame's pixels that is a
focal length of 5000 / 256 x S and a principal point at the padded square's centre, which is the frame's
centre up to half a pixel where the padding is odd. The camera frame is OpenCV's (x right, y down, z forward):
PHALP projects joints as f X / Z + c; its mesh renderer (py_renderer.py) turns the posed mesh 180 degrees
about x only to hand it to pyrender's OpenGL camera. The tracker reads the video's frames from the first one
(frame files numbered from 000001) and, by its default cfg.video.end_frame, only the first 1300; a run with
cfg.video.start_frame set would shift `time` and cannot be told from the file.

Our clips are cut out of the source and resized (the decode stage's crop_box), so the camera's intrinsics are
carried through that crop; the body itself does not move.

Unpickling runs code from the file: only read tracking output you made or trust. Pickles are only ever read
here, from a user's own files; shards never hold one (BodyFit is stored as an npz without pickle).
"""
from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from humanim.stages.fit import BodyFit

PHALP_FOCAL_LENGTH = 5000.0  # cfg.EXTRA.FOCAL_LENGTH: pixels of the square below
PHALP_SQUARE_SIZE = 256  # cfg.render.res: the side the frame's padded square is resized to
SMPL_BODY_JOINTS = 23
# What every frame of PHALP's output holds (it writes all of them, empty lists in a frame without people).
REQUIRED_KEYS = ("tid", "tracked_time", "smpl", "camera", "bbox")
FRAME_FILE_FIRST_NUMBER = 1  # PHALP's frame extractor names the video's first frame 000001


class TrackingFormatError(ValueError):
    """A file that is not 4D-Humans / PHALP tracking output, with what was expected."""


@dataclass
class PersonTrack:
    """One tracked person's SMPL parameters over the frames where the tracker detected them, in frame order."""

    track_id: int
    frames: np.ndarray  # [N] int: source frame index
    global_orient: np.ndarray  # [N, 3, 3]
    body_pose: np.ndarray  # [N, 23, 3, 3]
    betas: np.ndarray  # [N, B]
    camera: np.ndarray  # [N, 3] metres
    boxes: np.ndarray  # [N, 4] x0, y0, w, h in source pixels, continuous (pixel i spans [i, i + 1))
    frame_sizes: np.ndarray  # [N, 2] height, width of the frame the tracker read; -1 where it was not recorded


def load_tracking_results(path: str | Path) -> dict:
    """The tracker's pickle, through joblib (PHALP writes it with joblib.dump, compressed; joblib reads plain
    pickles too). Only for files you trust: unpickling can run code."""
    import joblib

    path = Path(path)
    try:
        results = joblib.load(path)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError) as error:
        raise TrackingFormatError(f"{path} is not a readable tracking pickle ({error}); expected the "
                                  f"outputs/results/demo_<video>.pkl that 4D-Humans' track.py writes") from error
    except ModuleNotFoundError as error:
        raise TrackingFormatError(f"{path} holds objects of module {error.name!r}, which is not installed here: "
                                  f"install it, or re-save the results as plain arrays and lists") from error
    if not isinstance(results, dict) or not results or not all(isinstance(v, dict) for v in results.values()):
        raise TrackingFormatError(f"{path} holds a {type(results).__name__}, not 4D-Humans tracking output: expected "
                                  f"a dict from frame name to a dict with tid, tracked_time, smpl and camera lists")
    return results


def _frame_index(name, frame: dict) -> int:
    if "time" in frame:
        return int(frame["time"])
    digits = re.findall(r"\d+", Path(str(name)).stem)
    if not digits:
        raise TrackingFormatError(f"frame {name!r} has no 'time' and no number in its name to place it in the video")
    return int(digits[-1]) - FRAME_FILE_FIRST_NUMBER


def _detected_entries(name, frame: dict):
    """(track id, smpl, camera, box, frame size) of the tracks detected in this frame. The per-track lists are
    aligned with `tid`, which also holds tracks missed here (tracked_time > 0, their last detection repeated;
    -1 where PHALP's smoothing filled them in): those are left out, as PHALP's own reader does."""
    missing = [key for key in REQUIRED_KEYS if key not in frame]
    if missing:
        raise TrackingFormatError(f"frame {name!r} has no {', '.join(missing)}: not 4D-Humans / PHALP tracking "
                                  f"output (keys there: {', '.join(map(str, sorted(frame)))})")
    columns = [frame[key] for key in REQUIRED_KEYS]
    sizes = frame.get("size", [(-1, -1)] * len(frame["tid"]))
    if len({len(column) for column in [*columns, sizes]}) != 1:
        raise TrackingFormatError(f"frame {name!r}: {', '.join(REQUIRED_KEYS)} and size differ in length")
    for track_id, frames_since_detected, params, camera, box, size in zip(*columns, sizes):
        if int(frames_since_detected) == 0:
            yield track_id, params, camera, box, size


def person_tracks(results: dict) -> dict[int, PersonTrack]:
    """Every tracked person's parameters, by track id, checking the format as it goes."""
    rows: dict[int, list] = {}
    for name, frame in results.items():
        index = _frame_index(name, frame)
        for track_id, params, camera, box, size in _detected_entries(name, frame):
            try:
                orient = np.asarray(params["global_orient"], np.float64).reshape(3, 3)
                body = np.asarray(params["body_pose"], np.float64).reshape(SMPL_BODY_JOINTS, 3, 3)
                betas = np.asarray(params["betas"], np.float64).reshape(-1)
                camera = np.asarray(camera, np.float64).reshape(3)
                box = np.asarray(box, np.float64).reshape(4)
                size = np.asarray(size, np.int64).reshape(2)
            except (KeyError, TypeError, ValueError, IndexError) as error:
                raise TrackingFormatError(
                    f"frame {name!r}, track {track_id}: smpl must hold global_orient [1, 3, 3], body_pose "
                    f"[23, 3, 3] rotation matrices and betas [10], camera a translation [3], bbox [x0, y0, w, h] "
                    f"and size [height, width] ({error})") from error
            rows.setdefault(int(track_id), []).append((index, orient, body, betas, camera, box, size))
    tracks = {}
    for track_id, entries in rows.items():
        entries.sort(key=lambda entry: entry[0])
        columns = list(zip(*entries))
        tracks[track_id] = PersonTrack(track_id, np.array(columns[0]), *(np.stack(c) for c in columns[1:]))
    return tracks


def tracker_camera(width: int, height: int) -> tuple[float, np.ndarray]:
    """(focal length, principal point [2]) of the camera that the tracker's `camera` translations are for, in
    the pixels of a width x height frame with pixel centres at integers. PHALP pads the frame to a square of its
    long side, the odd pixel of padding at the bottom or right, and resizes it to PHALP_SQUARE_SIZE, where the
    focal length is PHALP_FOCAL_LENGTH and the principal point the centre."""
    side = max(width, height)
    padding_before = np.array([(side - width) // 2, (side - height) // 2])
    focal = PHALP_FOCAL_LENGTH * side / PHALP_SQUARE_SIZE
    # The square's centre, side / 2 in PHALP's continuous coordinates, less half a pixel for ours.
    return focal, side / 2 - padding_before - 0.5


def source_to_clip(crop_box, clip_size: tuple[int, int]):
    """(scale [2], offset [2]) with clip pixel = source pixel * scale + offset, pixel centres at integers on both
    sides; crop_box (x0, y0, x1, y1) in source pixels, clip_size (height, width)."""
    x0, y0, x1, y1 = (float(v) for v in crop_box)
    height, width = clip_size
    scale = np.array([width / (x1 - x0), height / (y1 - y0)])
    return scale, (0.5 - np.array([x0, y0])) * scale - 0.5


def choose_track(tracks: dict[int, PersonTrack], source_frames, crop_box, clip_size,
                 keypoints: np.ndarray | None = None, score_threshold: float = 0.3) -> PersonTrack:
    """The track of the clip's subject: the one whose boxes best cover the subject's confident keypoints over
    the clip's frames (their share inside the box, summed over frames), or, without keypoints, the one present
    in most of the clip's frames with the largest boxes."""
    source_frames = np.asarray(source_frames)
    scale, offset = source_to_clip(crop_box, clip_size)
    best, best_score = None, (-1.0, -1.0)
    for track in tracks.values():
        present = np.isin(source_frames, track.frames)
        if not present.any():
            continue
        covered = 0.0
        area = 0.0
        for t in np.flatnonzero(present):
            box = track.boxes[np.searchsorted(track.frames, source_frames[t])]
            # The box's edges are continuous coordinates; half a pixel less puts them in ours.
            low = (box[:2] - 0.5) * scale + offset
            high = (box[:2] + box[2:] - 0.5) * scale + offset
            area += float(np.prod(np.clip(high - low, 0, None)))
            if keypoints is not None:
                points = keypoints[t][keypoints[t, :, 2] >= score_threshold, :2]
                if len(points):
                    covered += float(np.mean(np.all((points >= low) & (points <= high), axis=1)))
        score = (covered, area) if keypoints is not None else (float(present.sum()), area)
        if score > best_score:
            best, best_score = track, score
    if best is None:
        covered = np.concatenate([track.frames for track in tracks.values()]) if tracks else np.zeros(0, int)
        extent = f"frames {covered.min()} to {covered.max()}" if len(covered) else "no frame"
        raise TrackingFormatError(f"no tracked person appears in this clip's frames (the tracking has people in "
                                  f"{extent}; PHALP stops at cfg.video.end_frame, 1300 frames by default)")
    return best


def _check_frame_size(track: PersonTrack, source_width: int, source_height: int) -> None:
    """The tracker's boxes and camera are in the pixels of the frames it read: those must be the source's."""
    recorded = track.frame_sizes[(track.frame_sizes > 0).all(1)]
    if len(recorded) and not (recorded == (source_height, source_width)).all():
        height, width = recorded[np.flatnonzero((recorded != (source_height, source_width)).any(1))[0]]
        raise TrackingFormatError(f"track {track.track_id}: the tracker read frames of {width} x {height} pixels, "
                                  f"the source is {source_width} x {source_height}: run it on the source video "
                                  f"itself, turned upright if it is rotated")


def track_to_fit(track: PersonTrack, source_frames, source_size: tuple[int, int], crop_box,
                 clip_size: tuple[int, int]) -> BodyFit:
    """A BodyFit (model "smpl") of the clip frames `source_frames` from one track. source_size is the source
    video's (width, height), upright; clip_size the clip's (height, width). Clip frames the track misses hold
    the nearest frame it has, and their error stays NaN until measured (fit.reprojection_error)."""
    from scipy.spatial.transform import Rotation

    source_frames = np.asarray(source_frames)
    if not np.isin(source_frames, track.frames).any():
        raise TrackingFormatError(f"track {track.track_id} has none of this clip's frames")
    nearest = np.abs(track.frames[None, :] - source_frames[:, None]).argmin(1)
    source_width, source_height = source_size
    _check_frame_size(track, source_width, source_height)
    focal, centre = tracker_camera(source_width, source_height)
    scale, offset = source_to_clip(crop_box, clip_size)
    orient = Rotation.from_matrix(track.global_orient[nearest]).as_rotvec()
    pose = Rotation.from_matrix(track.body_pose[nearest].reshape(-1, 3, 3)).as_rotvec().reshape(len(nearest), -1, 3)
    error = np.where(np.isin(source_frames, track.frames), 0.0, np.nan)
    return BodyFit(
        model="smpl", shape=track.betas[np.unique(nearest)].mean(0).astype(np.float32),
        pose=pose.astype(np.float32), global_orient=orient.astype(np.float32),
        transl=track.camera[nearest].astype(np.float32),
        camera=np.array([focal * scale[0], focal * scale[1], *(centre * scale + offset)], dtype=np.float32),
        focal_source="given", error_px=error.astype(np.float32), iterations=0)


def tracking_file(import_dir: str | Path, source: str) -> Path:
    """The tracker's output for a source video: <stem>.pkl or demo_<stem>.pkl in import_dir."""
    stem = Path(source).stem
    for name in (f"{stem}.pkl", f"demo_{stem}.pkl"):
        if (Path(import_dir) / name).is_file():
            return Path(import_dir) / name
    raise FileNotFoundError(f"no tracking output for {source} in {import_dir}: looked for {stem}.pkl and "
                            f"demo_{stem}.pkl (4D-Humans' track.py writes outputs/results/demo_<video>.pkl)")
