"""SMPL parameters from 4D-Humans (HMR 2.0 tracked by PHALP, its `track.py`) instead of fitting.

The tracker writes one pickle per video with joblib.dump, compressed (`outputs/results/demo_<video>.pkl`): a
dict from frame name to that frame's results, each a dict of lists with one entry per tracked person, aligned
with its `tracked_ids` (the layout that PHALP's users document, `tid`, `bbox`, `size` and features beside):
- `smpl`: {"global_orient": [1, 3, 3], "body_pose": [23, 3, 3] rotation matrices, "betas": [10]};
- `camera`: [3] the translation that puts the posed SMPL body (transl 0) into the camera frame;
- `tracked_bbox` (else `bbox`): [x0, y0, w, h] in source pixels;
- `time`: the frame's index in the video (else the number in the frame's file name).
The camera frame is OpenCV's (x right, y down, z forward): HMR 2.0 renders with a focal length of 5000 px for
a 256 px crop, which on the full frame is 5000 / 256 x max(width, height), with the principal point at the
frame's centre. Our clips are cut out of the source and resized (the decode stage's crop_box), so the camera's
intrinsics are carried through that crop; the body itself does not move.

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

HMR2_FOCAL_PER_PIXEL = 5000.0 / 256.0  # HMR 2.0's focal length over its crop size: times the frame's long side
SMPL_BODY_JOINTS = 23


class TrackingFormatError(ValueError):
    """A file that is not 4D-Humans / PHALP tracking output, with what was expected."""


@dataclass
class PersonTrack:
    """One tracked person's SMPL parameters over the frames where the tracker saw them, in frame order."""

    track_id: int
    frames: np.ndarray  # [N] int: source frame index
    global_orient: np.ndarray  # [N, 3, 3]
    body_pose: np.ndarray  # [N, 23, 3, 3]
    betas: np.ndarray  # [N, B]
    camera: np.ndarray  # [N, 3] metres
    boxes: np.ndarray  # [N, 4] x0, y0, w, h in source pixels


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
                                  f"a dict from frame name to a dict with tracked_ids, smpl and camera lists")
    return results


def _frame_index(name, frame: dict) -> int:
    if "time" in frame:
        return int(frame["time"])
    digits = re.findall(r"\d+", Path(str(name)).stem)
    if not digits:
        raise TrackingFormatError(f"frame {name!r} has no 'time' and no number in its name to place it in the video")
    return int(digits[-1])


def person_tracks(results: dict) -> dict[int, PersonTrack]:
    """Every tracked person's parameters, by track id, checking the format as it goes."""
    rows: dict[int, list] = {}
    for name, frame in results.items():
        missing = [key for key in ("tracked_ids", "smpl", "camera") if key not in frame]
        if missing:
            raise TrackingFormatError(f"frame {name!r} has no {', '.join(missing)}: not 4D-Humans tracking output "
                                      f"(keys there: {', '.join(map(str, sorted(frame)))})")
        ids, smpl, cameras = frame["tracked_ids"], frame["smpl"], frame["camera"]
        boxes = frame.get("tracked_bbox", frame.get("bbox", [[np.nan] * 4] * len(ids)))
        if not len(ids) == len(smpl) == len(cameras) == len(boxes):
            raise TrackingFormatError(f"frame {name!r}: tracked_ids, smpl, camera and tracked_bbox differ in length")
        index = _frame_index(name, frame)
        for track_id, params, camera, box in zip(ids, smpl, cameras, boxes):
            try:
                orient = np.asarray(params["global_orient"], np.float64).reshape(3, 3)
                body = np.asarray(params["body_pose"], np.float64).reshape(SMPL_BODY_JOINTS, 3, 3)
                betas = np.asarray(params["betas"], np.float64).reshape(-1)
                camera = np.asarray(camera, np.float64).reshape(3)
            except (KeyError, TypeError, ValueError) as error:
                raise TrackingFormatError(
                    f"frame {name!r}, track {track_id}: smpl must hold global_orient [1, 3, 3], body_pose "
                    f"[23, 3, 3] rotation matrices and betas [10], and camera a translation [3] ({error})") from error
            rows.setdefault(int(track_id), []).append(
                (index, orient, body, betas, camera, np.asarray(box, np.float64).reshape(4)))
    tracks = {}
    for track_id, entries in rows.items():
        entries.sort(key=lambda entry: entry[0])
        columns = list(zip(*entries))
        tracks[track_id] = PersonTrack(track_id, np.array(columns[0]), *(np.stack(c) for c in columns[1:]))
    return tracks


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
            low = box[:2] * scale + offset
            high = (box[:2] + box[2:]) * scale + offset
            area += float(np.prod(np.clip(high - low, 0, None)))
            if keypoints is not None:
                points = keypoints[t][keypoints[t, :, 2] >= score_threshold, :2]
                if len(points):
                    covered += float(np.mean(np.all((points >= low) & (points <= high), axis=1)))
        score = (covered, area) if keypoints is not None else (float(present.sum()), area)
        if score > best_score:
            best, best_score = track, score
    if best is None:
        raise TrackingFormatError("no tracked person appears in this clip's frames")
    return best


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
    focal = HMR2_FOCAL_PER_PIXEL * max(source_width, source_height)
    centre = np.array([(source_width - 1) / 2, (source_height - 1) / 2])
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
