"""Augmentations of decoded samples that keep every annotation on the pixels it describes.

A sample here is the loader's decoded dict of numpy arrays (masks already unpacked to [T, 3, H, W]). Three
operations, each returning a new dict:
- `flip`: mirror left to right; sides swap in keypoints, masks, hand scores, body parts (schemas.keypoints'
  `flip_sample` for the fields it knows, the training-only fields here).
- `crop_resize`: cut a box out of every frame and resize it to the training resolution; points, boxes and
  hand movement vectors move and scale with the pixels. The reference frame (from elsewhere in the video) is
  resized whole, never cut with the clip's box.
- `take_frames`: a window of consecutive frames.
Articulated noise and its correspondences live on the target VAE's latent grid: a resize or a temporal window
would break their statistics and their frame pairing, so both refuse a sample that holds them (a flip is
exact on the grid and is allowed).

Pixel convention (schemas.keypoints): pixel centres at integers, so a crop starting at column c moves x to
x - c, and a resize by s maps x to (x + 0.5) s - 0.5.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from humanim.schemas.keypoints import flip_keypoints, flip_sample
from humanim.stages.body_models import SMPL_PARTS

# Fields with a leading frame axis that a temporal window cuts.
PER_FRAME = ("frames", "masks", "kpts", "subject_box", "face_box", "face_landmarks", "hand_sharpness",
             "hand_motion", "hand_valid", "depth", "normal", "part", "face_id", "body_mask")
LATENT_GRID = ("noise", "noise_flow", "noise_visible")
# Per-pixel maps [T, H, W] or [T, H, W, C] resized with nearest neighbour: labels and ids must not blend,
# normals keep unit length, depth keeps no halo between body and background.
NEAREST_MAPS = ("depth", "normal", "part", "face_id", "body_mask")


def _part_flip_table() -> np.ndarray:
    """Lookup from part label (0 = background, 1 + SMPL_PARTS index) to the label of the mirrored side."""
    table = np.arange(len(SMPL_PARTS) + 1, dtype=np.uint8)
    for i, name in enumerate(SMPL_PARTS):
        for a, b in (("left", "right"), ("right", "left")):
            if name.startswith(a):
                table[1 + i] = 1 + SMPL_PARTS.index(name.replace(a, b, 1))
    return table


PART_FLIP = _part_flip_table()


def _mirror(array: np.ndarray, axis: int) -> np.ndarray:
    return np.ascontiguousarray(np.flip(array, axis=axis))


def flip(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample mirrored left to right; flipping twice gives the sample back."""
    out = flip_sample(sample)
    if "ref_frame" in sample:
        out["ref_frame"] = _mirror(sample["ref_frame"], axis=1)
    if "ref_kpts" in sample:
        ref_width = sample["ref_frame"].shape[1] if "ref_frame" in sample else sample["meta"]["width"]
        out["ref_kpts"] = flip_keypoints(sample["ref_kpts"], ref_width)
    for name in ("depth", "face_id", "body_mask"):
        if name in sample:
            out[name] = _mirror(sample[name], axis=2)
    if "part" in sample:
        out["part"] = PART_FLIP[_mirror(sample["part"], axis=2)]
    if "normal" in sample:
        # Camera frame x points right: the mirror image of a surface has its normal's x negated.
        normal = _mirror(sample["normal"], axis=2)
        out["normal"] = _negate_x(normal)
    if "noise" in sample:
        out["noise"] = _mirror(sample["noise"], axis=-1)
    if "noise_visible" in sample:
        out["noise_visible"] = _mirror(sample["noise_visible"], axis=-1)
    if "noise_flow" in sample:
        flow = _mirror(sample["noise_flow"], axis=-1)
        flow[:, 0] = -flow[:, 0]  # a displacement to the right becomes one to the left
        out["noise_flow"] = flow
    return out


def _negate_x(normal: np.ndarray) -> np.ndarray:
    normal = normal.copy()
    if normal.dtype == np.uint8:  # stored as (n + 1) * 127.5: negation is 255 - v
        normal[..., 0] = 255 - normal[..., 0]
    else:
        normal[..., 0] = -normal[..., 0]
    return normal


def move_points(xy: np.ndarray, origin: tuple[float, float], scale: tuple[float, float]) -> np.ndarray:
    """Points (..., 2) after cutting at integer `origin` (x, y) and resizing by `scale` (sx, sy)."""
    out = np.array(xy, dtype=np.float32, copy=True)
    for axis in (0, 1):
        out[..., axis] = (out[..., axis] - origin[axis] + 0.5) * scale[axis] - 0.5
    return out


def _refuse_latent_fields(sample: dict[str, Any], operation: str) -> None:
    held = [name for name in LATENT_GRID if name in sample]
    if held:
        raise ValueError(f"{operation} would break {held}, which live on the VAE's latent grid: train at the "
                         f"shards' resolution and clip length (data.resolution, data.frames, augment.crop_scale "
                         f"unset) when articulated noise is loaded")


