"""Conditions drawn at train time from the shards' annotations, after augmentation, so they always match the
pixels the model sees. Maps are float32 [C, T, H, W] (channels first, like the frames tensor), or [C, H, W] for
one image; vectors are float32 [D].

- pose: the DWPose skeleton image (stages.skeleton) of each frame's keypoints, RGB in [0, 1]; what the pose
  guiders of Champ, Moore-AnimateAnyone, MusePose and MimicMotion were trained on.
- hand_blur: HIA's motion-blur condition. Inside each hand's mask: the hand's movement (dx, dy) in pixels per
  frame divided by `motion_scale` and clipped to [-1, 1], and its blur, 1 - log(1 + s) / log(1 + s_ref)
  clipped to [0, 1] for the variance-of-Laplacian sharpness s (0 = as sharp as s_ref or sharper, 1 = flat).
  HIA draws these over the hand regions of the pose image; here they are three channels beside it, which is
  the same input for a network that concatenates its conditions and leaves the pose image exactly as the
  pose guiders know it. Zero outside the hands and wherever a hand was not seen.
- renders (Champ / VividPose guidance): depth as relative nearness (nearest body point 1, farthest 0,
  background 0), the camera-frame normal mapped to [0, 1] (background 0), and the body-part label
  divided by the number of SMPL parts (background 0).
- reference: the reference frame in [-1, 1] [3, H, W] and the skeleton of its keypoints [3, H, W].
- identity (VividPose's identity controller): the 512-d ArcFace embedding of the subject's face in the
  reference frame, a vector [512]. A flip or a crop does not change who the subject is, so it passes
  augmentation untouched.
"""
from __future__ import annotations

import numpy as np

from humanim.stages.body_models import SMPL_PARTS
from humanim.stages.skeleton import draw_skeleton

CONDITIONS = ("pose", "hand_blur", "renders", "reference", "identity")
# The shard fields each condition is drawn from.
CONDITION_FIELDS: dict[str, tuple[str, ...]] = {
    "pose": ("kpts",),
    "hand_blur": ("masks", "hand_motion", "hand_sharpness", "hand_valid"),
    "renders": ("depth", "normal", "part"),
    "reference": ("ref_frame", "ref_kpts"),
    "identity": ("ref_face_embedding",),
}
MOTION_SCALE = 16.0  # pixels per frame that map to 1: fast hand motion at 512 px and 8 fps
SHARPNESS_REFERENCE = 1000.0  # variance of the Laplacian of a sharp hand crop (stages.blur's 32 px crops)


def pose_maps(kpts: np.ndarray, height: int, width: int) -> np.ndarray:
    """[T, 133, 3] keypoints -> [3, T, H, W] skeleton images in [0, 1]."""
    images = np.stack([draw_skeleton(frame_kpts, height, width) for frame_kpts in kpts])  # [T, H, W, 3]
    return images.transpose(3, 0, 1, 2).astype(np.float32) / 255.0


def hand_blur_maps(masks: np.ndarray, hand_motion: np.ndarray, hand_sharpness: np.ndarray,
                   hand_valid: np.ndarray, motion_scale: float = MOTION_SCALE,
                   sharpness_reference: float = SHARPNESS_REFERENCE) -> np.ndarray:
    """masks [T, 3, H, W] (face, left hand, right hand), motion [T, 2, 2], sharpness [T, 2], valid [T, 2]
    -> [3, T, H, W]: (dx, dy, blur) painted over each seen hand's mask."""
    frames, _, height, width = masks.shape
    out = np.zeros((3, frames, height, width), dtype=np.float32)
    # A hand seen in one frame only has a NaN movement: it counts as still.
    motion = np.clip(np.nan_to_num(np.asarray(hand_motion, np.float32)) / motion_scale, -1, 1)
    sharpness = np.nan_to_num(np.asarray(hand_sharpness, np.float32), nan=sharpness_reference)
    blur = 1 - np.clip(np.log1p(np.maximum(sharpness, 0)) / np.log1p(sharpness_reference), 0, 1)
    for t in range(frames):
        for hand in (0, 1):
            if not hand_valid[t, hand]:
                continue
            region = masks[t, 1 + hand] > 0
            values = (motion[t, hand, 0], motion[t, hand, 1], blur[t, hand])
            for channel, value in enumerate(values):
                out[channel, t][region] = value
    return out


