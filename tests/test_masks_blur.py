"""Face and hand masks from keypoints, and HIA's hand sharpness and motion, on synthetic and real frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from humanim.schemas.keypoints import LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND
from humanim.stages.base import Clip, ClipSpec
from humanim.stages.blur import HandBlur, hand_crop_box, hand_motion, hand_sharpness
from humanim.pipeline.config import DEFAULTS
from humanim.stages.masks import Masks, pack_masks, part_mask, unpack_masks

cv2 = pytest.importorskip("cv2")

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"


def clip_of(frames: np.ndarray, kpts: np.ndarray) -> Clip:
    spec = ClipSpec(key="test_00000", video_id="test", clip_index=0, split="train", source="", source_sha256="",
                    source_frame_indices=(), source_frame_pts=(), source_frame_times=(), frame_times=(), fps=8.0)
    return Clip(spec=spec, frames=frames, fields={"kpts": kpts})


def first_frame(name: str, height: int | None = None) -> np.ndarray:
    av = pytest.importorskip("av")
    path = ASSETS / "videos" / name
    if not path.exists():
        pytest.skip(f"{path} absent (shared assets are not in a plain clone)")
    with av.open(str(path)) as container:
        rgb = next(container.decode(video=0)).to_ndarray(format="rgb24")
    if height is None:
        return rgb
    return cv2.resize(rgb, (round(rgb.shape[1] * height / rgb.shape[0]), height), interpolation=cv2.INTER_AREA)


def holistic_kpts(rgb: np.ndarray) -> np.ndarray:
    """Real whole-body keypoints [133, 3] of one frame, from MediaPipe Holistic in single-image mode."""
    mp = pytest.importorskip("mediapipe")
    from humanim.stages.pose_mediapipe import _landmarks, mediapipe_to_wholebody

    with mp.solutions.holistic.Holistic(static_image_mode=True, model_complexity=1) as holistic:
        found = holistic.process(rgb)
    return mediapipe_to_wholebody(_landmarks(found.pose_landmarks, with_visibility=True),
                                  _landmarks(found.left_hand_landmarks), _landmarks(found.right_hand_landmarks),
                                  _landmarks(found.face_landmarks), rgb.shape[1], rgb.shape[0])


@pytest.fixture(scope="module")
def dancer():
    """A full-resolution frame (720x940) of a woman facing the camera with both hands visible."""
    rgb = first_frame("animatex_ubc.mp4")
    kpts = holistic_kpts(rgb)
    assert kpts[LEFT_HAND.start, 2] > 0 and kpts[RIGHT_HAND.start, 2] > 0
    return rgb, kpts


# --- masks ------------------------------------------------------------------------------------------------

def square_points(x0: float, y0: float, side: float, score: float = 0.9) -> np.ndarray:
    return np.array([[x0, y0, score], [x0 + side, y0, score], [x0 + side, y0 + side, score],
                     [x0, y0 + side, score], [x0 + side / 2, y0 + side / 2, score]], dtype=np.float32)


@pytest.mark.parametrize("side", [40, 80])
def test_part_mask_grows_the_hull_in_proportion_to_the_part(side):
    mask = part_mask(square_points(50, 50, side), 200, 200, threshold=0.3, margin=0.25)
    grow = 0.25 * side  # the region is the square plus a band of this width, with rounded corners
    row = mask[50 + side // 2]
    assert row[int(50 - grow + 1)] and not row[int(50 - grow - 2)]
    assert row[int(50 + side + grow - 1)] and not row[int(50 + side + grow + 2)]
    corner_offset = grow / np.sqrt(2)  # along the diagonal from a corner, the band is round, not square
    assert mask[int(50 - corner_offset + 2), int(50 - corner_offset + 2)]
    assert not mask[int(50 - grow + 1), int(50 - grow + 1)]
    assert set(np.unique(mask)) == {0, 1}


def test_part_mask_ignores_unsure_points_and_needs_three():
    points = np.vstack([square_points(50, 50, 40), [[190, 190, 0.2]]]).astype(np.float32)
    assert not part_mask(points, 200, 200, threshold=0.3, margin=0.2)[150:, 150:].any()
    assert not part_mask(square_points(50, 50, 40)[:2], 200, 200, threshold=0.3, margin=0.2).any()


def test_pack_unpack_round_trip_on_an_odd_width():
    masks = (np.random.default_rng(0).random((2, 3, 5, 37)) > 0.5).astype(np.uint8)
    packed = pack_masks(masks)
    assert packed.shape == (2, 3, 5, 5) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_masks(packed, 37), masks)


def test_face_mask_covers_the_face_a_face_detector_finds():
    rgb = first_frame("moore_talkinghead_3.mp4", height=256)
    model = ASSETS / "models" / "face_detection_yunet_2026may.onnx"
    if not model.exists():
        pytest.skip(f"{model} absent")
    detector = cv2.FaceDetectorYN.create(str(model), "", (rgb.shape[1], rgb.shape[0]))
    _, faces = detector.detect(np.ascontiguousarray(rgb[:, :, ::-1]))
    x, y, w, h = faces[0, :4].astype(int)
    kpts = holistic_kpts(rgb)
    result = Masks(DEFAULTS["masks"])(clip_of(rgb[None], kpts[None]))
    masks = unpack_masks(result.fields["masks"], rgb.shape[1])
    assert masks.shape == (1, 3) + rgb.shape[:2] and result.qa["mask_face_rate"] == 1.0
    face = masks[0, 0].astype(bool)
    inside_box = face[y:y + h, x:x + w].mean()
    assert inside_box > 0.85, inside_box  # YuNet's box runs from brows to chin, inside the face outline
    assert face.sum() < 2.5 * w * h  # and the mask stays a face, not the frame
    assert result.qa["mask_lhand_rate"] == 0.0 and not masks[0, 1:].any()  # no hands in this shot


def test_hand_masks_hold_their_own_hand_only(dancer):
    rgb, kpts = dancer
    result = Masks({**DEFAULTS["masks"], "hand_margin": 0.2})(clip_of(rgb[None], kpts[None]))
    masks = unpack_masks(result.fields["masks"], rgb.shape[1])[0]
    for channel, own, other in ((1, LEFT_HAND, RIGHT_HAND), (2, RIGHT_HAND, LEFT_HAND)):
        x, y = np.round(kpts[own, :2]).astype(int).T
        assert masks[channel, y, x].all()
        x, y = np.round(kpts[other, :2]).astype(int).T
        assert not masks[channel, y, x].any()
        span = np.ptp(kpts[own, :2], axis=0).max()
        assert masks[channel].sum() < (1.4 * span) ** 2  # sized by the hand, not a fixed box
    assert result.qa["mask_lhand_rate"] == result.qa["mask_rhand_rate"] == 1.0


# --- blur -------------------------------------------------------------------------------------------------

def test_sharpness_falls_strictly_as_a_real_hand_is_blurred(dancer):
    rgb, kpts = dancer
    for hand in (kpts[LEFT_HAND], kpts[RIGHT_HAND]):
        scores = [hand_sharpness(rgb, hand)]
        scores += [hand_sharpness(cv2.GaussianBlur(rgb, (k, k), 0), hand) for k in (3, 5, 7, 9, 13, 21)]
        assert all(a > b for a, b in zip(scores, scores[1:])), scores


def test_sharpness_does_not_depend_on_how_large_the_hand_is_filmed(dancer):
    rgb, kpts = dancer
    small = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
    large = cv2.resize(small, (small.shape[1] * 2, small.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
    for part in (LEFT_HAND, RIGHT_HAND):
        hand_large = kpts[part]
        hand_small = hand_large.copy()
        hand_small[:, :2] = (hand_small[:, :2] + 0.5) / 2 - 0.5  # pixel centres at half scale
        normalised = hand_sharpness(large, hand_large) / hand_sharpness(small, hand_small)
        raw = []
        for image, hand in ((small, hand_small), (large, hand_large)):
            x0, y0, x1, y1, _ = hand_crop_box(hand, 0.3, 0.2, *image.shape[:2])
            gray = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
            raw.append(cv2.Laplacian(gray.astype(np.float32), cv2.CV_32F, ksize=1).var())
        assert raw[0] / raw[1] > 5  # the same content twice as large: far lower raw variance
        assert 1 / 1.35 < normalised < 1.35, normalised  # measured 1.16-1.19


def test_motion_of_a_known_shift_is_exact_and_missing_hands_are_nan(dancer):
    rgb, real = dancer
    num_frames, shift = 5, np.array([3.5, -2.0])
    kpts = np.zeros((num_frames, NUM_KEYPOINTS, 3), dtype=np.float32)
    base = np.round(real[LEFT_HAND, :2] * 4) / 4  # quarter pixels: every shifted coordinate is exact in float32
    for t in range(num_frames):
        kpts[t, LEFT_HAND, :2] = base + t * shift
        kpts[t, LEFT_HAND, 2] = 1.0
    kpts[:, LEFT_HAND.start + 20, 2] = [1.0, 0.1, 1.0, 1.0, 1.0]  # one point unsure in frame 1: left out there
    kpts[1, LEFT_HAND.start + 20, :2] += 50
    kpts[3, LEFT_HAND, 2] = 0.0  # the hand lost in frame 3
    result = HandBlur(DEFAULTS["blur"])(clip_of(np.repeat(rgb[None], num_frames, axis=0), kpts))
    motion, valid, sharpness = (result.fields[k] for k in ("hand_motion", "hand_valid", "hand_sharpness"))
    assert motion.shape == (num_frames, 2, 2) and motion.dtype == np.float32
    np.testing.assert_array_equal(valid[:, 0], [True, True, True, False, True])
    for t in (0, 1, 2, 4):  # frame 0 and frame 4 (after the gap) use the step to the next/previous frame seen
        if t == 4:
            assert np.isnan(motion[t, 0]).all()  # seen alone: no neighbour to measure against
        else:
            np.testing.assert_array_equal(motion[t, 0], shift)
    assert np.isnan(motion[3, 0]).all() and np.isnan(sharpness[3, 0])
    assert not valid[:, 1].any() and np.isnan(motion[:, 1]).all() and np.isnan(sharpness[:, 1]).all()
    assert np.isfinite(sharpness[valid[:, 0], 0]).all()
    assert result.qa["blur_rhand_rate"] == 0.0 and result.qa["blur_lhand_rate"] == 0.8


def test_hand_motion_steps_forward_only_at_the_start_of_a_track():
    track = np.zeros((4, 21, 3))
    track[:, :, 2] = 1.0
    track[:, :, 0] = np.array([0.0, 1.0, 3.0, 6.0])[:, None]  # speeding up: 1, 2, 3 px per frame
    np.testing.assert_array_equal(hand_motion(track)[:, 0], [1.0, 1.0, 2.0, 3.0])
