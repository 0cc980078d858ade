"""Speed of the render maps and of the Anny body model, and the size of the maps in storage; prints a table.

    PYTHONPATH=. python bench/render.py [--frames 32] [--size 512] [--device cpu] [--baseline OLD_RENDER.py]

Two workloads of the Anny mesh filling most of a square image: a clip (the synthetic generator's motion at
24 fps: what the render stage sees) and independent random poses per frame (the worst case for a BVH refitted
from frame to frame). The renderer's methods (raster, raycast, and pytorch3d where it is installed) are timed
alternately in the same run, so all see the same load, and the raster and raycast maps are compared. --baseline
adds another version of humanim/stages/render.py (e.g. `git show HEAD:humanim/stages/render.py >
/tmp/render_head.py`, its default method) to the alternation.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import io
import os
import platform
import sys
import time

import numpy as np
import torch
import warp as wp
from PIL import Image

from humanim.stages.body_models import load_body_model
from humanim.stages.render import METHODS, PinholeCamera, render_maps
from humanim.stages.render_pytorch3d import pytorch3d_available

# Model frame (y up, facing +z) to OpenCV camera (y down, looking along +z): the body faces the camera.
MODEL_TO_CAMERA = np.diag([1.0, -1.0, -1.0]).astype(np.float32)
CAMERA_DISTANCE = 3.0  # metres


def seconds_per_call(fn, repeats: int) -> float:
    fn()  # warm-up: kernel loading, allocator
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def posed_frames(model, frames: int, seed: int = 0) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    pose = 0.25 * torch.randn(frames, len(model.pose_joints), 3, generator=generator)
    zeros = torch.zeros(frames, 3)
    with torch.no_grad():
        vertices = model.forward(torch.full((1, len(model.shape_names)), 0.5), pose, zeros, zeros).vertices
    return vertices.numpy() @ MODEL_TO_CAMERA.T + np.float32([0.0, 0.0, CAMERA_DISTANCE])


def clip_frames(model, frames: int, size: int) -> tuple[np.ndarray, PinholeCamera]:
    from humanim.synth.motion import random_motion

    motion, camera = random_motion(model, frames, 24.0, seed=0, height=size, width=size)
    with torch.no_grad():
        vertices = model(motion.shape, motion.pose, motion.global_orient, motion.transl).vertices
    return vertices.numpy(), camera


def load_module(path: str):
    spec = importlib.util.spec_from_file_location("render_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["render_baseline"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def png_bytes(array: np.ndarray) -> int:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getbuffer().nbytes


def storage_rows(maps: dict[str, np.ndarray], frame: int) -> list[tuple[str, str, str]]:
    """Bytes of one frame's maps in the proposed compact encodings: raw array, and as PNG."""
    face_id = maps["face_id"][frame]
    normal = maps["normal"][frame]
    encoded = {
        "depth uint16 mm (0 = background)": np.round(maps["depth"][frame] * 1000).astype(np.uint16),
        "face id + 1 uint16 (F < 65536)": (face_id + 1).astype(np.uint16),
        "part uint8": maps["part"][frame],
        "normal uint8 x3 ((n+1)*127.5)": np.round((normal + 1) * 127.5).astype(np.uint8) * maps["silhouette"][
            frame, ..., None],
        "barycentric uint8 x2 (w0, w1)": np.round(maps["barycentric"][frame, ..., :2] * 255).astype(np.uint8),
        "silhouette uint8": maps["silhouette"][frame].astype(np.uint8) * 255,
    }
    rows = []
    for name, array in encoded.items():
        rows.append((f"bytes/frame {name}", f"{array.nbytes:,} raw / {png_bytes(array):,} png", "B"))
    rows.append(("bytes/frame face id int32 npy", f"{face_id.nbytes:,}", "B"))
    return rows


