"""The COCO-WholeBody layout, horizontal flips of samples, and the DWPose-style skeleton drawing."""
from __future__ import annotations

import colorsys

import numpy as np
import pytest

from humanim.schemas.keypoints import (
    BODY_NAMES, FACE, FEET_NAMES, FLIP_PERMUTATION, KEYPOINT_NAMES, LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND,
    flip_boxes, flip_keypoints, flip_sample,
)
from humanim.stages.skeleton import OPENPOSE_COLORS, draw_skeleton

WIDTH, HEIGHT = 37, 23  # odd sizes, so an off-by-one in the mirror convention cannot hide


def random_kpts(rng: np.random.Generator, frames: int = 4) -> np.ndarray:
    kpts = np.zeros((frames, NUM_KEYPOINTS, 3), dtype=np.float32)
    kpts[..., 0] = rng.uniform(-0.5, WIDTH - 0.5, kpts.shape[:2])
    kpts[..., 1] = rng.uniform(-0.5, HEIGHT - 0.5, kpts.shape[:2])
    kpts[..., 2] = rng.uniform(0.05, 1.0, kpts.shape[:2])
    kpts[:, RIGHT_HAND] = 0  # an absent part, stored as (0, 0, 0)
    return kpts


def test_layout_names_and_ranges():
    assert len(KEYPOINT_NAMES) == NUM_KEYPOINTS == 133 and len(set(KEYPOINT_NAMES)) == 133
    assert KEYPOINT_NAMES[9] == "left_wrist" and KEYPOINT_NAMES[17:23] == FEET_NAMES
    assert KEYPOINT_NAMES[FACE.start] == "face-0" and KEYPOINT_NAMES[FACE.stop - 1] == "face-67"
    assert KEYPOINT_NAMES[LEFT_HAND.start] == "left_hand_root"
    assert KEYPOINT_NAMES[RIGHT_HAND.stop - 1] == "right_hand_pinky_finger4"


def test_flip_permutation_is_an_involution_that_swaps_named_sides():
    assert sorted(FLIP_PERMUTATION) == list(range(NUM_KEYPOINTS))
    assert np.array_equal(FLIP_PERMUTATION[FLIP_PERMUTATION], np.arange(NUM_KEYPOINTS))
    for index, name in enumerate(KEYPOINT_NAMES):
        if "left" in name or "right" in name:
            swapped = name.replace("left", "@").replace("right", "left").replace("@", "right")
            assert KEYPOINT_NAMES[FLIP_PERMUTATION[index]] == swapped
    face = FLIP_PERMUTATION[FACE] - FACE.start
    # 300-W midline points stay, mirror pairs swap: jaw ends, brow ends, eye outer corners, mouth corners.
    for midline in (8, 27, 28, 29, 30, 33, 51, 57, 62, 66):
        assert face[midline] == midline
    for a, b in ((0, 16), (17, 26), (36, 45), (39, 42), (48, 54), (60, 64)):
        assert face[a] == b and face[b] == a
    assert np.count_nonzero(face == np.arange(68)) == 10


