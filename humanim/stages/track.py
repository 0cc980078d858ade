"""The clip's main subject: which detected person it is, where it is in every frame, and one crop box around it.

Everyone detected is tracked, not only the subject, so that when people cross or overlap, detections are
shared out among all tracks at once (one assignment per frame) instead of the subject grabbing whichever box
is nearest. A track predicts its next box with a constant velocity, so two people walking past each other
keep their identities, and a person hidden for a few frames is found again where the motion says it will be.
The subject is chosen after tracking, from whole tracks: a person visible, large, confident and central over
the whole clip beats one who is prominent in a few frames.

Boxes are float32 (x0, y0, x1, y1, score) in the pixels of the frames they were detected on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from humanim.schemas.keypoints import BODY, NUM_KEYPOINTS
from humanim.stages.base import ClipRejected

# Centre distances are measured in units of the box's geometric-mean side; a detection CENTRE_SIGMA units
# from the prediction has centre closeness exp(-0.5) = 0.61.
CENTRE_SIGMA = 0.5
# A track carried by prediction is less certain of where it is: its tolerances widen by this per lost frame.
SIGMA_GROWTH_PER_LOST_FRAME = 0.25
# Share of a new velocity measurement taken into the running velocity; the rest damps detector jitter.
VELOCITY_SMOOTHING = 0.5
# OKS-like keypoint similarity over body points seen (score >= KEYPOINT_MIN_SCORE) in both poses, with one
# falloff constant for all of them. Face and hand points are left out: they are small and noisy, and would
# outnumber the 17 body points four to one.
KEYPOINT_MIN_SCORE = 0.3
OKS_KAPPA = 0.1


@dataclass
class SubjectTrack:
    """The chosen person in every frame of a clip."""

    boxes: np.ndarray  # float32 [T, 5] (x0, y0, x1, y1, score); NaN in frames where the subject was not found
    lost: np.ndarray  # bool [T]
    people_seen: int  # most people detected in one frame
    people_seen_median: float  # median number of people per frame
    chosen_reason: str
    prominence: float  # the subject's score (see `_prominence`), mean over the clip's frames
    runner_up_prominence: float  # the next person's score; 0 when nobody else was tracked

    def to_meta(self) -> dict[str, Any]:
        """JSON-able summary for the clip's metadata (the boxes travel as an array field)."""
        return {"people_seen": self.people_seen, "people_seen_median": self.people_seen_median,
                "chosen_reason": self.chosen_reason, "lost_frames": int(self.lost.sum()),
                "prominence": round(self.prominence, 4), "runner_up_prominence": round(self.runner_up_prominence, 4)}


