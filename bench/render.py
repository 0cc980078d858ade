"""Speed of the render maps and of the Anny body model, and the size of the maps in storage; prints a table.

    PYTHONPATH=. python bench/render.py [--frames 32] [--size 512] [--device cpu]

Frames are the Anny mesh in random poses, filling most of a square image, as seen by a camera 3 m in front.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import time

import numpy as np
import torch
import warp as wp
from PIL import Image

from humanim.stages.body_models import load_body_model
from humanim.stages.render import PinholeCamera, render_maps

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
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
        points = [wp.array(frame, dtype=wp.vec3) for frame in vertices]
        indices = wp.array(faces.reshape(-1), dtype=wp.int32)
        build = seconds_per_call(lambda: [wp.Mesh(points=p, indices=indices) for p in points], 2) / args.frames
    rows.append(("BVH build per frame (Warp's default constructor)", f"{build * 1e3:.2f}", "ms"))
    for threads in (1, 2) if args.device == "cpu" else (1,):
        total = seconds_per_call(lambda: render_maps(vertices, faces, camera, size, size, model.face_part,
                                                     device=args.device, threads=threads), 2)
        if threads == 1:
            per_frame = total / args.frames
            rows.append(("render_maps per frame, all maps (BVH build included)", f"{per_frame * 1e3:.2f}", "ms"))
            rows.append(("  of which rays, normals, outputs (minus BVH build)", f"{(per_frame - build) * 1e3:.2f}",
                         "ms"))
        rows.append((f"render_maps {size}x{size}, threads={threads}", f"{args.frames / total:.1f}", "frames/s"))

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
