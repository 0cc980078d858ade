"""Face detectors and the ArcFace recogniser behind the face stage, run with onnxruntime and OpenCV only.

SCRFD's output decoding and ArcFace's alignment are written here from their published definitions instead of
importing insightface, so the project needs no insightface install (its wheel pulls in a compiler-built
extension, scikit-image and more for what is a hundred lines of numpy). Both follow insightface's conventions
exactly where they matter to the weights: SCRFD sees RGB scaled as (x - 127.5) / 128 at strides 8/16/32 with
two anchors per cell; ArcFace sees a 112x112 RGB crop, aligned by a least-squares similarity onto the standard
5-point template, scaled as (x - 127.5) / 127.5.

Every detector returns, per RGB frame, boxes float32 [N, 5] (x0, y0, x1, y1, score) and landmarks float32
[N, 5, 2], best score first, in the frame's pixels under the pixel-centre convention of schemas.keypoints.
Landmark order is insightface's: the eye on the image's left, the eye on its right, the nose tip, the mouth
corner on the image's left, the one on its right (for a face looking at the camera, its right eye comes first).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

# Where ArcFace expects the five landmarks in its 112x112 input (insightface's `arcface_dst`).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
ARCFACE_SIZE = 112
SCRFD_STRIDES = (8, 16, 32)
SCRFD_ANCHORS_PER_CELL = 2


def _onnx_session(path: Path, threads: int, providers: Sequence[str]):
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError("the face stage needs onnxruntime: pip install onnxruntime") from error
    options = onnxruntime.SessionOptions()
    # The pipeline gives each clip one core; onnxruntime would otherwise take every core of the machine.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=list(providers))


class ScrfdDetector:
    """SCRFD with keypoints (the 9-output exports: det_10g of buffalo_l, det_500m of buffalo_sc).

    Each frame is resized with its aspect kept so that its longer side is `input_size`, placed at the top-left
    of a black square canvas, as insightface does; input_size must be a multiple of the largest stride (32).
    """

    def __init__(self, path: Path, input_size: int = 640, score_threshold: float = 0.5,
                 nms_threshold: float = 0.4, threads: int = 1,
                 providers: Sequence[str] = ("CPUExecutionProvider",)):
        if input_size % SCRFD_STRIDES[-1]:
            raise ValueError(f"SCRFD input_size must be a multiple of {SCRFD_STRIDES[-1]}, not {input_size}")
        self._session = _onnx_session(path, threads, providers)
        outputs = self._session.get_outputs()
        if len(outputs) != 3 * len(SCRFD_STRIDES):
            raise ValueError(f"{path.name} has {len(outputs)} outputs; an SCRFD export with keypoints has 9 "
                             "(scores, boxes, keypoints at strides 8, 16, 32)")
        self._input_name = self._session.get_inputs()[0].name
        self.input_size = int(input_size)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self._anchor_centres = {stride: self._centres(stride) for stride in SCRFD_STRIDES}

    def _centres(self, stride: int) -> np.ndarray:
        # Cell (row, col) predicts from the point (col * stride, row * stride), listed row by row with the
        # two anchors of a cell next to each other: the order of the exported outputs.
        cells = self.input_size // stride
        rows, cols = np.mgrid[:cells, :cells]
        centres = np.stack([cols, rows], axis=-1).reshape(-1, 2).astype(np.float32) * stride
        return np.repeat(centres, SCRFD_ANCHORS_PER_CELL, axis=0)

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = rgb.shape[:2]
        scale = self.input_size / max(height, width)
        resized_w, resized_h = max(1, int(width * scale)), max(1, int(height * scale))
        canvas = np.zeros((self.input_size, self.input_size, 3), dtype=np.uint8)
        canvas[:resized_h, :resized_w] = cv2.resize(rgb, (resized_w, resized_h))
        blob = ((canvas.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outputs = [o.reshape(-1, o.shape[-1]) for o in self._session.run(None, {self._input_name: blob})]
        count = len(SCRFD_STRIDES)
        boxes, landmarks, scores = [], [], []
        for level, stride in enumerate(SCRFD_STRIDES):
            level_scores = outputs[level][:, 0]
            keep = level_scores >= self.score_threshold
            centres = self._anchor_centres[stride][keep]
            # Distances are in units of the stride: box edges are (left, top, right, bottom) away from the
            # centre, landmarks are (dx, dy) offsets from it.
            distances = outputs[count + level][keep] * stride
            offsets = outputs[2 * count + level][keep].reshape(-1, 5, 2) * stride
            boxes.append(np.concatenate([centres - distances[:, :2], centres + distances[:, 2:]], axis=1))
            landmarks.append(centres[:, None, :] + offsets)
            scores.append(level_scores[keep])
        boxes_xy, landmarks_xy, score = np.concatenate(boxes), np.concatenate(landmarks), np.concatenate(scores)
        # cv2.resize puts source pixel centre x at (x + 0.5) * scale - 0.5; undo exactly that. (The actual
        # scale per axis is resized / original, which int() made slightly smaller than `scale`.)
        axis_scale = np.array([resized_w / width, resized_h / height], dtype=np.float32)
        boxes_xy = (boxes_xy.reshape(-1, 2, 2) + 0.5) / axis_scale - 0.5
        landmarks_xy = (landmarks_xy + 0.5) / axis_scale - 0.5
        kept = _nms(boxes_xy.reshape(-1, 4), score, self.score_threshold, self.nms_threshold)
        dets = np.concatenate([boxes_xy.reshape(-1, 4), score[:, None]], axis=1)[kept]
        return dets.astype(np.float32).reshape(-1, 5), landmarks_xy[kept].astype(np.float32).reshape(-1, 5, 2)


def _nms(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, iou_threshold: float) -> np.ndarray:
    """Indices kept by non-maximum suppression, best score first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    kept = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), score_threshold, iou_threshold)
    kept = np.asarray(kept, dtype=np.int64).reshape(-1)
    return kept[np.argsort(-scores[kept], kind="stable")]


