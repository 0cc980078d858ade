"""Body fitting on keypoints of known bodies: real Anny moved by synth.motion, and the SMPL code path on a tiny
model file in the real SMPL format (the real files cannot be shipped). Hard inputs (frames without keypoints,
a person seen from behind, a lower body out of view) must end as a recorded outcome, never a crash."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch

from humanim.stages.base import Clip, ClipRejected, ClipSpec
from humanim.stages.body import Body, annotate_fit, one_torch_thread, posed_vertices
from humanim.stages.body_models import axis_angle_to_matrix, load_body_model
from humanim.stages.fit import BodyFit, FitFailed, FitSettings, fit_clip, frame_size_camera
from humanim.schemas.keypoints import BODY
from humanim.stages.render import PinholeCamera
from humanim.synth.motion import random_motion, project
from test_body_models import write_tiny_smplx_format_model

FRAMES, HEIGHT, WIDTH = 16, 512, 512
INIT_ONLY = FitSettings(iterations=0, gauss_newton_steps=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """As the body stage runs fits: torch's thread per core only adds contention for tensors this small."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def anny():
    return load_body_model("anny")


def observe(model, motion, camera, seed: int, noise_px: float = 2.0, drop: float = 0.1) -> np.ndarray:
    """[T, 133, 3] keypoints of a known body as a pose detector would give them: noisy, some missing."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        points = model.keypoints_only(motion.shape, motion.pose, motion.global_orient, motion.transl).numpy()
    xy = np.nan_to_num(project(points, camera)) + rng.normal(0, noise_px, points.shape[:2] + (2,))
    score = np.where(model.keypoint_mask[None], rng.uniform(0.5, 1.0, points.shape[:2]), 0.0)
    score[rng.uniform(size=score.shape) < drop] = 0.0
    return np.concatenate([xy, score[..., None]], -1).astype(np.float32)


def clean_body_error(model, fit: BodyFit, motion, camera) -> np.ndarray:
    """[T, 17] pixel distance between the fit's and the true body keypoints (not the noisy observations)."""
    as_tensor = lambda a: torch.as_tensor(a)  # noqa: E731
    with torch.no_grad():
        fitted = model.keypoints_only(as_tensor(fit.shape)[None], as_tensor(fit.pose), as_tensor(fit.global_orient),
                                      as_tensor(fit.transl)).numpy()
        true = model.keypoints_only(motion.shape, motion.pose, motion.global_orient, motion.transl).numpy()
    return np.linalg.norm(project(fitted[:, :17], camera) - project(true[:, :17], camera), axis=-1)


@pytest.fixture(scope="module")
def synthetic(anny):
    motion, camera = random_motion(anny, FRAMES, 25.0, seed=11, height=HEIGHT, width=WIDTH)
    return motion, camera, observe(anny, motion, camera, seed=1)


@pytest.fixture(scope="module")
def fitted(anny, synthetic):
    return fit_clip(synthetic[2], HEIGHT, WIDTH, anny)


def test_fit_recovers_a_known_body_from_noisy_keypoints(anny, synthetic, fitted):
    motion, camera, keypoints = synthetic
    error = clean_body_error(anny, fitted, motion, camera)
    start = clean_body_error(anny, fit_clip(keypoints, HEIGHT, WIDTH, anny, INIT_ONLY), motion, camera)
    # 2 px of noise on a body about 300 px tall: a working fit lands within a few pixels of the truth, and
    # far closer than where the torso placed it.
    assert np.median(error) < 5.0, np.median(error)
    assert np.median(start) > 5 * np.median(error)
    assert fitted.model == "anny" and fitted.focal_source == "frame_size"
    assert fitted.pose.shape == motion.pose.shape and fitted.shape.shape == (len(anny.shape_names),)
    np.testing.assert_allclose(fitted.camera, [*[frame_size_camera(HEIGHT, WIDTH).fx] * 2, 255.5, 255.5], rtol=1e-6)
    assert np.isfinite(fitted.error_px).all() and fitted.error_px.max() < 8.0
    # The fitted depth is the true one up to the body's size, which 2D keypoints cannot tell apart from it.
    depth_ratio = fitted.transl[:, 2] / motion.transl[:, 2].numpy()
    assert 0.8 < np.median(depth_ratio) < 1.25


