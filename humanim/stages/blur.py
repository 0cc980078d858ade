"""HIA's motion-blur condition: how sharp each hand is and how fast it moves, per frame.

Sharpness is the variance of the Laplacian of the grey hand crop. The crop is a square around the hand's
confident keypoints, rescaled so that its side is always `crop_size` pixels before the Laplacian: the
Laplacian is a second derivative, so the same hand filmed at twice the size spreads its edges over twice
the pixels and its raw variance falls by up to 16 times (11 times measured on a real hand, 1.2 times after
the rescale). Without it the figure would rank hands by size, not by blur. The variance is a mean over
pixels, so the crop's pixel count itself does not matter. Enlarging cannot restore detail, so a hand
smaller than crop_size scores as blurrier than the same hand filmed larger, as it is at that scale; the
default of 32 px shrinks most hands in 512 px full-body clips rather than enlarging them.

Motion is the mean displacement of the hand's keypoints confident in both frames, in pixels per frame at
the clip fps: from the previous frame, or, at the first frame of a hand track (frame 0, or the hand absent
just before), to the next frame. Where a hand is not seen, sharpness and motion are NaN and hand_valid is
False; a NaN motion with a valid hand means the hand was seen in that frame only. Index 0 is the person's
left hand, 1 the right.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from humanim.schemas.keypoints import LEFT_HAND, RIGHT_HAND
from humanim.stages.base import Annotations, Clip, Resources, Stage

MIN_POINTS = 3  # fewer confident points give no extent to crop by: the hand counts as not seen


def hand_crop_box(hand: np.ndarray, threshold: float, margin: float, height: int, width: int
                  ) -> tuple[int, int, int, int, float] | None:
    """Square (x0, y0, x1, y1) around the confident points of hand [21, 3], clipped to the image, and its
    unclipped side in pixels; None when fewer than MIN_POINTS points are confident."""
    confident = hand[hand[:, 2] > threshold, :2]
    if len(confident) < MIN_POINTS:
        return None
    low, high = confident.min(axis=0), confident.max(axis=0)
    side = max(float(np.max(high - low)) * (1 + 2 * margin), 1.0)
    centre = (low + high) / 2
    x0, y0 = np.floor(centre - side / 2).astype(int)
    x1, y1 = np.ceil(centre + side / 2).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None  # the hand lies outside the image
    return x0, y0, x1, y1, side


def laplacian_sharpness(gray_crop: np.ndarray, side: float, crop_size: int) -> float:
    """Variance of the 3x3 Laplacian of a grey crop rescaled so that `side` source pixels become crop_size."""
    scale = crop_size / side
    # Area averaging when shrinking (no aliasing, which would add false detail); cubic when enlarging, since
    # bilinear interpolation is piecewise flat and would put all its Laplacian on the grid lines.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(gray_crop.astype(np.float32), None, fx=scale, fy=scale, interpolation=interpolation)
    return float(cv2.Laplacian(resized, cv2.CV_32F, ksize=1).var())


def hand_sharpness(frame: np.ndarray, hand: np.ndarray, threshold: float = 0.3, margin: float = 0.2,
                   crop_size: int = 32) -> float:
    """Sharpness of one hand [21, 3] in one RGB frame [H, W, 3]; NaN when the hand is not seen."""
    box = hand_crop_box(hand, threshold, margin, *frame.shape[:2])
    if box is None:
        return float("nan")
    x0, y0, x1, y1, side = box
    gray = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    return laplacian_sharpness(gray, side, crop_size)


def hand_motion(hand_track: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """float64 [T, 2] mean keypoint displacement of one hand track [T, 21, 3], in pixels per frame; NaN where
    undefined (see the module docstring for the rule)."""
    confident = hand_track[:, :, 2] > threshold
    seen = confident.sum(axis=1) >= MIN_POINTS
    xy = hand_track[:, :, :2].astype(np.float64)
    num_frames = len(hand_track)

    def displacement(a: int, b: int) -> np.ndarray | None:
        shared = confident[a] & confident[b]
        if not (seen[a] and seen[b] and shared.any()):
            return None
        return (xy[b, shared] - xy[a, shared]).mean(axis=0)

    motion = np.full((num_frames, 2), np.nan)
    for t in range(num_frames):
        if not seen[t]:
            continue
        step = displacement(t - 1, t) if t > 0 else None
        if step is None and t + 1 < num_frames:
            step = displacement(t, t + 1)
        if step is not None:
            motion[t] = step
    return motion


class HandBlur(Stage):
    """Per-frame hand sharpness, hand motion and hand validity from the frames and the "kpts" field.

    Config keys: threshold (keypoint score, default 0.3), margin (crop border as a fraction of the hand's
    size, 0.2), crop_size (side in pixels every crop is rescaled to, 32).
    """

    name = "blur"
    version = "1"
    resources = Resources(cpus=0.5)

    def __init__(self, config: dict[str, Any], build_seed: int = 0):
        super().__init__(config, build_seed)
        self.threshold = float(config["threshold"])
        self.margin = float(config["margin"])
        self.crop_size = int(config["crop_size"])

    def __call__(self, clip: Clip) -> Annotations:
        frames, kpts = clip.frames, clip.fields["kpts"]
        num_frames = len(frames)
        sharpness = np.full((num_frames, 2), np.nan, dtype=np.float32)
        motion = np.full((num_frames, 2, 2), np.nan, dtype=np.float32)
        for h, part in enumerate((LEFT_HAND, RIGHT_HAND)):
            for t in range(num_frames):
                sharpness[t, h] = hand_sharpness(frames[t], kpts[t, part], self.threshold, self.margin,
                                                 self.crop_size)
            motion[:, h] = hand_motion(kpts[:, part], self.threshold)
        valid = np.isfinite(sharpness)
        motion[~valid] = np.nan  # confident points outside the image: no crop, so no hand for either figure
        rates = valid.mean(axis=0) if num_frames else np.zeros(2)
        return Annotations(
            fields={"hand_sharpness": sharpness, "hand_motion": motion, "hand_valid": valid},
            meta={"threshold": self.threshold, "margin": self.margin, "crop_size": self.crop_size,
                  "motion_units": "pixels per frame", "fps": clip.spec.fps},
            qa={"blur_lhand_rate": float(rates[0]), "blur_rhand_rate": float(rates[1])},
        )
