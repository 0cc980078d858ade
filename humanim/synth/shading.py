"""Turn rendered maps into RGB frames: paint the body (appearance), light it, draw its contours, composite.

Lighting is Lambert plus ambient, in linear light (the sRGB colours are linearised first and encoded again at
the end), from one directional light per shot. Contours are darkened where the body meets the background or
where a nearer limb crosses a farther one: in flat-shaded renders those edges are what separates an arm from
the torso behind it. Pixels along the silhouette are then smoothed, since one ray per pixel leaves stair steps.
Everything is vectorised NumPy over the body's pixels only.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from humanim.synth.appearance import Look, surface_colour

GAMMA = 2.2
CONTOUR_DEPTH_STEP = 0.05  # metres: a neighbour this much farther is another limb (or the background)
CONTOUR_DARKENING = 0.55


@dataclass(frozen=True)
class Light:
    direction: np.ndarray  # [3] unit vector towards the light, camera frame (x right, y down, z forward)
    ambient: float  # share of the light that reaches every surface, lit side or not


def random_light(rng: np.random.Generator) -> Light:
    """A key light from the camera's side of the person, above it and to its left or right."""
    towards = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.9, -0.2), -1.0])
    return Light(direction=towards / np.linalg.norm(towards), ambient=float(rng.uniform(0.3, 0.5)))


def _contours(depth: np.ndarray, silhouette: np.ndarray) -> np.ndarray:
    """[H, W] bool: body pixels with a 4-neighbour that is background or farther by CONTOUR_DEPTH_STEP."""
    far = np.where(silhouette, depth, np.inf)
    padded = np.pad(far, 1, constant_values=np.inf)
    neighbours = np.stack([padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
    return silhouette & (neighbours.max(axis=0) > far + CONTOUR_DEPTH_STEP)


def shade_frame(maps: dict[str, np.ndarray], rest_vertices: np.ndarray, faces: np.ndarray,
                rest_keypoints: np.ndarray, look: Look, light: Light, backdrop: np.ndarray) -> np.ndarray:
    """One uint8 [H, W, 3] RGB frame from one frame's maps (face_id, barycentric, depth, normal, part,
    silhouette; see stages.render), the body's rest vertices [V, 3] and keypoints [133, 3] (model frame) and
    the backdrop (float sRGB [H, W, 3])."""
    silhouette = maps["silhouette"]
    image = backdrop.copy()
    if silhouette.any():
        face_id = maps["face_id"][silhouette]
        # Each pixel's point on the rest mesh: the same barycentric mix of the same face's rest vertices.
        rest_points = np.einsum("nk,nkc->nc", maps["barycentric"][silhouette], rest_vertices[faces[face_id]])
        albedo = (surface_colour(rest_points, maps["part"][silhouette].astype(np.int64) - 1, rest_keypoints,
                                 look) / 255.0) ** GAMMA
        lambert = np.clip(maps["normal"][silhouette] @ light.direction, 0.0, None)
        radiance = albedo * (light.ambient + (1.0 - light.ambient) * lambert)[:, None]
        image[silhouette] = 255.0 * radiance ** (1.0 / GAMMA)
        image[_contours(maps["depth"], silhouette)] *= CONTOUR_DARKENING
        # Anti-alias the silhouette: both sides of its edge take a 3x3 average of the composite.
        edge = cv2.dilate(silhouette.astype(np.uint8), np.ones((3, 3), np.uint8)) != \
            cv2.erode(silhouette.astype(np.uint8), np.ones((3, 3), np.uint8))
        image[edge] = cv2.blur(image, (3, 3))[edge]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
