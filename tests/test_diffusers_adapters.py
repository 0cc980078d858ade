"""The diffusers adapters (training.models) on tiny, randomly initialised diffusers models saved with
save_pretrained and loaded back through build_vae / build_denoiser from a local path, as a config names them:
latent shapes, the trainer's denoising loss going down over a few steps, and clear errors."""
from __future__ import annotations

import diffusers  # in the dev extra: `make test` installs it
import pytest
import torch

from humanim.training import config as training_config
from humanim.training.models import DiffusersDenoiser, DiffusersVAE, build_denoiser, build_vae
from humanim.training.train import Trainer

FRAMES, SIZE, LATENT_CHANNELS, STRIDE = 4, 32, 4, 4  # latents [B, 4, 4, 8, 8]
CONDITIONS = ["pose"]  # 3 channels, concatenated to the latents by the adapter: in_channels 4 + 3


def save(model: torch.nn.Module, folder) -> str:
    model.save_pretrained(folder)
    return str(folder)


def tiny_image_vae(folder) -> str:
    torch.manual_seed(0)
    return save(diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, block_out_channels=(8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=4, sample_size=SIZE, scaling_factor=0.5), folder)


def tiny_temporal_decoder_vae(folder) -> str:
    torch.manual_seed(0)
    return save(diffusers.AutoencoderKLTemporalDecoder(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, block_out_channels=(32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3, layers_per_block=1, sample_size=SIZE), folder)


def tiny_unet3d(folder) -> str:
    torch.manual_seed(0)
    return save(diffusers.UNet3DConditionModel(
        sample_size=SIZE // STRIDE, in_channels=LATENT_CHANNELS + 3, out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=8,
        attention_head_dim=4), folder)


def tiny_svd_unet(folder) -> str:
    torch.manual_seed(0)
    return save(diffusers.UNetSpatioTemporalConditionModel(
        sample_size=SIZE // STRIDE, in_channels=LATENT_CHANNELS + 3, out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=16, num_attention_heads=(2, 4),
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=24), folder)


def synthetic_batches(batch_size: int = 2, seed: int = 0):
    """The loader's batch layout: uint8 frames [B, 3, T, H, W] and a pose map [B, 3, T, H, W] in [0, 1]: the
    same smooth clip every time, so a few steps can fit it."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(batch_size, 3, FRAMES, 4, 4, generator=generator),
                                           size=(FRAMES, SIZE, SIZE), mode="trilinear")
    batch = {"frames": (base * 255).to(torch.uint8), "conditions": {"pose": base.clone()},
             "key": [f"clip{i}" for i in range(batch_size)]}
    while True:
        yield batch


def train_config(tmp_path, vae: dict, denoiser: dict):
    return training_config.from_dict(training_config.TrainConfig, {
        "output_dir": str(tmp_path / "run"), "seed": 0, "max_steps": 10, "progress": False,
        "data": {"shards": [], "resolution": [SIZE, SIZE], "conditions": CONDITIONS, "batch_size": 2},
        "model": {"vae": vae, "denoiser": denoiser},
        "optim": {"lr": 2e-3, "ema_decay": None},
    })


def test_an_image_vae_gives_latents_per_frame_and_decodes_back(tmp_path):
    path = tiny_image_vae(tmp_path / "vae")
    vae = build_vae({"kind": "diffusers", "class": "AutoencoderKL", "path": path})
    assert isinstance(vae, DiffusersVAE)
    assert (vae.latent_channels, vae.spatial_stride, vae.temporal_stride, vae.scaling_factor) == (4, 4, 1, 0.5)
    frames = torch.rand(2, 3, FRAMES, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(frames)
        assert latents.shape == (2, LATENT_CHANNELS, FRAMES, SIZE // STRIDE, SIZE // STRIDE)
        # Frame by frame: frame 1 of the clip alone gives latent frame 1 (up to the posterior's sampling noise).
        mean = vae.vae.encode(frames[:, :, 1]).latent_dist.mean * 0.5
        assert torch.allclose(latents[:, :, 1], mean, atol=0.5 * 3 * vae.vae.encode(frames[:, :, 1]).latent_dist.std.max())
        assert vae.decode(latents).shape == frames.shape


def test_svds_temporal_decoder_vae_decodes_whole_clips(tmp_path):
    path = tiny_temporal_decoder_vae(tmp_path / "vae")
    vae = build_vae({"kind": "diffusers", "class": "AutoencoderKLTemporalDecoder", "path": path})
    frames = torch.rand(1, 3, FRAMES, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(frames)
        assert latents.shape == (1, LATENT_CHANNELS, FRAMES, SIZE // STRIDE, SIZE // STRIDE)
        assert vae.decode(latents).shape == frames.shape  # decode(z, num_frames) is called with the clip's length


@pytest.mark.parametrize("make, spec", [
    (tiny_unet3d, {"class": "UNet3DConditionModel", "layout": "BCTHW",
                   "inputs": {"encoder_hidden_states": {"zeros": [1, 8]}}}),
    (tiny_svd_unet, {"class": "UNetSpatioTemporalConditionModel", "layout": "BTCHW",
                     "inputs": {"encoder_hidden_states": {"zeros": [1, 16]}, "added_time_ids": [6, 127, 0.02]}}),
], ids=["unet3d", "svd"])
def test_a_video_unet_predicts_at_the_latent_shape(tmp_path, make, spec):
    path = make(tmp_path / "unet")
    vae = build_vae({"kind": "diffusers", "class": "AutoencoderKL", "path": tiny_image_vae(tmp_path / "vae")})
    denoiser = build_denoiser({"kind": "diffusers", "path": path, **spec}, vae, CONDITIONS, motion_channels=0)
    assert isinstance(denoiser, DiffusersDenoiser)
    latents = torch.randn(2, LATENT_CHANNELS, FRAMES, SIZE // STRIDE, SIZE // STRIDE)
    pose = torch.rand(2, 3, FRAMES, SIZE, SIZE)
    with torch.no_grad():
        out = denoiser(latents, torch.tensor([10, 500]), {"pose": pose})
        assert out.shape == latents.shape
        # The pose map reaches the model (it is concatenated to the latents along channels).
        assert not torch.allclose(out, denoiser(latents, torch.tensor([10, 500]), {"pose": 1 - pose}))


def test_the_trainer_fits_a_clip_with_a_diffusers_vae_and_unet(tmp_path):
    config = train_config(
        tmp_path,
        vae={"kind": "diffusers", "class": "AutoencoderKL", "path": tiny_image_vae(tmp_path / "vae")},
        denoiser={"kind": "diffusers", "class": "UNet3DConditionModel", "path": tiny_unet3d(tmp_path / "unet"),
                  "layout": "BCTHW", "inputs": {"encoder_hidden_states": {"zeros": [1, 8]}}})
    trainer = Trainer(config)
    batches = synthetic_batches()
    probe = next(batches)
    before = trainer.evaluate(probe)
    for _ in range(12):
        trainer.train_step(batches)
    after = trainer.evaluate(probe)
    assert after["denoise"] < 0.7 * before["denoise"], (before, after)


def test_freezing_reaches_the_diffusers_model_and_checkpointing_is_refused_clearly_where_unsupported(tmp_path):
    vae = {"kind": "diffusers", "class": "AutoencoderKL", "path": tiny_image_vae(tmp_path / "vae")}
    denoiser = {"kind": "diffusers", "class": "UNet3DConditionModel", "path": tiny_unet3d(tmp_path / "unet"),
                "inputs": {"encoder_hidden_states": {"zeros": [1, 8]}}}
    config = train_config(tmp_path, vae, denoiser)
    config.optim.freeze = ["model.conv_in"]
    trainer = Trainer(config)
    assert trainer.frozen == ["model.conv_in.weight", "model.conv_in.bias"]
    # diffusers 0.42's UNet3DConditionModel has no gradient checkpointing; diffusers says so.
    config = train_config(tmp_path, vae, denoiser)
    config.model.gradient_checkpointing = True
    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        Trainer(config)


def test_missing_paths_classes_and_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.vae.path: no diffusers model at .*nowhere"):
        build_vae({"kind": "diffusers", "class": "AutoencoderKL", "path": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match="needs 'path'"):
        build_vae({"kind": "diffusers", "class": "AutoencoderKL"})
    with pytest.raises(ValueError, match="no class 'AutoencoderKLNope'"):
        build_vae({"kind": "diffusers", "class": "AutoencoderKLNope", "path": str(tmp_path)})
    vae = build_vae({"kind": "diffusers", "class": "AutoencoderKL", "path": tiny_image_vae(tmp_path / "vae")})
    path = tiny_unet3d(tmp_path / "unet")
    with pytest.raises(FileNotFoundError, match="model.denoiser.path"):
        build_denoiser({"kind": "diffusers", "class": "UNet3DConditionModel", "path": path, "subfolder": "unet"},
                       vae, CONDITIONS, 0)
    # UNet3DConditionModel.forward requires encoder_hidden_states, which no loader condition gives.
    with pytest.raises(ValueError, match=r"needs \['encoder_hidden_states'\].*model.denoiser.inputs"):
        build_denoiser({"kind": "diffusers", "class": "UNet3DConditionModel", "path": path}, vae, CONDITIONS, 0)
    with pytest.raises(ValueError, match="motion objective"):
        build_denoiser({"kind": "diffusers", "class": "UNet3DConditionModel", "path": path,
                        "inputs": {"encoder_hidden_states": {"zeros": [1, 8]}}}, vae, CONDITIONS, 2)
