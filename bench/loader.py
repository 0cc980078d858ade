"""Training-loader benchmark: samples per second out of the streaming loader with 0, 1, 2, ... DataLoader
workers, and the share of step time a tiny training run spends waiting for data.

It builds shards from the real videos (offline preset: MediaPipe pose, masks, hand blur; 16 frames at 256 x
256 by default) into a temporary folder, or reads an existing build (--shards). The loader decodes every
sample through the registry, augments it (flip, crop to the training resolution) and draws the pose and
hand-blur conditions, exactly as training does. samples/s is counted after the first batch (worker start-up
is reported apart). The training run uses the tiny denoiser and VAE of configs/train_tiny.yaml.

    python bench/loader.py [--shards BUILD] [--workers 0 1 2] [--batches 24] [--steps 30]
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "assets" / "videos"
BENCH_VIDEOS = ("moore_talkinghead_3.mp4", "animatex_dance_1.mp4", "animatex_ubc.mp4", "musepose_dance.mp4")


def build_shards(folder: Path, frames: int, size: int) -> Path:
    videos = folder / "videos"
    videos.mkdir()
    for name in BENCH_VIDEOS:
        (videos / name).symlink_to(VIDEOS / name)
    config = {"base": str(ROOT / "configs" / "offline.yaml"), "stages": ["decode", "pose", "masks", "blur"],
              "clips": {"frames": frames, "fps": 8, "max_clips_per_video": 4},
              "video": {"width": size, "height": size}, "shards": {"max_samples": 2}}
    (folder / "build.yaml").write_text(yaml.safe_dump(config))
    subprocess.run([sys.executable, "-m", "humanim.pipeline.cli", "build", str(videos), str(folder / "out"),
                    "--config", str(folder / "build.yaml"), "--num-cpus", str(os.cpu_count())],
                   check=True, capture_output=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    return folder / "out"


def data_config(shards: Path, workers: int, batch: int, resolution: int) -> dict:
    return {"shards": [str(shards)], "resolution": [resolution, resolution], "conditions": ["pose", "hand_blur"],
            "batch_size": batch, "num_workers": workers, "shuffle_buffer": 8,
            "augment": {"flip": 0.5, "crop_scale": [0.8, 1.0]}}


def loader_rate(shards: Path, workers: int, batches: int, batch: int, resolution: int) -> tuple[float, float]:
    """(seconds to the first batch, samples/s over the next `batches` batches)."""
    from humanim.training.config import DataConfig, from_dict
    from humanim.training.data import DataStream, StreamSpec, requested_fields, shard_urls

    config = from_dict(DataConfig, data_config(shards, workers, batch, resolution))
    stream = iter(DataStream(StreamSpec(shard_urls(config.shards), requested_fields(config), config, seed=0)))
    started = time.perf_counter()
    next(stream)
    first = time.perf_counter() - started
    started = time.perf_counter()
    count = sum(len(b["key"]) for b in itertools.islice(stream, batches))
    return first, count / (time.perf_counter() - started)


def training_wait(shards: Path, workers: int, steps: int, batch: int, resolution: int, output: Path) -> dict:
    from humanim.training import config as training_config
    from humanim.training.train import run

    config = training_config.load(ROOT / "configs" / "train_tiny.yaml", {
        "output_dir": str(output), "max_steps": steps, "log_every": steps, "checkpoint_every": 0, "progress": False,
        "data": data_config(shards, workers, batch, resolution)})
    started = time.perf_counter()
    result = run(config)
    wall = time.perf_counter() - started
    return {"wall": wall, "wait": result["metrics"]["data_wait_seconds"],
            "samples_per_s": steps * batch / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, default=None, help="an existing build folder (default: build one)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="shard resolution when building")
    parser.add_argument("--steps", type=int, default=30, help="steps of the tiny training run")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as temporary:
        shards = args.shards
        if shards is None:
            started = time.perf_counter()
            shards = build_shards(Path(temporary), args.frames, args.size)
            print(f"built {len(list((shards / 'shards').glob('*.tar')))} shards in {time.perf_counter() - started:.0f} s")
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
              f"{torch.__version__} ({torch.get_num_threads()} threads); batches of {args.batch_size} at "
              f"{args.resolution} px, conditions pose + hand_blur")
        print(f"{'workers':>8} {'first batch s':>14} {'samples/s':>10}")
        for workers in args.workers:
            first, rate = loader_rate(shards, workers, args.batches, args.batch_size, args.resolution)
            print(f"{workers:>8} {first:>14.2f} {rate:>10.1f}")
        print(f"\ntiny training run, {args.steps} steps:")
        print(f"{'workers':>8} {'wall s':>8} {'samples/s':>10} {'data wait':>10}")
        for workers in args.workers:
            figures = training_wait(shards, workers, args.steps, args.batch_size, args.resolution,
                                    Path(temporary) / f"run-{workers}")
            print(f"{workers:>8} {figures['wall']:>8.1f} {figures['samples_per_s']:>10.1f} "
                  f"{100 * figures['wait'] / figures['wall']:>9.0f}%")


if __name__ == "__main__":
    main()
