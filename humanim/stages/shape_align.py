"""Parametric shape alignment (Champ, eq. 3; VividPose): the driving clip's motion performed by the reference
image's body, so that the guidance maps rendered from it fit the person in the reference image instead of the
person who drove the motion.

The aligned fit takes the reference's shape and camera, and the driving clip's pose and global orientation
unchanged. Its translation places the body of frame 0 so that its projected box matches the reference body's
box (same centre, same height) in the reference's camera. Later frames keep the driving clip's root motion
relative to frame 0: sideways and vertical motion scaled by the ratio of the two bodies' sizes (a shorter person
takes shorter steps), depth motion by the ratio of the two frame-0 distances (so the body grows or shrinks in
the frame in the same proportion as in the driving clip).

The skeleton of the aligned motion (`aligned_keypoints`) is the aligned body's projected keypoints, with the
driving detection's scores; the 68 face points, which the body models do not define, follow the head by the
similarity that maps the driving head's points onto the aligned head's. Without body fits,
`align_keypoints_2d` scales and moves the driving skeleton so that its first frame stands where and as tall as
the reference's.
"""
from __future__ import annotations

import numpy as np
import torch

from humanim.schemas.keypoints import BODY, FACE
from humanim.stages.body_models import BodyModel
from humanim.stages.fit import MIN_DEPTH, BodyFit, projected_keypoints

HEAD_ANCHORS = np.arange(0, 5)  # nose, eyes, ears: what the 68 face points follow
BOX_ITERATIONS = 8  # fixed-point steps that place frame 0; each shrinks the box mismatch about tenfold


def _vertices(model: BodyModel, shape, pose, global_orient, transl) -> np.ndarray:
    as_tensor = {"dtype": torch.float32, "device": model.device}
    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(shape), **as_tensor).reshape(1, -1),
                    *(torch.as_tensor(np.asarray(value), **as_tensor) for value in (pose, global_orient, transl)))
    return out.vertices.cpu().numpy().astype(np.float64)


def projected_box(vertices: np.ndarray, camera: np.ndarray) -> np.ndarray:
    """[..., V, 3] camera-frame points -> [..., 4] box (x0, y0, x1, y1) of their projection in pixels."""
    fx, fy, cx, cy = (float(v) for v in camera)
    depth = np.maximum(vertices[..., 2], MIN_DEPTH)
    x, y = vertices[..., 0] / depth * fx + cx, vertices[..., 1] / depth * fy + cy
    return np.stack([x.min(-1), y.min(-1), x.max(-1), y.max(-1)], -1)


def align_shape(reference: BodyFit, driving: BodyFit, model: BodyModel, height: int, width: int) -> BodyFit:
    """The driving fit's poses on the reference fit's shape, framed like the reference (see the module
    docstring). `reference` holds the reference image's fit (its first frame is used); height and width are the
    reference image's, whose camera the result keeps."""
    if not reference.model == driving.model == model.kind:
        raise ValueError(f"shape alignment needs one body model: reference {reference.model!r}, driving "
                         f"{driving.model!r}, model {model.kind!r}")
    if not (0 <= reference.camera[2] < width and 0 <= reference.camera[3] < height):
        raise ValueError(f"the reference fit's principal point {reference.camera[2:].tolist()} lies outside a "
                         f"{width}x{height} image: fit and image size do not belong together")
    frames = len(driving.pose)
    reference_vertices = _vertices(model, reference.shape, reference.pose[:1], reference.global_orient[:1],
                                   reference.transl[:1])[0]
    target = projected_box(reference_vertices, reference.camera)
    target_height, target_centre = target[3] - target[1], (target[:2] + target[2:]) / 2
    fx, fy = float(reference.camera[0]), float(reference.camera[1])

    # Frame 0 of the driving pose on the reference body, translated only by where the loop puts it.
    posed = _vertices(model, reference.shape, driving.pose[:1], driving.global_orient[:1], np.zeros((1, 3)))[0]
    own = _vertices(model, driving.shape, driving.pose[:1], driving.global_orient[:1], np.zeros((1, 3)))[0]
    transl = reference.transl[0].astype(np.float64).copy()
    for _ in range(BOX_ITERATIONS):
        box = projected_box(posed + transl, reference.camera)
        depth = transl[2] + posed[:, 2].mean()
        # Box height goes as 1 / depth: scale the depth by the height ratio, then slide the centre across.
        transl[2] = depth * (box[3] - box[1]) / max(target_height, 1e-6) - posed[:, 2].mean()
        depth = transl[2] + posed[:, 2].mean()
        box = projected_box(posed + transl, reference.camera)
        transl[:2] += (target_centre - (box[:2] + box[2:]) / 2) * depth / np.array([fx, fy])

    size_ratio = np.ptp(posed[:, 1]) / max(np.ptp(own[:, 1]), 1e-6)
    depth_ratio = (transl[2] + posed[:, 2].mean()) / max(float(driving.transl[0, 2]) + own[:, 2].mean(), MIN_DEPTH)
    motion = driving.transl.astype(np.float64) - driving.transl[:1]
    aligned_transl = transl + motion * np.array([size_ratio, size_ratio, depth_ratio])
    return BodyFit(
        model=model.kind, shape=np.asarray(reference.shape, np.float32).copy(),
        pose=np.asarray(driving.pose, np.float32).copy(),
        global_orient=np.asarray(driving.global_orient, np.float32).copy(),
        transl=aligned_transl.astype(np.float32), camera=np.asarray(reference.camera, np.float32).copy(),
        focal_source=reference.focal_source, error_px=np.full(frames, np.nan, np.float32), iterations=0)