def crop_resize(sample: dict[str, Any], box: tuple[int, int, int, int], size: tuple[int, int]) -> dict[str, Any]:
    """Cut `box` (x0, y0, width, height; integer pixels inside the frame) and resize to `size` (H, W)."""
    x0, y0, box_w, box_h = (int(v) for v in box)
    out_h, out_w = size
    frames = sample["frames"]
    if x0 < 0 or y0 < 0 or x0 + box_w > frames.shape[2] or y0 + box_h > frames.shape[1]:
        raise ValueError(f"crop box {box} leaves the frame {frames.shape[2]}x{frames.shape[1]}")
    if (x0, y0, box_w, box_h) == (0, 0, frames.shape[2], frames.shape[1]) and (box_h, box_w) == (out_h, out_w):
        return dict(sample)
    _refuse_latent_fields(sample, "a crop or resize")
    scale = (out_w / box_w, out_h / box_h)
    out = dict(sample)

    def cut(array: np.ndarray, interpolation: int) -> np.ndarray:
        # array [N, H, W] or [N, H, W, C]; cv2 resizes one image at a time
        window = array[:, y0:y0 + box_h, x0:x0 + box_w]
        return np.stack([cv2.resize(np.ascontiguousarray(image), (out_w, out_h), interpolation=interpolation)
                         .reshape((out_h, out_w) + image.shape[2:]) for image in window])

    # INTER_AREA averages every source pixel when shrinking (no aliasing); it is bilinear when enlarging.
    out["frames"] = cut(frames, cv2.INTER_AREA)
    if "masks" in sample:
        masks = sample["masks"]  # [T, K, H, W]
        flat = cut(masks.reshape((-1,) + masks.shape[2:]), cv2.INTER_NEAREST)
        out["masks"] = flat.reshape(masks.shape[:2] + (out_h, out_w))
    for name in NEAREST_MAPS:
        if name in sample:
            out[name] = cut(sample[name], cv2.INTER_NEAREST)
    if "kpts" in sample:
        kpts = np.array(sample["kpts"], dtype=np.float32, copy=True)
        present = kpts[..., 2] > 0  # absent points stay (0, 0, 0)
        kpts[..., :2] = np.where(present[..., None], move_points(kpts[..., :2], (x0, y0), scale), kpts[..., :2])
        out["kpts"] = kpts
    for name in ("subject_box", "face_box"):
        if name in sample:
            boxes = np.array(sample[name], dtype=np.float32, copy=True)
            boxes[..., 0:2] = move_points(boxes[..., 0:2], (x0, y0), scale)
            boxes[..., 2:4] = move_points(boxes[..., 2:4], (x0, y0), scale)
            out[name] = boxes
    if "face_landmarks" in sample:
        out["face_landmarks"] = move_points(sample["face_landmarks"], (x0, y0), scale)
    if "hand_motion" in sample:
        out["hand_motion"] = np.asarray(sample["hand_motion"], np.float32) * np.asarray(scale, np.float32)
    if "ref_frame" in sample:
        ref = sample["ref_frame"]
        ref_scale = (out_w / ref.shape[1], out_h / ref.shape[0])
        out["ref_frame"] = cv2.resize(ref, (out_w, out_h), interpolation=cv2.INTER_AREA)
        if "ref_kpts" in sample:
            ref_kpts = np.array(sample["ref_kpts"], dtype=np.float32, copy=True)
            present = ref_kpts[..., 2] > 0
            moved = move_points(ref_kpts[..., :2], (0, 0), ref_scale)
            ref_kpts[..., :2] = np.where(present[..., None], moved, ref_kpts[..., :2])
            out["ref_kpts"] = ref_kpts
    return out


def take_frames(sample: dict[str, Any], start: int, count: int) -> dict[str, Any]:
    """Frames start .. start + count - 1 of every per-frame field."""
    total = len(sample["frames"])
    if start == 0 and count == total:
        return dict(sample)
    if not 0 <= start and start + count <= total:
        raise ValueError(f"frame window [{start}, {start + count}) leaves the clip of {total} frames")
    _refuse_latent_fields(sample, "a temporal window")
    out = dict(sample)
    for name in PER_FRAME:
        if name in sample:
            out[name] = sample[name][start:start + count]
    return out


def random_crop_box(height: int, width: int, aspect: float, scale: tuple[float, float],
                    rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of the target aspect (W / H) whose side is a share in `scale` of the largest such box."""
    full_w = min(width, height * aspect)
    share = rng.uniform(*scale)
    box_w = max(1, int(round(full_w * share)))
    box_h = max(1, min(height, int(round(box_w / aspect))))
    x0 = int(rng.integers(0, width - box_w + 1))
    y0 = int(rng.integers(0, height - box_h + 1))
    return x0, y0, box_w, box_h


def centre_box(height: int, width: int, aspect: float) -> tuple[int, int, int, int]:
    """The largest centred box of the target aspect (W / H): a resize that never stretches."""
    box_w = min(width, int(round(height * aspect)))
    box_h = min(height, int(round(box_w / aspect)))
    return (width - box_w) // 2, (height - box_h) // 2, box_w, box_h


def augment(sample: dict[str, Any], rng: np.random.Generator, size: tuple[int, int] | None,
            frames: int | None, flip_probability: float, crop_scale: tuple[float, float] | None) -> dict[str, Any]:
    """The training augmentation: a random temporal window, a random crop (or a plain resize), a random flip."""
    total = len(sample["frames"])
    if frames is not None and frames != total:
        if frames > total:
            raise ValueError(f"data.frames = {frames} but clip {sample['meta']['key']} has {total} frames")
        sample = take_frames(sample, int(rng.integers(0, total - frames + 1)), frames)
    height, width = sample["frames"].shape[1:3]
    size = size or (height, width)
    if crop_scale is not None:
        box = random_crop_box(height, width, size[1] / size[0], crop_scale, rng)
    else:
        box = centre_box(height, width, size[1] / size[0])
    sample = crop_resize(sample, box, size)
    if flip_probability > 0 and rng.random() < flip_probability:
        sample = flip(sample)
    return sample
