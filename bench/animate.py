"""Inference benchmark: seconds per output frame of `humanim animate`'s sampler (training/inference.py) for a
random-weight backbone at 512 x 512, next to Champ's published 0.52 s per frame (A100, its Table 5).

The backbone is a checkpoint written by the trainer with random weights: by default the trainer's 3D-conv
denoiser widened to a mid-size network (`--hidden 320 --depth 8`: 46 M parameters), with an SD-style VAE grid
(4 latent channels, stride 8) and the pose, render and reference conditions. Sampling runs with animation CFG
(both branches in one batch of two), windows of `--window` latent frames overlapping by a quarter, and the
random window offset; VAE decoding is timed apart. Only sampling and decoding are timed: the stages that make
the conditions are the build's and have their own benchmarks.

    python bench/animate.py [--device cuda] [--frames 48] [--steps 25] [--size 512] [--hidden 320 --depth 8]
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from humanim.training import inference
from humanim.training.config import TrainConfig, from_dict
from humanim.training.train import Trainer, save_checkpoint

CHAMP_SECONDS_PER_FRAME = 0.52  # Champ (Zhu et al. 2024), Table 5: A100, 512 x 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=320)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        config = from_dict(TrainConfig, {
            "output_dir": folder, "precision": args.precision,
            "data": {"conditions": ["pose", "renders", "reference"], "frames": args.window},
            "model": {"denoiser": {"kind": "tiny", "hidden": args.hidden, "depth": args.depth, "time_dim": 256},
                      "vae": {"kind": "tiny", "latent_channels": 4, "hidden": 64}}})
        path = save_checkpoint(Path(folder) / "bench.pt", Trainer(config, device=torch.device("cpu")).state_dict())
        model = inference.load_model(path, args.device)
    parameters = sum(p.numel() for p in model.denoiser.parameters())
    side, cells = args.size, args.size // 8
    conditions = {"pose": torch.rand(1, 3, args.frames, side, side),
                  "renders": torch.rand(1, 5, args.frames, side, side),
                  "reference": torch.rand(1, 3, side, side) * 2 - 1, "reference_pose": torch.rand(1, 3, side, side)}
    sampler = inference.SamplerConfig(steps=args.steps, window=args.window, seed=0)
    shape = (1, 4, args.frames, cells, cells)

    def synchronise() -> None:
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    inference.sample(model, {k: v[:, :, :2] if v.ndim == 5 else v for k, v in conditions.items()},
                     (1, 4, 2, cells, cells), inference.SamplerConfig(steps=1, window=2))  # warm-up
    synchronise()
    started = time.perf_counter()
    latents = inference.sample(model, conditions, shape, sampler)
    synchronise()
    sampled = time.perf_counter() - started
    started = time.perf_counter()
    inference.decode(model, latents)
    synchronise()
    decoded = time.perf_counter() - started
    device = torch.cuda.get_device_name() if model.device.type == "cuda" else platform.processor() or "cpu"
    per_frame = (sampled + decoded) / args.frames
    print(f"device: {device}; torch threads {torch.get_num_threads()}; precision {args.precision}")
    print(f"backbone: 3D-conv denoiser, {parameters / 1e6:.1f} M parameters; {args.frames} frames at {side}x{side}, "
          f"{args.steps} steps, CFG, windows of {args.window} latent frames")
    print(f"sampling {sampled:.2f} s ({sampled / args.frames / args.steps:.3f} s per frame per step), decoding "
          f"{decoded:.2f} s: {per_frame:.3f} s per frame ({per_frame / CHAMP_SECONDS_PER_FRAME:.2f}x Champ's "
          f"{CHAMP_SECONDS_PER_FRAME} s on an A100; comparable only at its step count and resolution, on a GPU)")


if __name__ == "__main__":
    main()
