"""The COCO-WholeBody 133-keypoint layout every pose back-end is mapped onto, and horizontal flipping of samples.

Keypoints are float32 [..., 133, 3] rows of (x, y, score) in clip pixels. Pixel convention: pixel centres,
so column i of an image has its centre at x = i and the image spans x in [-0.5, W - 0.5]. Under that
convention `np.flip(image, axis=W)` moves the content at x to W - 1 - x, which is what `flip_keypoints` does.
A point a back-end does not have is stored as (0, 0, 0): score 0 means absent, and flipping leaves it as is.

"left" and "right" are always the person's own sides (COCO), never sides of the image.
"""
from __future__ import annotations

from typing import Any

import numpy as np

NUM_KEYPOINTS = 133

BODY = slice(0, 17)
FEET = slice(17, 23)
FACE = slice(23, 91)
LEFT_HAND = slice(91, 112)
RIGHT_HAND = slice(112, 133)
PARTS: dict[str, slice] = {"body": BODY, "feet": FEET, "face": FACE, "left_hand": LEFT_HAND, "right_hand": RIGHT_HAND}

BODY_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
FEET_NAMES = ("left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel")
# The 68 face points follow the 300-W (iBUG) markup: 0-16 jaw from the person's right ear round the chin to
# the left, 17-21 right brow, 22-26 left brow, 27-30 nose bridge, 31-35 nostrils, 36-41 right eye,
# 42-47 left eye, 48-59 outer lips, 60-67 inner lips.
FACE_NAMES = tuple(f"face-{i}" for i in range(68))
# Hand points: wrist, then four joints per finger from the palm outwards (thumb, index, middle, ring, pinky).
HAND_JOINT_NAMES = ("root",) + tuple(
    f"{finger}{joint}" for finger in ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")
    for joint in range(1, 5)
)
KEYPOINT_NAMES = (
    BODY_NAMES + FEET_NAMES + FACE_NAMES
    + tuple(f"left_hand_{j}" for j in HAND_JOINT_NAMES) + tuple(f"right_hand_{j}" for j in HAND_JOINT_NAMES)
)

# Face points that swap under a mirror, as (face index, face index) pairs; the others sit on the midline.
_FACE_MIRROR_PAIRS = (
    [(i, 16 - i) for i in range(8)]  # jaw
    + [(17 + i, 26 - i) for i in range(5)]  # brows
    + [(31, 35), (32, 34)]  # nostrils
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes: corners and lids
    + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
    + [(60, 64), (61, 63), (65, 67)]  # inner lips
)


def _flip_permutation() -> np.ndarray:
    pairs = [(BODY_NAMES.index(n), BODY_NAMES.index(n.replace("left", "right")))
             for n in BODY_NAMES if n.startswith("left")]
    pairs += [(FEET.start + i, FEET.start + 3 + i) for i in range(3)]
    pairs += [(FACE.start + a, FACE.start + b) for a, b in _FACE_MIRROR_PAIRS]
    pairs += [(LEFT_HAND.start + i, RIGHT_HAND.start + i) for i in range(21)]
    permutation = np.arange(NUM_KEYPOINTS)
    for a, b in pairs:
        permutation[a], permutation[b] = b, a
    return permutation


# flipped[..., i, :] comes from original[..., FLIP_PERMUTATION[i], :]; it is its own inverse.
FLIP_PERMUTATION = _flip_permutation()
FLIP_PERMUTATION.setflags(write=False)

# Channels of the "masks" field, in order; a flip swaps the two hands.
MASK_CHANNELS = ("face", "left_hand", "right_hand")


FACE_LANDMARK_FLIP = [1, 0, 2, 4, 3]  # the 5 face-detector points, named by image side


