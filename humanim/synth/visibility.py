"""Ground-truth 2D keypoints of a rendered body, and which of them the camera can see.

A keypoint is hidden when something else stands between it and the camera, as COCO's annotators mark it. Read
off the render at the keypoint's pixel, that is:
- the pixel sees no body: nothing hides it (a fingertip can project just outside the silhouette);
- the pixel sees the keypoint's own limb (OWN_PARTS): visible, however deep the joint lies under that skin. A
  forearm pointing at the camera puts a whole forearm's depth in front of the wrist joint, yet the wrist is
  where everyone would click;
- anything else (another limb, the torso, the back of the head) hides the keypoint when it is nearer than the
  keypoint by more than the body's own depth around it (`keypoint_radii`). Face points have no own parts: they
  are surface points, hidden as soon as the head turns them away.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from humanim.schemas.keypoints import LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND
from humanim.stages.body_models import PART_INDEX, SMPL_PARTS, WHOLEBODY_INDEX, BodyModel
from humanim.stages.render import PinholeCamera
from humanim.synth.motion import project

# Joints sit inside the body: the surface in front of a hip joint is about as far as the body's radius there,
# which we take as 1.5 x the distance to the nearest rest vertex (the narrowest way out), plus a margin.
RADIUS_FACTOR, MARGIN = 1.5, 0.03


def _own_parts() -> np.ndarray:
    """bool [133, 24]: the SMPL parts (body_models.SMPL_PARTS) that make up each keypoint's own limb."""
    table = np.zeros((NUM_KEYPOINTS, len(SMPL_PARTS)), dtype=bool)
    limbs = {"shoulder": ("shoulder", "collar"), "elbow": ("shoulder", "elbow"), "wrist": ("elbow", "wrist", "hand"),
             "hip": ("hip",), "knee": ("hip", "knee"), "ankle": ("knee", "ankle", "foot"),
             "big_toe": ("ankle", "foot"), "small_toe": ("ankle", "foot"), "heel": ("ankle", "foot")}
    for side, hand in (("left", LEFT_HAND), ("right", RIGHT_HAND)):
        for keypoint, parts in limbs.items():
            table[WHOLEBODY_INDEX[f"{side}_{keypoint}"], [PART_INDEX[f"{side}_{p}"] for p in parts]] = True
        table[WHOLEBODY_INDEX[f"{side}_hip"], PART_INDEX["pelvis"]] = True
        table[hand, PART_INDEX[f"{side}_wrist"]] = table[hand, PART_INDEX[f"{side}_hand"]] = True
    return table


OWN_PARTS = _own_parts()


def image_keypoints(joints: np.ndarray, keypoint_mask: np.ndarray, camera: PinholeCamera) -> np.ndarray:
    """float32 [T, 133, 3] (x, y, score) from camera-frame joints [T, 133, 3]: the rows in keypoint_mask
    projected (pixel centres at integers) with score 1, the others (0, 0, 0), as schemas.keypoints has absent
    points."""
    defined = keypoint_mask[:, None]
    # Rows the model leaves out are zeros, at the camera's centre: give them a depth so projecting them is finite.
    placed = np.where(defined, joints, [0.0, 0.0, 1.0])
    pixels = project(placed, camera)
    scores = np.broadcast_to(defined, joints.shape[:2] + (1,))
    return np.concatenate([np.where(defined, pixels, 0.0), scores], axis=-1).astype(np.float32)


def keypoint_radii(model: BodyModel, rest_vertices: np.ndarray, rest_keypoints: np.ndarray) -> np.ndarray:
    """[133] metres: how deep under the body's surface each keypoint lies, from its rest mesh [V, 3] and rest
    keypoints [133, 3] (same frame)."""
    nearest, _ = cKDTree(rest_vertices).query(rest_keypoints)
    return np.where(model.keypoint_mask, RADIUS_FACTOR * nearest + MARGIN, 0.0)


def keypoint_visibility(joints: np.ndarray, keypoints: np.ndarray, depth: np.ndarray, part: np.ndarray,
                        radii: np.ndarray) -> np.ndarray:
    """bool [T, 133]: keypoints (score > 0, pixels [T, 133, 3]) inside the frame and not hidden (module docstring),
    from their camera-frame positions [T, 133, 3], the depth [T, H, W] and part [T, H, W] maps (stages.render)
    and their radii [133]."""
    frames, height, width = depth.shape
    column, row = (np.rint(keypoints[..., axis]).astype(np.int64) for axis in (0, 1))
    inside = (column >= 0) & (column < width) & (row >= 0) & (row < height) & (joints[..., 2] > 0)
    at = (np.arange(frames)[:, None], np.clip(row, 0, height - 1), np.clip(column, 0, width - 1))
    seen_depth, seen_part = depth[at], part[at].astype(np.int64) - 1  # part -1: background
    own_limb = OWN_PARTS[np.arange(NUM_KEYPOINTS), np.clip(seen_part, 0, None)] & (seen_part >= 0)
    unhidden = (seen_depth == 0) | own_limb | (joints[..., 2] <= seen_depth + radii)
    return inside & unhidden & (keypoints[..., 2] > 0)