class YunetDetector:
    """YuNet through OpenCV's cv2.FaceDetectorYN (which does its own decoding and NMS), on the frame as is."""

    def __init__(self, path: Path, score_threshold: float = 0.6, nms_threshold: float = 0.3):
        if not hasattr(cv2, "FaceDetectorYN"):
            raise ImportError("the yunet face back-end needs OpenCV >= 4.5.4 (cv2.FaceDetectorYN): "
                              "pip install opencv-python-headless")
        self._detector = cv2.FaceDetectorYN.create(str(path), "", (320, 320), float(score_threshold),
                                                   float(nms_threshold))

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = rgb.shape[:2]
        self._detector.setInputSize((width, height))
        # YuNet was trained on OpenCV's BGR images.
        _, faces = self._detector.detect(np.ascontiguousarray(rgb[..., ::-1]))
        if faces is None:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        faces = faces[np.argsort(-faces[:, 14], kind="stable")]
        # Rows are (x, y, w, h, five landmark (x, y) pairs in insightface's order, score).
        boxes = np.concatenate([faces[:, :2], faces[:, :2] + faces[:, 2:4], faces[:, 14:15]], axis=1)
        return boxes.astype(np.float32), faces[:, 4:14].reshape(-1, 5, 2).astype(np.float32)


class MediaPipeFaceDetector:
    """BlazeFace full-range, through MediaPipe's legacy face_detection solution, whose weights ship in the
    mediapipe wheel: the face detector that needs no download. Each frame is detected on its own (the solution
    keeps no state between calls), so results do not depend on which clip ran before.

    BlazeFace finds six points: both eyes, the nose tip, the mouth centre and both ear tragions. The mouth
    corners of the 5-point layout are not among them, so they are NaN; nothing is made up in their place.
    """

    weights = "face_detection_full_range_sparse.tflite"

    def __init__(self, score_threshold: float = 0.5):
        import mediapipe

        self.weights_path = Path(mediapipe.__file__).parent / "modules" / "face_detection" / self.weights
        # model_selection=1 is the full-range model: faces up to about 5 m away, as in full-body footage; the
        # short-range one only finds faces that fill much of a selfie.
        self._solution = mediapipe.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=float(score_threshold))

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = rgb.shape[:2]
        detections = self._solution.process(np.ascontiguousarray(rgb)).detections or []
        boxes = np.zeros((len(detections), 5), np.float32)
        landmarks = np.full((len(detections), 5, 2), np.nan, np.float32)
        scale = np.array([width, height], np.float64)
        for row, detection in enumerate(detections):
            box = detection.location_data.relative_bounding_box
            corner = np.array([box.xmin, box.ymin]) * scale
            size = np.array([box.width, box.height]) * scale
            # Normalised coordinates put the left edge at 0; pixel centres sit at integers (schemas.keypoints).
            boxes[row] = (*(corner - 0.5), *(corner + size - 0.5), detection.score[0])
            points = detection.location_data.relative_keypoints
            # BlazeFace's order: the person's right eye (the image's left for a face looking at the camera),
            # left eye, nose tip, then mouth centre and ears, which the 5-point layout has no row for.
            landmarks[row, :3] = [(point.x * width - 0.5, point.y * height - 0.5) for point in points[:3]]
        order = np.argsort(-boxes[:, 4], kind="stable")
        return boxes[order], landmarks[order]


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """2x3 matrix of the rotation, uniform scale and translation taking points source [N, 2] closest to
    target [N, 2] in least squares (Umeyama 1991), the fit insightface's norm_crop makes."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_c, target_c = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(target_c.T @ source_c / len(source))
    reflection = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])  # a rotation, never a mirror
    rotation = u @ reflection @ vt
    scale = float(np.trace(np.diag(singular) @ reflection) / source_c.var(axis=0).sum())
    translation = target_mean - scale * rotation @ source_mean
    return np.concatenate([scale * rotation, translation[:, None]], axis=1)


def align_face(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """uint8 [112, 112, 3] RGB crop with the five landmarks [5, 2] moved onto ARCFACE_TEMPLATE."""
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE)
    # warpAffine maps pixel centres to pixel centres, the convention of both the landmarks and the template.
    return cv2.warpAffine(rgb, matrix, (ARCFACE_SIZE, ARCFACE_SIZE), borderValue=0.0)


class ArcFaceEmbedder:
    """`embedder(crops)`: uint8 [N, 112, 112, 3] aligned RGB crops -> float32 [N, D] L2-normalised embeddings."""

    def __init__(self, path: Path, threads: int = 1, providers: Sequence[str] = ("CPUExecutionProvider",)):
        self._session = _onnx_session(path, threads, providers)
        model_input = self._session.get_inputs()[0]
        if list(model_input.shape[1:]) != [3, ARCFACE_SIZE, ARCFACE_SIZE]:
            raise ValueError(f"{path.name} takes {model_input.shape}; an ArcFace model takes [N, 3, 112, 112]")
        self._input_name = model_input.name

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        blob = ((np.asarray(crops, np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
        features = self._session.run(None, {self._input_name: np.ascontiguousarray(blob)})[0]
        features = features.reshape(len(crops), -1).astype(np.float32)
        return features / np.linalg.norm(features, axis=1, keepdims=True)
