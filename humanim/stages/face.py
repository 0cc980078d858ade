"""The subject's face in every frame (box, five landmarks) and one ArcFace identity embedding per clip.

VividPose's identity controller and HIA's face cosine loss condition on a 512-d ArcFace embedding of the
subject. The embedding comes from one frame: frontal first, since ArcFace suffers more from a turned head than
from mild blur, then sharp: the sharpest face among those within `frontal_tolerance` of the most frontal one.
Frontality is where the nose tip sits between the eyes; sharpness is the variance of the Laplacian of the
aligned 112 px crop, so every face is measured at the same scale.

Whose face: a clip can hold several people, and the detector sees all of them; the subject is the person the
pose stage tracked. A detection is the subject's face when its box (grown by `box_margin`, since ears and jaw
points lie outside face boxes) holds at least `min_inside` of the subject's confident face keypoints (nose,
eyes and ears of the body, and the 68 face points); among those the one holding the largest share wins, ties
going to the box whose centre is nearest the keypoints' centre. No confident face keypoint, no face.

Seen from behind: pose models keep placing the nose, eyes and ears on the back of a head (MediaPipe scores
them 1.0 there; DWPose is known to draw face points on it), and face detectors fire on the back of a head
(SCRFD and YuNet both do on animatex_ubc), so face keypoints inside a box are not enough. A frame counts as
showing the subject's face only when the pose model scored at least `min_face_share` of the 68 face points,
or the body plainly faces the camera, and never when the body plainly faces away. Which way the body faces
comes from the order of the shoulders across the body's up axis (shoulders to head): seen from the front, the
person's left shoulder is on the image's right. The signed shoulder width, in units of the head-to-shoulders
distance, is about -1.4 facing the camera and +1.4 from behind on real clips, and near 0 in a side view, where
the order is noise; `turn_margin` is how far from 0 it must be to count.

Back-ends: `insightface` (buffalo_l: SCRFD-10GF detector and ArcFace w600k_r50; weights for NON-COMMERCIAL
RESEARCH ONLY), `scrfd` (SCRFD-500M of buffalo_sc, same licence, detection only), `yunet` (MIT, detection
only) and `mediapipe` (BlazeFace full-range, Apache-2.0, detection only, weights in the mediapipe wheel: the
back-end that needs no download). Without a recognition model the embedding is recorded as unavailable, with
the reason; nothing else is put in its place.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from humanim.schemas.keypoints import BODY_NAMES, FACE
from humanim.schemas.keys import file_sha256
from humanim.stages import model_store
from humanim.stages.base import Annotations, Clip, Resources, Stage
from humanim.stages.blur import laplacian_sharpness
from humanim.stages.face_models import (
    ARCFACE_SIZE, ArcFaceEmbedder, MediaPipeFaceDetector, ScrfdDetector, YunetDetector, align_face,
)

logger = logging.getLogger(__name__)

INSIGHTFACE_LICENCE = ("insightface pretrained models (buffalo_l, buffalo_sc): NON-COMMERCIAL RESEARCH USE ONLY; "
                       "data built with them must not be used commercially")


@dataclass(frozen=True)
class Backend:
    detector: str | None  # model-store file names; None: weights ship in a package
    recognizer: str | None
    licence: str


BACKENDS = {
    "insightface": Backend("det_10g.onnx", "w600k_r50.onnx", INSIGHTFACE_LICENCE),
    "scrfd": Backend("det_500m.onnx", None, INSIGHTFACE_LICENCE),
    "yunet": Backend("face_detection_yunet_2026may.onnx", None,
                     "YuNet weights: MIT (trained on WIDER FACE, whose terms are non-commercial)"),
    "mediapipe": Backend(None, None, "MediaPipe BlazeFace full-range: Apache-2.0 (ships in the mediapipe wheel)"),
}

HEAD = [BODY_NAMES.index(n) for n in ("nose", "left_eye", "right_eye", "left_ear", "right_ear")]
FACE_EVIDENCE = np.r_[HEAD, FACE.start:FACE.stop]  # keypoints that place the subject's face
LEFT_SHOULDER, RIGHT_SHOULDER = BODY_NAMES.index("left_shoulder"), BODY_NAMES.index("right_shoulder")


def facing(kpts: np.ndarray, threshold: float) -> float | None:
    """Signed shoulder width across the body's up axis, in head-to-shoulders distances, of one frame's keypoints
    [133, 3]: negative when the person faces the camera, positive from behind; None when the shoulders or the
    head are not seen."""
    head = kpts[HEAD][kpts[HEAD, 2] > threshold, :2]
    shoulders = kpts[[LEFT_SHOULDER, RIGHT_SHOULDER]]
    if len(head) == 0 or np.any(shoulders[:, 2] <= threshold):
        return None
    up = head.mean(axis=0) - shoulders[:, :2].mean(axis=0)
    up_squared = float(np.dot(up, up))
    if up_squared == 0:
        return None
    across = shoulders[0, :2] - shoulders[1, :2]  # right shoulder to left shoulder
    # The 2-D cross product is negative when the left shoulder lies on the image's right of the up axis, so the
    # sign does not depend on the roll of the body in the image (a handstand facing the camera is negative too).
    return float(across[0] * up[1] - across[1] * up[0]) / up_squared


def shows_face(kpts: np.ndarray, threshold: float, min_face_share: float, turn_margin: float) -> bool:
    """Whether one frame's keypoints [133, 3] show the person's face (see the module docstring)."""
    direction = facing(kpts, threshold)
    if direction is not None and direction > turn_margin:
        return False
    face_share = float(np.mean(kpts[FACE, 2] > threshold))
    return face_share >= min_face_share or (direction is not None and direction < -turn_margin)


def face_points(kpts: np.ndarray, threshold: float) -> np.ndarray:
    """float32 [M, 2]: the confident keypoints of one frame [133, 3] that place the person's face."""
    evidence = kpts[FACE_EVIDENCE]
    return evidence[evidence[:, 2] > threshold, :2]