def render_maps(depth: np.ndarray, normal: np.ndarray, part: np.ndarray) -> np.ndarray:
    """depth [T, H, W] (uint16 millimetres or float metres, 0 = background), normal [T, H, W, 3] (uint8 as
    (n + 1) 127.5, or float), part [T, H, W] uint8 -> [5, T, H, W]: nearness, normal x y z, part."""
    depth = np.asarray(depth, dtype=np.float32)
    body = depth > 0
    nearness = np.zeros_like(depth)
    if body.any():
        near, far = depth[body].min(), depth[body].max()
        nearness[body] = (far - depth[body]) / max(far - near, 1e-6) if far > near else 1.0
    if normal.dtype == np.uint8:
        unit = normal.astype(np.float32) / 127.5 - 1
    else:
        unit = np.asarray(normal, np.float32)
    normal_map = np.where(body[..., None], (unit + 1) / 2, 0).astype(np.float32).transpose(3, 0, 1, 2)
    part_map = (np.asarray(part, np.float32) / len(SMPL_PARTS))[None]
    return np.concatenate([nearness[None], normal_map, part_map]).astype(np.float32)


def reference_maps(ref_frame: np.ndarray, ref_kpts: np.ndarray | None) -> dict[str, np.ndarray]:
    """The reference image [3, H, W] in [-1, 1] and, with keypoints, its skeleton [3, H, W] in [0, 1]."""
    height, width = ref_frame.shape[:2]
    out = {"reference": ref_frame.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1}
    if ref_kpts is not None:
        out["reference_pose"] = draw_skeleton(ref_kpts, height, width).transpose(2, 0, 1).astype(np.float32) / 255
    return out


def identity_vector(sample: dict) -> np.ndarray:
    """The reference face's ArcFace embedding, float32 [512]. The loader leaves a missing optional embedding
    out of the sample (it batches zeros and a flag), but zeros are the unconditional identity (condition
    dropout), never a subject's: a sample without one is an error here."""
    if "ref_face_embedding" not in sample:
        key = sample.get("meta", {}).get("key", "?")
        raise ValueError(f"the identity condition needs field 'ref_face_embedding', absent from sample {key}: the "
                         f"shards were built without a face recogniser (the face stage writes it with a recognition "
                         f"model: backend insightface, or face.recognizer), or no face was seen in this clip's "
                         f"reference frame")
    return np.asarray(sample["ref_face_embedding"], dtype=np.float32)


def build_conditions(sample: dict, names: list[str]) -> dict[str, np.ndarray]:
    """The conditions `names` for one augmented sample."""
    unknown = sorted(set(names) - set(CONDITIONS))
    if unknown:
        raise ValueError(f"unknown condition(s) {unknown}; known: {list(CONDITIONS)}")
    height, width = sample["frames"].shape[1:3]
    out: dict[str, np.ndarray] = {}
    if "pose" in names:
        out["pose"] = pose_maps(sample["kpts"], height, width)
    if "hand_blur" in names:
        out["hand_blur"] = hand_blur_maps(sample["masks"], sample["hand_motion"], sample["hand_sharpness"],
                                          sample["hand_valid"])
    if "renders" in names:
        out["renders"] = render_maps(sample["depth"], sample["normal"], sample["part"])
    if "reference" in names:
        out.update(reference_maps(sample["ref_frame"], sample.get("ref_kpts")))
    if "identity" in names:
        out["identity"] = identity_vector(sample)
    return out