def test_given_or_estimated_focal_is_recorded(anny, synthetic):
    keypoints = synthetic[2][:4]
    fit = fit_clip(keypoints, HEIGHT, WIDTH, anny, FitSettings(iterations=4, gauss_newton_steps=1, focal=900.0))
    assert fit.focal_source == "given" and fit.camera[0] == fit.camera[1] == 900.0
    fit = fit_clip(keypoints, HEIGHT, WIDTH, anny, FitSettings(iterations=6, gauss_newton_steps=1, focal=900.0,
                                                               estimate_focal=True))
    assert fit.focal_source == "estimated" and fit.camera[0] == fit.camera[1] != 900.0
    assert 700.0 < fit.camera[0] < 1100.0  # a few small steps from where it started


def test_npz_bytes_round_trip_without_pickle_and_are_deterministic(fitted):
    data = fitted.to_npz_bytes()
    assert data == fitted.to_npz_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        assert str(archive["model"]) == "anny" and archive["pose"].dtype == np.float32
    again = BodyFit.from_npz_bytes(data)
    for name in BodyFit.ARRAYS:
        np.testing.assert_array_equal(getattr(again, name), getattr(fitted, name))
    assert (again.model, again.focal_source, again.iterations) == (fitted.model, fitted.focal_source,
                                                                  fitted.iterations)
    again.transl = again.transl + 1e-3
    assert again.to_npz_bytes() != data


def test_frames_without_keypoints_are_kept_interpolated_with_nan_error(anny, synthetic):
    keypoints = synthetic[2].copy()
    keypoints[5:9, :, 2] = 0.0  # four frames where the detector lost the person
    fit = fit_clip(keypoints, HEIGHT, WIDTH, anny, FitSettings(iterations=20, gauss_newton_steps=3))
    assert np.isnan(fit.error_px[5:9]).all() and np.isfinite(np.delete(fit.error_px, range(5, 9))).all()
    assert np.isfinite(fit.pose).all() and np.isfinite(fit.transl).all()
    # Carried through the gap: the root of a gap frame lies between its neighbours' (up to a few cm).
    for t in range(5, 9):
        low, high = np.minimum(fit.transl[4], fit.transl[9]), np.maximum(fit.transl[4], fit.transl[9])
        assert np.all(fit.transl[t] > low - 0.1) and np.all(fit.transl[t] < high + 0.1)


def test_no_usable_frame_is_a_readable_failure(anny, synthetic):
    keypoints = synthetic[2].copy()
    keypoints[..., 2] = 0.1
    with pytest.raises(FitFailed, match="no frame has"):
        fit_clip(keypoints, HEIGHT, WIDTH, anny)


def test_a_person_seen_from_behind_is_fitted_facing_away(anny):
    motion, camera = random_motion(anny, 8, 25.0, seed=5, height=HEIGHT, width=WIDTH)
    # Turn the body half round about its own vertical axis: its back now faces the camera.
    half_turn = axis_angle_to_matrix(torch.tensor([0.0, np.pi, 0.0]))
    rotation = axis_angle_to_matrix(motion.global_orient) @ half_turn
    from scipy.spatial.transform import Rotation

    motion.global_orient = torch.as_tensor(Rotation.from_matrix(rotation.numpy()).as_rotvec(), dtype=torch.float32)
    keypoints = observe(anny, motion, camera, seed=2)
    fit = fit_clip(keypoints, HEIGHT, WIDTH, anny, FitSettings(iterations=20, gauss_newton_steps=4))
    facing_z = axis_angle_to_matrix(torch.as_tensor(fit.global_orient))[:, 2, 2]  # forward axis along camera z
    assert (facing_z > 0.3).all()  # away from the camera, as the truth
    assert np.nanmedian(fit.error_px) < 8.0


