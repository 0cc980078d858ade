"""Pose benchmark: frames per second of each pose back-end on this machine, and what our stage code costs on
top of the ONNX Runtime sessions it drives.

Real DWPose / RTMW weights cannot be had here, so the rtmlib back-end runs the real YOLOX-nano person
detector (../shared/assets) with `tiny_simcc_pose_model`: a model built here with DWPose's SimCC interface
(input [N, 3, 384, 288], outputs [N, 133, 576] and [N, 133, 768]) whose outputs are constants. The pose
model's own compute is therefore almost nil: its f/s is an upper bound for DWPose, and the overhead ratio is
a worst case (the same per-crop work of ours sits beside a far heavier session in real use).

Rows:
  * mediapipe: MediaPipe Holistic (humanim.stages.pose_mediapipe), the offline back-end;
  * rtmlib stage: RtmlibPose end to end on the clip (detect, take the best person, crop, pose, decode);
  * sessions only: the detector and pose sessions run alone on inputs prepared beforehand, the same calls;
  overhead = stage time / sessions-only time - 1 (goal: under 15%).

    python bench/pose.py [--video NAME] [--frames N] [--size PX] [--threads N] [--batch N]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
NANO_ASSET = ASSETS / "models" / "yolox_nano_8xb8-300e_humanart-40f6f0d0.onnx"
NUM_KEYPOINTS, INPUT_H, INPUT_W = 133, 384, 288


def clip_frames(video: Path, count: int, size: int) -> np.ndarray:
    """`count` RGB frames of `video`, centre-cropped square and scaled to size x size, as the default build."""
    import av
    import cv2

    frames = []
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            side = min(rgb.shape[:2])
            top, left = (rgb.shape[0] - side) // 2, (rgb.shape[1] - side) // 2
            frames.append(cv2.resize(rgb[top:top + side, left:left + side], (size, size),
                                     interpolation=cv2.INTER_AREA))
            if len(frames) == count:
                break
    return np.stack(frames)


def tiny_simcc_pose_model(path: Path) -> Path:
    """DWPose's SimCC interface, dynamic batch, constant outputs (peaks in the middle of every axis)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    tables = []
    for axis, width in (("x", INPUT_W * 2), ("y", INPUT_H * 2)):
        table = np.zeros((1, NUM_KEYPOINTS, width), dtype=np.float32)
        table[0, :, width // 2] = 0.9
        tables.append(numpy_helper.from_array(table, f"peaks_{axis}"))
    nodes = [
        helper.make_node("Shape", ["input"], ["input_shape"]),
        helper.make_node("Slice", ["input_shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "rest_x"], ["shape_x"], axis=0),
        helper.make_node("Concat", ["batch", "rest_y"], ["shape_y"], axis=0),
        helper.make_node("Expand", ["peaks_x", "shape_x"], ["simcc_x"]),
        helper.make_node("Expand", ["peaks_y", "shape_y"], ["simcc_y"]),
    ]
    constants = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
                 (("zero", [0]), ("one", [1]), ("rest_x", [NUM_KEYPOINTS, INPUT_W * 2]),
                  ("rest_y", [NUM_KEYPOINTS, INPUT_H * 2]))]
    graph = helper.make_graph(
        nodes, "tiny_simcc_pose_model",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, INPUT_H, INPUT_W])],
        [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, ["batch", NUM_KEYPOINTS, INPUT_W * 2]),
         helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, ["batch", NUM_KEYPOINTS, INPUT_H * 2])],
        initializer=tables + constants)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def clip_of(frames: np.ndarray):
    from humanim.stages.base import Clip, ClipSpec

    spec = ClipSpec(key="bench_00000", video_id="bench", clip_index=0, split="train", source="", source_sha256="",
                    source_frame_indices=(), source_frame_pts=(), source_frame_times=(), frame_times=(), fps=8.0)
    return Clip(spec=spec, frames=frames)


def best_of(repeat: int, run) -> float:
    """The fastest of `repeat` timed runs, after one untimed warm-up run."""
    run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def bench_mediapipe(frames: np.ndarray, repeat: int) -> float:
    from humanim.pipeline.config import DEFAULTS
    from humanim.stages.pose_mediapipe import MediaPipePose

    stage = MediaPipePose({**DEFAULTS["pose"], "backend": "mediapipe", "model_complexity": 1})
    return best_of(repeat, lambda: stage(clip_of(frames)))


