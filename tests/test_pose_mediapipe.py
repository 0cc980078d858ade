"""MediaPipe Holistic mapped onto COCO-WholeBody: the mapping tables, and the stage on real video frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from humanim.schemas.keypoints import BODY, BODY_NAMES, FACE, FEET_NAMES, LEFT_HAND, RIGHT_HAND, flip_keypoints
from humanim.stages.base import Clip, ClipSpec

mp = pytest.importorskip("mediapipe")
cv2 = pytest.importorskip("cv2")

from humanim.pipeline.config import DEFAULTS
from humanim.stages.pose_mediapipe import FACE468_TO_FACE68, MediaPipePose, mediapipe_to_wholebody  # noqa: E402

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
POSE = mp.solutions.holistic.PoseLandmark


def clip_of(frames: np.ndarray, key: str = "test_00000") -> Clip:
    spec = ClipSpec(key=key, video_id="test", clip_index=0, split="train", source="", source_sha256="",
                    source_frame_indices=(), source_frame_pts=(), source_frame_times=(), frame_times=(), fps=25.0)
    return Clip(spec=spec, frames=frames)


def video_frames(name: str, count: int, step: int, height: int = 256) -> np.ndarray:
    av = pytest.importorskip("av")
    path = ASSETS / "videos" / name
    if not path.exists():
        pytest.skip(f"{path} absent (shared assets are not in a plain clone)")
    frames = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % step == 0:
                rgb = frame.to_ndarray(format="rgb24")
                width = round(rgb.shape[1] * height / rgb.shape[0] / 2) * 2
                frames.append(cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA))
            if len(frames) == count:
                break
    return np.stack(frames)


def test_body_feet_and_hands_map_by_mediapipe_names_and_person_side():
    rng = np.random.default_rng(0)
    pose = np.column_stack([rng.uniform(0, 1, (33, 2)), rng.uniform(0.1, 1, 33)])
    left_hand, right_hand = rng.uniform(0, 1, (21, 2)), rng.uniform(0, 1, (21, 2))
    width, height = 200, 100
    out = mediapipe_to_wholebody(pose, left_hand, right_hand, None, width, height)
    assert out.shape == (133, 3) and out.dtype == np.float32
    for index, name in enumerate(BODY_NAMES):  # the same name on both sides, so the same side of the person
        source = pose[POSE[name.upper()]]
        np.testing.assert_allclose(out[index], [source[0] * width - 0.5, source[1] * height - 0.5, source[2]],
                                   rtol=1e-6)
    feet = dict(zip(FEET_NAMES, out[17:23]))
    for side in ("left", "right"):
        np.testing.assert_allclose(feet[f"{side}_heel"][2], pose[POSE[f"{side.upper()}_HEEL"], 2], rtol=1e-6)
        np.testing.assert_allclose(feet[f"{side}_big_toe"][2], pose[POSE[f"{side.upper()}_FOOT_INDEX"], 2], rtol=1e-6)
        assert np.all(feet[f"{side}_small_toe"] == 0)  # MediaPipe has no small toe
    np.testing.assert_allclose(out[LEFT_HAND, 0], left_hand[:, 0] * width - 0.5, rtol=1e-6)
    np.testing.assert_allclose(out[RIGHT_HAND, 1], right_hand[:, 1] * height - 0.5, rtol=1e-6)
    assert np.all(out[LEFT_HAND, 2] == 1) and np.all(out[FACE] == 0)  # a face not found stays absent
    assert np.all(mediapipe_to_wholebody(None, None, None, None, width, height) == 0)


def test_face_table_picks_points_from_the_matching_mesh_regions():
    from mediapipe.python.solutions import face_mesh_connections as mesh

    def region(edges) -> set[int]:
        return {i for edge in edges for i in edge}

    table = np.array(FACE468_TO_FACE68)
    assert len(set(FACE468_TO_FACE68)) == 68 and table.max() < 468
    # MediaPipe's own region sets name the person's sides, as 300-W does.
    assert set(table[0:17]) <= region(mesh.FACEMESH_FACE_OVAL)
    assert set(table[17:22]) <= region(mesh.FACEMESH_RIGHT_EYEBROW)
    assert set(table[22:27]) <= region(mesh.FACEMESH_LEFT_EYEBROW)
    assert set(table[36:42]) <= region(mesh.FACEMESH_RIGHT_EYE)
    assert set(table[42:48]) <= region(mesh.FACEMESH_LEFT_EYE)
    assert set(table[48:68]) <= region(mesh.FACEMESH_LIPS)


@pytest.fixture(scope="module")
def stage() -> MediaPipePose:
    return MediaPipePose(DEFAULTS["pose"])


@pytest.fixture(scope="module")
def dancer(stage):
    frames = video_frames("animatex_ubc.mp4", count=8, step=8)
    return frames, stage(clip_of(frames))


@pytest.fixture(scope="module")
def talker(stage):
    frames = video_frames("moore_talkinghead_3.mp4", count=8, step=8)
    return frames, stage(clip_of(frames))


def person_boxes(frames: np.ndarray) -> np.ndarray:
    rtmlib = pytest.importorskip("rtmlib")
    model = ASSETS / "models" / "yolox_nano_8xb8-300e_humanart-40f6f0d0.onnx"
    if not model.exists():
        pytest.skip(f"{model} absent")
    detector = rtmlib.YOLOX(str(model), model_input_size=(416, 416), backend="onnxruntime", device="cpu")
    boxes = []
    for rgb in frames:
        found = detector(np.ascontiguousarray(rgb[:, :, ::-1]))
        assert len(found) >= 1
        boxes.append(max(found, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])))  # the one person, the largest
    return np.array(boxes)


def test_dancer_body_points_fall_inside_the_person_box(dancer):
    frames, result = dancer
    kpts = result.fields["kpts"]
    assert kpts.shape == (8, 133, 3) and kpts.dtype == np.float32
    assert result.qa["pose_body_rate"] == 1.0 and result.meta["backend"] == "mediapipe"
    boxes = person_boxes(frames)
    for t in range(len(frames)):
        body = kpts[t, BODY]
        seen = body[body[:, 2] > 0.5, :2]
        assert len(seen) >= 12
        x0, y0, x1, y1 = boxes[t]
        slack = 0.05 * np.array([x1 - x0, y1 - y0])  # the detector's box is drawn tight on the silhouette
        assert np.all(seen >= [x0, y0] - slack) and np.all(seen <= [x1, y1] + slack), (t, seen, boxes[t])


def test_sides_are_the_persons_not_the_images(dancer):
    frames, result = dancer
    kpts = result.fields["kpts"]
    left_shoulder, right_shoulder = BODY_NAMES.index("left_shoulder"), BODY_NAMES.index("right_shoulder")
    left_wrist, right_wrist = BODY_NAMES.index("left_wrist"), BODY_NAMES.index("right_wrist")
    face_seen = kpts[:, FACE, 2].max(axis=1) > 0
    assert face_seen.all()  # she faces the camera in these frames, so her left is on the image's right
    assert np.all(kpts[:, left_shoulder, 0] > kpts[:, right_shoulder, 0])
    # The face mesh's right eye (300-W 36-41) sits on the body model's right eye.
    right_eye = kpts[:, FACE.start + 36:FACE.start + 42, :2].mean(axis=1)
    eye_gap = np.linalg.norm(kpts[:, 1, :2] - kpts[:, 2, :2], axis=1)
    assert np.all(np.linalg.norm(right_eye - kpts[:, 2, :2], axis=1) < 0.5 * eye_gap)
    # Each hand found by Holistic sits at the wrist of the same side.
    for hand, wrist in ((LEFT_HAND, left_wrist), (RIGHT_HAND, right_wrist)):
        found = kpts[:, hand.start, 2] > 0
        assert found.any()
        distance = np.linalg.norm(kpts[found, hand.start, :2] - kpts[found, wrist, :2], axis=1)
        assert np.all(distance < 0.1 * frames.shape[1]), distance


def test_talking_head_face_found_in_every_frame(talker):
    frames, result = talker
    assert result.qa["pose_face_rate"] == 1.0
    face = result.fields["kpts"][:, FACE]
    assert np.all(face[:, :, 2] == 1.0)
    height, width = frames.shape[1:3]
    assert np.all((face[:, :, :2] > 0) & (face[:, :, :2] < [width, height]))
    jaw_width = face[:, 16, 0] - face[:, 0, 0]
    assert np.all(jaw_width > 0.15 * width)  # a head-and-shoulders shot: the face is large


def test_stage_output_depends_on_its_clip_only(stage, talker, dancer):
    frames, first = talker
    stage(clip_of(dancer[0][:2]))  # another clip in between leaves the tracker somewhere else
    again = stage(clip_of(frames))
    np.testing.assert_array_equal(again.fields["kpts"], first.fields["kpts"])


def test_mirrored_frame_gives_flipped_keypoints(stage):
    frame = video_frames("moore_talkinghead_3.mp4", count=1, step=1)
    width = frame.shape[2]
    original = stage(clip_of(frame)).fields["kpts"]
    mirrored = stage(clip_of(np.ascontiguousarray(frame[:, :, ::-1]))).fields["kpts"]
    expected = flip_keypoints(original, width)
    face_error = np.linalg.norm(mirrored[0, FACE, :2] - expected[0, FACE, :2], axis=1)
    face_size = np.ptp(original[0, FACE, 0])
    # A wrong left/right pair in the tables would put a point on the other side of the face: a face-width error.
    # Measured on this frame: median 1.2 %, worst 2.9 % of the face width.
    assert np.median(face_error) < 0.03 * face_size and face_error.max() < 0.15 * face_size, face_error
    head = slice(0, 5)  # nose, eyes, ears: the body points inside this head-and-shoulders frame
    body_error = np.linalg.norm(mirrored[0, head, :2] - expected[0, head, :2], axis=1)
    assert np.all(body_error < 0.15 * face_size), body_error  # measured: under 0.07