def subject_face_index(boxes: np.ndarray, points: np.ndarray, box_margin: float, min_inside: float) -> int | None:
    """Which detection (boxes [N, >=4]) is the face placed by the person's face points [M, 2], or None."""
    if len(points) == 0 or len(boxes) == 0:
        return None
    size = boxes[:, 2:4] - boxes[:, 0:2]
    low, high = boxes[:, None, 0:2] - box_margin * size[:, None], boxes[:, None, 2:4] + box_margin * size[:, None]
    inside = np.all((points[None] >= low) & (points[None] <= high), axis=2).mean(axis=1)  # [N]
    centre_distance = np.hypot(*((boxes[:, 0:2] + boxes[:, 2:4]) / 2 - points.mean(axis=0)).T)
    candidates = np.flatnonzero(inside >= min_inside)
    if len(candidates) == 0:
        return None
    # lexsort sorts by its last key first: largest share inside, then nearest centre.
    return int(candidates[np.lexsort((centre_distance[candidates], -inside[candidates]))[0]])


def frontality(landmarks: np.ndarray) -> float:
    """1 when the nose tip sits midway between the eyes along the eye line, falling to 0 as it reaches an eye
    (a head turned sideways); landmarks [5, 2] in insightface's order."""
    eye_a, eye_b, nose = landmarks[0].astype(np.float64), landmarks[1].astype(np.float64), landmarks[2]
    eye_line = eye_b - eye_a
    along = float(np.dot(nose - eye_a, eye_line) / max(float(np.dot(eye_line, eye_line)), 1e-9))
    return float(np.clip(1 - abs(2 * along - 1), 0.0, 1.0))