@dataclass
class _Track:
    """One person followed through the clip: its detections by frame and its motion state."""

    centre: np.ndarray  # last observed box centre (x, y)
    size: np.ndarray  # last observed box (width, height)
    body: np.ndarray | None  # last observed body keypoints [17, 3], when keypoints are given
    detections: dict[int, int]  # frame -> index of its detection in that frame
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # centre pixels per frame

    @property
    def last_frame(self) -> int:
        return max(self.detections)

    def observe(self, frame: int, box: np.ndarray, body: np.ndarray | None, index: int) -> None:
        centre = (box[:2] + box[2:4]) / 2
        measured = (centre - self.centre) / (frame - self.last_frame)
        # A track's second sighting is its first velocity measurement: nothing to average it with.
        smoothing = VELOCITY_SMOOTHING if len(self.detections) > 1 else 1.0
        self.velocity = smoothing * measured + (1 - smoothing) * self.velocity
        self.centre, self.size, self.body = centre, box[2:4] - box[:2], body
        self.detections[frame] = index


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (x0, y0, x1, y1) box with each row of boxes [N, >=4]."""
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return inter / np.maximum(union, 1e-9)


def _similarity(track: _Track, frame: int, boxes: np.ndarray, bodies: np.ndarray | None) -> np.ndarray:
    """How well each detection continues the track, in [0, 1]: the mean of box overlap with the predicted
    box, closeness of centres, and (when keypoints are given) keypoint similarity with the shifted last pose."""
    lost_for = frame - track.last_frame
    shift = track.velocity * lost_for
    centre = track.centre + shift
    predicted = np.concatenate([centre - track.size / 2, centre + track.size / 2])
    scale = float(np.sqrt(max(track.size[0] * track.size[1], 1.0)))
    widening = 1 + SIGMA_GROWTH_PER_LOST_FRAME * (lost_for - 1)
    centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
    distance = np.linalg.norm(centres - centre, axis=1) / scale
    terms = [_iou(predicted, boxes), np.exp(-0.5 * (distance / (CENTRE_SIGMA * widening)) ** 2)]
    if bodies is not None and track.body is not None:
        terms.append(np.array([_keypoint_similarity(track.body, shift, body, scale * widening) for body in bodies]))
    # A pose with no body point seen in both frames says nothing either way: its term is left out, not zero.
    return np.nanmean(terms, axis=0)


def _keypoint_similarity(last: np.ndarray, shift: np.ndarray, body: np.ndarray, scale: float) -> float:
    seen = (last[:, 2] >= KEYPOINT_MIN_SCORE) & (body[:, 2] >= KEYPOINT_MIN_SCORE)
    if not seen.any():
        return float("nan")
    squared = np.sum((body[seen, :2] - last[seen, :2] - shift) ** 2, axis=1)
    return float(np.mean(np.exp(-squared / (2 * (OKS_KAPPA * scale) ** 2))))


def _track_everyone(boxes_per_frame: list[np.ndarray], bodies_per_frame: list[np.ndarray | None],
                    min_similarity: float, max_gap: int) -> list[_Track]:
    tracks: list[_Track] = []
    for frame, (boxes, bodies) in enumerate(zip(boxes_per_frame, bodies_per_frame)):
        # A track lost for more than max_gap frames is closed: prediction that far ahead is guesswork.
        live = [track for track in tracks if frame - track.last_frame <= max_gap]
        matched: set[int] = set()
        if live and len(boxes):
            similarity = np.stack([_similarity(track, frame, boxes, bodies) for track in live])
            rows, cols = linear_sum_assignment(np.where(similarity >= min_similarity, similarity, 0.0), maximize=True)
            for row, col in zip(rows, cols):
                if similarity[row, col] >= min_similarity:
                    live[row].observe(frame, boxes[col], None if bodies is None else bodies[col], int(col))
                    matched.add(int(col))
        for index in range(len(boxes)):
            if index not in matched:
                box = boxes[index]
                tracks.append(_Track(centre=(box[:2] + box[2:4]) / 2, size=box[2:4] - box[:2],
                                     body=None if bodies is None else bodies[index], detections={frame: index}))
    return tracks


def _prominence(boxes: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """How much each detection looks like the clip's subject: confidence x size x centrality.

    size is sqrt(box area / frame area), i.e. proportional to the person's height on screen. centrality
    falls linearly from 1 at the frame centre to 0.5 at a corner, so an off-centre person is penalised
    but a much larger one still wins.
    """
    width, height = frame_size
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    size = np.sqrt(area / (width * height))
    offset_x = ((boxes[:, 0] + boxes[:, 2]) / 2 - width / 2) / (width / 2)
    offset_y = ((boxes[:, 1] + boxes[:, 3]) / 2 - height / 2) / (height / 2)
    centrality = 1 - 0.5 * np.clip(np.hypot(offset_x, offset_y) / np.sqrt(2), 0, 1)
    return boxes[:, 4] * size * centrality


def _choose_subject(tracks: list[_Track], boxes_per_frame: list[np.ndarray], frame_size: tuple[int, int],
                    tie_tolerance: float) -> tuple[_Track, str, float, float]:
    num_frames = len(boxes_per_frame)
    scores, mean_x = [], []
    for track in tracks:
        rows = np.stack([boxes_per_frame[f][i] for f, i in sorted(track.detections.items())])
        # Summed over the track's frames and divided by all frames: a person seen for half the clip counts half.
        scores.append(float(_prominence(rows, frame_size).sum()) / num_frames)
        mean_x.append(float(np.mean((rows[:, 0] + rows[:, 2]) / 2)))
    order = sorted(range(len(tracks)), key=lambda k: -scores[k])
    best = scores[order[0]]
    runner_up = scores[order[1]] if len(order) > 1 else 0.0
    tied = [k for k in order if scores[k] >= best * (1 - tie_tolerance)]
    if len(tied) > 1:
        # Equal people: the choice must not depend on detector output order, so it is made on geometry.
        chosen = min(tied, key=lambda k: (mean_x[k], min(tracks[k].detections)))
        reason = (f"tie within {tie_tolerance:.0%} between {len(tied)} people (prominence "
                  f"{', '.join(f'{scores[k]:.3f}' for k in tied)}): took the leftmost")
        return tracks[chosen], reason, scores[chosen], max(scores[k] for k in order if k != chosen)
    if len(order) == 1:
        return tracks[order[0]], f"the only person tracked (prominence {best:.3f})", best, 0.0
    reason = (f"highest prominence (confidence x size x centrality, mean over {num_frames} frames): "
              f"{best:.3f}, runner-up {runner_up:.3f}")
    return tracks[order[0]], reason, best, runner_up


def track_subject(boxes_per_frame: list[np.ndarray], frame_size: tuple[int, int],
                  kpts_per_frame: list[np.ndarray] | None = None, max_lost_share: float = 0.25,
                  max_gap: int = 10, min_similarity: float = 0.3, tie_tolerance: float = 0.02) -> SubjectTrack:
    """Choose the clip's main subject and follow it through the frames.

    boxes_per_frame: one float [N, 5] array per frame (N may be 0). frame_size: (width, height) of the frames
    the boxes are in. kpts_per_frame: optional [N, 133, 3] per frame, row for row with the boxes; their body
    points then help tell people apart. max_lost_share: the most frames (as a share) the subject may be
    missing before the clip is rejected. max_gap: frames a track is carried by prediction before it closes.
    min_similarity: below this a detection does not continue a track. tie_tolerance: relative prominence
    difference under which two people count as equal (the leftmost is taken, and the tie is recorded).
    Raises ClipRejected when nobody is detected, or the subject is lost in too many frames.
    """
    boxes_per_frame = [np.asarray(b, dtype=np.float64).reshape(-1, 5) for b in boxes_per_frame]
    num_frames = len(boxes_per_frame)
    if kpts_per_frame is None:
        bodies_per_frame: list[np.ndarray | None] = [None] * num_frames
    else:
        if len(kpts_per_frame) != num_frames:
            raise ValueError(f"{len(kpts_per_frame)} keypoint frames for {num_frames} box frames")
        bodies_per_frame = [np.asarray(k, dtype=np.float64).reshape(-1, NUM_KEYPOINTS, 3)[:, BODY]
                            for k in kpts_per_frame]
        for frame, (boxes, bodies) in enumerate(zip(boxes_per_frame, bodies_per_frame)):
            if len(bodies) != len(boxes):
                raise ValueError(f"frame {frame}: {len(bodies)} poses for {len(boxes)} boxes")
    counts = np.array([len(b) for b in boxes_per_frame])
    if num_frames == 0 or counts.max() == 0:
        raise ClipRejected("no person detected in any frame")

    tracks = _track_everyone(boxes_per_frame, bodies_per_frame, min_similarity, max_gap)
    subject, reason, prominence, runner_up = _choose_subject(tracks, boxes_per_frame, frame_size, tie_tolerance)
    boxes = np.full((num_frames, 5), np.nan, dtype=np.float32)
    for frame, index in subject.detections.items():
        boxes[frame] = boxes_per_frame[frame][index]
    lost = np.isnan(boxes[:, 0])
    if lost.mean() > max_lost_share:
        raise ClipRejected(f"main subject lost in {int(lost.sum())} of {num_frames} frames "
                           f"({lost.mean():.0%}, more than the {max_lost_share:.0%} allowed)")
    return SubjectTrack(boxes=boxes, lost=lost, people_seen=int(counts.max()),
                        people_seen_median=float(np.median(counts)), chosen_reason=reason,
                        prominence=prominence, runner_up_prominence=runner_up)


def reference_subject(boxes: np.ndarray, subject_box: np.ndarray, people_seen: int,
                      min_iou: float = 0.3) -> int | None:
    """Which person box [N, 5] of a reference frame is the clip's subject, given the subject's box [>= 4] in the
    clip frame nearest in time; None when none can be told to be. With one person in the clip and one in the
    reference, it is that one; otherwise the box overlapping the subject's most, by at least `min_iou` (the
    reference may lie seconds away, so overlap is required rather than trusted from a nearest box)."""
    if len(boxes) == 0:
        return None
    if people_seen <= 1 and len(boxes) == 1:
        return 0
    if np.isnan(subject_box[0]):
        return None
    overlaps = _iou(np.asarray(subject_box[:4], np.float64), np.asarray(boxes[:, :4], np.float64))
    best = int(np.argmax(overlaps))
    return best if overlaps[best] >= min_iou else None


def subject_crop_box(boxes: np.ndarray, source_size: tuple[int, int], target_size: tuple[int, int],
                     margin: float = 0.1) -> tuple[float, float, float, float]:
    """One crop box (x0, y0, x1, y1) for the whole clip, with the target's aspect ratio, in source pixels.

    It holds the union of the subject's boxes over the clip plus `margin` times the union's longer side on
    every side, centred on the union and shifted (never shrunk) to stay inside the frame. Where that does not
    fit the frame at the target aspect, it is the largest box of that aspect the frame holds, centred on the
    subject as far as the frame allows. One box for the clip means no crop jitter from frame to frame.
    """
    found = boxes[~np.isnan(boxes[:, 0]), :4]
    if not len(found):
        raise ValueError("the subject has no box in any frame: nothing to crop around")
    width, height = source_size
    aspect = target_size[0] / target_size[1]
    union_x0, union_y0 = found[:, 0].min(), found[:, 1].min()
    union_x1, union_y1 = found[:, 2].max(), found[:, 3].max()
    pad = margin * max(union_x1 - union_x0, union_y1 - union_y0)
    crop_w = max(union_x1 - union_x0 + 2 * pad, (union_y1 - union_y0 + 2 * pad) * aspect)
    crop_w = min(crop_w, width, height * aspect)
    crop_h = crop_w / aspect
    x0 = float(np.clip((union_x0 + union_x1) / 2 - crop_w / 2, 0, width - crop_w))
    y0 = float(np.clip((union_y0 + union_y1) / 2 - crop_h / 2, 0, height - crop_h))
    return x0, y0, x0 + float(crop_w), y0 + float(crop_h)


def scaled_crop(crop_box: tuple[float, float, float, float], source_size: tuple[int, int],
                target_size: tuple[int, int]) -> tuple[int, int, tuple[int, int]]:
    """How decode cuts crop_box out at the target size: scale the whole frame to (scaled_w, scaled_h), then
    take target_size pixels from (left, top). For the centred box of `decode.cover_crop` this gives exactly
    its scaled size and offsets, so both crop modes share one cutting path."""
    target_w, target_h = target_size
    x0, y0, x1, y1 = crop_box
    scale = max(target_w / (x1 - x0), target_h / (y1 - y0))
    scaled_w = max(target_w, round(source_size[0] * scale))
    scaled_h = max(target_h, round(source_size[1] * scale))
    # Even offsets, as decode cuts 4:2:0 frames.
    left = int(np.clip(round(x0 * scale), 0, scaled_w - target_w)) & ~1
    top = int(np.clip(round(y0 * scale), 0, scaled_h - target_h)) & ~1
    return scaled_w, scaled_h, (left, top)
