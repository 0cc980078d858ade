"""`humanim animate` with the trainer's tiny model (random weights: these tests check the plumbing, not the
pictures): a synthetic person as the reference image and another as the driving video, annotated offline by the
build's own stages (MediaPipe pose and face, Anny fits, Warp renders, articulated noise)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from humanim.pipeline import config as build_config
from humanim.pipeline.animate import AnimateInputError, DrivingMotion, animate
from humanim.schemas.fields import decode_mp4
from humanim.stages.decode import encode_h264, rgb_video_frames
from humanim.training import inference
from humanim.training.config import TrainConfig, from_dict
from humanim.training.inference import SamplerConfig, window_plan
from humanim.training.train import Trainer, load_checkpoint, save_checkpoint

REF_H, REF_W = 250, 190  # not whole latent cells: the output must still come back at exactly this size
DRIVE_FRAMES, DRIVE_SIDE, FPS = 14, 256, 12.0
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SAMPLER = dict(steps=3, window=4, overlap=2)  # 14 latent frames in windows of 4: several windows per step


def tiny_checkpoint(path, conditions, articulated_noise=True, resolution=None):
    config = from_dict(TrainConfig, {
        "output_dir": str(path.parent), "data": {"conditions": conditions, "frames": 9, "resolution": resolution},
        "objectives": {"articulated_noise": articulated_noise, "condition_dropout": 0.1},
        "model": {"denoiser": {"kind": "tiny", "hidden": 16, "depth": 1, "time_dim": 16},
                  "vae": {"kind": "tiny", "latent_channels": 4}}})
    return save_checkpoint(path, Trainer(config).state_dict())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from humanim.stages.body_models import load_body_model
    from humanim.synth.generator import synth_clip, write_synth

    root = tmp_path_factory.mktemp("animate")
    model = load_body_model("anny")
    reference = synth_clip(1, FPS, REF_H, REF_W, seed=11, model=model, threads=1).frames[0]
    cv2.imwrite(str(root / "reference.png"), cv2.cvtColor(reference, cv2.COLOR_RGB2BGR))
    driving = synth_clip(DRIVE_FRAMES, FPS, DRIVE_SIDE, DRIVE_SIDE, seed=5, model=model, threads=1)
    write_synth(root, "driving", [driving], seed=5)
    # The offline preset with the noise layout of the tiny VAE (4 channels, stride 8, one frame per latent).
    (root / "build.yaml").write_text(f"base: {CONFIGS / 'offline.yaml'}\nnoise:\n  preset: sd\n")
    checkpoint = tiny_checkpoint(root / "tiny.pt", ["pose", "hand_blur", "renders", "reference"])
    return root, checkpoint, build_config.load(root / "build.yaml")


@pytest.fixture(scope="module")
def animated(inputs):
    root, checkpoint, build = inputs
    result = animate(root / "reference.png", str(root / "driving.mp4"), checkpoint, root / "out.mp4", build,
                     SamplerConfig(**SAMPLER), device="cpu", side_by_side_path=root / "side.mp4",
                     save_motion=root / "motion.npz", progress=False, log=lambda message: None)
    return root, result


def test_the_video_has_the_driving_length_and_the_reference_size(animated):
    root, result = animated
    video = decode_mp4((root / "out.mp4").read_bytes())
    assert video.shape == (DRIVE_FRAMES, REF_H, REF_W, 3)
    summary = json.loads((root / "out.json").read_text())
    assert summary["frames"] == DRIVE_FRAMES and summary["size"] == [REF_H, REF_W]
    assert summary["working_size"] == [248, 192] and summary["latent_frames"] == DRIVE_FRAMES
    assert summary["articulated_noise"] and summary["weights"] == "ema"
    assert summary["stages"] == ["pose", "masks", "blur", "body", "render", "noise"]
    side = decode_mp4((root / "side.mp4").read_bytes())
    assert side.shape == (DRIVE_FRAMES, 248, 4 * 192, 3)


def test_the_same_seed_gives_the_same_frames_from_a_saved_motion(inputs, animated):
    root, first = animated
    _, checkpoint, build = inputs
    motion = DrivingMotion.load(root / "motion.npz")
    assert motion.kpts.shape == (DRIVE_FRAMES, 133, 3) and motion.fit is not None and motion.frames is None
    again = animate(root / "reference.png", str(root / "motion.npz"), checkpoint, root / "again.mp4", build,
                    SamplerConfig(**SAMPLER), device="cpu", progress=False, log=lambda message: None)
    np.testing.assert_array_equal(again["video"], first["video"])
    other = animate(root / "reference.png", str(root / "motion.npz"), checkpoint, root / "other.mp4", build,
                    SamplerConfig(**{**SAMPLER, "seed": 1}), device="cpu", progress=False, log=lambda message: None)
    assert np.abs(other["video"].astype(int) - first["video"].astype(int)).mean() > 1


def test_the_reference_is_animated_at_the_checkpoints_training_scale(inputs, animated, tmp_path):
    root, _, build = inputs
    checkpoint = tiny_checkpoint(tmp_path / "small.pt", ["pose", "reference"], articulated_noise=False,
                                 resolution=[64, 64])
    result = animate(root / "reference.png", str(root / "motion.npz"), checkpoint, tmp_path / "small.mp4", build,
                     SamplerConfig(**SAMPLER), device="cpu", progress=False, log=lambda message: None)
    assert result["working_size"] == [64, 48]  # 250 x 190 scaled to a longer side of 64, in whole latent cells
    assert result["annotated_size"] == [REF_H, REF_W]  # the stages saw the reference whole
    assert result["video"].shape == (DRIVE_FRAMES, REF_H, REF_W, 3)  # and back to the reference's size


@pytest.mark.parametrize("frames", [1, 3, 7, 14, 31])
@pytest.mark.parametrize("window,overlap", [(4, 0), (4, 2), (4, 3), (8, 2), (16, 4)])
def test_window_weights_sum_to_one_at_every_frame(frames, window, overlap):
    length = min(window, frames)
    stride = length - min(overlap, length - 1)
    for offset in range(stride):
        plan = window_plan(frames, window, overlap, offset)
        total = torch.zeros(frames, dtype=torch.float64)
        for start, weights in plan:
            assert len(weights) == length and 0 <= start <= frames - length
            assert (weights > 0).all()
            total[start:start + length] += weights.double()
        torch.testing.assert_close(total, torch.ones(frames, dtype=torch.float64), atol=1e-6, rtol=0)
        starts = [start for start, _ in plan]
        # Neighbours share at least `overlap` frames, exactly that away from the clamped ends.
        shared = [length - (b - a) for a, b in zip(starts, starts[1:])]
        assert all(s >= min(overlap, length - 1) for s in shared)
        assert all(s == overlap for s in shared[1:-1])


def test_the_grid_moves_with_the_offset():
    assert [s for s, _ in window_plan(20, 8, 2, 0)] != [s for s, _ in window_plan(20, 8, 2, 3)]


def test_window_conditions_take_the_pixel_frames_of_their_latents():
    temporal_stride = 4
    maps = torch.arange(2 * 4 * temporal_stride + 1, dtype=torch.float32).reshape(1, 1, -1, 1, 1)
    window = inference.condition_window({"pose": maps, "reference": torch.ones(1, 3, 2, 2)}, 2, 3, temporal_stride)
    assert window["pose"].flatten().tolist() == list(range(8, 17))  # (L - 1) k + 1 frames from a k
    assert window["reference"].shape == (1, 3, 2, 2)


@pytest.mark.parametrize("family,prediction", [("ddpm", "epsilon"), ("ddpm", "v"), ("edm", "edm"),
                                                ("flow", "flow")])
def test_every_schedule_samples_to_finite_latents_deterministically(tmp_path, family, prediction):
    config = from_dict(TrainConfig, {
        "output_dir": str(tmp_path), "data": {"conditions": ["pose"]},
        "schedule": {"family": family}, "objectives": {"prediction": prediction},
        "model": {"denoiser": {"kind": "tiny", "hidden": 16, "depth": 1, "time_dim": 16},
                  "vae": {"kind": "tiny", "latent_channels": 4}}})
    path = save_checkpoint(tmp_path / "model.pt", Trainer(config).state_dict())
    model = inference.load_model(path, "cpu")
    conditions = {"pose": torch.rand(1, 3, 6, 32, 32)}
    sampler = SamplerConfig(steps=3, window=4, overlap=1, seed=7)
    first = inference.sample(model, conditions, (1, 4, 6, 4, 4), sampler)
    second = inference.sample(model, conditions, (1, 4, 6, 4, 4), sampler)
    assert torch.isfinite(first).all()
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    levels = inference.noise_levels(config, sampler, torch.device("cpu"))
    assert len(levels) == 4 and float(levels[-1].noise) == 0 and float(levels[0].noise) > 0.99


def test_guidance_one_is_the_conditional_branch_alone(tmp_path):
    config = from_dict(TrainConfig, {
        "output_dir": str(tmp_path), "data": {"conditions": ["pose"]},
        "model": {"denoiser": {"kind": "tiny", "hidden": 16, "depth": 1, "time_dim": 16},
                  "vae": {"kind": "tiny", "latent_channels": 4}}})
    model = inference.load_model(save_checkpoint(tmp_path / "m.pt", Trainer(config).state_dict()), "cpu")
    x = torch.randn(1, 4, 2, 4, 4)
    state = inference.noise_levels(config, SamplerConfig(steps=2), torch.device("cpu"))[0]
    conditions = {"pose": torch.rand(1, 3, 2, 32, 32)}
    unguided = inference.guided_prediction(model, x, state, conditions, 1.0)
    with torch.no_grad():
        torch.testing.assert_close(unguided, model.denoiser(x, state.model_time, conditions))
        unconditional = model.denoiser(x, state.model_time, {"pose": torch.zeros_like(conditions["pose"])})
    guided = inference.guided_prediction(model, x, state, conditions, 3.0)
    torch.testing.assert_close(guided, unconditional + 3.0 * (unguided - unconditional), atol=1e-5, rtol=1e-5)


def test_initial_reference_noise_is_the_reference_latent_diffused_to_the_first_level(inputs):
    _, checkpoint, _ = inputs
    model = inference.load_model(checkpoint, "cpu")
    first = inference.noise_levels(model.config, SamplerConfig(steps=4), torch.device("cpu"))[0]
    noise = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    reference = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        latent = model.vae.encode(reference[:, :, None])
        plain = inference.initial_latents(model, noise, first, None)
        diffused = inference.initial_latents(model, noise, first, reference)
    torch.testing.assert_close(plain, first.noise * noise)
    torch.testing.assert_close(diffused, first.signal * latent.expand_as(noise) + first.noise * noise)
    assert 0 < float(first.signal) < 0.1  # DDPM's last training timestep keeps a sliver of signal
    with pytest.raises(ValueError, match="reference_noise needs the reference image"):
        inference.sample(model, {}, (1, 4, 3, 4, 4), SamplerConfig(steps=1, reference_noise=True))


def test_load_model_takes_the_ema_weights(inputs, tmp_path):
    _, checkpoint, _ = inputs
    state = load_checkpoint(checkpoint)
    state["ema"] = {name: value + 1 if name.startswith("module.") and value.is_floating_point() else value
                    for name, value in state["ema"].items()}
    loaded = inference.load_model(save_checkpoint(tmp_path / "ema.pt", state), "cpu")
    assert loaded.weights == "ema"
    for name, value in loaded.denoiser.state_dict().items():
        torch.testing.assert_close(value, state["ema"][f"module.{name}"])
        assert not torch.equal(value, state["model"][name]) or not value.is_floating_point()


def test_annotations_move_to_the_working_size_with_the_pixels():
    from humanim.pipeline.animate import to_working_size
    from humanim.stages.fit import BodyFit

    # The centre of pixel 0 of a 100 px row lies at 0 and its far edge at 99.5; halved, at 49.75 of 50 px.
    kpts = np.array([[0.0, 0.0, 0.9], [99.5, 49.5, 0.8]], np.float32)
    fit = BodyFit("anny", np.zeros(4, np.float32), np.zeros((1, 2, 3), np.float32), np.zeros((1, 3), np.float32),
                  np.array([[0, 0, 3]], np.float32), np.array([120.0, 120.0, 49.5, 24.5], np.float32),
                  "frame_size", np.zeros(1, np.float32), 0)
    moved, moved_fit = to_working_size(kpts, fit, (50, 100), (25, 50))
    np.testing.assert_allclose(moved, [[-0.25, -0.25, 0.9], [49.5, 24.5, 0.8]])
    np.testing.assert_allclose(moved_fit.camera, [60.0, 60.0, 24.5, 12.0])


def test_the_driving_video_is_resampled_cut_and_scaled_as_asked(inputs):
    from humanim.pipeline.animate import StageSet, driving_frames

    root, _, build = inputs
    clip, rate = driving_frames(root / "driving.mp4", fps=FPS / 2, max_frames=None, max_side=128,
                                stages=StageSet(build, 0))
    assert rate == FPS / 2 and clip.spec.source_frame_indices == tuple(range(0, DRIVE_FRAMES, 2))
    assert clip.frames.shape == (DRIVE_FRAMES // 2, 128, 128, 3)
    clip, rate = driving_frames(root / "driving.mp4", fps=None, max_frames=5, max_side=512, stages=StageSet(build, 0))
    assert rate == FPS and clip.frames.shape == (5, DRIVE_SIDE, DRIVE_SIDE, 3)


def test_the_aligned_motion_renders_in_chunks_as_in_one_piece(inputs, monkeypatch):
    from test_shape_align import as_fit

    from humanim.pipeline import animate as animate_module
    from humanim.stages.body_models import load_body_model
    from humanim.synth.motion import random_motion

    _, _, build = inputs
    motion, camera = random_motion(load_body_model("anny"), 7, FPS, seed=4, height=64, width=48)
    fit = as_fit(motion, camera)
    stages = animate_module.StageSet(build, 0)
    whole = animate_module.single_clip("whole", "x", np.zeros((7, 64, 48, 3), np.uint8), FPS)
    whole.fields["body"] = fit.to_npz_bytes()
    stages.run(whole, ["render"], "test")
    monkeypatch.setattr(animate_module, "RENDER_CHUNK", 3)
    chunked = animate_module.render_in_chunks(whole, fit, stages)
    assert whole.fields["depth"].any()
    for name in ("depth", "normal", "part"):
        np.testing.assert_array_equal(chunked[name], whole.fields[name])


def test_without_alignment_the_driving_motion_is_drawn_as_it_is(inputs, animated):
    from humanim.pipeline.animate import prepare, to_working_size

    root, _ = animated
    _, checkpoint, build = inputs
    prepared = prepare(root / "reference.png", str(root / "motion.npz"), inference.checkpoint_config(checkpoint),
                       build, (8, 1, 4), align=False)
    motion = DrivingMotion.load(root / "motion.npz")
    expected = to_working_size(motion.kpts, None, (DRIVE_SIDE, DRIVE_SIDE), (248, 192))[0]
    np.testing.assert_allclose(prepared.kpts, expected)
    # The driving fit, drawn in the working size's camera, lies under the driving skeleton carried there.
    body = prepared.conditions["renders"][0] > 0  # nearness: > 0 on the body [T, H, W]
    kpts = prepared.kpts[:, :17]
    confident = kpts[..., 2] > 0.5
    x = np.clip(np.rint(kpts[..., 0]).astype(int), 0, 191)
    y = np.clip(np.rint(kpts[..., 1]).astype(int), 0, 247)
    frame = np.broadcast_to(np.arange(len(kpts))[:, None], confident.shape)
    assert body[frame[confident], y[confident], x[confident]].mean() > 0.8


def test_a_real_photo_performs_a_real_dance(inputs, tmp_path):
    """MimicMotion's reference photo (1080 x 1920) driven by the first frames of a real dance video: the output
    has the photo's size, and the aligned body's skeleton stands where the woman in the photo stands."""
    from conftest import asset

    from humanim.pipeline.animate import prepare

    photo, dance = asset("images/mimicmotion_demo1.jpg"), asset("videos/animatex_dance_1.mp4")
    root, checkpoint, build = inputs
    config = inference.checkpoint_config(checkpoint)
    prepared = prepare(photo, str(dance), config, build, (8, 1, 4), max_frames=6)
    assert prepared.reference.shape == (512, 288, 3) and prepared.annotated_size == (512, 288)
    aligned, reference_points = (kpts[:17][kpts[:17, 2] > 0.5, :2]  # confident body keypoints
                                 for kpts in (prepared.kpts[0], prepared.reference_kpts))
    # Same place and height as the reference body, in a pose of its own: within a tenth of the body's height.
    height = np.ptp(reference_points[:, 1])
    np.testing.assert_allclose(aligned.mean(0), reference_points.mean(0), atol=0.1 * height)
    assert abs(np.ptp(aligned[:, 1]) - height) < 0.15 * height
    result = animate(photo, str(dance), checkpoint, tmp_path / "dance.mp4", build, SamplerConfig(**SAMPLER),
                     device="cpu", max_frames=6, progress=False, log=lambda message: None)
    assert result["video"].shape == (6, 1920, 1080, 3)


# Bad inputs: a clear error before any model runs -------------------------------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to load or sample the checkpoint's models fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(inference, "load_model", refuse)
    monkeypatch.setattr(inference, "sample", refuse)


def run(inputs, tmp_path, reference=None, motion=None, checkpoint=None, build=None):
    root, default_checkpoint, default_build = inputs
    return animate(reference or root / "reference.png", motion or str(root / "driving.mp4"),
                   checkpoint or default_checkpoint, tmp_path / "out.mp4", build or default_build,
                   SamplerConfig(**SAMPLER), device="cpu", progress=False, log=lambda message: None)


def test_a_reference_without_a_person_is_refused(inputs, tmp_path, no_model):
    empty = np.full((REF_H, REF_W, 3), 128, np.uint8)
    cv2.imwrite(str(tmp_path / "empty.png"), empty)
    with pytest.raises(AnimateInputError, match="reference image .*no person"):
        run(inputs, tmp_path, reference=tmp_path / "empty.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(AnimateInputError, match="cannot read the reference image"):
        run(inputs, tmp_path, reference=tmp_path / "broken.png")


def test_a_driving_video_without_a_person_is_refused(inputs, tmp_path, no_model):
    ramp = np.linspace(60, 200, 128, dtype=np.uint8)
    room = np.repeat(np.stack([np.broadcast_to(ramp[:, None], (128, 128))] * 3, -1)[None], 8, 0)
    (tmp_path / "room.mp4").write_bytes(encode_h264(rgb_video_frames(room), FPS, 18, "veryfast", 1))
    with pytest.raises(AnimateInputError, match="driving video .*(no person|subject)"):
        run(inputs, tmp_path, motion=str(tmp_path / "room.mp4"))
    with pytest.raises(AnimateInputError, match="no such file"):
        run(inputs, tmp_path, motion=str(tmp_path / "missing.mp4"))


def test_conditions_the_build_config_cannot_make_are_refused(inputs, tmp_path, no_model, monkeypatch):
    root, _, build = inputs
    # The offline preset's face back-end has no recognition model: no identity embedding.
    identity = tiny_checkpoint(tmp_path / "identity.pt", ["pose", "identity"], articulated_noise=False)
    with pytest.raises(AnimateInputError, match="identity condition .*no recognition model"):
        run(inputs, tmp_path, checkpoint=identity)
    # Articulated noise for the tiny VAE's latents, but the offline preset's noise is Wan's.
    with pytest.raises(AnimateInputError, match="noise.preset 'wan'"):
        run(inputs, tmp_path, build=build_config.load(CONFIGS / "offline.yaml"))
    # The default preset's DWPose weights are not in an empty model store: the error says how to fetch them.
    store = tmp_path / "empty-store"
    store.mkdir()
    monkeypatch.setenv("HUMANIM_MODELS", str(store))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fetch = "(?s)pose stage, needed .* cannot run: .*humanim models fetch yolox_l.onnx"
    with pytest.raises(AnimateInputError, match=fetch):
        run(inputs, tmp_path, build=build_config.load(CONFIGS / "default.yaml", {"noise": {"preset": "sd"}}))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AnimateInputError, match="not a readable torch checkpoint"):
        run(inputs, tmp_path, checkpoint=tmp_path / "garbage.pt")
    # No --config, and the checkpoint's shards (none here) hold no build.json to take it from.
    with pytest.raises(AnimateInputError, match="no local build.json"):
        animate(root / "reference.png", str(root / "driving.mp4"), root / "tiny.pt", tmp_path / "out.mp4", None,
                SamplerConfig(**SAMPLER), device="cpu", progress=False, log=lambda message: None)
    state = load_checkpoint(root / "tiny.pt")
    state["config"]["data"]["conditions"] = ["pose", "optical_flow"]
    save_checkpoint(tmp_path / "future.pt", state)
    with pytest.raises(AnimateInputError, match="optical_flow"):
        run(inputs, tmp_path, checkpoint=tmp_path / "future.pt")


def test_a_motion_file_without_what_the_checkpoint_needs_is_refused(inputs, animated, tmp_path, no_model):
    root, _ = animated
    motion = DrivingMotion.load(root / "motion.npz")
    motion.fit = None
    motion.save(tmp_path / "pose-only.npz")
    with pytest.raises(AnimateInputError, match="lacks a body fit"):
        run(inputs, tmp_path, motion=str(tmp_path / "pose-only.npz"))
