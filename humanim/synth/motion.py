"""A synthetic person moving in front of a camera: random but plausible body shape, smooth joint motion within the
joint ranges of `body_models.pose_prior`, a body that turns slowly and drifts a little, and a camera that keeps
the whole body in the frame.

Everything is in the OpenCV camera frame (x right, y down, z forward, metres): `global_orient` already holds the
half turn about x that takes the model frame (y up, facing +z) to the camera frame with the body facing the
camera, so `model(...).vertices` go straight to `render.render_maps` and `project`.

Motion is keyframed: joint values are drawn at keyframes about `KEY_SECONDS` apart and joined by monotone cubic
(PCHIP) interpolation, which is smooth and never overshoots a keyframe, so it stays inside the joint ranges.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.interpolate import PchipInterpolator
from scipy.spatial.transform import Rotation

from humanim.stages.body_models import BodyModel, PosePrior, pose_prior
from humanim.stages.fit import frame_size_camera
from humanim.stages.render import PinholeCamera

KEY_SECONDS = 0.8
MAX_YAW = math.radians(60)  # the body turns at most this far from facing the camera
# How far from the relaxed pose a keyframe may go, as a share of the way to the joint's range limit. Legs move
# less than arms so that a standing body does not look as if it sat on air.
LEG_AMPLITUDE, BODY_AMPLITUDE = 0.35, 0.6
LEG_WORDS = ("leg", "hip", "knee", "ankle", "foot")
MARGIN = 0.05  # share of the frame's height and width kept free around the body in every frame
# The body's drift in metres about its mean place (camera x, y, z).
DRIFT = np.array([0.25, 0.05, 0.3])


@dataclass
class BodyMotion:
    shape: torch.Tensor  # [1, S]
    pose: torch.Tensor  # [T, J, 3] axis-angle per model.pose_joints
    global_orient: torch.Tensor  # [T, 3] axis-angle, model frame -> camera frame
    transl: torch.Tensor  # [T, 3] metres, camera frame


def _keyframed(rng: np.random.Generator, num_frames: int, fps: float, low: np.ndarray,
               high: np.ndarray) -> np.ndarray:
    """[T, *low.shape]: values drawn uniformly in [low, high] at keyframes, PCHIP-interpolated between them."""
    step = max(1.0, KEY_SECONDS * fps)
    key_times = np.arange(0.0, num_frames - 1 + step, step)
    if len(key_times) < 2:
        key_times = np.array([0.0, step])
    keys = rng.uniform(low, high, size=(len(key_times),) + low.shape)
    return PchipInterpolator(key_times, keys, axis=0)(np.arange(num_frames))


def _random_shape(model: BodyModel, prior: PosePrior, rng: np.random.Generator) -> np.ndarray:
    if model.kind == "anny":
        # Adults (Anny's age 0.5 is a teenager) of any build, away from the phenotype extremes.
        low = np.full(len(model.shape_names), 0.15)
        high = np.full(len(model.shape_names), 0.85)
        age = model.shape_names.index("age")
        low[age], high[age] = 0.6, 0.95
        return rng.uniform(low, high)
    mean, spread = prior.shape_mean.cpu().numpy(), prior.shape_spread.cpu().numpy()
    return np.clip(rng.normal(mean, spread), mean - 2 * spread, mean + 2 * spread)


def _framing_offset(vertices: np.ndarray, camera: PinholeCamera, height: int, width: int,
                    distance_factor: float) -> np.ndarray:
    """The camera-frame shift that centres the body's bounding box over all frames on the optical axis and puts it
    far enough away that every vertex of every frame projects inside the frame with MARGIN to spare."""
    centre = (vertices.reshape(-1, 3).min(0) + vertices.reshape(-1, 3).max(0)) / 2
    points = vertices - np.array([centre[0], centre[1], 0.0])
    # |f x / (Z + z)| <= half-frame  <=>  Z >= f |x| / half-frame - z, for every point and both image axes.
    half_width = (0.5 - MARGIN) * width - abs(camera.cx - (width - 1) / 2)
    half_height = (0.5 - MARGIN) * height - abs(camera.cy - (height - 1) / 2)
    depth = max((camera.fx * np.abs(points[..., 0]) / half_width - points[..., 2]).max(),
                (camera.fy * np.abs(points[..., 1]) / half_height - points[..., 2]).max())
    return np.array([-centre[0], -centre[1], depth * distance_factor])


def random_motion(model: BodyModel, num_frames: int, fps: float, seed: int, height: int,
                  width: int) -> tuple[BodyMotion, PinholeCamera]:
    """A random body moving smoothly for `num_frames` at `fps`, and the camera (`fit.frame_size_camera`: focal
    length = the frame's diagonal in pixels, principal point at the centre) that sees all of it in every frame.
    Deterministic given `seed`."""
    rng = np.random.default_rng(seed)
    prior = pose_prior(model)
    shape = _random_shape(model, prior, rng)

    relaxed, lower, upper = (v.cpu().numpy() for v in (prior.relaxed, prior.lower, prior.upper))
    amplitude = np.array([LEG_AMPLITUDE if any(w in name for w in LEG_WORDS) else BODY_AMPLITUDE
                          for name in model.pose_joints])[:, None]
    local = _keyframed(rng, num_frames, fps, relaxed + amplitude * (lower - relaxed),
                       relaxed + amplitude * (upper - relaxed))
    pose = prior.to_pose(torch.as_tensor(local, dtype=torch.float32, device=model.device))

    # Turning: yaw about the body's vertical, a little lean (pitch) and tilt (roll), then the half turn about x.
    angles = _keyframed(rng, num_frames, fps, np.array([-MAX_YAW, -0.1, -0.08]), np.array([MAX_YAW, 0.1, 0.08]))
    body_turn = Rotation.from_euler("YXZ", angles)
    global_orient = (Rotation.from_euler("x", math.pi) * body_turn).as_rotvec()
    drift = _keyframed(rng, num_frames, fps, -DRIFT, DRIFT)

    camera = frame_size_camera(height, width)
    motion = BodyMotion(
        shape=torch.as_tensor(shape[None], dtype=torch.float32, device=model.device), pose=pose,
        global_orient=torch.as_tensor(global_orient, dtype=torch.float32, device=model.device),
        transl=torch.as_tensor(drift, dtype=torch.float32, device=model.device))
    with torch.no_grad():
        vertices = model(motion.shape, motion.pose, motion.global_orient, motion.transl).vertices
    # A body further away than it must be, now and then, so that sizes in the frame vary.
    offset = _framing_offset(vertices.cpu().numpy().astype(np.float64), camera, height, width,
                             distance_factor=rng.uniform(1.0, 1.3))
    motion.transl = motion.transl + torch.as_tensor(offset, dtype=torch.float32, device=model.device)
    return motion, camera


def project(points_camera, camera: PinholeCamera):
    """[..., K, 3] camera-frame points (torch or numpy) -> [..., K, 2] pixel coordinates (pixel centres at
    integers). Points at depth 0 (the all-zero rows of keypoints a model does not define) come out NaN, and
    points behind the camera meaningless: callers keep bodies in front."""
    if isinstance(points_camera, torch.Tensor):
        xy = points_camera[..., :2] / points_camera[..., 2:3]
        scale = torch.tensor([camera.fx, camera.fy], dtype=points_camera.dtype, device=points_camera.device)
        centre = torch.tensor([camera.cx, camera.cy], dtype=points_camera.dtype, device=points_camera.device)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = points_camera[..., :2] / points_camera[..., 2:3]
        scale, centre = np.array([camera.fx, camera.fy]), np.array([camera.cx, camera.cy])
    return xy * scale + centre
