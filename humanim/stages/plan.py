"""Clip planning: scene cuts, then windows of T frames at the target fps with a stride, never across a cut.

Target frames are chosen by timestamp: clip frame j shows the source frame on screen at time t0 + j / fps,
which is right for variable-frame-rate sources where frame index and time disagree.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from humanim.schemas.keys import clip_key
from humanim.stages.base import ClipRejected, ClipSpec
from humanim.stages.media import quiet_ffmpeg
from humanim.stages.probe import VideoInfo

# Presets of the video backbones people train on: (frames per clip, fps).
CLIP_PRESETS = {
    "wan": (81, 16.0),  # Wan-style causal video VAEs: T = 4k + 1
    "animatediff": (24, 8.0),
    "svd": (14, 7.0),
}


@dataclass(frozen=True)
class PlanConfig:
    frames: int
    fps: float
    stride: int  # clip-frame steps between window starts; == frames for back-to-back clips
    scene_threshold: float = 27.0  # PySceneDetect ContentDetector threshold; <= 0 turns detection off
    min_scene_frames: int = 8  # source frames; shorter flashes are not cuts
    max_clips_per_video: int = 0  # 0: no limit
    min_source_side: int = 64  # pixels; smaller sources would be upscaled into mush
    val_fraction: float = 0.0

    @property
    def seconds(self) -> float:
        return self.frames / self.fps


def detect_scene_starts(source: str, config: PlanConfig, num_frames: int) -> list[int]:
    """Indices (presentation order) of the first frame of every scene, always starting with 0."""
    if config.scene_threshold <= 0:
        return [0]
    from scenedetect import ContentDetector, detect

    try:
        scenes = detect(source, ContentDetector(threshold=config.scene_threshold,
                                                min_scene_len=config.min_scene_frames), backend="pyav")
    finally:
        quiet_ffmpeg()
    starts = sorted({0, *(int(start.frame_num) for start, _ in scenes)})
    return [s for s in starts if s < num_frames]


def split_of(video_id: str, val_fraction: float) -> str:
    """All clips of a video land in one split, so validation never sees a training video."""
    if val_fraction <= 0:
        return "train"
    bucket = int.from_bytes(hashlib.sha256(f"split/{video_id}".encode()).digest()[:8], "little") / 2**64
    return "val" if bucket < val_fraction else "train"


def reference_frame(window: tuple[int, int], scene: tuple[int, int], num_frames: int) -> tuple[int, bool] | None:
    """The source frame a clip's reference comes from, and whether it is in the clip's own scene.

    Training with a reference that is one of the target frames teaches the model to copy it; the reference must
    show the same person in another pose. The frame of the clip's scene furthest in time from the clip's window
    [first, last] differs most in pose while still showing the same shot (same person, light and clothes);
    deterministic, so rebuilds agree. Only when the clip fills its whole scene does it come from the nearest
    other scene. None when the video has no frame outside the window."""
    first, last = window
    scene_first, scene_end = scene
    before, after = first - scene_first, scene_end - 1 - last
    if before > 0 or after > 0:
        return (scene_first if before >= after else scene_end - 1), True
    outside = [i for i in (first - 1, last + 1) if 0 <= i < num_frames]
    return (outside[0], False) if outside else None


def plan_clips(info: VideoInfo, scene_starts: list[int], config: PlanConfig) -> list[ClipSpec]:
    if min(info.width, info.height) < config.min_source_side:
        raise ClipRejected(f"source resolution {info.width}x{info.height} is below clips.min_source_side="
                           f"{config.min_source_side}")
    times = info.frame_times
    frame_seconds = 1.0 / info.average_fps
    bounds = [*scene_starts, len(times)]
    split = split_of(info.video_id, config.val_fraction)
    specs: list[ClipSpec] = []
    longest = 0.0
    for first, end in zip(bounds[:-1], bounds[1:]):
        scene_start, scene_end = times[first], times[end - 1] + frame_seconds
        longest = max(longest, scene_end - scene_start)
        count = int(np.floor((scene_end - scene_start) * config.fps + 1e-6))
        for window_start in range(0, count - config.frames + 1, config.stride):
            targets = scene_start + (window_start + np.arange(config.frames)) / config.fps
            # The source frame on screen at each target time (small epsilon: exact ties belong to the new frame).
            picked = np.searchsorted(times, targets + 1e-6, side="right") - 1
            picked = np.clip(picked, first, end - 1)
            index = len(specs)
            reference = reference_frame((int(picked[0]), int(picked[-1])), (first, end), len(times))
            reference_fields = {} if reference is None else dict(
                reference_frame_index=reference[0], reference_frame_pts=int(info.frame_pts[reference[0]]),
                reference_frame_time=float(times[reference[0]]), reference_same_scene=reference[1])
            specs.append(ClipSpec(
                key=clip_key(info.video_id, index), video_id=info.video_id, clip_index=index, split=split,
                source=info.source, source_sha256=info.sha256,
                source_frame_indices=tuple(int(i) for i in picked),
                source_frame_pts=tuple(int(info.frame_pts[i]) for i in picked),
                source_frame_times=tuple(float(times[i]) for i in picked),
                frame_times=tuple(float(t) for t in targets), fps=config.fps, **reference_fields,
            ))
            if config.max_clips_per_video and len(specs) >= config.max_clips_per_video:
                return specs
    if not specs:
        raise ClipRejected(
            f"no scene is long enough for one clip: longest scene {longest:.2f} s "
            f"({len(scene_starts)} scene(s) in {info.duration:.2f} s), a clip needs {config.frames} frames "
            f"at {config.fps:g} fps = {config.seconds:.2f} s")
    return specs
