"""The rtmlib pose back-end: the real YOLOX-nano detector on a real photo, and pose models built here with
DWPose's SimCC interface whose outputs are known, so keypoints can be checked pixel by pixel.

Real DWPose/RTMW weights cannot be had here. `tiny_simcc_pose_model` has DWPose's interface (input
[N, 3, 384, 288]; outputs simcc_x [N, 133, 576] and simcc_y [N, 133, 768], two bins per input pixel) and
puts each keypoint's peak at a chosen bin, plus a small offset from the crop's mean so every crop's scores
are its own (which shows whether outputs come back in the right order through batching).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from humanim.schemas.keypoints import FACE, LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND
from humanim.pipeline.config import DEFAULTS
from humanim.stages import model_store
from humanim.stages.base import Clip, ClipRejected, ClipSpec
from humanim.stages.model_store import ModelFile, ModelStoreError

onnx = pytest.importorskip("onnx")
cv2 = pytest.importorskip("cv2")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from humanim.stages.pose_rtmlib import PersonDetector, RtmlibPose, crop_for_pose  # noqa: E402

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
NANO = "yolox_nano_humanart.onnx"
INPUT_W, INPUT_H, SPLIT = 288, 384, 2
MEAN_WEIGHT = 0.01  # each crop's scores are its peaks plus this times the crop's mean input value
ABSENT = 20  # a foot point whose SimCC rows are all negative: the model does not see it

rng = np.random.default_rng(7)
X_BINS = rng.integers(0, INPUT_W * SPLIT, NUM_KEYPOINTS)
Y_BINS = rng.integers(0, INPUT_H * SPLIT, NUM_KEYPOINTS)
PEAKS = np.full(NUM_KEYPOINTS, 0.9, dtype=np.float32)
PEAKS[FACE] = 0.2  # under the 0.3 threshold: the face counts as not found
PEAKS[LEFT_HAND] = PEAKS[RIGHT_HAND] = 1.5  # raw SimCC maxima can exceed 1; the kpts field keeps [0, 1]


def asset(relative: str) -> Path:
    path = ASSETS / relative
    if not path.exists():
        pytest.skip(f"{path} absent (shared assets are not in a plain clone)")
    return path


def tiny_simcc_pose_model(path: Path, batch: int | str = "batch") -> Path:
    """An ONNX model with DWPose's SimCC interface whose keypoint peaks sit at X_BINS, Y_BINS."""
    simcc = {}
    for axis, bins, width in (("x", X_BINS, INPUT_W * SPLIT), ("y", Y_BINS, INPUT_H * SPLIT)):
        table = np.zeros((1, NUM_KEYPOINTS, width), dtype=np.float32)
        table[0, np.arange(NUM_KEYPOINTS), bins] = PEAKS
        table[0, ABSENT] = -1.0
        simcc[axis] = numpy_helper.from_array(table, f"peaks_{axis}")
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["crop_mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["crop_mean", "per_crop"], ["crop_mean_3d"]),
        helper.make_node("Mul", ["crop_mean_3d", "weight"], ["offset"]),
        helper.make_node("Add", ["peaks_x", "offset"], ["simcc_x"]),
        helper.make_node("Add", ["peaks_y", "offset"], ["simcc_y"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_simcc_pose_model",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, INPUT_H, INPUT_W])],
        [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [batch, NUM_KEYPOINTS, INPUT_W * SPLIT]),
         helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [batch, NUM_KEYPOINTS, INPUT_H * SPLIT])],
        initializer=[simcc["x"], simcc["y"], numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "per_crop"),
                     numpy_helper.from_array(np.array(MEAN_WEIGHT, np.float32), "weight")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def expected_keypoints(box: np.ndarray, crop_mean: float) -> np.ndarray:
    """Where the tiny model's peaks land in the frame for a person box, by mmpose's top-down geometry: the
    box grown by 1.25 around its centre, widened or heightened to 288:384, the model input spanning it."""
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    width, height = (box[2] - box[0]) * 1.25, (box[3] - box[1]) * 1.25
    if width > height * INPUT_W / INPUT_H:
        height = width * INPUT_H / INPUT_W
    else:
        width = height * INPUT_W / INPUT_H
    input_x, input_y = X_BINS / SPLIT, Y_BINS / SPLIT
    x = centre[0] + (input_x - INPUT_W / 2) * width / INPUT_W
    y = centre[1] + (input_y - INPUT_H / 2) * height / INPUT_H
    score = np.clip(PEAKS + MEAN_WEIGHT * crop_mean, 0, 1)
    out = np.stack([x, y, score], axis=1)
    out[ABSENT] = 0
    return out


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """$HUMANIM_MODELS with the real YOLOX-nano and the tiny pose models under registry names."""
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("HUMANIM_MODELS", str(folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (folder / NANO).symlink_to(asset("models/yolox_nano_8xb8-300e_humanart-40f6f0d0.onnx"))
    for name, batch in (("tiny_simcc_pose_model.onnx", "batch"), ("tiny_simcc_pose_model_batch1.onnx", 1),
                        ("tiny_simcc_pose_model_batch3.onnx", 3)):
        path = tiny_simcc_pose_model(folder / name, batch)
        monkeypatch.setitem(model_store.REGISTRY, name, ModelFile(
            name=name, url="file:///nowhere", sha256=model_store.file_sha256(path), licence="test-only",
            description="SimCC model built by the test"))
    return folder


def clip_of(frames: np.ndarray) -> Clip:
    spec = ClipSpec(key="test_00000", video_id="test", clip_index=0, split="train", source="", source_sha256="",
                    source_frame_indices=(), source_frame_pts=(), source_frame_times=(), frame_times=(), fps=8.0)
    return Clip(spec=spec, frames=frames)


def stage(**config) -> RtmlibPose:
    return RtmlibPose({**DEFAULTS["pose"], "detector": NANO, "pose_model": "tiny_simcc_pose_model.onnx",
                       **config})


def demo_photo() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(asset("images/rtmlib_demo.jpg"))), cv2.COLOR_BGR2RGB)


def test_detector_finds_the_players_as_rtmlib_does(store):
    rgb = demo_photo()
    [people] = stage().detect_people(rgb[None])
    assert len(people) >= 3  # three or four players on the pitch
    assert np.all(np.diff(people[:, 4]) <= 0) and np.all(people[:, 4] > 0.3)
    from rtmlib import YOLOX

    # rtmlib's own YOLOX on the BGR image, as its demos feed it: the same boxes, ours in pixel-centre frame.
    reference = YOLOX(str(store / NANO), model_input_size=(416, 416), backend="onnxruntime")(rgb[..., ::-1].copy())
    np.testing.assert_allclose(people[:, :4] + 0.5, reference, atol=1e-3)


def test_crop_puts_a_frame_pixel_where_the_affine_says_in_rgb_normalised(store):
    frame = np.zeros((400, 300, 3), dtype=np.uint8)
    frame[100:103, 120:123] = (255, 0, 0)  # a red 3x3 block centred on (x=121, y=101)
    # A box whose 1.25x crop is exactly 288x384 frame pixels centred on (150, 200): the crop is the frame
    # shifted by (144 - 150, 192 - 200), so the block's centre lands on crop pixel (115, 93).
    box = np.array([150 - 115.2, 200 - 153.6, 150 + 115.2, 200 + 153.6])
    crop, centre, size = crop_for_pose(frame, box, (INPUT_W, INPUT_H))
    assert crop.shape == (3, INPUT_H, INPUT_W) and crop.dtype == np.float32
    np.testing.assert_allclose(centre, [150, 200], atol=1e-4)
    np.testing.assert_allclose(size, [288, 384], atol=1e-3)
    red = (np.array([255, 0, 0]) - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]
    np.testing.assert_allclose(crop[:, 93, 115], red, atol=1e-4)
    assert np.unravel_index(np.argmax(crop[0]), crop[0].shape) == (92, 114)  # the block's top-left pixel
    black = -np.array([123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]
    np.testing.assert_allclose(crop[:, 10, 10], black, atol=1e-4)


def test_stage_puts_keypoints_at_the_model_peaks_through_crop_and_inverse_affine(store):
    rgb = demo_photo()
    empty = np.full_like(rgb, 127)  # a grey frame: nobody to find
    pose = stage(max_lost_share=0.5)  # the subject is missing from the grey frame: half the clip
    annotations = pose(clip_of(np.stack([rgb, empty])))
    kpts = annotations.fields["kpts"]
    assert kpts.shape == (2, NUM_KEYPOINTS, 3) and kpts.dtype == np.float32

    # The tracked subject is one of the detected people, and its keypoints come from its box.
    subject = annotations.fields["subject_box"]
    assert np.isnan(subject[1]).all()
    people = pose.detect_people(rgb[None])[0]
    assert np.abs(people - subject[0]).max(axis=1).min() < 1e-4
    crop, _, _ = crop_for_pose(rgb, subject[0], (INPUT_W, INPUT_H))
    expected = expected_keypoints(subject[0], float(crop.mean()))
    np.testing.assert_allclose(kpts[0, :, :2], expected[:, :2], atol=2e-3)
    np.testing.assert_allclose(kpts[0, :, 2], expected[:, 2], atol=1e-5)
    assert np.all(kpts[0, ABSENT] == 0)
    assert np.all(kpts[0, LEFT_HAND, 2] == 1.0)
    assert np.all(kpts[1] == 0)

    assert annotations.qa == {"pose_body_rate": 0.5, "pose_face_rate": 0.0, "pose_lhand_rate": 0.5,
                              "pose_rhand_rate": 0.5, "people_seen": float(len(people)), "subject_lost_share": 0.5}
    meta = annotations.meta
    assert meta["backend"] == "dwpose" and meta["subject"]["lost_frames"] == 1
    assert meta["models"] == [{"name": NANO, "sha256": model_store.entry(NANO).sha256},
                              {"name": "tiny_simcc_pose_model.onnx",
                               "sha256": model_store.entry("tiny_simcc_pose_model.onnx").sha256}]
    assert meta["providers"] == {"detector": "CPUExecutionProvider", "pose": "CPUExecutionProvider"}
    assert "provider_fallback" not in meta


@pytest.mark.parametrize("pose_model, batch_size", [("tiny_simcc_pose_model_batch1.onnx", 4),
                                                    ("tiny_simcc_pose_model_batch3.onnx", 4),
                                                    ("tiny_simcc_pose_model.onnx", 2),
                                                    ("tiny_simcc_pose_model.onnx", 16)])
def test_crops_batched_across_frames_come_back_in_frame_order(store, pose_model, batch_size):
    rng_frames = np.random.default_rng(3)
    frames = rng_frames.integers(0, 256, (5, 120, 160, 3), dtype=np.uint8)
    boxes = [np.array([10, 5, 90, 110]), None, np.array([40, 20, 150, 100]), np.array([0, 0, 159, 119]),
             np.array([70, 30, 100, 90])]
    kpts = stage(pose_model=pose_model, batch_size=batch_size).estimate_pose(frames, boxes)
    assert np.all(kpts[1] == 0)
    for t, box in enumerate(boxes):
        if box is not None:
            crop, _, _ = crop_for_pose(frames[t], box, (INPUT_W, INPUT_H))
            expected = expected_keypoints(box, float(crop.mean()))
            np.testing.assert_allclose(kpts[t], expected, atol=2e-3)
    body_scores = kpts[[0, 2, 3, 4], 0, 2]
    assert len(set(np.round(body_scores, 6))) == 4  # each crop's own scores, so order is checked


def _raw_yolox_model(path: Path, raw: np.ndarray) -> Path:
    """A stand-in for Megvii's YOLOX export (input [1, 3, 64, 64], raw head output [1, anchors, 85])."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
         helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
         helper.make_node("Add", ["head", "nothing"], ["output"])],
        "raw_yolox", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(raw.shape))],
        initializer=[numpy_helper.from_array(raw, "head"), numpy_helper.from_array(np.float32(0), "zero")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_raw_yolox_output_is_decoded_to_person_boxes_as_dwpose_does(tmp_path):
    anchors = 8 * 8 + 4 * 4 + 2 * 2  # strides 8, 16, 32 over a 64x64 input
    raw = np.zeros((1, anchors, 85), dtype=np.float32)
    raw[0, :, 4] = 0.01  # objectness everywhere too low to count
    person = 64 + 2 * 4 + 1  # stride 16, grid cell (x=1, y=2)
    raw[0, person, :5] = [0.5, 0.25, np.log(2.0), np.log(3.0), 0.9]
    raw[0, person, 5] = 0.8  # person class: score 0.72, box centre (24, 36), size (32, 48) in input pixels
    duplicate = 2 * 8 + 3  # stride 8, cell (3, 2): nearly the same box, lower score, removed by NMS
    raw[0, duplicate, :6] = [0.0, 2.5, np.log(4.0), np.log(6.0), 0.9, 0.5]
    not_person = 64 + 16 + 3  # stride 32, a confident box of another class
    raw[0, not_person, :5] = [0.5, 0.5, 0.0, 0.0, 0.95]
    raw[0, not_person, 6] = 0.99
    detector = PersonDetector(_raw_yolox_model(tmp_path / "raw.onnx", raw), score_threshold=0.3)
    frame = np.zeros((32, 16, 3), dtype=np.uint8)  # letterboxed at 2x into the 64x64 input
    [boxes] = detector(frame[None])
    expected = np.array([[(24 - 16) / 2 - 0.5, (36 - 24) / 2 - 0.5, (24 + 16) / 2 - 0.5, (36 + 24) / 2 - 0.5,
                          0.72]])
    np.testing.assert_allclose(boxes, expected, atol=1e-5)


def test_asking_for_cuda_without_it_runs_on_cpu_and_says_so(store, caplog):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: the fallback cannot happen")
    frames = demo_photo()[None]
    with caplog.at_level(logging.WARNING, logger="humanim.stages.pose_rtmlib"):
        annotations = stage(device="cuda")(clip_of(frames))
    assert annotations.meta["provider_fallback"] == "asked cuda, running CPUExecutionProvider"
    assert "POSE STAGE RUNS ON CPU" in caplog.text


def test_a_clip_with_nobody_in_it_is_rejected_with_the_reason(store):
    with pytest.raises(ClipRejected, match="no person detected in any frame"):
        stage()(clip_of(np.full((3, 96, 128, 3), 127, dtype=np.uint8)))


def test_a_missing_pose_model_fails_when_the_stage_is_built_with_the_fetch_command(store):
    with pytest.raises(ModelStoreError, match="humanim models fetch dw-ll_ucoco_384.onnx"):
        RtmlibPose({**DEFAULTS["pose"], "detector": NANO})


def test_config_errors_are_named(store):
    with pytest.raises(ValueError, match="not an rtmlib back-end"):
        RtmlibPose({**DEFAULTS["pose"], "backend": "mediapipe"})
    with pytest.raises(ValueError, match="cpu or cuda"):
        stage(device="tpu")
    assert stage().model_files() == [NANO, "tiny_simcc_pose_model.onnx"]
    assert stage(backend="rtmw").backend == "rtmw"


def test_the_subject_is_found_again_in_the_reference_frame_or_its_absence_recorded(store):
    rgb = demo_photo()
    spec = ClipSpec(key="test_00000", video_id="test", clip_index=0, split="train", source="", source_sha256="",
                    source_frame_indices=(10, 11), source_frame_pts=(10, 11), source_frame_times=(0.4, 0.44),
                    frame_times=(0.4, 0.44), fps=25.0, reference_frame_index=40, reference_frame_pts=40,
                    reference_frame_time=1.6, reference_same_scene=True)
    pose = stage()
    # The reference shows the same scene a little later: the players moved 6 px to the left.
    moved = np.roll(rgb, -6, axis=1)
    annotations = pose(Clip(spec=spec, frames=np.stack([rgb, rgb]), reference=moved))
    subject = annotations.fields["subject_box"][-1]
    reference_people = pose.detect_people(moved[None])[0]
    nearest = np.argmin(np.abs(reference_people[:, :4] - (subject[:4] - [6, 0, 6, 0])).max(axis=1))
    crop, _, _ = crop_for_pose(moved, reference_people[nearest], (INPUT_W, INPUT_H))
    expected = expected_keypoints(reference_people[nearest], float(crop.mean()))
    np.testing.assert_allclose(annotations.fields["ref_kpts"][:, :2], expected[:, :2], atol=2e-3)
    # Nobody in the reference: no reference keypoints, and the reason is recorded.
    grey = np.full_like(rgb, 127)
    annotations = pose(Clip(spec=spec, frames=np.stack([rgb, rgb]), reference=grey))
    assert "ref_kpts" not in annotations.fields
    assert annotations.meta["reference_missing"] == "the subject was not found in the reference frame"
