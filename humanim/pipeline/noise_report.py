"""What `humanim demo` shows of a clip's articulated noise: a picture, and the statistics it must satisfy.

The picture puts one channel of each latent frame side by side, scaled up to the video's pixels, with the
body's outline drawn on it: the body's noise pattern moves with the body while the background's stays put.
The checks are those of the noise issue's proof that one clip can answer (the ensemble versions, over many
seeds, are in tests/test_noise*.py): moments and a Kolmogorov-Smirnov test against N(0, 1) on the body and
the background (frame by frame, Bonferroni-corrected), and the correlation of latent cells with their flow
sources against that with the same cell one latent frame earlier.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy import stats


def noise_picture(sample: dict, path: Path, channel: int = 0) -> Path:
    noise, meta = sample["noise"].astype(np.float32), sample["meta"]
    temporal = meta["stages"]["noise"]["temporal_stride"]
    height, width = meta["height"], meta["width"]
    body = np.unpackbits(sample["body_mask"], axis=-1, count=width).astype(np.uint8)
    tiles = []
    for t in range(len(noise)):
        grey = np.clip((noise[t, channel] * 0.25 + 0.5) * 255, 0, 255).astype(np.uint8)
        tile = cv2.cvtColor(cv2.resize(grey, (width, height), interpolation=cv2.INTER_NEAREST), cv2.COLOR_GRAY2RGB)
        contours, _ = cv2.findContours(body[t * temporal], cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(tile, contours, -1, (255, 60, 60), 2)
        cv2.putText(tile, f"latent frame {t} (video frame {t * temporal})", (6, 18), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, (255, 255, 0), 1, cv2.LINE_AA)
        tiles.append(np.pad(tile, ((0, 0), (0, 4), (0, 0)), constant_values=255))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate(tiles, axis=1)[..., ::-1])
    return path


def noise_checks(sample: dict) -> dict[str, float]:
    noise, meta = sample["noise"].astype(np.float64), sample["meta"]
    stride, temporal = meta["stages"]["noise"]["spatial_stride"], meta["stages"]["noise"]["temporal_stride"]
    width = meta["width"]
    body = np.unpackbits(sample["body_mask"], axis=-1, count=width)[::temporal][:len(noise)]
    cells = body.reshape(len(noise), body.shape[1] // stride, stride, -1, stride).mean(axis=(2, 4))
    # The background is one field for the whole clip, so a background cell counts once: in the first latent
    # frame that shows it (counting it in every frame would repeat values and fool the tests below).
    background = cells == 0
    first_seen = background & (np.cumsum(background, axis=0) == 1)
    # A body cell's values are tied to the same surface's a latent frame earlier (by design: about 0.5), so pooled
    # over frames they are not independent and a pooled KS test would reject N(0, 1) far too often. Within a frame
    # cells are independent: the KS test runs frame by frame, and the smallest p, Bonferroni-corrected, is reported.
    # The moments are pooled; they are descriptive.
    checks: dict[str, float] = {}
    cell_values = noise.transpose(0, 2, 3, 1)
    for name, where in (("body", cells == 1), ("background", first_seen)):
        values = cell_values[where].ravel()
        per_frame_p = [stats.kstest(cell_values[t][where[t]].ravel(), "norm").pvalue
                       for t in range(len(noise)) if where[t].any()]
        checks.update({f"{name}_cells": int(where.sum()), f"{name}_mean": values.mean(), f"{name}_std": values.std(),
                       f"{name}_skew": stats.skew(values), f"{name}_excess_kurtosis": stats.kurtosis(values),
                       f"{name}_ks_p": min(1.0, min(per_frame_p) * len(per_frame_p))})
    moved, fixed = [], []
    for t, (flow, visible) in enumerate(zip(sample["noise_flow"], sample["noise_visible"])):
        for y, x in zip(*np.nonzero(visible)):
            source_y, source_x = int(round(y + flow[1, y, x])), int(round(x + flow[0, y, x]))
            if (source_y, source_x) != (y, x) and 0 <= source_y < noise.shape[2] and 0 <= source_x < noise.shape[3]:
                moved.append((noise[t + 1, :, y, x], noise[t, :, source_y, source_x]))
                fixed.append((noise[t + 1, :, y, x], noise[t, :, y, x]))
    for name, pairs in (("flow_source", moved), ("same_cell", fixed)):
        if pairs:
            a, b = (np.concatenate(side) for side in zip(*pairs))
            checks[f"{name}_correlation"] = float(np.corrcoef(a, b)[0, 1])
    checks["moved_cells"] = len(moved)
    return checks
