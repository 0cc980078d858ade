"""Top-down whole-body pose with the RTMPose family through ONNX Runtime: a YOLOX person detector, then a SimCC
pose model on a crop around the person (back-ends `dwpose`: DWPose-l 384x288; `rtmw`: RTMW-l or RTMW-x 384x288).

The crop and the SimCC decoding are rtmlib's own functions (the same maths as mmpose and DWPose); the
sessions are ours, because rtmlib runs one crop at a time on one execution provider, and we batch crops
across frames where the model's batch dimension allows it, and fall back from CUDA to CPU visibly.

Colour order follows how each model was trained, not rtmlib's habit of feeding cv2's BGR to both: YOLOX
(mmdet and Megvii) trains on BGR images without normalisation; RTMPose's data preprocessor turns BGR into RGB
before normalising with ImageNet means. Clip frames are RGB.

Detection and pose are separate calls (`detect_people`, `estimate_pose`) so subject tracking can choose the
box between them; until it does, the stage takes the highest-scoring person of each frame.
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import cv2
import numpy as np
from rtmlib.tools.object_detection.post_processings import nms
from rtmlib.tools.pose_estimation.post_processings import get_simcc_maximum
from rtmlib.tools.pose_estimation.pre_processings import bbox_xyxy2cs, top_down_affine

from humanim.schemas.keypoints import BODY, FACE, LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND
from humanim.stages import model_store
from humanim.stages.base import Annotations, Clip, Resources, Stage
from humanim.stages.track import reference_subject, track_subject

logger = logging.getLogger(__name__)

# Default (detector, pose model) of each back-end, by model-store name.
BACKEND_MODELS = {
    "dwpose": ("yolox_l.onnx", "dw-ll_ucoco_384.onnx"),
    "rtmw": ("yolox_l.onnx", "rtmw-l_384x288.onnx"),
}
POSE_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)  # RGB, mmpose's PoseDataPreprocessor
POSE_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
# Every uint8 value's normalised value, per channel [3, 1, 256]: normalising a crop is then a table lookup
# per channel (cv2.LUT), several times faster than float arithmetic over it, with the same float32 results.
POSE_NORMALISED = ((np.arange(256, dtype=np.float32) - POSE_MEAN[:, None]) / POSE_STD[:, None])[:, None]
BOX_PADDING = 1.25  # mmpose top-down: the crop is the detector's box grown by a quarter
LETTERBOX_FILL = 114  # YOLOX pads its square input with this grey
NMS_IOU = 0.45  # DWPose's and rtmlib's YOLOX setting
PERSON_CLASS = 0
YOLOX_STRIDES = (8, 16, 32)


def onnx_session(path: Path, device: str, threads: int) -> tuple[Any, str | None]:
    """An ONNX Runtime session on CUDA (when asked and available) else CPU; and a note when CUDA was asked
    but is not what runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0 lets ONNX Runtime take every core
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), options, providers=providers)
    running = session.get_providers()[0]
    if device == "cuda" and running != "CUDAExecutionProvider":
        return session, f"asked cuda, running {running}"
    return session, None


def run_batched(session: Any, inputs: Iterable[np.ndarray], batch_size: int) -> list[list[np.ndarray]]:
    """Each input's outputs (batch dimension dropped) of `session` over `inputs` (one [C, H, W] array each),
    in chunks the model's batch dimension accepts: up to `batch_size` when it is dynamic, its fixed size
    otherwise (the last chunk padded by repetition). Inputs are drawn a chunk at a time, so a long clip
    never holds all its model inputs at once. Per input, because a detector's outputs differ in length."""
    fixed = session.get_inputs()[0].shape[0]
    chunk = fixed if isinstance(fixed, int) else batch_size
    input_name = session.get_inputs()[0].name
    remaining = iter(inputs)
    per_input: list[list[np.ndarray]] = []
    while batch := list(itertools.islice(remaining, chunk)):
        real = len(batch)
        batch += [batch[-1]] * (chunk - real if isinstance(fixed, int) else 0)
        outputs = session.run(None, {input_name: np.stack(batch) if len(batch) > 1 else batch[0][None]})
        per_input.extend([output[i] for output in outputs] for i in range(real))
    return per_input


