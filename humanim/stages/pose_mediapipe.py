"""MediaPipe Holistic (the legacy solution, whose weights ship in the wheel) as the offline CPU pose back-end.

Its points are mapped onto the COCO-WholeBody 133 layout (docs/KEYPOINTS.md has the tables). MediaPipe's
"left" is the person's left throughout: pose LEFT_* landmarks and Holistic's `left_hand_landmarks` (whose
hand crop is taken around pose LEFT_WRIST) are both the person's left, as COCO's are, so no side is swapped.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from humanim.schemas.keypoints import BODY, FACE, FEET, LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND
from humanim.stages.base import Annotations, Clip, ClipRejected, Resources, Stage

# COCO body 17 from MediaPipe Pose 33: nose, eye centres, ears, shoulders, elbows, wrists, hips, knees, ankles.
POSE33_TO_BODY17 = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
# COCO feet (left big toe, left small toe, left heel, right ...). MediaPipe's FOOT_INDEX (tip of the foot) stands
# in for the big toe; it has no small toe, so those two points stay absent (score 0).
POSE33_TO_FEET6 = (31, None, 29, 32, None, 30)
# 300-W 68 face points from the 468-point face mesh. Jaw points were chosen at equal arc length along the mesh's
# face oval from 127 (right ear) through 152 (chin) to 356 (left ear); the rest at the named anatomical points.
# Every mirror pair of the 68 layout maps onto a mirror pair of the mesh, so flipping commutes with the mapping.
FACE468_TO_FACE68 = (
    127, 234, 132, 58, 172, 136, 149, 176, 152, 400, 378, 365, 397, 288, 361, 454, 356,  # jaw 0-16
    70, 63, 105, 66, 107,  # right brow 17-21, outer to inner
    336, 296, 334, 293, 300,  # left brow 22-26, inner to outer
    168, 197, 5, 1,  # nose bridge 27-30, nasion to tip
    98, 97, 2, 326, 327,  # nostrils 31-35
    33, 160, 158, 133, 153, 144,  # right eye 36-41: outer corner, upper lid, inner corner, lower lid
    362, 385, 387, 263, 373, 380,  # left eye 42-47: inner corner, upper lid, outer corner, lower lid
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,  # outer lips 48-59
    78, 81, 13, 311, 308, 402, 14, 178,  # inner lips 60-67
)


def require_mediapipe(user: str) -> None:
    """A clear error, with the install command, where MediaPipe 0.10.14 is missing: the last release whose legacy
    solutions ship their weights in the wheel (Holistic, BlazeFace)."""
    try:
        import mediapipe  # noqa: F401
    except ImportError as error:
        raise ImportError(f"{user} needs MediaPipe 0.10.14 (the last release whose weights ship in the wheel): "
                          "run `make install`, or pip install --no-deps mediapipe==0.10.14 absl-py attrs "
                          "flatbuffers matplotlib 'protobuf<5'") from error


def _to_pixels(normalised_xy: np.ndarray, width: int, height: int) -> np.ndarray:
    # MediaPipe's normalised coordinates run from the image's left edge (0) to its right edge (1); the
    # pixel-centre convention of schemas.keypoints puts the left edge at -0.5.
    return normalised_xy[:, :2] * np.array([width, height], dtype=np.float64) - 0.5


def mediapipe_to_wholebody(
    pose: np.ndarray | None,
    left_hand: np.ndarray | None,
    right_hand: np.ndarray | None,
    face: np.ndarray | None,
    width: int,
    height: int,
) -> np.ndarray:
    """One frame of Holistic output as float32 [133, 3] (x, y in pixels, score); absent points are (0, 0, 0).

    pose: [33, 3] normalised (x, y, visibility); left_hand, right_hand: [21, >=2] normalised, the person's left
    and right hands (Holistic's left_hand_landmarks, right_hand_landmarks); face: [468 or 478, >=2] normalised.
    Any part may be None when MediaPipe did not find it. Scores: pose visibility for body and feet; the face
    mesh and hands have no per-point score, so their points score 1.0 when the part was found.
    """
    out = np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32)
    if pose is not None:
        pose_xy = _to_pixels(pose, width, height)
        out[BODY, :2] = pose_xy[list(POSE33_TO_BODY17)]
        out[BODY, 2] = pose[list(POSE33_TO_BODY17), 2]
        for slot, index in enumerate(POSE33_TO_FEET6):
            if index is not None:
                out[FEET.start + slot] = (*pose_xy[index], pose[index, 2])
    if face is not None:
        out[FACE, :2] = _to_pixels(face, width, height)[list(FACE468_TO_FACE68)]
        out[FACE, 2] = 1.0
    for part, hand in ((LEFT_HAND, left_hand), (RIGHT_HAND, right_hand)):
        if hand is not None:
            out[part, :2] = _to_pixels(hand, width, height)  # MediaPipe's 21 hand points come in COCO's order
            out[part, 2] = 1.0
    return out


def keypoint_boxes(kpts: np.ndarray, threshold: float) -> np.ndarray:
    """Per-frame box (x0, y0, x1, y1, mean score) around the confident body and feet points; NaN where none."""
    boxes = np.full((len(kpts), 5), np.nan, dtype=np.float32)
    for t, frame in enumerate(kpts[:, :FEET.stop]):
        confident = frame[frame[:, 2] > threshold]
        if len(confident):
            boxes[t] = (*confident[:, :2].min(axis=0), *confident[:, :2].max(axis=0), confident[:, 2].mean())
    return boxes


def _landmarks(landmark_list: Any, with_visibility: bool = False) -> np.ndarray | None:
    if landmark_list is None:
        return None
    rows = [(p.x, p.y, p.visibility) if with_visibility else (p.x, p.y) for p in landmark_list.landmark]
    return np.asarray(rows, dtype=np.float64)


class MediaPipePose(Stage):
    """Whole-body keypoints per frame from MediaPipe Holistic in video mode (it tracks from frame to frame).

    Config keys: model_complexity (0, 1, 2; default 1), min_detection_confidence (0.5),
    min_tracking_confidence (0.5).
    """

    name = "pose"
    version = "1"
    resources = Resources(cpus=1, stateful=True)

    def __init__(self, config: dict[str, Any], build_seed: int = 0):
        super().__init__(config, build_seed)
        self.check_environment(config)
        import mediapipe

        self._mediapipe_version = mediapipe.__version__
        self.model_complexity = int(config["model_complexity"])
        self.max_lost_share, self.kpt_threshold = float(config["max_lost_share"]), float(config["kpt_threshold"])
        self._holistic = mediapipe.solutions.holistic.Holistic(
            static_image_mode=False,
            model_complexity=self.model_complexity,
            smooth_landmarks=True,
            refine_face_landmarks=False,
            min_detection_confidence=float(config["min_detection_confidence"]),
            min_tracking_confidence=float(config["min_tracking_confidence"]),
        )

    @classmethod
    def check_environment(cls, config: dict[str, Any]) -> None:
        require_mediapipe("the mediapipe pose back-end")

    def __call__(self, clip: Clip) -> Annotations:
        frames = clip.frames
        num_frames, height, width = frames.shape[:3]
        # The tracker carries state between frames; without a reset a clip's keypoints would depend on
        # whichever clip this actor ran before it.
        self._holistic.reset()
        kpts = np.zeros((num_frames, NUM_KEYPOINTS, 3), dtype=np.float32)
        found = np.zeros((num_frames, 4), dtype=bool)  # body, face, left hand, right hand
        for t in range(num_frames):
            result = self._holistic.process(np.ascontiguousarray(frames[t]))
            parts = (
                _landmarks(result.pose_landmarks, with_visibility=True),
                _landmarks(result.face_landmarks),
                _landmarks(result.left_hand_landmarks),
                _landmarks(result.right_hand_landmarks),
            )
            found[t] = [p is not None for p in parts]
            pose, face, left_hand, right_hand = parts
            kpts[t] = mediapipe_to_wholebody(pose, left_hand, right_hand, face, width, height)
        if not found[:, 0].any():
            raise ClipRejected("no person detected in any frame")
        lost = ~found[:, 0]
        if lost.mean() > self.max_lost_share:
            raise ClipRejected(f"main subject lost in {int(lost.sum())} of {num_frames} frames "
                               f"({lost.mean():.0%}, more than the {self.max_lost_share:.0%} allowed)")
        rates = found.mean(axis=0)
        fields = {"kpts": kpts, "subject_box": keypoint_boxes(kpts, self.kpt_threshold)}
        meta = {"backend": "mediapipe", "mediapipe_version": self._mediapipe_version,
                "model_complexity": self.model_complexity}
        if clip.reference is not None:
            # Holistic follows one person, so the person it finds in the reference is taken as the subject.
            self._holistic.reset()
            result = self._holistic.process(np.ascontiguousarray(clip.reference))
            if result.pose_landmarks is None:
                meta["reference_missing"] = "no person found in the reference frame"
            else:
                fields["ref_kpts"] = mediapipe_to_wholebody(
                    _landmarks(result.pose_landmarks, with_visibility=True), _landmarks(result.left_hand_landmarks),
                    _landmarks(result.right_hand_landmarks), _landmarks(result.face_landmarks), width, height)
        return Annotations(
            fields=fields,
            meta=meta,
            qa={"pose_body_rate": float(rates[0]), "pose_face_rate": float(rates[1]),
                "pose_lhand_rate": float(rates[2]), "pose_rhand_rate": float(rates[3]),
                # Holistic follows one person and cannot count the others.
                "people_seen": None, "subject_lost_share": float(lost.mean())},
        )
