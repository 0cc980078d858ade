"""Per-clip body fitting by optimisation: one body shape for the clip, and per frame a pose, a global orientation
and a translation in the camera frame, such that the body model's whole-body keypoints project onto the 2D
keypoints the pose stage found.

The camera is a pinhole at the origin of the OpenCV camera frame (x right, y down, z forward, metres), with
square pixels and the principal point at the frame's centre. Its focal length is given, or taken from the frame
size (`frame_size_camera`), or estimated along with the body (weakly determined: only perspective separates a
near small person from a far tall one, so estimation is off by default).

Objective (every term is a mean, so weights do not depend on clip length or keypoint count):
- reprojection: Geman-McClure of the pixel residual divided by the subject's height in pixels (one robustness
  scale suits a small and a large person), weighted by keypoint score and body part, over the keypoints the
  model defines whose score passes `score_threshold`. The height is that of the whole person, also in a
  close-up that shows a part of them: the visible body keypoints' spread against the same keypoints' spread on
  the model, times the model's height;
- pose prior: quadratic pull toward `PosePrior.relaxed`, each joint axis measured against the room the joint
  has on that side (an arm swings further forward than back, so forward costs less);
- joint limits: quadratic penalty outside each joint's range, far stronger than the prior;
- shape prior: quadratic pull toward the model's mean shape, in units of its spread;
- upright prior: the body's up axis pulled weakly toward the camera's up (people stand; cameras are held level);
- temporal smoothness: acceleration of the 3D keypoints (which covers translation and turning) and velocity of
  the joint angles.

Optimisation, in three steps:
1. Initialisation from the 2D torso: depth from the model's shoulder-to-hip length against the same length in
   pixels and the focal length; image position from the hips; facing direction from the order of the shoulders
   (a person whose left shoulder appears on the image's left faces away); roll from the torso's tilt. In a frame
   without the whole torso (a head-and-shoulders close-up) depth comes from the visible keypoints' spread
   against the model's, and the hips are placed below them by the model's proportions.
2. Levenberg-Marquardt per frame on the body's major joints, orientation and translation together, with
   Jacobians in closed form (`BodyModel.keypoint_jacobian`) and Geman-McClure by reweighting, at a wide
   robustness scale. First-order methods stall on monocular fitting: bending a limb in depth changes its 2D
   picture only to second order, so its gradient is weak exactly where the step must be large; Adam alone
   needed over a thousand iterations to get as low. (SMPLify's separate first stage on orientation and
   translation bought nothing measurable once this step moves them with the joints.)
3. Adam on everything (shape, fingers and the temporal terms included), first with the wide robustness scale,
   then with the sharp one; the learning rate decays linearly to a tenth in each, and starts lower for a subject
   taller on screen than LEARNING_RATE_PIXELS (a close-up), where Adam's first steps would shake the joints.

Frames with fewer than `min_frame_keypoints` confident body keypoints are kept: their unknowns are interpolated
from the observed frames around them after step 2, the smoothness terms carry them through step 3, and their
error is NaN.
"""
from __future__ import annotations

import dataclasses
import io
import math
import zipfile
from dataclasses import dataclass

import numpy as np
import torch

from humanim.schemas.keypoints import BODY, FACE, FEET, LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND
from humanim.stages.body_models import BodyModel, PosePrior, axis_angle_to_matrix, pose_prior
from humanim.stages.render import PinholeCamera

LEFT_SHOULDER, RIGHT_SHOULDER, LEFT_HIP, RIGHT_HIP = 5, 6, 11, 12
TORSO = (LEFT_SHOULDER, RIGHT_SHOULDER, LEFT_HIP, RIGHT_HIP)
LEARNING_RATE_PIXELS = 450.0  # the subject's height on screen that FitSettings.learning_rate was tuned at
HAND_JOINT_WORDS = ("finger", "thumb", "index", "middle", "ring", "pinky", "metacarpal")  # Anny's and smplx's
HAND_STEP = 4.0  # how much faster Adam turns finger joints than the rest (see _Problem.delta_scale)
MIN_DEPTH = 0.1  # metres: projection divides by depth; the optimiser must never see a body behind the camera


