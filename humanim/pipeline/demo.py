"""`humanim demo` (what `make demo` runs): an offline build on an input made on the spot.

The input is a procedural video: a figure drawn from capsules that dances for two shots with a hard cut
between them, so the demo shows scene-cut-aware clip planning, decoding, packing, verify and inspect
without any file from the network.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from humanim.pipeline import config as config_module
from humanim.pipeline.build import build
from humanim.pipeline.contact_sheet import inspect_sample
from humanim.pipeline.verify import verify_build
from humanim.stages.decode import encode_h264, rgb_video_frames

SKIN, SHIRT, TROUSERS = (224, 172, 140), (40, 90, 200), (50, 50, 60)


def _draw_figure(canvas: np.ndarray, centre_x: float, phase: float) -> None:
    h = canvas.shape[0]
    unit = h / 11
    hip = np.array([centre_x, 5.6 * unit])
    neck = hip + [0.15 * unit * np.sin(phase), -2.6 * unit]
    swing = 0.9 * np.sin(phase)
    for side in (-1, 1):
        shoulder = neck + [side * 0.8 * unit, 0.2 * unit]
        elbow = shoulder + unit * np.array([side * 0.9, 0.9 - side * swing])
        hand = elbow + unit * np.array([side * 0.4 * (1 + np.cos(phase)), 0.8 - side * swing])
        knee = hip + unit * np.array([side * 0.5 + 0.3 * np.sin(phase + side), 1.9])
        foot = knee + unit * np.array([side * 0.2, 1.9])
        for a, b, colour, width in ((shoulder, elbow, SHIRT, 0.45), (elbow, hand, SKIN, 0.35),
                                    (hip + [side * 0.4 * unit, 0], knee, TROUSERS, 0.55), (knee, foot, TROUSERS, 0.45)):
            cv2.line(canvas, tuple(a.astype(int)), tuple(b.astype(int)), colour, max(2, int(width * unit)), cv2.LINE_AA)
    torso = np.array([neck + [-0.8 * unit, 0.1 * unit], neck + [0.8 * unit, 0.1 * unit],
                      hip + [0.6 * unit, 0], hip + [-0.6 * unit, 0]], dtype=np.int32)
    cv2.fillConvexPoly(canvas, torso, SHIRT, cv2.LINE_AA)
    cv2.circle(canvas, tuple((neck + [0, -0.75 * unit]).astype(int)), int(0.6 * unit), SKIN, -1, cv2.LINE_AA)


def procedural_video(path: Path, seconds_per_shot: float = 4.0, fps: int = 24, size: tuple[int, int] = (512, 512)) -> Path:
    width, height = size
    frames = []
    for shot, (background, start_x) in enumerate((((200, 220, 235), 0.35), ((235, 215, 190), 0.65))):
        for i in range(int(seconds_per_shot * fps)):
            canvas = np.empty((height, width, 3), np.uint8)
            canvas[:] = np.linspace(0.75, 1.0, height)[:, None, None] * np.array(background)
            t = i / fps
            _draw_figure(canvas, width * (start_x + 0.08 * np.sin(0.8 * t + shot)), 2 * np.pi * 0.8 * t)
            frames.append(canvas)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_h264(rgb_video_frames(np.stack(frames)), fps, crf=20, preset="veryfast", threads=1))
    return path


def run_demo(out: Path, config_path: Path) -> None:
    video = procedural_video(out / "input" / "procedural_dancer.mp4")
    config = config_module.load(config_path)
    result = build(str(video.parent), out / "build", config)
    problems = verify_build(out / "build")
    if problems:
        raise SystemExit("verify found problems:\n" + "\n".join(problems))
    import pyarrow.parquet as pq

    keys = pq.read_table(out / "build" / "manifest.parquet", columns=["key"]).column("key").to_pylist()
    sheet = inspect_sample(out / "build", keys[0], out / "contact_sheet.png")
    print(f"\ndemo done: {result.clips_ok} clips from {video} in {out / 'build' / 'shards'}; verify passed; "
          f"contact sheet of {keys[0]} at {sheet}")
