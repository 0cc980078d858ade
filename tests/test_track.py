"""Person detection, main-subject tracking and the subject crop box.

The real-video test runs the real YOLOX-nano detector on two people walking towards each other; the
synthetic tests build box sequences whose right answer is known (crossings, gaps, ties, losses).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import asset

from humanim.stages.base import ClipRejected
from humanim.stages.decode import cover_crop
from humanim.stages.pose_rtmlib import PersonDetector
from humanim.stages.track import _iou, scaled_crop, subject_crop_box, track_subject

DETECTOR = "models/yolox_nano_8xb8-300e_humanart-40f6f0d0.onnx"


def centre_x(box: np.ndarray) -> float:
    return float(box[0] + box[2]) / 2


def box_at(cx: float, cy: float, width: float, height: float, score: float = 0.9) -> list[float]:
    return [cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2, score]


# --- tracking on a real video -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_people():
    """Every second frame of the first 32 of the two-person demo, at 270x480, and the detector's boxes."""
    import av

    frames = []
    with av.open(str(asset("videos/mmhuman3d_multi_person_demo.mp4"))) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= 32:
                break
            if index % 2 == 0:
                frames.append(frame.to_ndarray(format="rgb24", width=270, height=480))
    return frames, PersonDetector(asset(DETECTOR))(frames)


def test_real_video_keeps_one_subject_through_every_frame(two_people):
    frames, detections = two_people
    height, width = frames[0].shape[:2]
    track = track_subject(detections, (width, height))
    assert track.people_seen >= 2 and track.people_seen_median >= 2
    assert not track.lost.any()
    boxes = track.boxes
    consecutive = [float(_iou(boxes[t], boxes[t + 1:t + 2])[0]) for t in range(len(boxes) - 1)]
    assert min(consecutive) > 0.6, f"the subject's box jumps between frames: IoUs {consecutive}"
    # The other person is the detection that is not the subject; the subject never changes side of it.
    sides = []
    for t, dets in enumerate(detections):
        others = [d for d in dets if not np.allclose(d, boxes[t])]
        other = max(others, key=lambda d: (d[2] - d[0]) * (d[3] - d[1]))
        sides.append(np.sign(centre_x(boxes[t]) - centre_x(other)))
    assert len(set(sides)) == 1, f"the subject swapped sides with the other person: {sides}"
    # Which is what taking each frame's best-scored detection would get wrong on this clip.
    naive_sides = {np.sign(centre_x(dets[0]) - centre_x(dets[1])) for dets in detections}
    assert len(naive_sides) == 2, "precondition: the detector's own order swaps the two people in some frame"
    assert json.loads(json.dumps(track.to_meta()))["people_seen"] == track.people_seen


# --- tracking on synthetic boxes --------------------------------------------------------------------------

def crossing(frames: int = 12, hide_b: tuple[int, ...] = ()) -> tuple[list[np.ndarray], list[list[float]]]:
    """A walks right, B walks left, both at 12 px per frame, passing each other between frames 3 and 4; A is
    larger (the subject). Detections come in B-first order, so detector order never favours A."""
    per_frame, a_boxes = [], []
    for t in range(frames):
        a = box_at(100 + 12 * t, 200, 60, 180)
        b = box_at(190 - 12 * t, 205, 50, 160, score=0.8)
        per_frame.append(np.array([a] if t in hide_b else [b, a], dtype=np.float32))
        a_boxes.append(a)
    return per_frame, a_boxes


def test_two_people_crossing_keep_their_identities():
    # At frame 4 each one's last position is nearer the other's new detection: only the motion tells them apart.
    detections, a_boxes = crossing()
    track = track_subject(detections, (320, 400))
    np.testing.assert_allclose(track.boxes, np.array(a_boxes, dtype=np.float32))
    assert track.people_seen == 2 and "highest prominence" in track.chosen_reason


def test_crossing_with_the_other_person_hidden_behind_the_subject():
    detections, a_boxes = crossing(hide_b=(3, 4, 5))
    track = track_subject(detections, (320, 400))
    np.testing.assert_allclose(track.boxes, np.array(a_boxes, dtype=np.float32))
    assert not track.lost.any()


def test_a_gap_is_bridged_by_the_predicted_motion():
    # A walks right and is missed for frames 6-9. When A is seen again, B has appeared where A was last seen:
    # only the predicted motion gives A's track the detection 50 px further on.
    detections, a_boxes = [], []
    for t in range(20):
        a = box_at(60 + 10 * t, 200, 60, 180)
        a_boxes.append(a)
        rows = [] if 6 <= t <= 9 else [a]
        if t >= 10:
            rows.insert(0, box_at(110, 200, 58, 175, score=0.7))
        detections.append(np.array(rows, dtype=np.float32).reshape(-1, 5))
    track = track_subject(detections, (400, 400), max_lost_share=0.25)
    assert track.lost.tolist() == [6 <= t <= 9 for t in range(20)]
    assert np.isnan(track.boxes[6:10]).all()
    found = ~track.lost
    np.testing.assert_allclose(track.boxes[found], np.array(a_boxes, dtype=np.float32)[found])