def test_a_person_without_lower_body_still_ends_as_a_fit(anny, synthetic):
    keypoints = synthetic[2][:6].copy()
    keypoints[:, 11:23, 2] = 0.0  # hips, knees, ankles and feet out of the frame
    fit = fit_clip(keypoints, HEIGHT, WIDTH, anny, FitSettings(iterations=10, gauss_newton_steps=3))
    assert np.isfinite(fit.error_px).all() and np.isfinite(fit.pose).all()
    assert np.median(fit.error_px) < 10.0


def test_a_head_and_shoulders_close_up_is_fitted_at_its_scale(anny):
    # A talking-head framing: the camera zoomed 4x on the shoulders of a known moving body, so only the head and
    # shoulders are in the frame. The fit must place a whole person of the right size behind them, not a small
    # person as tall as the visible part (which put the robustness scale and the start off by 4x: 28 px).
    motion, camera = random_motion(anny, FRAMES, 25.0, seed=11, height=HEIGHT, width=WIDTH)
    with torch.no_grad():
        truth = anny.keypoints_only(motion.shape, motion.pose, motion.global_orient, motion.transl).numpy()
    focal = 4 * camera.fx
    shoulders = truth[0, [0, 5, 6]].mean(0)
    close_up = PinholeCamera(focal, focal, 255.5 - focal * shoulders[0] / shoulders[2],
                             400.0 - focal * shoulders[1] / shoulders[2])
    keypoints = observe(anny, motion, close_up, seed=1)
    in_frame = ((keypoints[..., :2] >= 0) & (keypoints[..., :2] < HEIGHT)).all(-1)
    keypoints[~in_frame, 2] = 0.0
    assert 5 <= (keypoints[:, BODY, 2] > 0).sum(1).max() <= 7  # nose, eyes, ears, shoulders at most
    fit = fit_clip(keypoints, HEIGHT, WIDTH, anny, FitSettings(focal=focal))
    with torch.no_grad():
        fitted = anny.keypoints_only(torch.as_tensor(fit.shape)[None], torch.as_tensor(fit.pose),
                                     torch.as_tensor(fit.global_orient), torch.as_tensor(fit.transl)).numpy()
    error = np.linalg.norm(project(fitted[:, BODY], PinholeCamera(*fit.camera)) - project(truth[:, BODY], close_up),
                           axis=-1)
    assert np.median(error[in_frame[:, BODY]]) < 8.0  # the head is about 250 px wide here
    assert np.nanmean(fit.error_px) < 8.0
    # Nor may the fit shake more than the detections it is fitted to (their 2 px noise): Adam's first steps move
    # every joint by its learning rate, which at this scale is pixels, frame by frame (1.67x the detections' own
    # frame-to-frame acceleration before the rate followed the subject's size; 1.11x after).
    always_seen = in_frame[:, BODY].all(0)

    def acceleration(points):
        return np.linalg.norm(points[2:] - 2 * points[1:-1] + points[:-2], axis=-1)[:, always_seen].mean()

    fitted_2d = project(fitted[:, BODY], PinholeCamera(*fit.camera))
    assert acceleration(fitted_2d) < 1.3 * acceleration(keypoints[:, BODY, :2])


def test_smpl_code_path_on_a_tiny_smpl_format_model(tmp_path):
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    write_tiny_smplx_format_model(path, "smpl")
    with pytest.warns(UserWarning, match="vertices"):
        model = load_body_model("smpl", path)
    frames = 4
    rng = np.random.default_rng(3)
    pose = torch.as_tensor(rng.normal(0, 0.15, (frames, 23, 3)), dtype=torch.float32)
    orient = torch.tensor([[np.pi, 0.0, 0.0]]).repeat(frames, 1)
    transl = torch.tensor([[0.0, 0.0, 3.0]]).repeat(frames, 1)
    shape = torch.zeros(1, 10)
    camera = frame_size_camera(256, 256)
    with torch.no_grad():
        points = model.keypoints_only(shape, pose, orient, transl).numpy()
    keypoints = np.concatenate([np.nan_to_num(project(points, camera)),
                                np.where(model.keypoint_mask, 1.0, 0.0)[None, :, None].repeat(frames, 0)], -1)
    keypoints = keypoints.astype(np.float32)
    start = fit_clip(keypoints, 256, 256, model, INIT_ONLY)
    fit = fit_clip(keypoints, 256, 256, model, FitSettings(iterations=20, gauss_newton_steps=4))
    assert fit.model == "smpl" and fit.pose.shape == (frames, 23, 3) and fit.shape.shape == (10,)
    assert np.isfinite(fit.error_px).all()
    assert np.nanmean(fit.error_px) < 0.3 * np.nanmean(start.error_px)
    assert posed_vertices(model, fit).shape == (frames, 2 * 24, 3)