def frame_size_camera(height: int, width: int, focal: float | None = None) -> PinholeCamera:
    """The camera assumed for a frame when none is known: square pixels, the principal point at the frame's centre
    (pixel centres at integers, so the centre is at (W - 1) / 2), and a focal length of the frame's diagonal in
    pixels (CLIFF's convention: a 53 degree diagonal field of view, a normal lens)."""
    focal = math.hypot(height, width) if focal is None else float(focal)
    return PinholeCamera(fx=focal, fy=focal, cx=(width - 1) / 2, cy=(height - 1) / 2)


@dataclass(frozen=True)
class FitSettings:
    iterations: int = 30  # Adam iterations (step 3)
    gauss_newton_steps: int = 8  # step 2
    score_threshold: float = 0.3
    focal: float | None = None  # pixels; None: from the frame size
    estimate_focal: bool = False  # start from `focal` (or the frame size) and optimise it in step 3
    min_frame_keypoints: int = 6  # confident body keypoints (of 17) a frame needs to count as observed
    learning_rate: float = 0.005  # Adam's, after step 2 has done the large moves
    robust_scale: float = 0.05  # Geman-McClure scale, as a share of the subject's height in pixels
    wide_scale_factor: float = 4.0  # step 2 and the first half of step 3 use this many times robust_scale
    pose_prior_weight: float = 0.05
    limit_weight: float = 1.0
    shape_prior_weight: float = 1e-3
    upright_weight: float = 0.1
    acceleration_weight: float = 0.01
    pose_velocity_weight: float = 0.01
    # Relative weight of each keypoint group in the reprojection term; hands and face are many and noisy.
    part_weights: tuple = (("body", 1.0), ("feet", 0.5), ("hands", 0.3), ("face", 0.2))


@dataclass
class BodyFit:
    """A fitted (or imported) body for every frame of a clip, in the camera frame of `camera`."""

    model: str  # body model kind: "anny", "smpl" or "smplx"
    shape: np.ndarray  # [S] float32
    pose: np.ndarray  # [T, J, 3] float32 axis-angle per model.pose_joints
    global_orient: np.ndarray  # [T, 3] float32 axis-angle, model frame -> camera frame
    transl: np.ndarray  # [T, 3] float32 metres, camera frame
    camera: np.ndarray  # [4] float32: fx, fy, cx, cy in pixels
    focal_source: str  # "frame_size" | "given" | "estimated"
    error_px: np.ndarray  # [T] float32: mean reprojection error over confident keypoints; NaN where none
    iterations: int

    ARRAYS = ("shape", "pose", "global_orient", "transl", "camera", "error_px")

    PER_FRAME = ("pose", "global_orient", "transl", "error_px")

    def take(self, frames) -> "BodyFit":
        """The fit of the frames that `frames` (a slice or an index array) picks, in that order."""
        return dataclasses.replace(self, **{name: getattr(self, name)[frames] for name in self.PER_FRAME})

    @property
    def pinhole(self) -> PinholeCamera:
        return PinholeCamera(*(float(v) for v in self.camera))

    def to_npz_bytes(self) -> bytes:
        """An .npz (loadable with allow_pickle=False) whose bytes depend only on the fit: np.savez stamps each
        zip entry with the current time, so the archive is written here with a fixed one."""
        entries = {name: np.ascontiguousarray(getattr(self, name), dtype=np.float32) for name in self.ARRAYS}
        entries.update(model=np.array(self.model), focal_source=np.array(self.focal_source),
                       iterations=np.array(self.iterations, dtype=np.int64))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            for name in sorted(entries):
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                array_bytes = io.BytesIO()
                np.lib.format.write_array(array_bytes, entries[name], allow_pickle=False)
                archive.writestr(info, array_bytes.getvalue())
        return buffer.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> "BodyFit":
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return cls.from_arrays({name: archive[name] for name in archive.files})

    @classmethod
    def from_arrays(cls, arrays: dict) -> "BodyFit":
        """From the npz's entries by name (as the registry decodes the `body` field)."""
        return cls(model=str(arrays["model"]), focal_source=str(arrays["focal_source"]),
                   iterations=int(arrays["iterations"]), **{name: arrays[name] for name in cls.ARRAYS})


class FitFailed(ValueError):
    """A clip that cannot be fitted at all, with a reason a person can read."""


def _part_weight_vector(settings: FitSettings) -> np.ndarray:
    part_weight = dict(settings.part_weights)
    weights = np.zeros(NUM_KEYPOINTS, dtype=np.float32)
    weights[BODY] = part_weight["body"]
    weights[FEET] = part_weight["feet"]
    weights[LEFT_HAND] = weights[RIGHT_HAND] = part_weight["hands"]
    weights[FACE] = part_weight["face"]
    return weights


