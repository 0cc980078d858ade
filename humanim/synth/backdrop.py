"""The room a synthetic person stands in: a painted wall above a floor, drawn once per shot from its seed.

Both have low-frequency texture (blotches a few tens of pixels across) so that the background is not a flat
colour a detector could learn to ignore, but nothing with edges or limbs that could pass for a second person.
The floor recedes in perspective: boards run away from the camera and get thinner towards the horizon.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from humanim.stages.render import PinholeCamera


@dataclass(frozen=True)
class Backdrop:
    image: np.ndarray  # float32 [H, W, 3] sRGB, 0-255
    wall: np.ndarray  # [3] the wall's mean colour, for clothes to stand out from


def _blotches(rng: np.random.Generator, height: int, width: int, cells: int, strength: float) -> np.ndarray:
    """[H, W] multiplicative texture around 1: a coarse random grid smoothly upsampled."""
    grid = rng.normal(0.0, strength, (cells, cells)).astype(np.float32)
    return 1.0 + cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def random_backdrop(rng: np.random.Generator, height: int, width: int, camera: PinholeCamera,
                    floor_depth: float, wall_distance: float) -> Backdrop:
    """A wall `wall_distance` metres in front of `camera` (z) and a floor, the horizontal plane `floor_depth`
    metres below it (camera frame y down: the plane y = floor_depth). Rows under the horizon (y = cy) whose rays
    meet the floor before the wall show the floor."""
    # Muted wall colours: a person in saturated clothes stands out, as in most real footage.
    wall = rng.uniform(120, 235) * (1 - rng.uniform(0.0, 0.25, 3))
    floor = rng.uniform(70, 170) * np.array([1.0, rng.uniform(0.8, 0.95), rng.uniform(0.6, 0.85)])
    rows = np.arange(height, dtype=np.float32)[:, None]
    columns = np.arange(width, dtype=np.float32)[None, :]
    light_falloff = 1.0 - rng.uniform(0.0, 0.2) * rows / height  # brighter towards the ceiling light
    image = wall[None, None] * (light_falloff * _blotches(rng, height, width, 5, 0.06))[..., None]

    # Where the ray of a pixel under the horizon meets the floor plane, and whether that is before the wall.
    below = np.maximum(rows - camera.cy, 1e-3) / camera.fy
    depth = floor_depth / below  # z of the floor point seen at this row
    on_floor = np.broadcast_to((rows > camera.cy) & (depth < wall_distance), (height, width))
    lateral = (columns - camera.cx) / camera.fx * depth  # x of that floor point, metres
    board_width = rng.uniform(0.12, 0.25)
    boards = 1.0 + 0.07 * np.sign(np.sin(np.pi * lateral / board_width))
    seams = np.abs(lateral / board_width - np.round(lateral / board_width)) < 0.03
    floor_shade = boards * np.where(seams, 0.8, 1.0) * _blotches(rng, height, width, 4, 0.05)
    floor_image = floor[None, None] * floor_shade[..., None]
    image = np.where(on_floor[..., None], floor_image, image)
    # A skirting line where floor meets wall hides the hard seam between two flat colours.
    skirting = on_floor & ~np.roll(on_floor, 2, axis=0)
    image[skirting] *= 0.7
    return Backdrop(np.clip(image, 0, 255).astype(np.float32), wall.astype(np.float32))
