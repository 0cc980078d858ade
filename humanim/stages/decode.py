"""Decode one planned clip: seek, decode the chosen source frames, resize and crop, encode H.264 once.

The frames handed on to later stages are the pre-encode frames, at exactly the indices stored in the mp4.
x264 output is byte-identical run to run only for a fixed thread count, so the count is a config value
and never follows the machine's CPUs.
"""
from __future__ import annotations

import io
from fractions import Fraction

import numpy as np

from av.video.reformatter import VideoReformatter

from humanim.stages.media import av
from humanim.stages.base import Annotations, Clip, ClipRejected, Resources, Stage


def cover_crop(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int, tuple[float, float, float, float]]:
    """Scale that covers the target, and the centred crop box in source pixels (x0, y0, x1, y1)."""
    scale = max(dst_w / src_w, dst_h / src_h)
    scaled_w, scaled_h = max(dst_w, round(src_w * scale)), max(dst_h, round(src_h * scale))
    x0, y0 = (scaled_w - dst_w) // 2, (scaled_h - dst_h) // 2
    box = (x0 / scale, y0 / scale, (x0 + dst_w) / scale, (y0 + dst_h) / scale)
    return scaled_w, scaled_h, box


def read_frames(source: str, wanted_pts: set[int], rotation: int, scaled_w: int, scaled_h: int) -> dict[int, np.ndarray]:
    """Decoded RGB frames by pts, scaled (by swscale, in the same pass as the colour conversion) and upright."""
    turns = (rotation // 90) % 4
    # swscale works on the stored orientation, so a quarter-turned video is scaled to the swapped size.
    reformat_w, reformat_h = (scaled_h, scaled_w) if turns % 2 else (scaled_w, scaled_h)
    first, last = min(wanted_pts), max(wanted_pts)
    frames: dict[int, np.ndarray] = {}
    with av.open(source, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        # The pipeline runs one clip per core (Resources(cpus=1)), where one decoder thread costs least.
        stream.codec_context.thread_count = 1
        # One scaler for the clip: VideoFrame.reformat would build a new SwsContext for every frame.
        scaler = VideoReformatter()
        container.seek(first, stream=stream, backward=True, any_frame=False)
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.FFmpegError:
                continue  # a damaged packet: the frames it held are reported missing below
            for frame in decoded:
                if frame.pts in wanted_pts:
                    rgb = scaler.reformat(frame, width=reformat_w, height=reformat_h, format="rgb24",
                                          interpolation="AREA", threads=1).to_ndarray()
                    frames[frame.pts] = np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb
                # The decoder returns frames in presentation order: past the last wanted one, we are done.
                if frame.pts is not None and frame.pts >= last:
                    return frames
    return frames


def encode_h264(frames: np.ndarray, fps: float, crf: int, preset: str, threads: int) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.options = {"crf": str(crf), "preset": preset, "threads": str(threads)}
        stream.codec_context.thread_count = threads
        to_yuv = VideoReformatter()  # the conversion x264 needs, with one reused context on one thread
        for index, rgb in enumerate(frames):
            frame = to_yuv.reformat(av.VideoFrame.from_ndarray(rgb, format="rgb24"), format="yuv420p", threads=1)
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


class Decode(Stage):
    name = "decode"
    version = "1"
    resources = Resources(cpus=1)

    def __init__(self, config: dict, build_seed: int = 0):
        super().__init__(config, build_seed)
        self.width, self.height = int(config["width"]), int(config["height"])
        if self.width % 2 or self.height % 2:
            raise ValueError(f"video.width and video.height must be even for yuv420p, got {self.width}x{self.height}")
        self.crf, self.preset, self.threads = int(config["crf"]), str(config["preset"]), int(config["threads"])
        if self.threads < 1:
            raise ValueError("video.threads must be a fixed count >= 1: x264 output depends on it")

    def __call__(self, clip: Clip) -> Annotations:
        spec = clip.spec
        info = clip.meta["source_info"]
        scaled_w, scaled_h, crop_box = cover_crop(info["width"], info["height"], self.width, self.height)
        wanted = set(spec.source_frame_pts)
        decoded = read_frames(spec.source, wanted, info["rotation"], scaled_w, scaled_h)
        missing = [t for p, t in zip(spec.source_frame_pts, spec.source_frame_times) if p not in decoded]
        if missing:
            raise ClipRejected(f"{len(missing)} of {len(spec.source_frame_pts)} source frames could not be decoded "
                               f"(corrupt data near t={missing[0]:.3f} s)")
        x0, y0 = (scaled_w - self.width) // 2, (scaled_h - self.height) // 2
        frames = np.stack([decoded[p][y0:y0 + self.height, x0:x0 + self.width] for p in spec.source_frame_pts])
        mp4 = encode_h264(frames, spec.fps, self.crf, self.preset, self.threads)
        indices = np.asarray(spec.source_frame_indices)
        return Annotations(
            frames=frames,
            fields={"frames": mp4},
            meta={"crop_box": [round(v, 3) for v in crop_box], "encoder": {
                "codec": "libx264", "crf": self.crf, "preset": self.preset, "threads": self.threads}},
            qa={"source_fps": info["average_fps"],
                "repeated_frame_share": float(np.mean(indices[1:] == indices[:-1])) if len(indices) > 1 else 0.0},
        )