# ---------------------------------------------------------------------------------------------------- the stage

BODY_CONFIG = {"model": "anny", "model_path": None, "iterations": 10, "score_threshold": 0.3, "focal": None,
               "max_error_px": 25.0, "bad_frame_px": 15.0, "on_bad_fit": "fail", "device": "cpu",
               "import_dir": None}


def body_clip(keypoints: np.ndarray) -> Clip:
    frames = len(keypoints)
    spec = ClipSpec(key="0123456789abcdef_00000", video_id="0123456789abcdef", clip_index=0, split="train",
                    source="", source_sha256="", source_frame_indices=tuple(range(frames)),
                    source_frame_pts=tuple(range(frames)), source_frame_times=(), frame_times=(), fps=25.0)
    return Clip(spec=spec, frames=np.zeros((frames, HEIGHT, WIDTH, 3), np.uint8), fields={"kpts": keypoints})


@pytest.fixture(scope="module")
def stage():
    return Body(dict(BODY_CONFIG))


def test_stage_stores_the_fit_with_its_qa(stage, synthetic, anny):
    result = stage(body_clip(synthetic[2][:6]))
    fit = BodyFit.from_npz_bytes(result.fields["body"])
    assert fit.model == "anny" and len(fit.pose) == 6
    assert result.meta["flagged"] is False and result.meta["focal_source"] == "frame_size"
    assert result.qa["fit_error_px"] == pytest.approx(float(np.mean(fit.error_px)))
    assert 0.0 <= result.qa["fit_bad_frame_share"] <= 1.0
    vertices = posed_vertices(anny, fit)
    assert vertices.shape == (6, len(np.unique(anny.faces)), 3) and (vertices[..., 2] > 0).all()


def test_stage_bad_fit_fails_or_flags_as_configured(fitted):
    bad = BodyFit(**{**fitted.__dict__, "error_px": np.full(len(fitted.error_px), 40.0, np.float32)})
    with pytest.raises(ClipRejected, match="above max_error_px 25"):
        annotate_fit(bad, max_error_px=25.0, bad_frame_px=15.0, on_bad_fit="fail")
    result = annotate_fit(bad, max_error_px=25.0, bad_frame_px=15.0, on_bad_fit="flag")
    assert result.meta["flagged"] is True and "max_error_px" in result.meta["flags"][0]
    assert result.qa["fit_bad_frame_share"] == 1.0 and "body" in result.fields
    unmeasured = BodyFit(**{**fitted.__dict__, "error_px": np.full(len(fitted.error_px), np.nan, np.float32)})
    with pytest.raises(ClipRejected, match="no frame with confident keypoints"):
        annotate_fit(unmeasured, max_error_px=25.0, bad_frame_px=15.0, on_bad_fit="fail")
    good = annotate_fit(fitted, max_error_px=25.0, bad_frame_px=15.0, on_bad_fit="fail")
    assert good.meta["flagged"] is False and good.meta["flags"] == []


def test_stage_rejects_a_clip_without_a_usable_frame(stage, synthetic):
    keypoints = synthetic[2][:3].copy()
    keypoints[..., 2] = 0.0
    with pytest.raises(ClipRejected, match="body fit impossible"):
        stage(body_clip(keypoints))


def test_stage_config_errors_are_clear():
    with pytest.raises(ValueError, match="on_bad_fit"):
        Body.check_environment({**BODY_CONFIG, "on_bad_fit": "ignore"})
    with pytest.raises(FileNotFoundError, match="smpl.is.tue.mpg.de"):
        Body.check_environment({**BODY_CONFIG, "model": "smpl", "model_path": "/nonexistent/SMPL_NEUTRAL.pkl"})
    assert Body.model_names(BODY_CONFIG) == []