def test_keypoints_keep_identities_where_boxes_swap():
    # Two people one behind the other; at frame 5 the detector's boxes swap places but each pose stays with its
    # person. Boxes alone follow the boxes; with keypoints the track follows the person.
    rng = np.random.default_rng(0)
    poses = {}
    for name, x0 in (("a", 100), ("b", 110)):
        pose = np.zeros((133, 3), np.float32)
        pose[:17, :2] = rng.uniform([x0, 100], [x0 + 100, 400], size=(17, 2))
        pose[:17, 2] = 1.0
        poses[name] = pose
    detections, keypoints = [], []
    for t in range(10):
        a, b = [100, 100, 200, 400, 0.95], [110, 100, 210, 400, 0.8]
        if t == 5:
            a, b = b, a
        detections.append(np.array([a, b], np.float32))
        keypoints.append(np.stack([poses["a"], poses["b"]]))
    with_keypoints = track_subject(detections, (320, 480), kpts_per_frame=keypoints)
    boxes_only = track_subject(detections, (320, 480))
    # Both runs choose the track that starts at x=100 (the confident one in nine frames of ten).
    np.testing.assert_allclose(boxes_only.boxes[4:7, 0], [100, 100, 100])
    np.testing.assert_allclose(with_keypoints.boxes[4:7, 0], [100, 110, 100])


def test_a_detection_without_a_pose_is_matched_on_its_box_alone():
    # One person jumps 50 px at frame 5 (a camera shake), the frame where the pose estimator found nothing.
    # Box overlap and centre closeness still accept it; a missing pose must not count as a mismatch.
    body = np.random.default_rng(1).uniform([0, 0], [60, 180], size=(17, 2))
    detections, keypoints = [], []
    for t in range(10):
        x0 = 120 if t < 5 else 170
        detections.append(np.array([[x0, 110, x0 + 60, 290, 0.9]], np.float32))
        pose = np.zeros((1, 133, 3), np.float32)
        if t != 5:
            pose[0, :17, :2], pose[0, :17, 2] = body + [x0, 110], 1.0
        keypoints.append(pose)
    track = track_subject(detections, (320, 400), kpts_per_frame=keypoints)
    assert not track.lost.any()


def test_equal_people_give_a_recorded_deterministic_choice():
    left, right = box_at(100, 200, 60, 180), box_at(220, 200, 60, 180)
    for order in ([left, right], [right, left]):
        track = track_subject([np.array(order, np.float32)] * 8, (320, 400))
        np.testing.assert_allclose(track.boxes[0], left)
        assert "tie" in track.chosen_reason and "leftmost" in track.chosen_reason
        assert track.runner_up_prominence == pytest.approx(track.prominence)


def test_subject_lost_too_often_rejects_the_clip():
    subject = box_at(150, 200, 60, 180)
    detections = [np.array([subject] if t < 12 else [], np.float32).reshape(-1, 5) for t in range(20)]
    with pytest.raises(ClipRejected, match=r"main subject lost in 8 of 20 frames \(40%, more than the 25%"):
        track_subject(detections, (320, 400), max_lost_share=0.25)
    assert track_subject(detections, (320, 400), max_lost_share=0.5).lost.sum() == 8


def test_no_person_rejects_the_clip():
    with pytest.raises(ClipRejected, match="no person detected in any frame"):
        track_subject([np.zeros((0, 5), np.float32)] * 6, (320, 400))


# --- the crop box -----------------------------------------------------------------------------------------

def test_crop_box_holds_the_subject_in_every_frame_at_the_target_aspect():
    detections, a_boxes = crossing()
    track = track_subject(detections, (640, 400))
    for target in ((512, 512), (576, 1024), (1024, 576)):
        x0, y0, x1, y1 = subject_crop_box(track.boxes, (640, 400), target, margin=0.1)
        assert (x1 - x0) / (y1 - y0) == pytest.approx(target[0] / target[1])
        assert x0 >= 0 and y0 >= 0 and x1 <= 640 and y1 <= 400
        for box in track.boxes:
            assert x0 <= box[0] and y0 <= box[1] and box[2] <= x1 and box[3] <= y1


def test_crop_box_is_shifted_into_the_frame_not_shrunk():
    boxes = np.array([box_at(30, 200, 40, 120)] * 4, np.float32)  # near the left edge
    x0, y0, x1, y1 = subject_crop_box(boxes, (640, 400), (512, 512), margin=0.1)
    assert x0 == 0 and x1 - x0 == pytest.approx(120 + 2 * 12)  # height plus margins, as a square
    assert (y0 + y1) / 2 == pytest.approx(200)


def test_a_subject_too_large_gets_the_largest_box_centred_on_it():
    boxes = np.array([[300, 10, 400, 390, 0.9], [310, 20, 420, 395, 0.9]], np.float32)  # with margins, > 400 high
    x0, y0, x1, y1 = subject_crop_box(boxes, (800, 400), (1024, 576), margin=0.1)
    assert (y0, y1) == (0, 400) and x1 - x0 == pytest.approx(400 * 1024 / 576)
    assert (x0 + x1) / 2 == pytest.approx(360)


def test_lost_frames_do_not_move_the_crop_box():
    boxes = np.array([box_at(200, 200, 60, 180), [np.nan] * 5, box_at(210, 200, 60, 180)], np.float32)
    assert subject_crop_box(boxes, (640, 400), (512, 512)) == subject_crop_box(boxes[[0, 2]], (640, 400),
                                                                                (512, 512))


@pytest.mark.parametrize("source, target", [((1920, 1080), (512, 512)), ((1080, 1920), (576, 1024)),
                                            ((640, 480), (512, 288)), ((301, 403), (128, 128))])
def test_scaled_crop_of_the_centred_box_is_decodes_centre_crop(source, target):
    crop = cover_crop(*source, *target)
    assert scaled_crop(crop.box, source, target) == (crop.scaled_w, crop.scaled_h, (crop.x0, crop.y0))
