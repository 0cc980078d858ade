"""Body fits of real videos: the offline build (MediaPipe pose, Anny fit, render) over a folder of videos, one clip
each; prints each clip's mean reprojection error and share of bad frames, or why it failed, and writes each
clip's contact sheet (the rendered body over the frames) to look at.

    PYTHONPATH=. python bench/fit_real.py [--videos ../shared/assets/videos] [--out /tmp/fit_real]
                                          [--frames 32] [--size 512]

The error is the body stage's own QA (`fit_error_px`: the mean over frames and confident keypoints of the
distance between the detected and the fitted keypoints, at the clip's size); there is no ground truth here.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parent.parent


def build_config(frames: int, size: int) -> dict:
    return {"base": str(ROOT / "configs" / "offline.yaml"), "stages": ["decode", "pose", "body", "render"],
            "clips": {"frames": frames, "fps": 25, "max_clips_per_video": 1},
            "video": {"width": size, "height": size},
            "body": {"on_bad_fit": "flag"}}  # keep bad fits, flagged, so that their sheets can be looked at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", default=str(ROOT.parent / "shared" / "assets" / "videos"))
    parser.add_argument("--out", default="/tmp/fit_real")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    if not Path(args.videos).is_dir():
        sys.exit(f"no videos at {args.videos}: pass --videos")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump(build_config(args.frames, args.size)))
    humanim = [sys.executable, "-m", "humanim.pipeline.cli"]
    subprocess.run([*humanim, "build", args.videos, str(out / "build"), "--config", str(config)], check=True)

    manifest = pq.read_table(out / "build" / "manifest.parquet").to_pylist()
    failures = pq.read_table(out / "build" / "failures.parquet").to_pylist()
    rows = []
    for sample in manifest:
        sheet = out / "sheets" / f"{sample['key']}.png"
        subprocess.run([*humanim, "inspect", str(out / "build"), sample["key"], "--png", str(sheet)], check=True,
                       capture_output=True)
        rows.append((Path(sample["source"]).name, f"{sample['fit_error_px']:.1f}",
                     f"{sample['fit_bad_frame_share']:.0%}", sample["status"], str(sheet)))
    for failure in failures:
        rows.append((Path(failure["source"]).name, "-", "-", f"failed in {failure['stage']}: {failure['reason']}", ""))
    print(f"\n{args.frames} frames at {args.size}x{args.size} per clip, one clip per video")
    print("| video | mean reprojection error, px | frames above body.bad_frame_px | status | contact sheet |")
    print("|---|---:|---:|---|---|")
    for row in sorted(rows):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