class PersonDetector:
    """YOLOX person boxes per frame, from either export: mmdeploy's (NMS inside: dets [B, N, 5] and labels
    [B, N]) or Megvii's (raw [B, anchors, 5 + classes], decoded and NMS'd here, as DWPose does)."""

    def __init__(self, path: Path, device: str = "cpu", threads: int = 1, score_threshold: float = 0.3,
                 batch_size: int = 1):
        self.session, self.provider_fallback = onnx_session(path, device, threads)
        self.input_height, self.input_width = self.session.get_inputs()[0].shape[2:]
        self.score_threshold = score_threshold
        self.batch_size = batch_size
        # Megvii's raw head predicts each anchor's box relative to its grid cell, at three strides.
        cells, strides = [], []
        for stride in YOLOX_STRIDES:
            ys, xs = np.mgrid[:self.input_height // stride, :self.input_width // stride]
            cells.append(np.stack([xs, ys], axis=-1).reshape(-1, 2))
            strides.append(np.full((len(cells[-1]), 1), stride))
        self._anchor_cells, self._anchor_strides = np.concatenate(cells), np.concatenate(strides)

    def scale(self, frame: np.ndarray) -> float:
        """How much the letterbox shrinks or grows the frame to fit the detector's input."""
        return min(self.input_height / frame.shape[0], self.input_width / frame.shape[1])

    def letterbox(self, frame: np.ndarray) -> np.ndarray:
        """The detector's input [3, h, w] float32 from an RGB frame: scaled, pasted top-left, in BGR."""
        ratio = self.scale(frame)
        resized = cv2.resize(frame, (max(1, int(frame.shape[1] * ratio)), max(1, int(frame.shape[0] * ratio))),
                             interpolation=cv2.INTER_LINEAR)
        canvas = np.full((self.input_height, self.input_width, 3), LETTERBOX_FILL, dtype=np.uint8)
        canvas[:resized.shape[0], :resized.shape[1]] = resized
        return np.ascontiguousarray(canvas[..., ::-1].transpose(2, 0, 1), dtype=np.float32)  # BGR, [3, h, w]

    def _raw_person_boxes(self, raw: np.ndarray) -> np.ndarray:
        """Megvii's raw head output of one image [anchors, 5 + classes] -> person boxes [N, 5] in input pixels."""
        centre = (raw[:, :2] + self._anchor_cells) * self._anchor_strides
        size = np.exp(raw[:, 2:4]) * self._anchor_strides
        scores = raw[:, 4] * raw[:, 5 + PERSON_CLASS]
        keep = scores > self.score_threshold
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)[keep]
        scores = scores[keep]
        chosen = nms(boxes, scores, NMS_IOU) if len(scores) else []
        return np.concatenate([boxes[chosen], scores[chosen, None]], axis=1).reshape(-1, 5)

    def __call__(self, frames: np.ndarray) -> list[np.ndarray]:
        """Per frame, person boxes [N, 5] (x0, y0, x1, y1, score), best first, in frame pixels with pixel
        centres at integers (schemas.keypoints' convention)."""
        outputs = run_batched(self.session, (self.letterbox(frame) for frame in frames), self.batch_size)
        people = []
        for frame, image_outputs in zip(frames, outputs):
            if len(image_outputs) == 2 and image_outputs[0].shape[-1] == 5:
                dets, labels = image_outputs
                dets = dets[(labels == PERSON_CLASS) & (dets[:, 4] > self.score_threshold)]
            else:
                dets = self._raw_person_boxes(image_outputs[0])
            boxes = dets.astype(np.float32)
            # The detector's box edges are continuous image coordinates; pixel centres sit half a pixel in.
            boxes[:, :4] = boxes[:, :4] / self.scale(frame) - 0.5
            people.append(boxes[np.argsort(-boxes[:, 4], kind="stable")])
        return people


