"""Draw COCO-WholeBody keypoints as the DWPose/OpenPose pose image that Champ, Moore-AnimateAnyone, MusePose
and MimicMotion condition on, so images drawn from our keypoints match what their pose guiders were trained on.

The convention: an 18-point OpenPose body (COCO 17 plus a neck at the mid-shoulders) whose 17 limbs are
filled ellipses 4 px thick in the OpenPose palette, dimmed to 60 %; full-colour joint dots of radius 4 on
top; hands as 2 px lines in 20 evenly spaced hues with blue dots; the face as white dots of radius 3. Feet are
not drawn, as in DWPose. The image is RGB. Points are drawn at the nearest pixel centre (schemas.keypoints).
"""
from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from humanim.schemas.keypoints import BODY, FACE, LEFT_HAND, RIGHT_HAND

# OpenPose 18 order: nose, neck, right shoulder/elbow/wrist, left shoulder/elbow/wrist, right hip/knee/ankle,
# left hip/knee/ankle, right eye, left eye, right ear, left ear. -1 marks the neck, which COCO lacks.
OPENPOSE18_FROM_COCO17 = (0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
# The 17 limbs in the order that fixes their colours (OpenPose 18 indices).
OPENPOSE_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
# Limb i and joint i share colour i: hues stepping by a third of 255 round the colour wheel from red.
OPENPOSE_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
HAND_EDGES = tuple((0 if j % 4 == 0 else j, j + 1) for j in range(20))  # wrist to each finger base, then along it
HAND_EDGE_COLORS = tuple(
    tuple(round(c * 255) for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0)) for i in range(len(HAND_EDGES))
)
HAND_POINT_COLOR = (0, 0, 255)
FACE_POINT_COLOR = (255, 255, 255)
LIMB_HALF_WIDTH = 4
LIMB_DIMMING = 0.6


def openpose18(kpts: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The OpenPose 18 body (xy [18, 2], visible [18]) from COCO-WholeBody keypoints [133, 3]."""
    body = kpts[BODY]
    xy = np.zeros((18, 2), dtype=np.float64)
    visible = np.zeros(18, dtype=bool)
    for slot, coco in enumerate(OPENPOSE18_FROM_COCO17):
        if coco >= 0:
            xy[slot], visible[slot] = body[coco, :2], body[coco, 2] > threshold
    # As in DWPose, the neck exists only where both shoulders do.
    xy[1] = (body[5, :2] + body[6, :2]) / 2
    visible[1] = body[5, 2] > threshold and body[6, 2] > threshold
    return xy, visible


def _pixel(point: np.ndarray) -> tuple[int, int]:
    return int(round(float(point[0]))), int(round(float(point[1])))


def _draw_limb(canvas: np.ndarray, a: np.ndarray, b: np.ndarray, color: tuple[int, int, int]) -> None:
    length = float(np.hypot(*(b - a)))
    angle = math.degrees(math.atan2(b[1] - a[1], b[0] - a[0]))
    polygon = cv2.ellipse2Poly(_pixel((a + b) / 2), (int(length / 2), LIMB_HALF_WIDTH), int(angle), 0, 360, 1)
    cv2.fillConvexPoly(canvas, polygon, color)


def draw_skeleton(
    kpts: np.ndarray, height: int, width: int, threshold: float = 0.3, face: bool = True, hands: bool = True
) -> np.ndarray:
    """uint8 [H, W, 3] RGB pose image of one person's keypoints [133, 3]; points scoring <= threshold are left out."""
    kpts = np.asarray(kpts, dtype=np.float64)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    xy, visible = openpose18(kpts, threshold)
    for (a, b), color in zip(OPENPOSE_LIMBS, OPENPOSE_COLORS):
        if visible[a] and visible[b]:
            _draw_limb(canvas, xy[a], xy[b], color)
    canvas = (canvas * LIMB_DIMMING).astype(np.uint8)  # limbs recede so joints read on top of them
    for point, shown, color in zip(xy, visible, OPENPOSE_COLORS):
        if shown:
            cv2.circle(canvas, _pixel(point), 4, color, thickness=-1)
    if hands:
        for part in (LEFT_HAND, RIGHT_HAND):
            hand = kpts[part]
            shown = hand[:, 2] > threshold
            for (a, b), color in zip(HAND_EDGES, HAND_EDGE_COLORS):
                if shown[a] and shown[b]:
                    cv2.line(canvas, _pixel(hand[a]), _pixel(hand[b]), color, thickness=2)
            for point in hand[shown]:
                cv2.circle(canvas, _pixel(point), 4, HAND_POINT_COLOR, thickness=-1)
    if face:
        for point in kpts[FACE][kpts[FACE][:, 2] > threshold]:
            cv2.circle(canvas, _pixel(point), 3, FACE_POINT_COLOR, thickness=-1)
    return canvas
