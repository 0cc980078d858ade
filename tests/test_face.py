"""The face stage on real frames: the subject's face and nobody else's, none from behind, and the identity
embedding from the subject's aligned, sharpest, most frontal face.

Detectors are the real YuNet and SCRFD-500M files from ../shared/assets; keypoints come from MediaPipe Holistic
(the offline pose back-end) or are placed on a detected face. No ArcFace weights can be had here, so the
recognition path runs `tiny_arcface_interface_model`, an ONNX model built below with ArcFace's interface.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from humanim.pipeline.config import DEFAULTS
from humanim.schemas.keypoints import BODY_NAMES, FACE, NUM_KEYPOINTS
from humanim.stages.base import Clip, ClipSpec
from humanim.stages.blur import laplacian_sharpness
from humanim.stages.face import INSIGHTFACE_LICENCE, Face, facing, frontality, shows_face, subject_face_index
from humanim.stages.face_models import (
    ARCFACE_TEMPLATE, ScrfdDetector, YunetDetector, align_face, similarity_transform,
)

cv2 = pytest.importorskip("cv2")

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
YUNET, SCRFD_500M = "face_detection_yunet_2026may.onnx", "det_500m.onnx"
# The `face` section this stage is built from (the defaults the build config gives it).
FACE_CONFIG = DEFAULTS["face"]
BODY = {name: index for index, name in enumerate(BODY_NAMES)}


def asset(relative: str) -> Path:
    path = ASSETS / relative
    if not path.exists():
        pytest.skip(f"test asset {path} is absent (tests read ../shared/assets beside the repository)")
    return path


def face_stage(backend: str, **overrides) -> Face:
    if backend == "mediapipe":  # its weights ship in the mediapipe wheel
        pytest.importorskip("mediapipe")
        return Face({**FACE_CONFIG, "backend": backend, **overrides})
    detector = {"yunet": YUNET}.get(backend, SCRFD_500M)
    return Face({**FACE_CONFIG, "backend": backend, "detector": str(asset(f"models/{detector}")), **overrides})


def clip_of(frames: np.ndarray, kpts: np.ndarray) -> Clip:
    spec = ClipSpec(key="test_00000", video_id="test", clip_index=0, split="train", source="", source_sha256="",
                    source_frame_indices=(), source_frame_pts=(), source_frame_times=(), frame_times=(), fps=8.0)
    return Clip(spec=spec, frames=frames, fields={"kpts": kpts})


def video_frames(name: str, indices: list[int], height: int = 256) -> np.ndarray:
    av = pytest.importorskip("av")
    path, wanted, frames = asset(f"videos/{name}"), set(indices), []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                rgb = frame.to_ndarray(format="rgb24")
                width = round(rgb.shape[1] * height / rgb.shape[0] / 2) * 2
                frames.append(cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA))
            if len(frames) == len(wanted):
                break
    return np.stack(frames)


def mediapipe_kpts(frames: np.ndarray) -> np.ndarray:
    """Real keypoints [T, 133, 3] of the frames' subject from the offline pose stage."""
    pytest.importorskip("mediapipe")
    from humanim.pipeline.config import DEFAULTS
    from humanim.stages.pose_mediapipe import MediaPipePose

    return MediaPipePose(DEFAULTS["pose"])(clip_of(frames, np.zeros(0))).fields["kpts"]


