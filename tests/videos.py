"""Videos the tests make themselves: exact content and timestamps, so decoding can be checked frame by frame."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def coded_frame(index: int, height: int = 96, width: int = 128) -> np.ndarray:
    """A frame whose index can be read back after lossy coding: its grey level steps by 24 per index."""
    return np.full((height, width, 3), 16 + 24 * (index % 10), np.uint8)


def read_code(frame: np.ndarray) -> int:
    return int(round((float(frame[8:-8, 8:-8].mean()) - 16) / 24))


def write_video(path: Path, frames: list[np.ndarray], pts_ms: list[int] | None = None, rotation: int = 0,
                fps: int = 25) -> Path:
    """H.264 mp4; with pts_ms the frames get those timestamps (variable frame rate), else a constant rate."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.codec_context.options = {"crf": "10", "preset": "ultrafast", "bf": "0"}
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = pts_ms[index] if pts_ms is not None else index
            if pts_ms is not None:
                frame.time_base = Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = (0.2 * np.sin(2 * np.pi * 440 * np.arange(int(16000 * seconds)) / 16000)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def moving_pattern(index: int, height: int = 96, width: int = 128) -> np.ndarray:
    """Smooth content that drifts a little each frame, so no frame-to-frame change looks like a scene cut."""
    y, x = np.mgrid[0:height, 0:width]
    phase = 0.15 * index
    red = 128 + 100 * np.sin(x / max(width, 1) * 6 + phase)
    green = 128 + 100 * np.cos(y / max(height, 1) * 5 - phase)
    return np.stack([red, green, np.full_like(red, 90.0)], axis=-1).astype(np.uint8)
