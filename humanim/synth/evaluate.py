"""How well a pose back-end's keypoints agree with a synthetic clip's ground truth.

Two figures: the share of frames where the back-end found the person at all, and the median pixel distance
between its confident body joints and the true ones. Only joints the ground truth marks visible are compared:
a back-end's guess at a hidden joint is not wrong in a way this could measure. Body model and back-end place
joints by different conventions (Anny's hip joint is not where MediaPipe's hip landmark is), so the error
cannot go to zero; a few percent of the person's height is agreement.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from humanim.schemas.keypoints import BODY


@dataclass(frozen=True)
class PoseAgreement:
    frames: int
    frames_found: int  # frames with at least one body keypoint scored above zero
    joints_compared: int
    median_error: float  # pixels; NaN when no joint could be compared

    @property
    def detection_rate(self) -> float:
        return self.frames_found / self.frames if self.frames else float("nan")


def body_joint_errors(detected: np.ndarray, truth: np.ndarray, visible: np.ndarray,
                      threshold: float = 0.5) -> np.ndarray:
    """Pixel distances [N] of the confident (score > threshold) detected body joints [T, 133, 3] from the true ones
    [T, 133, 3], over the joints that are defined and visible in the truth (visible [T, 133])."""
    compared = (detected[:, BODY, 2] > threshold) & (truth[:, BODY, 2] > 0) & visible[:, BODY]
    distance = np.linalg.norm(detected[:, BODY, :2] - truth[:, BODY, :2], axis=-1)
    return distance[compared]


def pose_agreement(detected: np.ndarray, truth: np.ndarray, visible: np.ndarray,
                   threshold: float = 0.5) -> PoseAgreement:
    errors = body_joint_errors(detected, truth, visible, threshold)
    return PoseAgreement(frames=len(detected), frames_found=int((detected[:, BODY, 2] > 0).any(axis=1).sum()),
                         joints_compared=len(errors),
                         median_error=float(np.median(errors)) if len(errors) else float("nan"))


def to_clip_pixels(keypoints: np.ndarray, crop_box: tuple[float, float, float, float], width: int,
                   height: int) -> np.ndarray:
    """Keypoints [..., 133, 3] in source pixels -> pixels of a clip cut from `crop_box` (x0, y0, x1, y1, source
    pixel edges) and scaled to width x height. Pixel centres sit at integers in both (schemas.keypoints)."""
    x0, y0, x1, y1 = crop_box
    scale = np.array([width / (x1 - x0), height / (y1 - y0)])
    out = keypoints.copy()
    out[..., :2] = (keypoints[..., :2] + 0.5 - np.array([x0, y0])) * scale - 0.5
    return out
