"""Face, left-hand and right-hand masks per frame, drawn from the whole-body keypoints (HIA's regional losses).

A part's region is the convex hull of its confident keypoints grown by a margin proportional to the part's
size (the larger side of the points' bounding box): keypoints sit on joints and landmarks, inside the
outline of skin they belong to, so the hull alone would cut off finger tips, palm edges, cheeks and
forehead. Growing by a fraction of the part's own size keeps the margin right for a hand 20 px or 200 px
across, which a fixed box cannot.

Masks are stored bit-packed along the width (np.packbits, big-endian bit order): [T, 3, H, ceil(W / 8)]
uint8, an eighth of the bytes of one byte per pixel. `unpack_masks` gives back [T, 3, H, W] 0/1.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from humanim.schemas.keypoints import FACE, LEFT_HAND, MASK_CHANNELS, RIGHT_HAND
from humanim.stages.base import Annotations, Clip, Resources, Stage

MIN_POINTS = 3  # fewer confident points span no area: the part counts as not seen in that frame


def part_mask(points: np.ndarray, height: int, width: int, threshold: float, margin: float) -> np.ndarray:
    """uint8 [H, W] 0/1: hull of the points [N, 3] scoring above threshold, grown by margin x the part's size."""
    mask = np.zeros((height, width), dtype=np.uint8)
    confident = points[points[:, 2] > threshold, :2]
    if len(confident) < MIN_POINTS:
        return mask
    size = float(np.max(np.ptp(confident, axis=0)))
    hull = cv2.convexHull(np.round(confident).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1)
    grow = int(round(margin * size))
    if grow > 0:
        # A closed outline drawn 2*grow+1 wide has round joins, so hull plus outline is the hull grown by a
        # disc of radius `grow` (a Minkowski sum) at the cost of drawing one polygon.
        cv2.polylines(mask, [hull], isClosed=True, color=1, thickness=2 * grow + 1)
    return mask


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """[..., H, W] 0/1 -> [..., H, ceil(W / 8)] uint8, eight pixels of a row per byte."""
    return np.packbits(np.asarray(masks, dtype=bool), axis=-1)


def unpack_masks(packed: np.ndarray, width: int) -> np.ndarray:
    """Inverse of pack_masks: [..., H, ceil(W / 8)] uint8 -> [..., H, W] uint8 0/1."""
    return np.unpackbits(packed, axis=-1, count=width)


class Masks(Stage):
    """Per-frame masks of the face and both hands from the "kpts" field.

    Config keys (section `masks`): threshold (keypoint score), face_margin, hand_margin.
    """

    name = "masks"
    version = "1"
    resources = Resources(cpus=0.5)

    def __init__(self, config: dict[str, Any], build_seed: int = 0):
        super().__init__(config, build_seed)
        self.threshold = float(config["threshold"])
        self.margins = (float(config["face_margin"]), float(config["hand_margin"]),
                        float(config["hand_margin"]))

    def __call__(self, clip: Clip) -> Annotations:
        kpts = clip.fields["kpts"]
        num_frames, height, width = clip.frames.shape[:3]
        masks = np.zeros((num_frames, len(MASK_CHANNELS), height, width), dtype=np.uint8)
        for t in range(num_frames):
            for channel, (part, margin) in enumerate(zip((FACE, LEFT_HAND, RIGHT_HAND), self.margins)):
                masks[t, channel] = part_mask(kpts[t, part], height, width, self.threshold, margin)
        seen = masks.any(axis=(2, 3)).mean(axis=0) if num_frames else np.zeros(len(MASK_CHANNELS))
        return Annotations(
            fields={"masks": pack_masks(masks)},
            meta={"channels": list(MASK_CHANNELS), "packing": "np.packbits(axis=-1, bitorder='big')",
                  "threshold": self.threshold, "margins": list(self.margins)},
            qa={"mask_face_rate": float(seen[0]), "mask_lhand_rate": float(seen[1]),
                "mask_rhand_rate": float(seen[2])},
        )
