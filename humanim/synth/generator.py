"""Synthetic people with exact ground truth: a moving Anny body, rendered, painted and lit, in a room.

One shot is one seed: `synth_clip` draws the body and its motion (`motion.random_motion`), a look, a light and a
backdrop from it and returns the frames together with everything they were made from (camera, body parameters,
vertices, 2D keypoints with visibility, render maps). `synth_shots` strings shots with their own seeds together
and `write_synth` writes them as one video with hard cuts between shots, plus its ground truth:

`{name}.mp4`     H.264, the frames of every shot in order (the project's deterministic encoder settings)
`{name}.gt.npz`  np.savez_compressed, no object arrays (load with allow_pickle=False):
    model_kind  str                       body model ("anny")
    pose_joints str  [J]                  the joints `pose` rotates, in its order
    seed        int64                     the seed the shots' seeds were derived from
    shot_seeds  int64 [S]                 each shot's own seed: synth_clip(seed=shot_seeds[s]) remakes shot s
    shot_starts int64 [S]                 index of each shot's first frame
    fps         float64
    camera      float64 [S, 4]            fx, fy, cx, cy per shot (OpenCV pinhole, pixel centres at integers)
    shape       float32 [S, P]            body shape per shot (Anny phenotypes)
    pose        float32 [T, J, 3]         axis-angle per joint
    global_orient, transl  float32 [T, 3] model frame -> camera frame (x right, y down, z forward, metres)
    keypoints   float32 [T, 133, 3]       COCO-WholeBody (x, y, score) in pixels; score 1 on rows the model defines
    visible     bool    [T, 133]          inside the frame and not hidden by the body (synth.visibility)
    part        uint8   [T, H, W]         1 + SMPL part index (body_models.SMPL_PARTS), 0 background
    face_id     int32   [T, H, W]         mesh face seen, -1 background
    depth_mm    uint16  [T, H, W]         z-depth in millimetres, 0 background (1 mm steps, up to 65 m)
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from humanim.stages.body_models import BodyModel, load_body_model
from humanim.stages.decode import encode_h264, rgb_video_frames
from humanim.stages.render import PinholeCamera, render_maps
from humanim.synth.appearance import random_look
from humanim.synth.backdrop import random_backdrop
from humanim.synth.motion import random_motion
from humanim.synth.shading import random_light, shade_frame
from humanim.synth.visibility import image_keypoints, keypoint_radii, keypoint_visibility

RENDER_CHUNK = 8  # frames rendered per call: the full maps of a chunk are held, only compact ones are kept
APPEARANCE_STREAM = 1  # the look, light and room draw from their own stream, so they never shift the motion
MP4_CRF = 18


@dataclass
class SyntheticClip:
    """One shot of a synthetic person and its ground truth. Camera-frame quantities follow stages.render."""

    frames: np.ndarray  # uint8 [T, H, W, 3] RGB
    fps: float
    seed: int
    model_kind: str
    pose_joints: tuple[str, ...]
    camera: PinholeCamera
    shape: np.ndarray  # float32 [1, S]
    pose: np.ndarray  # float32 [T, J, 3]
    global_orient: np.ndarray  # float32 [T, 3]
    transl: np.ndarray  # float32 [T, 3]
    vertices: np.ndarray  # float32 [T, V, 3], camera frame, metres
    keypoints: np.ndarray  # float32 [T, 133, 3]: x, y in pixels, score 1 where the model defines the row
    visible: np.ndarray  # bool [T, 133]
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # part uint8, face_id int32, depth float32 (m)


def shot_seed(seed: int, shot: int) -> int:
    """Shot `shot`'s seed, hashed from the video's seed so that neighbouring seeds share no shots."""
    return int.from_bytes(hashlib.sha256(f"synth/{seed}/{shot}".encode()).digest()[:4], "little")


def synth_clip(num_frames: int, fps: float, height: int, width: int, seed: int, model: BodyModel | None = None,
               threads: int = 2, progress: Callable[[int], None] | None = None) -> SyntheticClip:
    """One shot of `num_frames` frames, deterministic given its arguments (`threads` only changes the speed).
    `progress(n)` is called as each run of n frames is done."""
    model = model or load_body_model("anny")
    motion, camera = random_motion(model, num_frames, fps, seed, height, width)
    rest_pose = torch.zeros(1, len(model.pose_joints), 3, device=model.device)
    origin = torch.zeros(1, 3, device=model.device)
    with torch.no_grad():
        posed = model(motion.shape, motion.pose, motion.global_orient, motion.transl)
        rest = model(motion.shape, rest_pose, origin, origin)
    vertices = posed.vertices.cpu().numpy().astype(np.float32)
    joints = posed.joints_wholebody.cpu().numpy().astype(np.float32)
    rest_vertices = rest.vertices[0].cpu().numpy().astype(np.float64)
    rest_keypoints = rest.joints_wholebody[0].cpu().numpy().astype(np.float64)

    rng = np.random.default_rng([seed, APPEARANCE_STREAM])
    # The floor lies under the lowest point the body reaches; the wall stands a few metres behind it.
    backdrop = random_backdrop(rng, height, width, camera, floor_depth=float(vertices[..., 1].max()),
                               wall_distance=float(np.median(vertices[..., 2]) + rng.uniform(1.5, 3.5)))
    look = random_look(rng, avoid=backdrop.wall)
    light = random_light(rng)

    frames = np.empty((num_frames, height, width, 3), np.uint8)
    maps = {"part": np.empty((num_frames, height, width), np.uint8),
            "face_id": np.empty((num_frames, height, width), np.int32),
            "depth": np.empty((num_frames, height, width), np.float32)}
    for start in range(0, num_frames, RENDER_CHUNK):
        stop = min(start + RENDER_CHUNK, num_frames)
        chunk = render_maps(vertices[start:stop], model.faces, camera, height, width, face_part=model.face_part,
                            threads=threads)
        for t in range(stop - start):
            frames[start + t] = shade_frame({name: array[t] for name, array in chunk.items()}, rest_vertices,
                                            model.faces, rest_keypoints, look, light, backdrop.image)
        for name in maps:
            maps[name][start:stop] = chunk[name]
        if progress is not None:
            progress(stop - start)

    keypoints = image_keypoints(joints, model.keypoint_mask, camera)
    visible = keypoint_visibility(joints, keypoints, maps["depth"], maps["part"],
                                  keypoint_radii(model, rest_vertices, rest_keypoints))
    return SyntheticClip(
        frames=frames, fps=float(fps), seed=int(seed), model_kind=model.kind, pose_joints=tuple(model.pose_joints),
        camera=camera, shape=motion.shape.cpu().numpy().astype(np.float32),
        pose=motion.pose.cpu().numpy().astype(np.float32),
        global_orient=motion.global_orient.cpu().numpy().astype(np.float32),
        transl=motion.transl.cpu().numpy().astype(np.float32), vertices=vertices, keypoints=keypoints,
        visible=visible, maps=maps)


def synth_shots(num_frames: int, fps: float, height: int, width: int, seed: int, shots: int,
                model: BodyModel | None = None, threads: int = 2,
                progress: Callable[[int], None] | None = None) -> list[SyntheticClip]:
    """`shots` shots of `num_frames` frames each, shot s from `shot_seed(seed, s)`."""
    model = model or load_body_model("anny")
    return [synth_clip(num_frames, fps, height, width, shot_seed(seed, s), model, threads, progress)
            for s in range(shots)]


def write_synth(out_dir: Path, name: str, shots: list[SyntheticClip], seed: int) -> tuple[Path, Path]:
    """Write `{name}.mp4` and `{name}.gt.npz` (see the module docstring) into out_dir; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = np.concatenate([shot.frames for shot in shots])
    video = out_dir / f"{name}.mp4"
    video.write_bytes(encode_h264(rgb_video_frames(frames), shots[0].fps, crf=MP4_CRF, preset="veryfast",
                                  threads=1))

    def joined(key: str) -> np.ndarray:
        return np.concatenate([getattr(shot, key) for shot in shots])

    def joined_map(key: str) -> np.ndarray:
        return np.concatenate([shot.maps[key] for shot in shots])

    depth_mm = np.rint(np.clip(joined_map("depth"), 0.0, 65.535) * 1000).astype(np.uint16)
    truth = out_dir / f"{name}.gt.npz"
    with truth.open("wb") as handle:
        np.savez_compressed(
            handle, model_kind=np.str_(shots[0].model_kind), pose_joints=np.array(shots[0].pose_joints),
            seed=np.int64(seed), shot_seeds=np.array([shot.seed for shot in shots], np.int64),
            shot_starts=np.cumsum([0] + [len(shot.frames) for shot in shots[:-1]]).astype(np.int64),
            fps=np.float64(shots[0].fps),
            camera=np.array([[s.camera.fx, s.camera.fy, s.camera.cx, s.camera.cy] for s in shots], np.float64),
            shape=joined("shape"), pose=joined("pose"), global_orient=joined("global_orient"),
            transl=joined("transl"), keypoints=joined("keypoints"), visible=joined("visible"),
            part=joined_map("part"), face_id=joined_map("face_id"), depth_mm=depth_mm)
    return video, truth