@pytest.fixture(scope="module")
def talking_heads() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Eight frames (256 px high) spread over each talking-head clip, with the speaker's keypoints."""
    clips = {}
    for name, count in (("moore_talkinghead_2.mp4", 351), ("moore_talkinghead_3.mp4", 141)):
        frames = video_frames(name, list(range(0, count, count // 8))[:8])
        clips[name] = frames, mediapipe_kpts(frames)
    return clips


def kpts_on_face(landmarks: np.ndarray, score: float = 0.9) -> np.ndarray:
    """Keypoints [133, 3] of a person facing the camera whose face has these detector landmarks [5, 2]:
    nose and eyes on the landmarks (the eye on the image's left is the person's right), ears beyond the eyes,
    shoulders below, with the person's left shoulder on the image's right."""
    kpts = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    image_left_eye, image_right_eye, nose = landmarks[0], landmarks[1], landmarks[2]
    eye_gap = image_right_eye - image_left_eye
    down = np.array([-eye_gap[1], eye_gap[0]])
    places = {"nose": nose, "right_eye": image_left_eye, "left_eye": image_right_eye,
              "right_ear": image_left_eye - 0.6 * eye_gap, "left_ear": image_right_eye + 0.6 * eye_gap,
              "right_shoulder": nose + 3 * down - 2 * eye_gap, "left_shoulder": nose + 3 * down + 2 * eye_gap}
    for name, xy in places.items():
        kpts[BODY[name]] = (*xy, score)
    return kpts


def tiny_arcface_interface_model(path: Path) -> Path:
    """An ONNX model with ArcFace's interface ([N, 3, 112, 112] float -> [N, 512]) that is NOT a face
    recogniser: its output is a fixed random projection of the crop's mean colours over a 4x4 grid, less their
    average, so it tells which pixels it was given (where the face's dark eyes, mouth and hair sit)."""
    from onnx import TensorProto, checker, helper, numpy_helper, save

    projection = np.random.default_rng(0).normal(size=(48, 512)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["crop"], ["cells"], kernel_shape=[28, 28], strides=[28, 28]),
         helper.make_node("Reshape", ["cells", "flat_shape"], ["flat"]),
         helper.make_node("ReduceMean", ["flat", "feature_axis"], ["average"], keepdims=1),
         helper.make_node("Sub", ["flat", "average"], ["pattern"]),
         helper.make_node("MatMul", ["pattern", "projection"], ["embedding"])],
        "tiny_arcface_interface_model",
        [helper.make_tensor_value_info("crop", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 512])],
        initializer=[numpy_helper.from_array(np.array([-1, 48], np.int64), "flat_shape"),
                     numpy_helper.from_array(np.array([1], np.int64), "feature_axis"),
                     numpy_helper.from_array(projection, "projection")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    checker.check_model(model)
    save(model, str(path))
    return path


def run_model(path: Path, crops: np.ndarray) -> np.ndarray:
    """The model's L2-normalised output for uint8 RGB crops [N, 112, 112, 3], with ArcFace's input scaling."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    blob = ((crops.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
    out = session.run(None, {"crop": np.ascontiguousarray(blob)})[0]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.prod(np.clip(np.minimum(a[2:4], b[2:4]) - np.maximum(a[:2], b[:2]), 0, None))
    return float(inter / (np.prod(a[2:4] - a[:2]) + np.prod(b[2:4] - b[:2]) - inter))


# --- detectors and alignment --------------------------------------------------------------------------------

def test_scrfd_decoding_agrees_with_yunet_on_every_face_of_the_group_photo():
    photo = cv2.imread(str(asset("images/meghan-lamle-gVP-Zx46QY4-unsplash.jpg")))[..., ::-1].copy()
    scrfd_boxes, scrfd_marks = ScrfdDetector(asset(f"models/{SCRFD_500M}"))(photo)
    yunet_boxes, yunet_marks = YunetDetector(asset(f"models/{YUNET}"))(photo)
    assert len(scrfd_boxes) == len(yunet_boxes) == 7  # seven women, every face visible
    assert np.all(np.diff(scrfd_boxes[:, 4]) <= 0)  # best first
    for box, marks in zip(scrfd_boxes, scrfd_marks):
        match = int(np.argmax([box_iou(box, other) for other in yunet_boxes]))
        assert box_iou(box, yunet_boxes[match]) > 0.7
        # Two detectors trained apart put the same five points in the same order within a fifth of the face's
        # width (they differ most on turned faces); a decoding error (stride, anchor order, axis) is far larger.
        assert np.all(np.linalg.norm(marks - yunet_marks[match], axis=1) < 0.2 * (box[2] - box[0]))
        assert marks[0, 0] < marks[1, 0] and marks[3, 0] < marks[4, 0]  # image-left eye and mouth corner first


def test_similarity_transform_recovers_a_known_rotation_scale_and_shift():
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = np.random.default_rng(1).uniform(0, 100, (5, 2))
    matrix = similarity_transform(source, source @ (scale * rotation).T + shift)
    np.testing.assert_allclose(matrix, np.column_stack([scale * rotation, shift]), atol=1e-9)
    mirrored = source * [-1, 1]  # a mirror image is never fitted by a reflection: the crop keeps its sides
    assert np.linalg.det(similarity_transform(source, mirrored)[:, :2]) > 0


def test_aligned_crop_puts_the_face_on_the_arcface_template(talking_heads):
    frames, _ = talking_heads["moore_talkinghead_3.mp4"]
    detector = ScrfdDetector(asset(f"models/{SCRFD_500M}"))
    _, marks = detector(frames[0])
    crop = align_face(frames[0], marks[0])
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    # Found again in the crop (on a black border, since detectors need room round a face), the face's five
    # points lie where ArcFace expects them.
    canvas = np.zeros((224, 224, 3), np.uint8)
    canvas[56:168, 56:168] = crop
    _, again = detector(canvas)
    assert len(again) >= 1
    assert np.all(np.linalg.norm(again[0] - 56 - ARCFACE_TEMPLATE, axis=1) < 4.0)


def test_frontality_falls_as_the_dancer_turns_to_profile():
    frames = video_frames("animatex_ubc.mp4", [0, 120])
    detector = ScrfdDetector(asset(f"models/{SCRFD_500M}"))
    frontal, turned = (frontality(detector(frame)[1][0]) for frame in frames)
    assert frontal > 0.8 and turned < 0.5
    assert frontality(np.array([[0, 0], [10, 0], [5, 6], [2, 9], [8, 9]], float)) == 1.0
    assert frontality(np.array([[0, 0], [10, 0], [11, 6], [2, 9], [8, 9]], float)) == 0.0


# --- whose face -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["yunet", "scrfd", "mediapipe"])
def test_the_speakers_face_is_found_in_every_frame(talking_heads, backend):
    stage = face_stage(backend)
    for frames, kpts in talking_heads.values():
        result = stage(clip_of(frames, kpts))
        box, marks = result.fields["face_box"], result.fields["face_landmarks"]
        assert result.qa["face_rate"] == 1.0
        assert box.shape == (8, 5) and box.dtype == np.float32 and marks.shape == (8, 5, 2)
        nose = kpts[:, BODY["nose"], :2]
        assert np.all((box[:, 0] < nose[:, 0]) & (nose[:, 0] < box[:, 2]))  # the speaker's nose is in the box
        assert np.all((box[:, 1] < nose[:, 1]) & (nose[:, 1] < box[:, 3]))
        assert np.all(np.linalg.norm(marks[:, 2] - nose, axis=1) < 0.15 * (box[:, 2] - box[:, 0]))
        assert "face_embedding" not in result.fields
        assert result.meta["embedding"] is None
        assert result.meta["embedding_unavailable"] == f"offline back-end {backend} has no recognition model"


@pytest.mark.parametrize("backend", ["yunet", "scrfd"])
def test_each_woman_on_the_sofa_gets_her_own_face(backend):
    photo = cv2.imread(str(asset("images/meghan-lamle-gVP-Zx46QY4-unsplash.jpg")))[..., ::-1].copy()
    stage = face_stage(backend)
    boxes, marks = stage._detector(photo)
    # One frame per woman, each with her own keypoints, off her landmarks by a tenth of her eyes' gap (pose and
    # face models never agree exactly); in a last frame the keypoints place a small face midway between the two
    # nearest faces, as for a person between them whose own face the detector missed: she must get no face,
    # not a neighbour's.
    shifts = 0.1 * np.linalg.norm(marks[:, 1] - marks[:, 0], axis=1)
    kpts = [kpts_on_face(m + shift) for m, shift in zip(marks, shifts)]
    centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=2) + np.diag(np.full(len(boxes), np.inf))
    first, second = np.unravel_index(np.argmin(distances), distances.shape)
    between = (centres[first] + centres[second]) / 2 + np.array([[-8, -6], [8, -6], [0, 0], [-6, 8], [6, 8]])
    kpts.append(kpts_on_face(between.astype(np.float32)))
    result = stage(clip_of(np.repeat(photo[None], len(kpts), axis=0), np.stack(kpts)))
    chosen = result.fields["face_box"]
    for woman in range(len(boxes)):
        ious = [box_iou(chosen[woman], other) for other in boxes]
        assert int(np.argmax(ious)) == woman and ious[woman] > 0.99
    assert np.all(np.isnan(chosen[-1])) and np.all(np.isnan(result.fields["face_landmarks"][-1]))
    assert result.qa["face_rate"] == pytest.approx(len(boxes) / len(kpts))


def test_mediapipe_detector_gives_eyes_and_nose_and_no_made_up_mouth_corners(talking_heads):
    stage = face_stage("mediapipe")
    frames, kpts = talking_heads["moore_talkinghead_3.mp4"]
    result = stage(clip_of(frames, kpts))
    marks = result.fields["face_landmarks"]
    assert np.all(np.isfinite(marks[:, :3])) and np.all(np.isnan(marks[:, 3:]))
    # The eye on the image's left is the speaker's right eye, as in insightface's order; both lie near the
    # pose model's eyes.
    for slot, eye in ((0, "right_eye"), (1, "left_eye")):
        gap = np.linalg.norm(marks[:, 0] - marks[:, 1], axis=1)
        assert np.all(np.linalg.norm(marks[:, slot] - kpts[:, BODY[eye], :2], axis=1) < 0.35 * gap)
    assert result.meta["models"]["detector"]["file"] == "face_detection_full_range_sparse.tflite"
    assert "mediapipe" in result.meta["licence"] and result.meta["embedding"] is None


def test_subject_face_index_needs_most_face_points_inside_and_breaks_ties_by_centre():
    boxes = np.array([[0, 0, 10, 10, 0.9], [4, 0, 14, 10, 0.8], [50, 50, 60, 60, 0.99]], np.float32)
    points = np.array([[8, 5], [9, 5], [10, 5]], np.float32)
    assert subject_face_index(boxes, points, 0.0, 0.5) == 1  # both hold all three; box 1's centre is nearer
    assert subject_face_index(boxes, np.array([[30, 30]], np.float32), 0.25, 0.5) is None
    assert subject_face_index(boxes, np.zeros((0, 2), np.float32), 0.25, 0.5) is None


def test_no_face_from_behind_even_where_the_detectors_fire_on_the_back_of_her_head():
    front, back = [0, 50, 100], [140, 145, 150, 155, 160]
    frames = video_frames("animatex_ubc.mp4", front + back)
    kpts = mediapipe_kpts(frames)
    # The situation the rule exists for: the pose model scores her nose, eyes and ears from behind too...
    assert np.all(kpts[len(front):, BODY["nose"], 2] > FACE_CONFIG["kpt_threshold"])
    directions = [facing(k, FACE_CONFIG["kpt_threshold"]) for k in kpts]
    assert all(d < -0.5 for d in directions[:len(front)]) and all(d > 0.5 for d in directions[len(front):])
    for backend, detector in (("yunet", YunetDetector(asset(f"models/{YUNET}"))),
                              ("scrfd", ScrfdDetector(asset(f"models/{SCRFD_500M}"))),
                              ("mediapipe", None)):
        if detector is not None:
            fired = [len(detector(frame)[0]) > 0 for frame in frames[len(front):]]
            assert any(fired), f"{backend} found no face from behind: the rule is untested"  # ...detectors fire
        result = face_stage(backend)(clip_of(frames, kpts))
        found = np.isfinite(result.fields["face_box"][:, 4])
        assert found.tolist() == [True] * len(front) + [False] * len(back), backend
    # A pose model that draws face points on the back of a head does not turn it into a face...
    face_points_behind = kpts.copy()
    face_points_behind[:, FACE, 2] = 0.9
    assert not any(shows_face(k, 0.3, 0.5, 0.5) for k in face_points_behind[len(front):])
    # ...and one that scores no face point from behind gives no face whichever way the body faces.
    no_face_points = kpts.copy()
    no_face_points[:, [BODY[n] for n in ("nose", "left_eye", "right_eye", "left_ear", "right_ear")]] = 0
    no_face_points[:, FACE] = 0
    result = face_stage("yunet")(clip_of(frames, no_face_points))
    assert result.qa["face_rate"] == 0.0 and np.all(np.isnan(result.fields["face_box"]))


def test_a_clip_starting_from_behind_gives_no_face_though_the_pose_is_unsure_of_her_sides():
    # Tracking from a back view, MediaPipe puts her shoulders almost on top of each other by the second frame
    # (it cannot tell which way she faces); with no face points scored either, nothing shows a face.
    frames = video_frames("animatex_ubc.mp4", [150, 155])
    kpts = mediapipe_kpts(frames)
    assert abs(facing(kpts[1], 0.3)) < 0.5 and not np.any(kpts[:, FACE, 2] > 0.3)
    assert np.all(np.isnan(face_stage("scrfd")(clip_of(frames, kpts)).fields["face_box"]))


# --- identity embedding -------------------------------------------------------------------------------------

def test_insightface_path_embeds_the_sharp_frames_aligned_face(talking_heads, tmp_path, caplog):
    frames, kpts = talking_heads["moore_talkinghead_3.mp4"]
    sharp = 5
    blurred = np.stack([frame if t == sharp else cv2.GaussianBlur(frame, (0, 0), 2.0)
                        for t, frame in enumerate(frames)])
    recognizer = tiny_arcface_interface_model(tmp_path / "tiny_arcface_interface_model.onnx")
    with caplog.at_level(logging.WARNING, logger="humanim.stages.face"):
        stage = face_stage("insightface", recognizer=str(recognizer))
    assert "NON-COMMERCIAL RESEARCH USE ONLY" in caplog.text
    assert stage.model_files() == [SCRFD_500M, recognizer.name]
    result = stage(clip_of(blurred, kpts))
    record, embedding = result.meta["embedding"], result.fields["face_embedding"]
    assert result.meta["licence"] == INSIGHTFACE_LICENCE and "embedding_unavailable" not in result.meta
    assert result.qa["face_rate"] == 1.0
    assert record["frame"] == sharp and 0.5 < record["frontality"] <= 1.0
    assert embedding.shape == (512,) and embedding.dtype == np.float32
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
    # The crop the model saw is the sharp frame's face aligned onto the template: the same crop made here with
    # OpenCV's own similarity fit gives the same output, and the crop one eye gap (35 px) to the side does not.
    marks = result.fields["face_landmarks"][sharp]
    fit, _ = cv2.estimateAffinePartial2D(marks, ARCFACE_TEMPLATE.astype(np.float32), method=cv2.LMEDS)
    expected = cv2.warpAffine(blurred[sharp], fit, (112, 112))
    misplaced = cv2.warpAffine(blurred[sharp], fit + [[0, 0, 35], [0, 0, 0]], (112, 112))
    same, off = run_model(recognizer, np.stack([expected, misplaced])) @ embedding
    assert same > 0.9999 and off < 0.5


def test_insightface_path_records_why_there_is_no_embedding_when_the_face_is_never_seen(tmp_path):
    frames = video_frames("animatex_ubc.mp4", [140, 150, 160])
    recognizer = tiny_arcface_interface_model(tmp_path / "tiny_arcface_interface_model.onnx")
    result = face_stage("insightface", recognizer=str(recognizer))(clip_of(frames, mediapipe_kpts(frames)))
    assert "face_embedding" not in result.fields and result.meta["embedding"] is None
    assert result.meta["embedding_unavailable"] == "the subject's face was not found in any frame"


def test_a_frontal_face_is_embedded_rather_than_a_sharper_turned_one(tmp_path):
    frames = video_frames("animatex_ubc.mp4", [0, 110])  # facing the camera; a three-quarter view, turning
    frames[0] = cv2.GaussianBlur(frames[0], (0, 0), 0.7)
    recognizer = tiny_arcface_interface_model(tmp_path / "tiny_arcface_interface_model.onnx")
    result = face_stage("insightface", recognizer=str(recognizer))(clip_of(frames, mediapipe_kpts(frames)))
    marks = result.fields["face_landmarks"]
    sharpness = [laplacian_sharpness(cv2.cvtColor(align_face(frame, m), cv2.COLOR_RGB2GRAY), 112, 112)
                 for frame, m in zip(frames, marks)]
    assert sharpness[0] < sharpness[1] and frontality(marks[0]) > frontality(marks[1]) + 0.1
    assert result.meta["embedding"]["frame"] == 0


def test_the_reference_frame_gets_the_subjects_face_embedding(talking_heads, tmp_path):
    frames, kpts = talking_heads["moore_talkinghead_3.mp4"]
    recognizer = tiny_arcface_interface_model(tmp_path / "tiny_arcface_interface_model.onnx")
    stage = face_stage("insightface", recognizer=str(recognizer))
    clip = clip_of(frames[:4], kpts[:4])
    clip.reference, clip.fields["ref_kpts"] = frames[6], kpts[6]
    result = stage(clip)
    # The same face, found and aligned in the reference frame, as a clip of that frame alone embeds it.
    alone = stage(clip_of(frames[6:7], kpts[6:7])).fields["face_embedding"]
    assert result.fields["ref_face_embedding"] @ alone == pytest.approx(1.0, abs=1e-5)
    assert result.fields["ref_face_embedding"] @ result.fields["face_embedding"] < 0.9999  # another frame's face
    # Reference keypoints that show no face: no reference embedding, and the reason.
    clip.fields["ref_kpts"] = np.zeros_like(kpts[6])
    result = stage(clip)
    assert "ref_face_embedding" not in result.fields
    assert result.meta["reference_embedding_missing"] == "the subject's face is not seen in the reference frame"
