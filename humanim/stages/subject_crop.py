"""Decode a clip cropped around its main subject instead of the frame's centre (`video.crop: subject`).

A centre crop of a 16:9 dance video to a square keeps whatever stands in the middle, and loses the dancer who
moves off to the side. Here the clip is first decoded small and whole (longer side `detect_side`), people are
detected with a YOLOX person detector and the main subject is tracked through the clip (`track.track_subject`:
the same choice of subject as the pose stage makes), and one crop box holds the subject in every frame
(`track.subject_crop_box`), so the crop does not jitter from frame to frame. The clip is then decoded again
through the same YUV cutting path as the centre crop, at the box. Decoding twice costs about one more small
decode per clip; the detector runs at its own 416 px input either way.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from av.video.reformatter import VideoReformatter

from humanim.schemas.keys import file_sha256
from humanim.stages import model_store
from humanim.stages.base import Clip, ClipRejected, Resources
from humanim.stages.decode import CoverCrop, Decode, read_frames
from humanim.stages.track import scaled_crop, subject_crop_box, track_subject


def whole_frame(src_w: int, src_h: int, longer_side: int) -> tuple[CoverCrop, int, int]:
    """A 'crop' that keeps the whole upright frame, scaled so its longer side is about `longer_side` (even
    sizes, as 4:2:0 needs); with its width and height."""
    scale = longer_side / max(src_w, src_h)
    width, height = max(2, round(src_w * scale / 2) * 2), max(2, round(src_h * scale / 2) * 2)
    return CoverCrop(width, height, 0, 0, (0.0, 0.0, float(src_w), float(src_h))), width, height


class SubjectCropDecode(Decode):
    """Decode, cropped around the tracked subject. Config keys (the `video` section): those of Decode, plus
    subject_detector (a YOLOX model-store name or file path), subject_margin (share of the subject's extent
    kept around it), detect_side (longer side of the frames the detector sees), subject_max_lost_share."""

    resources = Resources(cpus=1, stateful=True)  # keeps the detector loaded

    def __init__(self, config: dict, build_seed: int = 0):
        super().__init__(config, build_seed)
        from humanim.stages.pose_rtmlib import PersonDetector

        self.detector_name = str(config["subject_detector"])
        self.margin = float(config["subject_margin"])
        self.detect_side = int(config["detect_side"])
        self.max_lost_share = float(config["subject_max_lost_share"])
        path = model_store.resolve_name_or_path(self.detector_name)
        self._detector = PersonDetector(path)
        self._model = {"name": path.name, "sha256": file_sha256(path)}

    @classmethod
    def check_environment(cls, config: dict[str, Any]) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as error:
            raise ImportError("video.crop: subject detects people with onnxruntime: pip install onnxruntime") from error
        # A missing or corrupt file stops the build here, with the command that fetches it.
        model_store.resolve_name_or_path(str(config["subject_detector"]))

    @classmethod
    def model_names(cls, config: dict[str, Any]) -> list[str]:
        return [str(config["subject_detector"])]

    def model_files(self) -> list[str]:
        return [self.detector_name]

    def subject_box(self, clip: Clip) -> tuple[tuple[float, float, float, float], dict[str, Any]]:
        """The clip's crop box in upright source pixels, and the tracking record for the clip's metadata."""
        spec, info = clip.spec, clip.meta["source_info"]
        preview, width, height = whole_frame(info["width"], info["height"], self.detect_side)
        decoded = read_frames(spec.source, set(spec.source_frame_pts), info["rotation"], preview, width, height)
        if len(decoded) < len(set(spec.source_frame_pts)):
            raise ClipRejected(f"{len(set(spec.source_frame_pts)) - len(decoded)} source frames could not be "
                               "decoded")
        to_rgb = VideoReformatter()
        frames = np.stack([to_rgb.reformat(decoded[p], format="rgb24", threads=1).to_ndarray()
                           for p in spec.source_frame_pts])
        track = track_subject(self._detector(frames), (width, height), max_lost_share=self.max_lost_share)
        boxes = track.boxes.copy()
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] + 0.5) * info["width"] / width - 0.5
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] + 0.5) * info["height"] / height - 0.5
        box = subject_crop_box(boxes, (info["width"], info["height"]), (self.width, self.height), self.margin)
        return box, {**track.to_meta(), "detector": self._model["name"], "detector_sha256": self._model["sha256"]}

    def crop(self, clip: Clip) -> tuple[CoverCrop, dict[str, Any]]:
        info = clip.meta["source_info"]
        box, record = self.subject_box(clip)
        scaled_w, scaled_h, (left, top) = scaled_crop(box, (info["width"], info["height"]), (self.width, self.height))
        scale = scaled_w / info["width"]
        cut = (left / scale, top / scale, (left + self.width) / scale, (top + self.height) / scale)
        return CoverCrop(scaled_w, scaled_h, left, top, cut), {"subject_crop": record}