def test_flip_twice_is_identity_and_wrists_swap_to_mirrored_pixel():
    kpts = random_kpts(np.random.default_rng(0))
    flipped = flip_keypoints(kpts, WIDTH)
    twice = flip_keypoints(flipped, WIDTH)
    np.testing.assert_array_equal(twice[..., 1:], kpts[..., 1:])
    np.testing.assert_allclose(twice[..., 0], kpts[..., 0], rtol=0, atol=1e-5)  # float32 rounding of W - 1 - x
    left_wrist, right_wrist = BODY_NAMES.index("left_wrist"), BODY_NAMES.index("right_wrist")
    np.testing.assert_allclose(flipped[:, right_wrist, 0], WIDTH - 1 - kpts[:, left_wrist, 0], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(flipped[:, right_wrist, 1:], kpts[:, left_wrist, 1:])
    # The absent right hand becomes an absent left hand, still at (0, 0, 0).
    assert np.all(flipped[:, LEFT_HAND] == 0)


def test_flip_sample_agrees_with_flipping_the_pixels():
    rng = np.random.default_rng(1)
    frames = np.zeros((2, HEIGHT, WIDTH, 3), dtype=np.uint8)
    kpts = random_kpts(rng, frames=2)
    kpts[..., :2] = np.round(kpts[..., :2]).clip(0, [WIDTH - 1, HEIGHT - 1])  # on pixel centres
    left_wrist = BODY_NAMES.index("left_wrist")
    for t in range(2):
        x, y = kpts[t, left_wrist, :2].astype(int)
        frames[t, y, x] = 255
    boxes = np.array([[3, 4, 10, 20, 0.9], [0, 0, WIDTH - 1, 5, 0.8]], dtype=np.float32)
    for t, (x0, y0, x1, y1) in enumerate(boxes[:, :4].astype(int)):
        frames[t, y0:y1 + 1, x0:x1 + 1, 1] = 200  # the box bounds a green block, inclusive of its edge pixels
    masks = np.zeros((2, 3, HEIGHT, WIDTH), dtype=np.uint8)
    masks[:, 1, :, :5] = 1  # left hand region on the image's left
    motion = np.array([[[1.5, 2.0], [np.nan, np.nan]]] * 2, dtype=np.float32)
    # 5 face points named by image side: eye left, eye right, nose, mouth left, mouth right.
    landmarks = np.array([[[2, 3], [8, 3], [5, 6], [3, 9], [7, 9]]] * 2, dtype=np.float32)
    sample = {"frames": frames, "kpts": kpts, "subject_box": boxes, "face_box": boxes[::-1].copy(),
              "face_landmarks": landmarks, "masks": masks, "hand_motion": motion,
              "hand_sharpness": np.array([[5.0, np.nan]] * 2, dtype=np.float32),
              "hand_valid": np.array([[True, False]] * 2), "__key__": "abc_00000"}
    before = {k: np.copy(v) if isinstance(v, np.ndarray) else v for k, v in sample.items()}
    out = flip_sample(sample)

    right_wrist = BODY_NAMES.index("right_wrist")
    for t in range(2):
        x, y = out["kpts"][t, right_wrist, :2].astype(int)
        assert out["frames"][t, y, x, 0] == 255  # the keypoint still sits on its pixel
        ys, xs = np.nonzero(out["frames"][t, :, :, 1] == 200)
        np.testing.assert_array_equal(out["subject_box"][t], [xs.min(), ys.min(), xs.max(), ys.max(), boxes[t, 4]])
    np.testing.assert_array_equal(out["face_box"], out["subject_box"][::-1])
    # The eye on the image left after the flip is the mirrored eye that was on the right.
    np.testing.assert_array_equal(out["face_landmarks"][0], [[WIDTH - 9, 3], [WIDTH - 3, 3], [WIDTH - 6, 6],
                                                             [WIDTH - 8, 9], [WIDTH - 4, 9]])
    assert out["masks"][:, 2, :, -5:].all() and not out["masks"][:, 1].any()  # now the right hand, on the right
    np.testing.assert_array_equal(out["hand_motion"][:, 1], [[-1.5, 2.0]] * 2)
    assert np.isnan(out["hand_motion"][:, 0]).all()
    np.testing.assert_array_equal(out["hand_valid"], [[False, True]] * 2)
    assert out["__key__"] == "abc_00000"
    for key, value in before.items():  # the input is left as it was
        np.testing.assert_array_equal(sample[key], value)
    flipped_back = flip_sample(out)  # pixel-centre coordinates here, so every value comes back exactly
    for key in ("frames", "kpts", "subject_box", "face_box", "face_landmarks", "masks", "hand_motion",
                "hand_sharpness", "hand_valid"):
        np.testing.assert_array_equal(flipped_back[key], sample[key])


def test_flip_boxes_and_missing_width():
    np.testing.assert_array_equal(flip_boxes(np.array([0.0, 1.0, 4.0, 2.0]), 10), [5.0, 1.0, 9.0, 2.0])
    with pytest.raises(ValueError, match="width"):
        flip_sample({"kpts": np.zeros((1, NUM_KEYPOINTS, 3))})


# --- skeleton drawing -------------------------------------------------------------------------------------

BODY_XY = {  # a person facing the camera: their left is on the image's right
    "nose": (100, 40), "left_eye": (108, 34), "right_eye": (92, 34), "left_ear": (116, 38), "right_ear": (84, 38),
    "left_shoulder": (130, 70), "right_shoulder": (70, 70), "left_elbow": (140, 110), "right_elbow": (60, 110),
    "left_wrist": (145, 145), "right_wrist": (55, 145), "left_hip": (120, 140), "right_hip": (80, 140),
    "left_knee": (122, 170), "right_knee": (78, 170), "left_ankle": (124, 195), "right_ankle": (76, 195),
}


def posed_kpts() -> np.ndarray:
    kpts = np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32)
    for name, xy in BODY_XY.items():
        kpts[BODY_NAMES.index(name)] = (*xy, 0.9)
    kpts[LEFT_HAND.start] = (160, 40, 0.9)  # wrist; fingers run to the right, 10 px apart, joints 12 px apart
    for finger in range(5):
        for joint in range(1, 5):
            kpts[LEFT_HAND.start + 4 * finger + joint] = (160 + 12 * joint, 20 + 10 * finger, 0.9)
    kpts[FACE.start] = (30, 220, 0.9)
    kpts[FACE.start + 1] = (50, 220, 0.2)  # below threshold
    return kpts