# The skeleton of an aligned motion ---------------------------------------------------------------------------


def similarity(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Scale s, rotation R [2, 2] and shift t with target ~ s R source + t, least squares (Umeyama)."""
    source_mean, target_mean = source.mean(0), target.mean(0)
    a, b = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(b.T @ a)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = float((singular * np.diag(sign)).sum() / max((a ** 2).sum(), 1e-9))
    return scale, rotation, target_mean - scale * rotation @ source_mean


def aligned_keypoints(model, driving, aligned, driving_kpts: np.ndarray) -> np.ndarray:
    """The skeleton of the aligned fit: its projected keypoints where the body model defines them, the face
    points carried by the head's similarity, and the driving detection's scores (unseen stays unseen)."""
    before, after = projected_keypoints(model, driving), projected_keypoints(model, aligned)
    out = np.array(driving_kpts, dtype=np.float32, copy=True)
    defined = model.keypoint_mask
    out[:, defined, :2] = after[:, defined]
    if not defined[FACE].all():
        for t in range(len(out)):
            scale, rotation, shift = similarity(before[t, HEAD_ANCHORS], after[t, HEAD_ANCHORS])
            face = np.nan_to_num(driving_kpts[t, FACE, :2])
            out[t, FACE, :2] = face @ (scale * rotation).T + shift
    out[..., 2] = np.nan_to_num(out[..., 2])
    return out


def align_keypoints_2d(reference_kpts: np.ndarray, driving_kpts: np.ndarray, threshold: float = 0.3,
                       min_body_keypoints: int = 6) -> np.ndarray:
    """Without body fits: the driving skeleton scaled to the reference's height and moved onto it (its first
    confident frame stands where the reference stands); later frames keep the driving motion, scaled."""
    def box(points: np.ndarray) -> tuple[np.ndarray, float]:
        seen = points[np.nan_to_num(points[:, 2]) >= threshold, :2]
        return (seen.min(0) + seen.max(0)) / 2, float(np.ptp(seen[:, 1]))

    body = driving_kpts[:, BODY]
    first = next(t for t in range(len(body)) if (np.nan_to_num(body[t, :, 2]) >= threshold).sum()
                 >= min_body_keypoints)
    driving_centre, driving_height = box(body[first])
    reference_centre, reference_height = box(reference_kpts[BODY])
    scale = reference_height / max(driving_height, 1e-6)
    out = np.array(driving_kpts, dtype=np.float32, copy=True)
    out[..., :2] = (out[..., :2] - driving_centre) * scale + reference_centre
    out[..., 2] = np.nan_to_num(out[..., 2])
    return out
