"""Decode one planned clip: seek, decode the chosen source frames, resize and crop, encode H.264 once.

Frames are scaled and cropped in their own YUV 4:2:0, as FFmpeg's scale filter does, and handed to x264
as they are: no RGB round trip on the way to the encoder. Later stages get RGB made from those same
cropped frames, at exactly the indices stored in the mp4. x264 output is byte-identical run to run only for
a fixed thread count, so the count is a config value and never follows the machine's CPUs.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from av.video.reformatter import VideoReformatter

from humanim.stages.base import Annotations, Clip, ClipRejected, Resources, Stage
from humanim.stages.media import av


@dataclass(frozen=True)
class CoverCrop:
    """Scale the (upright) source to scaled_w x scaled_h so it covers the target, then cut at (x0, y0)."""

    scaled_w: int
    scaled_h: int
    x0: int
    y0: int
    box: tuple[float, float, float, float]  # the cut in source pixels (x0, y0, x1, y1)


def cover_crop(src_w: int, src_h: int, dst_w: int, dst_h: int) -> CoverCrop:
    """The centred cover crop; offsets are even so 4:2:0 chroma stays aligned with the luma it belongs to."""
    scale = max(dst_w / src_w, dst_h / src_h)
    scaled_w, scaled_h = max(dst_w, round(src_w * scale)), max(dst_h, round(src_h * scale))
    x0, y0 = ((scaled_w - dst_w) // 2) & ~1, ((scaled_h - dst_h) // 2) & ~1
    box = (x0 / scale, y0 / scale, (x0 + dst_w) / scale, (y0 + dst_h) / scale)
    return CoverCrop(scaled_w, scaled_h, x0, y0, box)


def _cut(scaled: "av.VideoFrame", turns: int, crop: CoverCrop, dst_w: int, dst_h: int) -> "av.VideoFrame":
    """Turn a scaled yuv420p frame upright and cut the target out of it, plane by plane."""
    out = av.VideoFrame(dst_w, dst_h, "yuv420p")
    for subsampling, source, target in zip((1, 2, 2), scaled.planes, out.planes):
        plane = np.frombuffer(source, np.uint8).reshape(source.height, source.line_size)[:, :source.width]
        upright = np.rot90(plane, k=turns) if turns else plane
        x0, y0 = crop.x0 // subsampling, crop.y0 // subsampling
        view = np.frombuffer(target, np.uint8).reshape(target.height, target.line_size)
        view[:, :target.width] = upright[y0:y0 + target.height, x0:x0 + target.width]
    out.colorspace, out.color_range = scaled.colorspace, scaled.color_range
    return out


def read_frames(source: str, wanted_pts: set[int], rotation: int, crop: CoverCrop, dst_w: int,
                dst_h: int) -> dict[int, "av.VideoFrame"]:
    """The wanted source frames by pts: scaled in YUV 4:2:0 (keeping the source's colour matrix), upright, cut."""
    turns = (rotation // 90) % 4
    # swscale works on the stored orientation, so a quarter-turned video is scaled to the swapped size.
    reformat_w, reformat_h = (crop.scaled_h, crop.scaled_w) if turns % 2 else (crop.scaled_w, crop.scaled_h)
    first, last = min(wanted_pts), max(wanted_pts)
    frames: dict[int, av.VideoFrame] = {}
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
                continue  # a damaged packet: the frames it held are reported missing by the caller
            for frame in decoded:
                if frame.pts in wanted_pts:
                    scaled = scaler.reformat(frame, width=reformat_w, height=reformat_h, format="yuv420p",
                                             interpolation="AREA", threads=1)
                    frames[frame.pts] = _cut(scaled, turns, crop, dst_w, dst_h)
                # The decoder returns frames in presentation order: past the last wanted one, we are done.
                if frame.pts is not None and frame.pts >= last:
                    return frames
    return frames


def encode_h264(frames: list["av.VideoFrame"], fps: float, crf: int, preset: str, threads: int) -> bytes:
    """An mp4 of the frames (yuv420p as they are; other formats are converted by PyAV), tagged with their
    colour matrix so readers turn them back into the same RGB."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        stream.codec_context.colorspace = frames[0].colorspace
        stream.codec_context.color_range = frames[0].color_range
        stream.codec_context.options = {"crf": str(crf), "preset": preset, "threads": str(threads)}
        stream.codec_context.thread_count = threads
        for index, frame in enumerate(frames):
            frame.pts = index  # the encoder keeps its own copy of the frame's properties
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def rgb_video_frames(rgb: np.ndarray) -> list["av.VideoFrame"]:
    """uint8 [T, H, W, 3] RGB arrays as frames for encode_h264."""
    return [av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24") for f in rgb]


class Decode(Stage):
    name = "decode"
    version = "2"
    resources = Resources(cpus=1)

    def __init__(self, config: dict, build_seed: int = 0):
        super().__init__(config, build_seed)
        self.width, self.height = int(config["width"]), int(config["height"])
        if self.width % 2 or self.height % 2:
            raise ValueError(f"video.width and video.height must be even for yuv420p, got {self.width}x{self.height}")
        self.crf, self.preset, self.threads = int(config["crf"]), str(config["preset"]), int(config["threads"])
        if self.threads < 1:
            raise ValueError("video.threads must be a fixed count >= 1: x264 output depends on it")

    def crop(self, clip: Clip) -> tuple[CoverCrop, dict]:
        """Where the clip is cut from its source, and what to record about it in the clip's metadata."""
        info = clip.meta["source_info"]
        return cover_crop(info["width"], info["height"], self.width, self.height), {}

    def __call__(self, clip: Clip) -> Annotations:
        spec = clip.spec
        info = clip.meta["source_info"]
        crop, crop_record = self.crop(clip)
        decoded = read_frames(spec.source, set(spec.source_frame_pts), info["rotation"], crop, self.width,
                              self.height)
        missing = [t for p, t in zip(spec.source_frame_pts, spec.source_frame_times) if p not in decoded]
        if missing:
            raise ClipRejected(f"{len(missing)} of {len(spec.source_frame_pts)} source frames could not be decoded "
                               f"(corrupt data near t={missing[0]:.3f} s)")
        yuv = [decoded[p] for p in spec.source_frame_pts]
        to_rgb = VideoReformatter()
        frames = np.stack([to_rgb.reformat(f, format="rgb24", threads=1).to_ndarray() for f in yuv])
        reference, reference_record = None, {"reference": None, "reference_missing": "no frame outside the clip"}
        if spec.reference_frame_pts is not None:
            # Its own seek: the reference may lie far from the clip, and decoding the stretch between is waste.
            found = read_frames(spec.source, {spec.reference_frame_pts}, info["rotation"], crop, self.width,
                                self.height)
            if found:
                reference = to_rgb.reformat(found[spec.reference_frame_pts], format="rgb24", threads=1).to_ndarray()
                reference_record = {"reference": {
                    "source_frame_index": spec.reference_frame_index,
                    "source_frame_time": round(spec.reference_frame_time, 6),
                    "same_scene": spec.reference_same_scene}}
            else:
                reference_record["reference_missing"] = "the reference frame could not be decoded"
        mp4 = encode_h264(yuv, spec.fps, self.crf, self.preset, self.threads)
        indices = np.asarray(spec.source_frame_indices)
        return Annotations(
            frames=frames,
            reference=reference,
            fields={"frames": mp4},
            meta={"crop_box": [round(v, 3) for v in crop.box], **crop_record, **reference_record, "encoder": {
                "codec": "libx264", "crf": self.crf, "preset": self.preset, "threads": self.threads}},
            qa={"source_fps": info["average_fps"],
                "repeated_frame_share": float(np.mean(indices[1:] == indices[:-1])) if len(indices) > 1 else 0.0},
        )