def dimmed(color: tuple[int, int, int]) -> list[int]:
    return list((np.array(color) * 0.6).astype(np.uint8))


def test_skeleton_puts_openpose_colours_where_the_limbs_are():
    image = draw_skeleton(posed_kpts(), 256, 256)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert list(image[70, 85]) == dimmed(OPENPOSE_COLORS[0])  # neck (mid-shoulders) to right shoulder: limb 0
    assert list(image[55, 100]) == dimmed(OPENPOSE_COLORS[12])  # neck to nose: limb 12
    assert list(image[90, 65]) == dimmed(OPENPOSE_COLORS[2])  # right shoulder to right elbow: limb 2
    assert list(image[110, 60]) == list(OPENPOSE_COLORS[3])  # right elbow joint, full colour
    assert list(image[70, 100]) == list(OPENPOSE_COLORS[1])  # the neck joint
    for finger in range(5):  # first-to-second joint of each finger: edge 4 * finger + 1 of 20, coloured by hue
        hue = (4 * finger + 1) / 20
        expected = [round(c * 255) for c in colorsys.hsv_to_rgb(hue, 1.0, 1.0)]
        assert list(image[20 + 10 * finger, 178]) == expected
    assert list(image[20, 172]) == [0, 0, 255]  # hand joints are blue dots
    assert list(image[220, 30]) == [255, 255, 255] and list(image[220, 50]) == [0, 0, 0]
    assert not image[:6, :6].any()  # the absent right hand (stored at 0, 0) draws nothing


def test_skeleton_leaves_out_points_below_threshold():
    kpts = posed_kpts()
    kpts[BODY_NAMES.index("right_elbow"), 2] = 0.1
    kpts[BODY_NAMES.index("left_shoulder"), 2] = 0.29
    image = draw_skeleton(kpts, 256, 256)
    assert not image[110, 60].any() and not image[90, 65].any() and not image[128, 58].any()  # elbow, both limbs
    assert not image[55, 100].any() and not image[70, 100].any()  # no neck without both shoulders
    assert list(image[145, 55]) == list(OPENPOSE_COLORS[4])  # the right wrist itself is still drawn
    plain = draw_skeleton(kpts, 256, 256, face=False, hands=False)
    assert not plain[220, 30].any() and not plain[:, 155:].any()
    assert draw_skeleton(kpts, 256, 256, threshold=0.95).sum() == 0