def crop_for_pose(frame: np.ndarray, box: np.ndarray, input_size: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pose model's input [3, h, w] float32 for one person box of an RGB frame, with the crop's centre
    and size in frame pixels (the size grown to the model's aspect ratio), to map keypoints back."""
    centre, size = bbox_xyxy2cs(np.asarray(box[:4], dtype=np.float32), padding=BOX_PADDING)
    crop, size = top_down_affine(input_size, size, centre, frame)
    normalised = np.empty((3, *crop.shape[:2]), dtype=np.float32)
    for channel, plane in enumerate(cv2.split(crop)):
        normalised[channel] = cv2.LUT(plane, POSE_NORMALISED[channel])
    return normalised, centre, size


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, centres: np.ndarray, sizes: np.ndarray,
                 input_size: tuple[int, int]) -> np.ndarray:
    """SimCC outputs [M, K, bins] of M crops -> keypoints [M, K, 3] (x, y in frame pixels, score).

    A point whose score is not positive is absent, (0, 0, 0). Scores are the raw SimCC maxima (what DWPose's
    0.3 threshold applies to) clipped to [0, 1], the range the kpts field promises."""
    locations, scores = get_simcc_maximum(simcc_x, simcc_y)
    split_ratio = simcc_x.shape[-1] / input_size[0]  # SimCC bins per input pixel
    crop_xy = locations / split_ratio
    frame_xy = centres[:, None] + (crop_xy / np.asarray(input_size, dtype=np.float32) - 0.5) * sizes[:, None]
    keypoints = np.concatenate([frame_xy, np.clip(scores, 0.0, 1.0)[..., None]], axis=-1).astype(np.float32)
    keypoints[scores <= 0] = 0.0
    return keypoints


class WholeBodyPoseModel:
    """A SimCC whole-body model (DWPose, RTMW): input [B, 3, h, w], outputs simcc_x [B, 133, w * r] and
    simcc_y [B, 133, h * r] (r = 2 for all of them)."""

    def __init__(self, path: Path, device: str = "cpu", threads: int = 1, batch_size: int = 16):
        self.session, self.provider_fallback = onnx_session(path, device, threads)
        height, width = self.session.get_inputs()[0].shape[2:]
        self.input_size = (int(width), int(height))
        self.batch_size = batch_size

    def __call__(self, frames: np.ndarray, boxes_per_frame: Sequence[np.ndarray | None]) -> np.ndarray:
        """Keypoints [T, 133, 3] of one person per frame, cropped around boxes_per_frame[t] (x0, y0, x1, y1,
        ...) in frame pixels; a frame whose box is None gets no points (all zero)."""
        keypoints = np.zeros((len(frames), NUM_KEYPOINTS, 3), dtype=np.float32)
        boxed = [t for t, box in enumerate(boxes_per_frame) if box is not None]
        if not boxed:
            return keypoints
        geometry: list[tuple[np.ndarray, np.ndarray]] = []  # each crop's centre and size, as it is made

        def crops() -> Iterator[np.ndarray]:
            for t in boxed:
                crop, centre, size = crop_for_pose(frames[t], boxes_per_frame[t], self.input_size)
                geometry.append((centre, size))
                yield crop

        outputs = run_batched(self.session, crops(), self.batch_size)
        simcc_x, simcc_y = (np.stack([crop_outputs[i] for crop_outputs in outputs]) for i in (0, 1))
        centres = np.stack([centre for centre, _ in geometry])
        sizes = np.stack([size for _, size in geometry])
        keypoints[boxed] = decode_simcc(simcc_x, simcc_y, centres, sizes, self.input_size)
        return keypoints


class RtmlibPose(Stage):
    """Whole-body keypoints of each frame's highest-scoring person, by YOLOX + DWPose or RTMW.

    Config keys: backend (dwpose | rtmw), detector and pose_model (model-store names; None takes the
    back-end's default), device (cpu | cuda), batch_size (crops per pose-model call, where its batch
    dimension is dynamic), det_threshold (person score, 0.3 as DWPose), kpt_threshold (score above which a
    point counts as found, for the pose_*_rate figures; the points themselves are kept with their scores),
    threads (ONNX Runtime CPU threads; 0 = all cores).
    """

    name = "pose"
    version = "1"
    resources = Resources(cpus=1, gpus=1, stateful=True)

    def __init__(self, config: dict[str, Any], build_seed: int = 0):
        super().__init__(config, build_seed)
        self.backend = config["backend"]
        if self.backend not in BACKEND_MODELS:
            raise ValueError(f"pose.backend {self.backend!r} is not an rtmlib back-end: {', '.join(BACKEND_MODELS)}")
        self.detector_name, self.pose_model_name = self.model_names(config)
        self.device = config["device"]
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"pose.device must be cpu or cuda, not {self.device!r}")
        self.batch_size = int(config["batch_size"])
        if self.batch_size < 1:
            raise ValueError("pose.batch_size must be at least 1")
        self.det_threshold = float(config["det_threshold"])
        self.kpt_threshold = float(config["kpt_threshold"])
        self.threads = int(config["threads"])
        self.max_lost_share = float(config["max_lost_share"])
        # Resolving checks every file's sha256 here, on the driver as on each worker; the sessions wait for
        # the first clip, so a driver without the worker's GPU neither loads them nor warns about CUDA.
        self._models_meta = [{"name": d["name"], "sha256": d["sha256"]}
                             for d in model_store.describe(self.model_files())]
        self._detector: PersonDetector | None = None
        self._pose_model: WholeBodyPoseModel | None = None

    @classmethod
    def check_environment(cls, config: dict[str, Any]) -> None:
        """A config error or a missing or corrupt model file surfaces on the driver: building the stage checks
        both, and costs little since its sessions wait for the first clip."""
        cls(config)

    @classmethod
    def model_names(cls, config: dict[str, Any]) -> list[str]:
        default_detector, default_pose_model = BACKEND_MODELS[config["backend"]]
        return [config.get("detector") or default_detector, config.get("pose_model") or default_pose_model]

    def model_files(self) -> list[str]:
        return [self.detector_name, self.pose_model_name]

    def _load(self) -> tuple[PersonDetector, WholeBodyPoseModel]:
        if self._detector is None or self._pose_model is None:
            self._detector = PersonDetector(model_store.resolve(self.detector_name), self.device, self.threads,
                                            self.det_threshold, self.batch_size)
            self._pose_model = WholeBodyPoseModel(model_store.resolve(self.pose_model_name), self.device,
                                                  self.threads, self.batch_size)
            if self.provider_fallback:
                logger.warning("POSE STAGE RUNS ON CPU: %s (is onnxruntime-gpu installed and a GPU visible?); "
                               "expect it to be many times slower", self.provider_fallback)
        return self._detector, self._pose_model

    @property
    def provider_fallback(self) -> str | None:
        if self._detector is None or self._pose_model is None:
            return None
        return self._detector.provider_fallback or self._pose_model.provider_fallback

    def detect_people(self, frames: np.ndarray) -> list[np.ndarray]:
        """Person boxes [N, 5] (x0, y0, x1, y1, score) of each frame, best first (PersonDetector)."""
        return self._load()[0](frames)

    def estimate_pose(self, frames: np.ndarray, boxes_per_frame: Sequence[np.ndarray | None]) -> np.ndarray:
        """Keypoints [T, 133, 3] of the person in each frame's box; zeros where the box is None."""
        return self._load()[1](frames, boxes_per_frame)

    def __call__(self, clip: Clip) -> Annotations:
        frames = clip.frames
        people = self.detect_people(frames)
        # One subject for the whole clip, kept by box continuity: raises ClipRejected (a failures row) when
        # nobody is seen or the subject is lost in too many frames.
        track = track_subject(people, (frames.shape[2], frames.shape[1]), max_lost_share=self.max_lost_share)
        subject = [None if lost else box[:4] for box, lost in zip(track.boxes, track.lost)]
        kpts = self.estimate_pose(frames, subject)
        confident = kpts[..., 2] > self.kpt_threshold
        # A part counts as found in a frame when at least half of its points are confident.
        rates = {part: float((confident[:, points].mean(axis=1) >= 0.5).mean()) if len(kpts) else 0.0
                 for part, points in (("body", BODY), ("face", FACE), ("lhand", LEFT_HAND), ("rhand", RIGHT_HAND))}
        meta = {
            "backend": self.backend,
            "models": self._models_meta,
            "device": self.device,
            "providers": {"detector": self._detector.session.get_providers()[0],
                          "pose": self._pose_model.session.get_providers()[0]},
            "det_threshold": self.det_threshold,
            "kpt_threshold": self.kpt_threshold,
            "subject": track.to_meta(),
        }
        if self.provider_fallback:
            meta["provider_fallback"] = self.provider_fallback
        qa = {f"pose_{part}_rate": rate for part, rate in rates.items()}
        qa.update(people_seen=float(track.people_seen), subject_lost_share=float(track.lost.mean()))
        fields = {"kpts": kpts, "subject_box": track.boxes}
        if clip.reference is not None:
            # The subject where the clip is nearest to the reference in time: its first frame or its last.
            spec = clip.spec
            nearest = 0 if (spec.reference_frame_index or 0) < spec.source_frame_indices[0] else len(frames) - 1
            found = np.flatnonzero(~track.lost)
            nearest = int(found[np.argmin(np.abs(found - nearest))])
            reference_people = self.detect_people(clip.reference[None])[0]
            chosen = reference_subject(reference_people, track.boxes[nearest], track.people_seen)
            if chosen is None:
                meta["reference_missing"] = "the subject was not found in the reference frame"
            else:
                fields["ref_kpts"] = self.estimate_pose(clip.reference[None], [reference_people[chosen, :4]])[0]
        return Annotations(fields=fields, meta=meta, qa=qa)
