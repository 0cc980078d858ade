"""Probe: what a source file holds (container, video stream, codec, real frame timestamps, rotation).

Reads packet timestamps by demuxing only, so variable-frame-rate phone video keeps its true times, and
decodes the first frame to prove the stream can be decoded and to read the display rotation.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from humanim.schemas.keys import file_sha256, video_id_from_sha256
from humanim.stages.media import av
from humanim.stages.base import ClipRejected

# A stream whose frame intervals vary by more than this share of their median is variable frame rate.
VFR_TOLERANCE = 0.02


@dataclass(frozen=True)
class VideoInfo:
    source: str
    size_bytes: int
    sha256: str
    video_id: str
    container: str
    codec: str
    width: int  # as displayed, after rotation
    height: int
    rotation: int  # degrees the frames are turned to display upright (0, 90, 180, 270)
    frame_pts: tuple[int, ...]  # presentation timestamps in stream time_base, sorted
    time_base: tuple[int, int]
    average_fps: float
    variable_frame_rate: bool
    has_audio: bool

    @property
    def frame_times(self) -> np.ndarray:
        num, den = self.time_base
        return np.asarray(self.frame_pts, dtype=np.float64) * num / den

    @property
    def duration(self) -> float:
        times = self.frame_times
        return float(times[-1] - times[0] + 1.0 / self.average_fps)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "VideoInfo":
        return cls(**{**data, "frame_pts": tuple(data["frame_pts"]), "time_base": tuple(data["time_base"])})


def probe(source: str) -> VideoInfo:
    size = os.path.getsize(source)
    if size == 0:
        raise ClipRejected("empty file (0 bytes)")
    sha256 = file_sha256(source)
    try:
        container = av.open(source, metadata_errors="ignore")
    except av.FFmpegError as error:
        raise ClipRejected(f"not a readable media container: {error}") from error
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise ClipRejected(f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        time_base = stream.time_base
        pts = []
        try:
            for packet in container.demux(stream):
                if packet.pts is not None and packet.size > 0:
                    pts.append(packet.pts)
        except av.FFmpegError as error:
            if not pts:
                raise ClipRejected(f"cannot demux the video stream: {error}") from error
            # A container cut short: keep the frames read before the damage.
        first = _first_frame(source)
        if first is None:
            raise ClipRejected(f"video stream ({stream.codec_context.name}) has no decodable frame")
        if not pts:
            raise ClipRejected("video stream has no timestamped packets")
        rotation = int(round(first.rotation or 0)) % 360
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        frame_pts = tuple(sorted(set(pts)))
        intervals = np.diff(np.asarray(frame_pts, dtype=np.float64)) * float(time_base)
        intervals = intervals[intervals > 0]
        median = float(np.median(intervals)) if intervals.size else 0.0
        if median <= 0:
            raise ClipRejected("video stream has fewer than two distinct frame timestamps")
        vfr = bool(np.max(np.abs(intervals - median)) > VFR_TOLERANCE * median)
        average_fps = (len(frame_pts) - 1) / float(sum(intervals)) if len(frame_pts) > 1 else 1.0 / median
        return VideoInfo(
            source=source, size_bytes=size, sha256=sha256, video_id=video_id_from_sha256(sha256),
            container=container.format.name, codec=stream.codec_context.name, width=width, height=height,
            rotation=rotation, frame_pts=frame_pts, time_base=(time_base.numerator, time_base.denominator),
            average_fps=float(average_fps), variable_frame_rate=vfr,
            has_audio=bool(container.streams.audio),
        )


def _first_frame(source: str):
    with av.open(source, metadata_errors="ignore") as container:
        try:
            for frame in container.decode(video=0):
                return frame
        except av.FFmpegError:
            return None
    return None
