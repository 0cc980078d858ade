"""`humanim demo` (what `make demo` runs): an offline build on an input made on the spot, checked against truth.

The input is a synthetic video (humanim.synth): three shots of a different person each, with hard cuts between
them, so the demo shows scene-cut-aware clip planning, decoding, pose, packing, verify and inspect without any
file from the network. Because the video was rendered, the truth about every frame is known: the demo ends by
comparing what the offline pose back-end found with it (share of frames with the person found, median pixel
error of its confident body joints against the body model's).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from humanim.pipeline import config as config_module
from humanim.pipeline.build import build
from humanim.pipeline.contact_sheet import inspect_sample, read_sample
from humanim.pipeline.noise_report import noise_checks, noise_picture
from humanim.pipeline.verify import verify_build
from humanim.synth.command import make_synthetic_video
from humanim.synth.evaluate import body_joint_errors, to_clip_pixels

# Each shot must outlast one clip of the offline preset (24 frames at 8 fps = 3 s) with room for the scene
# detector to place its cut a frame late. 12 fps: the build still resamples (to 8 fps), and rendering frames
# the clips never show would only slow the demo down.
SHOTS, SHOT_FRAMES, FPS, SIZE, SEED = 3, 40, 12, 512, 0


def compare_with_truth(build_out: Path, truth_path: Path) -> dict:
    """Pose back-end keypoints of every clip in the build against the synthetic ground truth of the same frames."""
    truth = np.load(truth_path, allow_pickle=False)
    keys = pq.read_table(build_out / "manifest.parquet", columns=["key"]).column("key").to_pylist()
    frames = found = size = 0
    errors = []
    for key in keys:
        sample = read_sample(build_out, key)
        meta = sample["meta"]
        indices = np.asarray(meta["source_frame_indices"])
        detected = sample["kpts"]
        expected = to_clip_pixels(truth["keypoints"][indices], meta["crop_box"], meta["width"], meta["height"])
        frames, size = frames + len(detected), meta["height"]
        found += int((detected[:, :17, 2] > 0).any(axis=1).sum())
        errors.append(body_joint_errors(detected, expected, truth["visible"][indices]))
    errors = np.concatenate(errors) if errors else np.zeros(0)
    failures = pq.read_table(build_out / "failures.parquet").num_rows
    return {"clips": len(keys), "failed": failures, "frames": frames, "found": found,
            "joints": len(errors), "median_error": float(np.median(errors)) if len(errors) else float("nan"),
            "size": size}


def run_demo(out: Path, config_path: Path) -> None:
    video, truth, _ = make_synthetic_video(out / "input", "synthetic_people", SHOT_FRAMES, FPS, SIZE, SIZE, SEED,
                                           SHOTS)
    config = config_module.load(config_path)
    result = build(str(video.parent), out / "build", config)
    problems = verify_build(out / "build")
    if problems:
        raise SystemExit("verify found problems:\n" + "\n".join(problems))
    keys = pq.read_table(out / "build" / "manifest.parquet", columns=["key"]).column("key").to_pylist()
    sheet = inspect_sample(out / "build", keys[0], out / "contact_sheet.png")
    check = compare_with_truth(out / "build", truth)
    print(f"\ndemo done: {result.clips_ok} clips from {video} in {out / 'build' / 'shards'}; verify passed; "
          f"contact sheet of {keys[0]} at {sheet}")
    print(f"pose against the synthetic ground truth ({truth.name}): person found in {check['found']} of "
          f"{check['frames']} frames ({check['found'] / max(check['frames'], 1):.0%}) of {check['clips']} clips "
          f"({check['failed']} failed); median error of {check['joints']} confident visible body joints "
          f"{check['median_error']:.1f} px at {check['size']} px")
    sample = read_sample(out / "build", keys[0])
    if "noise" in sample:
        picture = noise_picture(sample, out / "noise.png")
        noise = noise_checks(sample)
        print(f"articulated noise of {keys[0]} at {picture}: on the body ({noise['body_cells']} cells) mean "
              f"{noise['body_mean']:+.3f}, std {noise['body_std']:.3f}, skew {noise['body_skew']:+.3f}, excess "
              f"kurtosis {noise['body_excess_kurtosis']:+.3f}, KS p {noise['body_ks_p']:.2f} (frame by frame, "
              f"Bonferroni); background mean "
              f"{noise['background_mean']:+.3f}, std {noise['background_std']:.3f}, KS p "
              f"{noise['background_ks_p']:.2f}; correlation with the flow's source cell "
              f"{noise.get('flow_source_correlation', float('nan')):.2f} against "
              f"{noise.get('same_cell_correlation', float('nan')):.2f} with the same cell, over "
              f"{noise['moved_cells']} moving cells")