def agreement_rows(workload: str, raster: dict, raycast: dict) -> list[tuple[str, str, str]]:
    """How far the raster method's maps are from the ray caster's."""
    body = raycast["silhouette"]
    same_face = raster["face_id"] == raycast["face_id"]
    agree = same_face & body
    depth = np.abs(raster["depth"][agree] - raycast["depth"][agree]) / raycast["depth"][agree]
    return [(f"  {workload}: raster face id = raycast's, of body pixels", f"{same_face[body].mean():.4%}", ""),
            (f"  {workload}: silhouette pixels that differ", f"{int((raster['silhouette'] != body).sum())}", "px"),
            (f"  {workload}: depth, max relative difference (same face)", f"{depth.max():.1e}", "")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--baseline", help="another render.py to time alternately with the current one")
    parser.add_argument("--rounds", type=int, default=2, help="alternations (best of each)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per figure, as a worker would have
    rows: list[tuple[str, str, str]] = []

    start = time.perf_counter()
    model = load_body_model("anny")
    rows.append(("Anny load (cache present)", f"{time.perf_counter() - start:.2f}", "s"))
    for batch in (1, 16, 64):
        pose = 0.25 * torch.randn(batch, len(model.pose_joints), 3)
        shape, zeros = torch.full((1, len(model.shape_names)), 0.5), torch.zeros(batch, 3)
        with torch.no_grad():
            full = seconds_per_call(lambda: model.forward(shape, pose, zeros, zeros), 5)
            keypoints = seconds_per_call(lambda: model.keypoints_only(shape, pose, zeros, zeros), 5)
        rows.append((f"Anny forward, batch {batch}", f"{full * 1e3:.1f}", "ms"))
        rows.append((f"Anny keypoints_only, batch {batch}", f"{keypoints * 1e3:.1f} ({full / keypoints:.1f}x)", "ms"))

    vertices = posed_frames(model, args.frames)
    faces = model.faces
    size = args.size
    focal = 0.9 * size * CAMERA_DISTANCE / 1.8  # a 1.8 m tall body fills 90% of the image height
    camera = PinholeCamera(focal, focal, (size - 1) / 2, (size - 1) / 2)
    rows.append(("mesh", f"{vertices.shape[1]} vertices, {faces.shape[0]} faces", ""))

    with wp.ScopedDevice(args.device):
        points = wp.array(vertices[0], dtype=wp.vec3)
        mesh = wp.Mesh(points=points, indices=wp.array(faces.reshape(-1), dtype=wp.int32))
        build = seconds_per_call(lambda: wp.Mesh(points=points, indices=mesh.indices), 10)
        refit = seconds_per_call(mesh.refit, 10)
    rows.append(("BVH build / refit, one frame", f"{build * 1e3:.2f} / {refit * 1e3:.2f}", "ms"))
    workloads = {"clip": clip_frames(model, args.frames, size), "random poses": (vertices, camera)}
    methods = [method for method in METHODS if method != "pytorch3d" or pytorch3d_available()]
    versions = {method: functools.partial(render_maps, method=method) for method in methods}
    if args.baseline:
        versions["baseline"] = load_module(args.baseline).render_maps
    for workload, (frames, frame_camera) in workloads.items():
        for threads in (1, 2) if args.device == "cpu" else (1,):
            best: dict[str, float] = {}
            for _ in range(args.rounds):  # alternately, so that every version sees the same load
                for name, render in versions.items():
                    total = seconds_per_call(lambda: render(frames, faces, frame_camera, size, size, model.face_part,
                                                            device=args.device, threads=threads), 2)
                    best[name] = min(best.get(name, np.inf), total)
            for name in versions:
                figure = f"{args.frames / best[name]:.1f}"
                if name != "raycast":
                    figure += f" ({best['raycast'] / best[name]:.2f}x raycast)"
                rows.append((f"render_maps {size}x{size}, {workload}, {name}, threads={threads}", figure, "frames/s"))
        rows.extend(agreement_rows(workload, *(versions[method](frames, faces, frame_camera, size, size,
                                                                model.face_part, device=args.device)
                                               for method in ("raster", "raycast"))))

    maps = render_maps(vertices[:1], faces, camera, size, size, model.face_part, device=args.device)
    rows.append(("body pixels in frame 0", f"{int(maps['silhouette'].sum()):,}", "px"))
    rows.extend(storage_rows(maps, 0))

    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"warp {wp.config.version}, torch {torch.__version__}, device {args.device}, {args.frames} frames")
    width = max(len(name) for name, _, _ in rows)
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:>26}  {unit}")


if __name__ == "__main__":
    main()