class TimedSession:
    """An ONNX Runtime session that adds the wall time of its `run` calls to `seconds`."""

    def __init__(self, session):
        self.session, self.seconds = session, 0.0

    def __getattr__(self, name: str):
        return getattr(self.session, name)

    def run(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.session.run(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


def bench_rtmlib(frames: np.ndarray, repeat: int, threads: int, batch: int) -> dict[str, float]:
    """Seconds per pass over the frames: the stage (best run), the session calls inside it (best run), the
    sessions alone on inputs prepared beforehand (best run); and, per run, the stage's time over the time
    of the session calls inside that same run (median of the runs, which a busy machine disturbs least)."""
    from humanim.pipeline.config import DEFAULTS
    from humanim.stages import model_store
    from humanim.stages.pose_rtmlib import RtmlibPose, crop_for_pose, run_batched

    with tempfile.TemporaryDirectory() as folder:
        os.environ["HUMANIM_MODELS"] = folder
        (Path(folder) / "yolox_nano_humanart.onnx").symlink_to(NANO_ASSET)
        pose_model = tiny_simcc_pose_model(Path(folder) / "tiny_simcc_pose_model.onnx")
        model_store.REGISTRY["tiny_simcc_pose_model.onnx"] = model_store.ModelFile(
            name="tiny_simcc_pose_model.onnx", url="file:///nowhere", licence="bench-only",
            sha256=hashlib.sha256(pose_model.read_bytes()).hexdigest(), description="built by bench/pose.py")
        stage = RtmlibPose({**DEFAULTS["pose"], "detector": "yolox_nano_humanart.onnx",
                            "pose_model": "tiny_simcc_pose_model.onnx", "threads": threads, "batch_size": batch})
        clip = clip_of(frames)
        detector, pose = stage._load()
        detector.session, pose.session = TimedSession(detector.session), TimedSession(pose.session)
        stage(clip)  # warm-up, untimed
        totals, insides = [], []
        for _ in range(repeat):
            detector.session.seconds = pose.session.seconds = 0.0
            started = time.perf_counter()
            stage(clip)
            totals.append(time.perf_counter() - started)
            insides.append(detector.session.seconds + pose.session.seconds)

        # The same session calls, alone: inputs prepared outside the timing, then only session.run.
        boxes = [people[0] if len(people) else None for people in detector(frames)]
        det_inputs = np.stack([detector.letterbox(frame) for frame in frames])
        crops = np.stack([crop_for_pose(frames[t], box, pose.input_size)[0] for t, box in enumerate(boxes)
                          if box is not None])

        def sessions_only() -> None:
            run_batched(detector.session.session, det_inputs, batch)
            if len(crops):
                run_batched(pose.session.session, crops, batch)

        alone = best_of(repeat, sessions_only)
    overheads = sorted(total / inside - 1 for total, inside in zip(totals, insides))
    return {"stage": min(totals), "inside": min(insides), "alone": alone,
            "overhead": overheads[len(overheads) // 2],
            "ours_per_run": sorted(total - inside for total, inside in zip(totals, insides))[len(totals) // 2],
            "found": sum(box is not None for box in boxes) / len(frames)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", default="mmhuman3d_single_person_demo.mp4")
    parser.add_argument("--frames", type=int, default=24, help="clip length (the default preset's 24)")
    parser.add_argument("--size", type=int, default=512, help="clip side in pixels (the default build's 512)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (the stage's default 1)")
    parser.add_argument("--batch", type=int, default=16, help="pose crops per session call")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    video = ASSETS / "videos" / args.video
    for needed in (video, NANO_ASSET):
        if not needed.exists():
            raise SystemExit(f"bench/pose.py needs {needed} (../shared/assets beside the repository)")
    frames = clip_frames(video, args.frames, args.size)
    count = len(frames)

    mediapipe_seconds = bench_mediapipe(frames, args.repeat)
    rtmlib = bench_rtmlib(frames, args.repeat, args.threads, args.batch)

    print(f"pose back-ends on {count} frames of {args.video} at {args.size}x{args.size}; "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), no GPU used; "
          f"ONNX Runtime threads {args.threads}, {args.repeat} timed runs after a warm-up")
    print(f"rtmlib rows: real YOLOX-nano detector + tiny_simcc_pose_model (DWPose interface, no real weights "
          f"here); a person in {rtmlib['found']:.0%} of frames")
    print(f"{'':<44}{'f/s':>8}{'ms/frame':>10}")
    for label, seconds in (("mediapipe holistic (complexity 1), best run", mediapipe_seconds),
                           ("rtmlib stage (detect+pose+decode), best run", rtmlib["stage"]),
                           ("  its ONNX Runtime calls, best run", rtmlib["inside"]),
                           ("  the same calls alone, best run", rtmlib["alone"])):
        print(f"{label:<44}{count / seconds:>8.1f}{1000 * seconds / count:>10.2f}")
    print(f"overhead of our stage code over its session calls within a run (median of runs): "
          f"{rtmlib['overhead']:+.1%}, {1000 * rtmlib['ours_per_run'] / count:.2f} ms per frame; goal under 15%")
    print(f"stage best run over the sessions' best run alone: {rtmlib['stage'] / rtmlib['alone'] - 1:+.1%}")


if __name__ == "__main__":
    main()