def _project(points: torch.Tensor, focal: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    return points[..., :2] / points[..., 2:3].clamp(min=MIN_DEPTH) * focal + centre


def _interpolate_missing(values: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """[T, ...] values known where `observed`: linear in between, held constant beyond the ends."""
    frames = np.arange(len(values))
    flat = values.reshape(len(values), -1)
    filled = np.stack([np.interp(frames, frames[observed], flat[observed, c]) for c in range(flat.shape[1])], 1)
    return filled.reshape(values.shape)


def _rotation_to_axis_angle(rotation: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    return Rotation.from_matrix(rotation).as_rotvec().astype(np.float32)


def _pixels_per_metre(points: np.ndarray, model_points: np.ndarray) -> float:
    """Image scale of a person from some of their keypoints [N, 2] and the same keypoints of the rest-pose model
    [N, 3] (y up): the ratio of their spreads, which no rotation in the image plane changes. With fewer than two
    points, 1."""
    model_spread = np.square(model_points[:, :2] - model_points[:, :2].mean(0)).sum()
    if len(points) < 2 or model_spread <= 0:
        return 1.0
    return max(math.sqrt(np.square(points - points.mean(0)).sum() / model_spread), 1e-3)


def _initial_placement(keypoints: np.ndarray, confident: np.ndarray, observed: np.ndarray,
                       rest_keypoints: np.ndarray, focal: float, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, (global_orient [T, 3], transl [T, 3]) from the 2D torso; see the module docstring."""
    frames = len(keypoints)
    torso_seen = confident[:, TORSO].all(1) & observed
    if not torso_seen.any():  # no whole torso anywhere: fall back to the shoulders or hips that are there
        torso_seen = observed
    xy = keypoints[..., :2]
    mid_shoulder_model = rest_keypoints[[LEFT_SHOULDER, RIGHT_SHOULDER]].mean(0)
    mid_hip_model = rest_keypoints[[LEFT_HIP, RIGHT_HIP]].mean(0)
    torso_metres = np.linalg.norm(mid_shoulder_model - mid_hip_model)

    depth = np.full(frames, np.nan)
    anchor = np.full((frames, 2), np.nan)  # pixel position of the hips' midpoint (or of what stands for it)
    facing_away = np.zeros(frames)
    roll = np.zeros(frames)
    for t in np.flatnonzero(torso_seen):
        seen = confident[t]
        shoulders = [k for k in (LEFT_SHOULDER, RIGHT_SHOULDER) if seen[k]]
        hips = [k for k in (LEFT_HIP, RIGHT_HIP) if seen[k]]
        body = np.flatnonzero(seen[BODY])
        if shoulders and hips:
            upper, lower = xy[t, shoulders].mean(0), xy[t, hips].mean(0)
            torso_pixels = max(np.linalg.norm(upper - lower), 1.0)
            depth[t] = focal * torso_metres / torso_pixels
            anchor[t] = lower
            # The torso's tilt in the image: 0 when the shoulders are straight above the hips.
            roll[t] = math.atan2(upper[0] - lower[0], lower[1] - upper[1])
        else:  # a part of the body (a close-up): its size against the same points of the model
            pixels_per_metre = _pixels_per_metre(xy[t, body], rest_keypoints[body])
            depth[t] = focal / pixels_per_metre
            # The hips' midpoint stands below the seen points' centre by their height above it in the model.
            height_above_hips = rest_keypoints[body, 1].mean() - mid_hip_model[1]
            anchor[t] = xy[t, body].mean(0) + [0.0, height_above_hips * pixels_per_metre]
        if seen[LEFT_SHOULDER] and seen[RIGHT_SHOULDER]:
            facing_away[t] = float(xy[t, LEFT_SHOULDER, 0] < xy[t, RIGHT_SHOULDER, 0])
        elif seen[LEFT_HIP] and seen[RIGHT_HIP]:
            facing_away[t] = float(xy[t, LEFT_HIP, 0] < xy[t, RIGHT_HIP, 0])
    known = ~np.isnan(depth)
    depth = _interpolate_missing(depth, known)
    anchor = _interpolate_missing(anchor, known)
    roll = _interpolate_missing(roll, known)
    # One noisy frame (a side view) must not turn the body round: majority over a window of 5 frames.
    facing_away = _interpolate_missing(facing_away, known)
    padded = np.pad(facing_away, 2, mode="edge")
    facing_away = np.array([np.median(padded[t:t + 5]) for t in range(frames)]) > 0.5

    orient, transl = np.zeros((frames, 3), np.float32), np.zeros((frames, 3), np.float32)
    flip = np.diag([1.0, -1.0, -1.0])  # model frame (y up, facing +z) -> camera frame, facing the camera
    for t in range(frames):
        yaw = math.pi if facing_away[t] else 0.0
        cos_yaw, sin_yaw = math.cos(yaw), math.sin(yaw)
        turn = np.array([[cos_yaw, 0, sin_yaw], [0, 1, 0], [-sin_yaw, 0, cos_yaw]])
        cos_roll, sin_roll = math.cos(roll[t]), math.sin(roll[t])
        tilt = np.array([[cos_roll, -sin_roll, 0], [sin_roll, cos_roll, 0], [0, 0, 1]])  # about the camera's z
        rotation = tilt @ flip @ turn
        orient[t] = _rotation_to_axis_angle(rotation)
        hip_camera = np.array([*(anchor[t] - centre) / focal * depth[t], depth[t]])
        transl[t] = hip_camera - rotation @ mid_hip_model
    return orient, transl




@dataclass
class _Problem:
    """What one clip's fit is measured against, as tensors on the model's device."""

    model: BodyModel
    prior: PosePrior
    settings: FitSettings
    target: torch.Tensor  # [T, 133, 2] pixels
    weights: torch.Tensor  # [T, 133], summing to 1: score x part weight where confident in an observed frame
    observed: np.ndarray  # [T] bool
    subject_pixels: float  # the subject's median height in pixels
    centre: torch.Tensor  # [2] principal point
    free: torch.Tensor  # [J] bool: joints that are not locked
    free_axes: torch.Tensor  # [F, 3] bool: axes of free joints with a range of non-zero width
    # [F, 1]: how far a unit of pose_delta turns each free joint. Step 2 leaves the fingers to step 3, which
    # starts them at relaxed, so Adam moves them HAND_STEP times faster than the already fitted body.
    delta_scale: torch.Tensor
    room_above: torch.Tensor  # [J, 3]
    room_below: torch.Tensor  # [J, 3]
    half_range: torch.Tensor  # [J, 3]

    @property
    def frames(self) -> int:
        return self.target.shape[0]


@dataclass
class _Unknowns:
    """Leaf tensors the optimisers move. Translation is kept as the root's image-plane position over depth and
    log depth, so that a step means much the same in all three coordinates."""

    shape: torch.Tensor  # [1, S]
    pose_delta: torch.Tensor  # [T, F, 3] local offset from the relaxed pose of each free joint / delta_scale
    orient: torch.Tensor  # [T, 3]
    plane: torch.Tensor  # [T, 2] x / z, y / z of transl
    log_depth: torch.Tensor  # [T]
    log_focal: torch.Tensor  # []

    def local_pose(self, problem: _Problem) -> torch.Tensor:
        local = problem.prior.relaxed.expand(problem.frames, -1, -1).clone()
        local[:, problem.free] = local[:, problem.free] + self.pose_delta * problem.delta_scale * problem.free_axes
        return local

    def transl(self) -> torch.Tensor:
        depth = self.log_depth.exp()
        return torch.cat([self.plane * depth[:, None], depth[:, None]], 1)


def _prior_offset(local: torch.Tensor, problem: _Problem, joints=slice(None)) -> torch.Tensor:
    """[..., len(joints), 3] local pose -> its offsets from relaxed in units of the room on that side."""
    offset = local - problem.prior.relaxed[joints]
    return offset / torch.where(offset > 0, problem.room_above[joints], problem.room_below[joints])


def _limit_excess(local: torch.Tensor, problem: _Problem, joints=slice(None)) -> torch.Tensor:
    """[..., len(joints), 3] local pose -> how far outside its range, in units of half the range (signed)."""
    above = (local - problem.prior.upper[joints]).clamp(min=0)
    below = (problem.prior.lower[joints] - local).clamp(min=0)
    return (above - below) / problem.half_range[joints]


def _robust(residual: torch.Tensor, scale: float) -> torch.Tensor:
    """Geman-McClure: the squared residual over scale^2 for small residuals, at most 1 for outliers."""
    return residual.square() / (residual.square() + scale**2)


def _objective(unknowns: _Unknowns, problem: _Problem, scale: float) -> torch.Tensor:
    settings, model, free = problem.settings, problem.model, problem.free
    local = unknowns.local_pose(problem)
    points = model.keypoints_only(unknowns.shape, problem.prior.to_pose(local), unknowns.orient, unknowns.transl())
    pixels = _project(points, unknowns.log_focal.exp(), problem.centre)
    residual = (pixels - problem.target).norm(dim=-1) / problem.subject_pixels
    loss = (problem.weights * _robust(residual, scale)).sum()
    if problem.frames > 2:  # in units of the sharp robustness scale carried to a 1.7 m body
        accel = (points[2:] - 2 * points[1:-1] + points[:-2])[:, model.keypoint_mask]
        loss = loss + settings.acceleration_weight * (accel / (1.7 * settings.robust_scale)).square().sum(-1).mean()
    up_y = axis_angle_to_matrix(unknowns.orient)[:, 1, 1]  # the body's up axis along the camera's y (down)
    loss = loss + settings.upright_weight * (1 + up_y).mean()
    loss = loss + settings.limit_weight * _limit_excess(local, problem).square()[:, free].mean()
    loss = loss + settings.pose_prior_weight * _prior_offset(local, problem).square()[:, free].mean()
    prior = problem.prior
    shape_offset = (unknowns.shape - prior.shape_mean) / prior.shape_spread
    loss = loss + settings.shape_prior_weight * shape_offset.square().mean()
    if problem.frames > 1:
        loss = loss + settings.pose_velocity_weight * (local[1:] - local[:-1]).square()[:, free].mean()
    return loss


def _adam(unknowns: _Unknowns, problem: _Problem, parameters: list[torch.Tensor], count: int, scale: float) -> None:
    if count <= 0:
        return
    # Adam moves every unknown by about the learning rate in its first steps, whatever its gradient; a joint angle
    # moved that much shifts a close-up's keypoints by many pixels, and frame by frame in different directions.
    # So the rate is for a person LEARNING_RATE_PIXELS tall and shrinks for one who is taller on screen.
    learning_rate = problem.settings.learning_rate * min(1.0, LEARNING_RATE_PIXELS / problem.subject_pixels)
    optimiser = torch.optim.Adam(parameters, lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LinearLR(optimiser, 1.0, 0.1, total_iters=count)
    for _ in range(count):
        optimiser.zero_grad(set_to_none=True)
        _objective(unknowns, problem, scale).backward()
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            unknowns.shape.clamp_(problem.prior.shape_lower, problem.prior.shape_upper)


def _gauss_newton(unknowns: _Unknowns, problem: _Problem, steps: int, scale: float) -> None:
    """Levenberg-Marquardt, each observed frame on its own (the temporal terms wait for step 3), on the free
    axes of the body's joints (the fingers wait too), orientation and translation, with shape held."""
    model, prior, settings = problem.model, problem.prior, problem.settings
    device = problem.target.device
    free_index = torch.nonzero(problem.free)[:, 0]
    slots = torch.nonzero(problem.delta_scale[:, 0] == 1)[:, 0]  # the body's joints, among the free ones
    joints = free_index[slots].tolist()  # positions among all pose joints
    chosen = problem.free_axes[slots]  # [P, 3]
    axes = prior.axes[joints] * chosen[:, None, :]  # local axes of the chosen joints, zero where not free
    count = int(chosen.sum())
    unknown_count = count + 6
    frames = torch.as_tensor(np.flatnonzero(problem.observed), device=device)
    n = len(frames)
    # The per-frame objective is step 3's objective times T, so both weigh data against priors alike. Only the
    # keypoints the model defines count: keypoint_jacobian gives those rows.
    defined = torch.as_tensor(model.keypoint_mask, device=device)
    frame_weights = problem.weights[frames][:, defined] * problem.frames
    target = problem.target[frames][:, defined]
    rows_count = int(defined.sum())
    prior_root, limit_root = (math.sqrt(weight / (3 * int(problem.free.sum()))) for weight in
                              (settings.pose_prior_weight, settings.limit_weight))

    with torch.no_grad():
        local_all = unknowns.local_pose(problem)[frames]
        vector = torch.cat([local_all[:, joints][:, chosen], unknowns.orient[frames], unknowns.plane[frames],
                            unknowns.log_depth[frames, None]], 1)
        focal = unknowns.log_focal.exp()

    def unpack(values: torch.Tensor):
        local = local_all.clone()
        part = local[:, joints]
        part[:, chosen] = values[:, :count]
        local[:, joints] = part
        depth = values[:, count + 5].exp()
        transl = torch.cat([values[:, count + 3:count + 5] * depth[:, None], depth[:, None]], 1)
        return local, values[:, count:count + 3], transl

    def prior_residuals(local: torch.Tensor) -> torch.Tensor:
        chosen_local = local[:, joints]
        return torch.cat([prior_root * _prior_offset(chosen_local, problem, joints)[:, chosen],
                          limit_root * _limit_excess(chosen_local, problem, joints)[:, chosen]], 1)

    def cost(values: torch.Tensor) -> torch.Tensor:
        local, orient, transl = unpack(values)
        points = model.keypoints_only(unknowns.shape, prior.to_pose(local), orient, transl)[:, defined]
        residual = (_project(points, focal, problem.centre) - target).norm(dim=-1) / problem.subject_pixels
        return (frame_weights * _robust(residual, scale)).sum(1) + prior_residuals(local).square().sum(1)

    with torch.no_grad():
        current = cost(vector)
        damping = torch.full((n,), 1e-3, device=device)
        for _ in range(steps):
            local, orient, transl = unpack(vector)
            points, pose_jacobian, orient_jacobian = model.keypoint_jacobian(
                unknowns.shape, prior.to_pose(local), orient, transl, joints)
            points = points[:, defined]
            # d points / d unknowns [n, K, 3, U]: local axes, orientation, image-plane position, log depth.
            by_axis = (pose_jacobian @ axes[None, None]).permute(0, 1, 3, 2, 4).flatten(3)
            by_axis = by_axis[..., chosen.flatten()]
            by_plane = torch.zeros(n, 1, 3, 2, device=device)
            by_plane[:, 0, 0, 0] = by_plane[:, 0, 1, 1] = transl[:, 2]
            by_plane = by_plane.expand(-1, rows_count, -1, -1)
            by_depth = transl[:, None, :, None].expand(-1, rows_count, -1, -1)
            point_jacobian = torch.cat([by_axis, orient_jacobian, by_plane, by_depth], 3)
            depth = points[..., 2:3].clamp(min=MIN_DEPTH)
            pixels = points[..., :2] / depth * focal + problem.centre
            # d pixel / d point: f / z [[1, 0, -x/z], [0, 1, -y/z]]
            projection = torch.zeros(n, rows_count, 2, 3, device=device)
            projection[..., 0, 0] = projection[..., 1, 1] = (focal / depth)[..., 0]
            projection[..., :, 2] = -(pixels - problem.centre) / depth
            error = (pixels - target) / problem.subject_pixels
            residual = error.norm(dim=-1)
            # Reweighting for Geman-McClure: d rho / d (r^2) = scale^2 / (r^2 + scale^2)^2.
            root = (frame_weights * scale**2 / (residual.square() + scale**2).square()).sqrt()[..., None]
            rows = (error * root).flatten(1)
            jacobian = ((projection @ point_jacobian) / problem.subject_pixels * root[..., None]).flatten(1, 2)
            # Prior and limit rows are linear in the local axes (limits where they are exceeded).
            chosen_local = local[:, joints]
            offset_slope = prior_root / torch.where(chosen_local > prior.relaxed[joints], problem.room_above[joints],
                                                    problem.room_below[joints])[:, chosen]
            excess = _limit_excess(chosen_local, problem, joints)[:, chosen]
            limit_slope = limit_root / problem.half_range[joints].expand(n, -1, -1)[:, chosen] * (excess != 0)
            eye = torch.eye(count, unknown_count, device=device)
            rows = torch.cat([rows, prior_residuals(local)], 1)
            jacobian = torch.cat([jacobian, offset_slope[..., None] * eye, limit_slope[..., None] * eye], 1)
            hessian = jacobian.transpose(1, 2) @ jacobian
            gradient = jacobian.transpose(1, 2) @ rows[..., None]
            # Levenberg's damping, the same for every unknown: Marquardt's (scaled by the diagonal) leaves the
            # weakly seen unknowns, depth above all, almost undamped, and their steps overshoot.
            level = hessian.diagonal(dim1=1, dim2=2).mean(1)
            start, pending = vector, torch.ones(n, dtype=torch.bool, device=device)
            for _try in range(4):  # damp harder for the frames whose step did not lower their cost
                system = hessian + (damping * level)[:, None, None] * torch.eye(unknown_count, device=device)
                candidate = start - torch.linalg.solve(system, gradient)[..., 0]
                candidate_cost = cost(candidate)
                better = pending & (candidate_cost < current)
                vector = torch.where(better[:, None], candidate, vector)
                current = torch.where(better, candidate_cost, current)
                damping = torch.where(better, damping / 3, torch.where(pending, damping * 4, damping))
                pending = pending & ~better
                if not pending.any():
                    break

        local, orient, transl = unpack(vector)
        unknowns.pose_delta[frames] = (local - prior.relaxed)[:, problem.free] / problem.delta_scale * problem.free_axes
        unknowns.orient[frames] = orient
        unknowns.plane[frames] = vector[:, count + 3:count + 5]
        unknowns.log_depth[frames] = vector[:, count + 5]


def _fill_unobserved(unknowns: _Unknowns, observed: np.ndarray) -> None:
    """Unknowns of unobserved frames, linearly interpolated between the observed frames around them."""
    if observed.all():
        return
    with torch.no_grad():
        for tensor in (unknowns.pose_delta, unknowns.orient, unknowns.plane, unknowns.log_depth):
            filled = _interpolate_missing(tensor.detach().cpu().numpy(), observed)
            tensor.copy_(torch.as_tensor(filled, dtype=tensor.dtype))


def fit_clip(keypoints: np.ndarray, height: int, width: int, model: BodyModel,
             settings: FitSettings = FitSettings()) -> BodyFit:
    """Fit `model` to whole-body keypoints [T, 133, 3] (x, y in pixels, score) of one person in a clip.
    Raises FitFailed when no frame has enough confident body keypoints."""
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must be [T, {NUM_KEYPOINTS}, 3], not {list(keypoints.shape)}")
    finite = np.isfinite(keypoints).all(-1)
    confident = finite & (keypoints[..., 2] >= settings.score_threshold) & model.keypoint_mask[None]
    observed = confident[:, BODY].sum(1) >= settings.min_frame_keypoints
    if not observed.any():
        raise FitFailed(f"no frame has {settings.min_frame_keypoints} body keypoints with a score of at least "
                        f"{settings.score_threshold}: nothing to fit")
    keypoints = np.where(finite[..., None], keypoints, 0.0).astype(np.float32)
    as_tensor = {"dtype": torch.float32, "device": model.device}
    camera = frame_size_camera(height, width, settings.focal)
    focal_source = "estimated" if settings.estimate_focal else ("frame_size" if settings.focal is None else "given")
    prior = pose_prior(model)

    counted = confident & observed[:, None]
    weights = keypoints[..., 2] * _part_weight_vector(settings)[None] * counted
    mean_shape = prior.shape_mean[None].clone()
    with torch.no_grad():
        zeros = torch.zeros(1, 3, **as_tensor)
        rest_keypoints = model.keypoints_only(mean_shape, prior.to_pose(prior.relaxed)[None], zeros, zeros)[0]
    # The robustness scale follows the whole person's height in pixels, also when a close-up shows a part of them:
    # measured from the visible body keypoints' spread against the model's, not from their own extent.
    rest_keypoints = rest_keypoints.cpu().numpy()
    rest_body = rest_keypoints[BODY]
    subject_pixels = float(np.ptp(rest_body[:, 1]) * np.median([
        _pixels_per_metre(keypoints[t, BODY][confident[t, BODY], :2], rest_body[confident[t, BODY]])
        for t in np.flatnonzero(observed)]))
    free = ~prior.locked
    free_names = [name for name, is_free in zip(model.pose_joints, free.tolist()) if is_free]
    problem = _Problem(
        model=model, prior=prior, settings=settings, target=torch.as_tensor(keypoints[..., :2], **as_tensor),
        weights=torch.as_tensor(weights / weights.sum(), **as_tensor), observed=observed,
        subject_pixels=max(subject_pixels, 0.05 * height, 1.0),
        centre=torch.tensor([camera.cx, camera.cy], **as_tensor),
        free=free, free_axes=(prior.upper - prior.lower)[free] != 0,
        delta_scale=torch.tensor([[HAND_STEP if any(word in name for word in HAND_JOINT_WORDS) else 1.0]
                                  for name in free_names], **as_tensor),
        room_above=(prior.upper - prior.relaxed).clamp(min=0.05),
        room_below=(prior.relaxed - prior.lower).clamp(min=0.05),
        half_range=((prior.upper - prior.lower) / 2).clamp(min=1e-3))

    orient, transl = _initial_placement(keypoints, confident, observed, rest_keypoints, camera.fx,
                                        np.array([camera.cx, camera.cy]))
    transl_t = torch.as_tensor(transl, **as_tensor)
    unknowns = _Unknowns(
        shape=mean_shape.requires_grad_(True),
        pose_delta=torch.zeros(len(keypoints), int(free.sum()), 3, **as_tensor).requires_grad_(True),
        orient=torch.as_tensor(orient, **as_tensor).requires_grad_(True),
        plane=(transl_t[:, :2] / transl_t[:, 2:3]).requires_grad_(True),
        log_depth=transl_t[:, 2].clamp(min=MIN_DEPTH).log().requires_grad_(True),
        log_focal=torch.tensor(math.log(camera.fx), **as_tensor).requires_grad_(settings.estimate_focal))

    wide, sharp = settings.wide_scale_factor * settings.robust_scale, settings.robust_scale
    everything = [unknowns.orient, unknowns.plane, unknowns.log_depth, unknowns.pose_delta, unknowns.shape] + (
        [unknowns.log_focal] if settings.estimate_focal else [])
    _gauss_newton(unknowns, problem, settings.gauss_newton_steps, wide)
    _fill_unobserved(unknowns, observed)
    _adam(unknowns, problem, everything, settings.iterations // 2, scale=wide)
    _adam(unknowns, problem, everything, settings.iterations - settings.iterations // 2, scale=sharp)

    with torch.no_grad():
        pose = prior.to_pose(unknowns.local_pose(problem))
        focal = float(unknowns.log_focal.exp()) if settings.estimate_focal else camera.fx
    fit = BodyFit(
        model=model.kind, shape=unknowns.shape[0].detach().cpu().numpy().astype(np.float32),
        pose=pose.cpu().numpy().astype(np.float32),
        global_orient=unknowns.orient.detach().cpu().numpy().astype(np.float32),
        transl=unknowns.transl().detach().cpu().numpy().astype(np.float32),
        camera=np.array([focal, focal, camera.cx, camera.cy], dtype=np.float32), focal_source=focal_source,
        error_px=np.zeros(len(keypoints), np.float32), iterations=settings.iterations + settings.gauss_newton_steps)
    fit.error_px = reprojection_error(model, fit, keypoints, settings.score_threshold)
    fit.error_px[~observed] = np.nan  # too few keypoints to call it a measurement
    return fit


def projected_keypoints(model: BodyModel, fit: BodyFit) -> np.ndarray:
    """[T, 133, 2] pixel positions of the fit's whole-body keypoints (rows outside model.keypoint_mask are
    meaningless)."""
    as_tensor = {"dtype": torch.float32, "device": model.device}
    with torch.no_grad():
        points = model.keypoints_only(torch.as_tensor(fit.shape, **as_tensor)[None],
                                      torch.as_tensor(fit.pose, **as_tensor),
                                      torch.as_tensor(fit.global_orient, **as_tensor),
                                      torch.as_tensor(fit.transl, **as_tensor)).cpu().numpy()
    fx, fy, cx, cy = (float(v) for v in fit.camera)
    depth = np.maximum(points[..., 2], MIN_DEPTH)
    return np.stack([points[..., 0] / depth * fx + cx, points[..., 1] / depth * fy + cy], -1)


def reprojection_error(model: BodyModel, fit: BodyFit, keypoints: np.ndarray, score_threshold: float) -> np.ndarray:
    """[T] float32: per frame, the mean pixel distance between the fit's projected keypoints and the confident
    keypoints [T, 133, 3] the model defines; NaN in frames with none."""
    pixels = projected_keypoints(model, fit)
    keypoints = np.asarray(keypoints, dtype=np.float32)
    counted = (np.isfinite(keypoints).all(-1) & (keypoints[..., 2] >= score_threshold)
               & model.keypoint_mask[None])
    distance = np.linalg.norm(np.where(counted[..., None], pixels - keypoints[..., :2], 0.0), axis=-1)
    error = np.full(len(keypoints), np.nan, dtype=np.float32)
    seen = counted.any(1)
    error[seen] = (distance * counted).sum(1)[seen] / counted.sum(1)[seen]
    return error
