"""Accuracy and speed of the body fit (stages/fit.py) on synthetic clips; prints a table.

    PYTHONPATH=. python bench/fit.py [--frames 81] [--size 512] [--seeds 4] [--iterations 30,60,100]

Each clip is a random Anny body moving for --frames frames at 25 fps (synth/motion.py), seen by the frame-size
camera in a --size x --size frame. Its whole-body keypoints are projected, moved by 2 px of Gaussian noise, and
10% of them are dropped (score 0); scores of the rest are uniform in [0.5, 1]. Figures per iteration count, over
the seeds:
- 2D: median over frames and the 17 COCO body joints of the pixel distance between the fit's and the true
  (noise-free) projections;
- PA-MPJPE: mean over frames of the body-joint error in millimetres after a similarity (Procrustes) alignment
  of the fitted to the true 3D joints, per frame;
- frames/s per core: clip frames over the CPU seconds of fit_clip with torch on one thread (process time, so
  other work on the machine does not count against it).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from humanim.stages.body_models import load_body_model
from humanim.stages.fit import FitSettings, fit_clip
from humanim.synth.motion import project, random_motion

NOISE_PX, DROP_SHARE, FPS = 2.0, 0.1, 25.0


def procrustes_error(fitted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """[T, K, 3] x 2 -> [T] mean joint distance after the best rotation, scale and translation per frame."""
    errors = []
    for p, g in zip(fitted, true):
        p0, g0 = p - p.mean(0), g - g.mean(0)
        u, s, vt = np.linalg.svd(p0.T @ g0)
        sign = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
        rotation = (u @ sign @ vt).T
        scale = (s * np.diag(sign)).sum() / (p0**2).sum()
        errors.append(np.linalg.norm(scale * p0 @ rotation.T - g0, axis=-1).mean())
    return np.array(errors)


def synthetic_clip(model, frames: int, size: int, seed: int):
    motion, camera = random_motion(model, frames, FPS, seed, size, size)
    with torch.no_grad():
        true = model.keypoints_only(motion.shape, motion.pose, motion.global_orient, motion.transl).numpy()
    rng = np.random.default_rng(1000 + seed)
    xy = np.nan_to_num(project(true, camera)) + rng.normal(0, NOISE_PX, true.shape[:2] + (2,))
    score = np.where(model.keypoint_mask[None], rng.uniform(0.5, 1.0, true.shape[:2]), 0.0)
    score[rng.uniform(size=score.shape) < DROP_SHARE] = 0.0
    return np.concatenate([xy, score[..., None]], -1).astype(np.float32), true, camera


def measure(model, clip, settings: FitSettings, size: int) -> tuple[float, float, float]:
    keypoints, true, camera = clip
    started = time.process_time()
    fit = fit_clip(keypoints, size, size, model, settings)
    seconds = time.process_time() - started
    with torch.no_grad():
        fitted = model.keypoints_only(torch.as_tensor(fit.shape)[None], torch.as_tensor(fit.pose),
                                      torch.as_tensor(fit.global_orient), torch.as_tensor(fit.transl)).numpy()
    pixels = np.linalg.norm(project(fitted[:, :17], camera) - project(true[:, :17], camera), axis=-1)
    return float(np.median(pixels)), float(procrustes_error(fitted[:, :17], true[:, :17]).mean() * 1000), \
        len(keypoints) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--iterations", default="0,15,30,60", help="Adam iteration counts to compare")
    parser.add_argument("--gauss-newton-steps", type=int, default=FitSettings().gauss_newton_steps)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("ANNY_CACHE_DIR", os.path.join(os.getcwd(), ".cache", "anny"))

    model = load_body_model("anny")
    clips = [synthetic_clip(model, args.frames, args.size, seed) for seed in range(args.seeds)]
    fit_clip(clips[0][0][:8], args.size, args.size, model, FitSettings(iterations=2, gauss_newton_steps=1))  # warm-up
    print(f"body fit, Anny, {args.frames} frames at {args.size}x{args.size}, {args.seeds} seeds, {NOISE_PX:g} px "
          f"noise, {DROP_SHARE:.0%} dropped; torch threads 1; {platform.processor() or platform.machine()}")
    print(f"{'iterations':>10} {'GN steps':>8} {'2D median px':>13} {'PA-MPJPE mm':>12} {'frames/s/core':>14}"
          f"   per seed (2D px / PA mm)")
    for iterations in (int(v) for v in args.iterations.split(",")):
        settings = FitSettings(iterations=iterations, gauss_newton_steps=args.gauss_newton_steps)
        rows = [measure(model, clip, settings, args.size) for clip in clips]
        pixels, pa, speed = (np.array(column) for column in zip(*rows))
        per_seed = "  ".join(f"{p:.2f}/{a:.0f}" for p, a in zip(pixels, pa))
        print(f"{iterations:>10} {args.gauss_newton_steps:>8} {np.median(pixels):>13.2f} {pa.mean():>12.1f} "
              f"{speed.mean():>14.1f}   {per_seed}", flush=True)


if __name__ == "__main__":
    main()