class Face(Stage):
    """Per-frame face box and landmarks of the tracked subject, and (insightface) one identity embedding.

    Config keys: backend (insightface | scrfd | yunet | mediapipe), detector and recognizer (model file names or
    paths; null takes the back-end's; a name is looked up in the model store, a path is used as given),
    det_size (SCRFD input side, a multiple of 32), det_threshold, nms_threshold, kpt_threshold, box_margin,
    min_inside, min_face_share, turn_margin, frontal_tolerance (see the module docstring).
    """

    name = "face"
    version = "1"
    resources = Resources(cpus=1, stateful=True)

    def __init__(self, config: dict[str, Any], build_seed: int = 0):
        super().__init__(config, build_seed)
        self.check_environment(config)
        self.backend = str(config["backend"])
        backend = BACKENDS[self.backend]
        detector_name = config["detector"] or backend.detector
        recognizer_name = config["recognizer"] or backend.recognizer
        if self.backend == "mediapipe":
            self._detector = MediaPipeFaceDetector(float(config["det_threshold"]))
            detector_path = self._detector.weights_path
        else:
            detector_path = model_store.resolve_name_or_path(detector_name)
            if self.backend == "yunet":
                self._detector = YunetDetector(detector_path, float(config["det_threshold"]),
                                               float(config["nms_threshold"]))
            else:
                self._detector = ScrfdDetector(detector_path, int(config["det_size"]),
                                               float(config["det_threshold"]), float(config["nms_threshold"]))
        self._embedder = None
        self._models = {"detector": {"file": detector_path.name, "sha256": file_sha256(detector_path)}}
        if recognizer_name is not None:
            recognizer_path = model_store.resolve_name_or_path(recognizer_name)
            self._embedder = ArcFaceEmbedder(recognizer_path)
            self._models["recognizer"] = {"file": Path(recognizer_name).name, "sha256": file_sha256(recognizer_path)}
        self.licence = backend.licence
        if backend.licence == INSIGHTFACE_LICENCE:
            logger.warning("face stage, back-end %s: %s", self.backend, INSIGHTFACE_LICENCE)
        self.kpt_threshold = float(config["kpt_threshold"])
        self.box_margin = float(config["box_margin"])
        self.min_inside = float(config["min_inside"])
        self.min_face_share = float(config["min_face_share"])
        self.turn_margin = float(config["turn_margin"])
        self.frontal_tolerance = float(config["frontal_tolerance"])

    @classmethod
    def check_environment(cls, config: dict[str, Any]) -> None:
        if config["backend"] not in BACKENDS:
            raise ValueError(f"unknown face.backend {config['backend']!r}; back-ends: {', '.join(BACKENDS)}")
        if config["backend"] == "mediapipe":
            from humanim.stages.pose_mediapipe import require_mediapipe

            require_mediapipe("the mediapipe face back-end")
        elif config["backend"] != "yunet":
            try:
                import onnxruntime  # noqa: F401
            except ImportError as error:
                raise ImportError(f"the {config['backend']} face back-end needs onnxruntime: "
                                  "pip install onnxruntime") from error

    @classmethod
    def model_names(cls, config: dict[str, Any]) -> list[str]:
        backend = BACKENDS[config["backend"]]
        if backend.detector is None:
            return []  # weights inside an installed package, whose version build.json records
        names = [config["detector"] or backend.detector]
        if backend.recognizer is not None:
            names.append(config["recognizer"] or backend.recognizer)
        return names

    def model_files(self) -> list[str]:
        return [entry["file"] for entry in self._models.values()]

    def __call__(self, clip: Clip) -> Annotations:
        if "kpts" not in clip.fields:
            raise ValueError("the face stage picks the subject's face by its keypoints: put the pose stage "
                             "before it in `stages`")
        frames, kpts = clip.frames, clip.fields["kpts"]
        num_frames = len(frames)
        face_box = np.full((num_frames, 5), np.nan, dtype=np.float32)
        face_landmarks = np.full((num_frames, 5, 2), np.nan, dtype=np.float32)
        for t in range(num_frames):
            box, landmarks = self._subject_face(frames[t], kpts[t])
            if box is not None:
                face_box[t], face_landmarks[t] = box, landmarks
        seen = np.flatnonzero(np.isfinite(face_box[:, 4]))
        fields: dict[str, np.ndarray] = {"face_box": face_box, "face_landmarks": face_landmarks}
        meta: dict[str, Any] = {"backend": self.backend, "models": self._models, "licence": self.licence}
        if self._embedder is None:
            meta.update(embedding=None,
                        embedding_unavailable=f"offline back-end {self.backend} has no recognition model")
        elif len(seen) == 0:
            meta.update(embedding=None, embedding_unavailable="the subject's face was not found in any frame")
        else:
            embedding, record = self._embed_best(frames, face_box, face_landmarks, seen)
            fields["face_embedding"] = embedding
            meta["embedding"] = record
        if self._embedder is not None and clip.reference is not None and "ref_kpts" in clip.fields:
            landmarks = self._subject_face(clip.reference, clip.fields["ref_kpts"])[1]
            if landmarks is None:
                meta["reference_embedding_missing"] = "the subject's face is not seen in the reference frame"
            else:
                fields["ref_face_embedding"] = self._embedder(align_face(clip.reference, landmarks)[None])[0]
        return Annotations(fields=fields, meta=meta,
                           qa={"face_rate": float(len(seen) / num_frames) if num_frames else 0.0})

    def _subject_face(self, frame: np.ndarray, kpts: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The subject's face box [5] and landmarks [5, 2] in one frame, given its keypoints [133, 3]."""
        points = face_points(kpts, self.kpt_threshold)
        if len(points) == 0 or not shows_face(kpts, self.kpt_threshold, self.min_face_share, self.turn_margin):
            return None, None  # no face of the subject to find, so the detector need not run
        boxes, landmarks = self._detector(frame)
        chosen = subject_face_index(boxes, points, self.box_margin, self.min_inside)
        return (None, None) if chosen is None else (boxes[chosen], landmarks[chosen])

    def _embed_best(self, frames: np.ndarray, face_box: np.ndarray, face_landmarks: np.ndarray,
                    seen: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """The embedding of the most frontal, sharpest face among frames `seen`, and its record for meta."""
        crops = np.stack([align_face(frames[t], face_landmarks[t]) for t in seen])
        greys = [cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) for crop in crops]
        sharpness = np.array([laplacian_sharpness(grey, ARCFACE_SIZE, ARCFACE_SIZE) for grey in greys])
        front = np.array([frontality(face_landmarks[t]) for t in seen])
        frontal_enough = front >= front.max() - self.frontal_tolerance
        best = int(np.argmax(np.where(frontal_enough, sharpness, -np.inf)))  # the first frame on ties
        embedding = self._embedder(crops[best:best + 1])[0]
        record = {"frame": int(seen[best]), "frontality": float(front[best]), "sharpness": float(sharpness[best]),
                  "detection_score": float(face_box[seen[best], 4])}
        return embedding, record