def flip_keypoints(kpts: np.ndarray, width: int) -> np.ndarray:
    """Keypoints [..., 133, 3] of the mirrored image: sides swapped, present points moved to x' = width - 1 - x."""
    flipped = np.asarray(kpts)[..., FLIP_PERMUTATION, :]  # fancy indexing copies
    present = flipped[..., 2] > 0
    flipped[..., 0] = np.where(present, (width - 1) - flipped[..., 0], flipped[..., 0])
    return flipped


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Boxes [..., 4] as (x0, y0, x1, y1) in the same pixel-centre frame: x0' = W - 1 - x1, x1' = W - 1 - x0."""
    boxes = np.asarray(boxes)
    flipped = boxes.copy()
    flipped[..., 0] = (width - 1) - boxes[..., 2]
    flipped[..., 2] = (width - 1) - boxes[..., 0]
    return flipped


def _flip_image_axis(array: np.ndarray, axis: int) -> np.ndarray:
    # Contiguous so torch.from_numpy (which refuses negative strides) takes the result.
    return np.ascontiguousarray(np.flip(array, axis=axis))


def _sample_width(sample: dict[str, Any]) -> int:
    if "frames" in sample:
        return int(sample["frames"].shape[2])
    if "masks" in sample:
        return int(sample["masks"].shape[-1])
    meta = sample.get("meta")
    if isinstance(meta, dict) and "width" in meta:
        return int(meta["width"])
    raise ValueError("flip_sample needs the image width: give 'frames', 'masks' or meta['width']")


def flip_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A decoded sample mirrored left to right; a new dict, the input is left untouched.

    Keys it transforms (any other key is returned unchanged, so a new spatial field must be added here):
      frames         [T, H, W, 3]   mirrored along W
      ref_frame      [H, W, 3]      mirrored along W
      masks          [T, H, W]      mirrored along W
                     [T, 3, H, W]   mirrored along W, and the left/right hand channels swapped (MASK_CHANNELS)
      kpts           [T, 133, 3]    flip_keypoints
      ref_kpts       [133, 3]       flip_keypoints
      subject_box    [T, 5]         flip_boxes on (x0, y0, x1, y1); the score stays
      face_box       [T, 5]         flip_boxes on (x0, y0, x1, y1); the score stays
      face_landmarks [T, 5, 2]      x' = W - 1 - x, and the points reordered so "eye on the image left" stays so
      hand_sharpness [T, 2]         hands swapped (index 0 = left hand, 1 = right hand)
      hand_valid     [T, 2]         hands swapped
      hand_motion    [T, 2, 2]      hands swapped and the x component negated
    The width comes from 'frames', else 'masks', else meta['width'].
    """
    width = _sample_width(sample)
    out = dict(sample)
    if "frames" in sample:
        out["frames"] = _flip_image_axis(sample["frames"], axis=2)
    if "masks" in sample:
        masks = _flip_image_axis(sample["masks"], axis=-1)
        if masks.ndim == 4:
            if masks.shape[1] != len(MASK_CHANNELS):
                raise ValueError(f"masks [T, K, H, W] must have K = {len(MASK_CHANNELS)} {MASK_CHANNELS}")
            masks = np.ascontiguousarray(masks[:, [0, 2, 1]])
        out["masks"] = masks
    if "ref_frame" in sample:
        out["ref_frame"] = _flip_image_axis(sample["ref_frame"], axis=1)
    for key in ("kpts", "ref_kpts"):
        if key in sample:
            out[key] = flip_keypoints(sample[key], width)
    for key in ("subject_box", "face_box"):
        if key in sample:
            boxes = np.array(sample[key], copy=True)
            boxes[..., :4] = flip_boxes(boxes[..., :4], width)
            out[key] = boxes
    if "face_landmarks" in sample:
        # Points are named by image side (eye on the left, eye on the right, nose, mouth left, mouth right).
        landmarks = np.array(sample["face_landmarks"][..., FACE_LANDMARK_FLIP, :], copy=True)
        landmarks[..., 0] = (width - 1) - landmarks[..., 0]
        out["face_landmarks"] = landmarks
    for key in ("hand_sharpness", "hand_valid"):
        if key in sample:
            out[key] = np.ascontiguousarray(sample[key][:, ::-1])
    if "hand_motion" in sample:
        motion = np.array(sample["hand_motion"][:, ::-1], copy=True)
        motion[..., 0] = -motion[..., 0]
        out["hand_motion"] = motion
    return out
