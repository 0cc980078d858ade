"""Sampling a trained checkpoint: conditions in, latents out, with animation classifier-free guidance and
sliding windows for videos longer than the model's clip.

What this module does, on tensors only (humanim/pipeline/animate.py runs the stages that make the conditions):
- loads the denoiser and the VAE a checkpoint was trained with (its EMA weights where it kept them);
- samples with the checkpoint's schedule family, first-order and deterministic: DDIM (eta 0) on the DDPM
  schedule (shifted SNR included), Euler on EDM's Karras sigmas, Euler on rectified flow. Each step takes the
  one-step x0 and the noise it implies and re-noises them to the next level, which is exactly those three;
- animation CFG (HIA, eq. 4): out = uncond + scale (cond - uncond), where the unconditional branch has every
  condition zeroed, the reference and the motion together, as `objectives.condition_dropout` trained it;
- initial noise: Gaussian, or the articulated noise of the driving motion mixed with fresh noise as in
  training; optionally the reference latent diffused to the first noise level ("initial reference noise");
- long videos: the latent frames are cut into windows of the model's clip length that overlap; each window's
  prediction is blended in with weights that ramp across the overlap and sum to one at every frame. The window
  grid moves by a random offset at every step (as in prompt traveling and FreeNoise-style sampling), so no seam
  stays in one place for the whole trajectory.

Latent frame j >= 1 of a causal video VAE with temporal stride k covers pixel frames (j - 1) k + 1 .. j k, and
frame 0 covers pixel frame 0 alone. A window of latent frames [a, a + L) is given the pixel-frame conditions
a k .. (a + L - 1) k: (L - 1) k + 1 frames, the length of a training clip of L latent frames.
"""
from __future__ import annotations

import math
import pickle
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from humanim.training import objectives as obj
from humanim.training import schedules as sch
from humanim.training.config import TrainConfig, from_dict
from humanim.training.models import build_denoiser, build_vae
from humanim.training.train import MOTION_CHANNELS, default_device, drop_conditions, load_checkpoint

@dataclass
class SamplerConfig:
    steps: int = 25
    guidance: float = 3.5  # animation CFG scale; 1 runs the conditional branch only
    window: int | None = None  # latent frames per window; None: the checkpoint's clip length (data.frames)
    overlap: int | None = None  # latent frames shared by neighbouring windows; None: a quarter of the window
    random_offset: bool = True  # move the window grid by a random offset at every step
    reference_noise: bool = False  # start from the reference latent diffused to the first noise level
    noise_gamma: float | None = None  # articulated noise: share of fresh noise; None: the checkpoint's
    sigma_min: float = 0.002  # edm family only
    sigma_max: float = 80.0
    seed: int = 0

    def check(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.guidance < 1:
            raise ValueError(f"guidance must be >= 1 (1 is no guidance), got {self.guidance}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 latent frame, got {self.window}")
        if self.overlap is not None and self.overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {self.overlap}")
        if self.noise_gamma is not None and not 0 <= self.noise_gamma <= 1:
            raise ValueError(f"noise_gamma must lie in [0, 1], got {self.noise_gamma}")


# Checkpoints ---------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    config: TrainConfig
    denoiser: torch.nn.Module
    vae: torch.nn.Module
    device: torch.device
    weights: str  # "ema" or "model"


def checkpoint_config(path: str | Path) -> TrainConfig:
    """The training config stored in a checkpoint (cheap checks run on it before any model is built)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (humanim train writes them under OUTPUT/checkpoints)")
    try:
        # mmap: the weights stay on disk, so reading the config of a many-GB checkpoint costs next to nothing
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise ValueError(f"{path} is not a readable torch checkpoint: {error}") from error
    if "config" not in state or "model" not in state:
        raise ValueError(f"{path} is not a humanim training checkpoint (it lacks 'config' and 'model')")
    return from_dict(TrainConfig, state["config"], f"{path.name}: config")


def load_model(path: str | Path, device: str = "auto", vae: torch.nn.Module | None = None) -> LoadedModel:
    """Denoiser and VAE of a checkpoint, in eval mode; the EMA weights where the checkpoint has them. `vae`: the
    checkpoint's VAE where the caller already built it (a diffusers VAE is not read from disk twice)."""
    state = load_checkpoint(Path(path))
    config = from_dict(TrainConfig, state["config"], f"{Path(path).name}: config")
    target = default_device(device)
    vae = (vae if vae is not None else build_vae(config.model.vae)).to(target).eval().requires_grad_(False)
    motion = MOTION_CHANNELS if config.objectives.motion_weight else 0
    denoiser = build_denoiser(config.model.denoiser, vae, config.data.conditions, motion)
    weights = "model"
    if state.get("ema"):
        # AveragedModel keeps the averaged module under "module." beside its step count.
        prefix = "module."
        denoiser.load_state_dict({k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)})
        weights = "ema"
    else:
        denoiser.load_state_dict(state["model"])
    return LoadedModel(config, denoiser.to(target).eval().requires_grad_(False), vae, target, weights)


# Windows -------------------------------------------------------------------------------------------------------


def window_plan(num_frames: int, window: int, overlap: int, offset: int = 0) -> list[tuple[int, Tensor]]:
    """Windows over `num_frames` latent frames: [(start, weights [L])], each `window` frames long (or the whole
    video when it is shorter), neighbours `overlap` frames apart, the grid shifted left by `offset` frames.
    The weights of the windows that cover a frame sum to one there; inside a window they ramp up and down across
    its overlaps, so a blend moves smoothly from one window's prediction to the next."""
    if num_frames < 1:
        raise ValueError("window_plan needs at least one frame")
    length = min(window, num_frames)
    overlap = min(overlap, length - 1)
    stride = length - overlap
    starts = sorted({min(max(start, 0), num_frames - length)
                     for start in range(-(offset % stride), num_frames, stride)
                     if start + length > 0 and start < num_frames})
    positions = torch.arange(length, dtype=torch.float64)
    ramp = torch.minimum((positions + 1) / (overlap + 1), (length - positions) / (overlap + 1)).clamp(max=1.0)
    total = torch.zeros(num_frames, dtype=torch.float64)
    for start in starts:
        total[start:start + length] += ramp
    return [(start, (ramp / total[start:start + length]).float()) for start in starts]


def condition_window(conditions: dict[str, Tensor], start: int, length: int, temporal_stride: int
                     ) -> dict[str, Tensor]:
    """The conditions of latent frames [start, start + length): per-frame maps cut to their pixel frames (see the
    module docstring); reference images [B, C, H, W] and vectors [B, D] unchanged."""
    first, last = start * temporal_stride, (start + length - 1) * temporal_stride
    return {name: value[:, :, first:last + 1] if value.ndim == 5 else value
            for name, value in conditions.items()}


def latent_frame_count(pixel_frames: int, temporal_stride: int) -> int:
    """Latent frames that cover `pixel_frames` frames: the last pixel frames are padded up to a whole group."""
    return math.ceil((pixel_frames - 1) / temporal_stride) + 1


# Sampling ------------------------------------------------------------------------------------------------------


def noise_levels(config: TrainConfig, sampler: SamplerConfig, device: torch.device) -> list[sch.NoiseState]:
    """The schedule's noise states from the first step to clean latents (steps + 1 states, the last noiseless)."""
    schedule, steps = config.schedule, sampler.steps
    one = torch.ones(1, dtype=torch.float64)
    if schedule.family == "ddpm":
        betas = sch.ddpm_betas(schedule.beta_schedule, schedule.num_train_timesteps, schedule.beta_start,
                               schedule.beta_end)
        alphas_cumprod = sch.alphas_cumprod_from_betas(betas)
        if schedule.shifted_snr_gamma is not None:
            alphas_cumprod = sch.shift_snr(alphas_cumprod, schedule.shifted_snr_gamma)
        # "Trailing" spacing: the first step is the last training timestep, so sampling starts from pure noise.
        count = schedule.num_train_timesteps
        timesteps = torch.linspace(count - 1, 0, steps + 1)[:-1].round().long()
        states = [sch.ddpm_state(alphas_cumprod.to(device), t.reshape(1).to(device)) for t in timesteps]
        clean = sch.NoiseState("ddpm", one.float().to(device), torch.zeros(1, device=device),
                               torch.zeros(1, device=device), one.float().to(device))
        return states + [clean]
    if schedule.family == "edm":
        # steps sigmas from sigma_max to sigma_min, then 0
        sigmas = sch.karras_sigmas(steps, sampler.sigma_min, sampler.sigma_max) if steps > 1 else \
            torch.tensor([sampler.sigma_max, 0.0], dtype=torch.float64)
        states = [sch.edm_state(sigma.reshape(1).float().to(device), schedule.edm_sigma_data) for sigma in sigmas[:-1]]
        clean = sch.NoiseState("edm", torch.ones(1, device=device), torch.zeros(1, device=device),
                               torch.zeros(1, device=device), torch.ones(1, device=device))
        return states + [clean]
    if schedule.family == "flow":
        times = sch.flow_sigmas(steps, schedule.flow_shift)
        return [sch.flow_state(t.reshape(1).float().to(device)) for t in times]
    raise ValueError(f"schedule.family must be ddpm, edm or flow, got {schedule.family!r}")


def guided_prediction(model: LoadedModel, x: Tensor, state: sch.NoiseState, conditions: dict[str, Tensor],
                      guidance: float) -> Tensor:
    """The denoiser's raw output for one window, with animation CFG: both branches in one batch of two."""
    channels = x.shape[1]
    scaled = sch.per_sample(state.input_scale, x) * x
    if guidance == 1:
        return model.denoiser(scaled, state.model_time, conditions)[:, :channels].float()
    batch = x.shape[0]
    both = {name: torch.cat([value, value]) for name, value in conditions.items()}
    keep = torch.cat([torch.ones(batch, dtype=torch.bool), torch.zeros(batch, dtype=torch.bool)]).to(x.device)
    output = model.denoiser(torch.cat([scaled, scaled]), state.model_time.repeat(2), drop_conditions(both, keep))
    conditional, unconditional = output[:, :channels].float().chunk(2)
    return unconditional + guidance * (conditional - unconditional)


def _autocast(config: TrainConfig, device: torch.device):
    if config.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def default_window(config: TrainConfig, temporal_stride: int) -> int | None:
    frames = config.data.frames
    return None if frames is None else (frames - 1) // temporal_stride + 1


def initial_latents(model: LoadedModel, noise: Tensor, first: sch.NoiseState, reference: Tensor | None) -> Tensor:
    """The latents at the first noise level: the noise at that level's scale, plus, given the reference image
    [1, 3, H, W], its latent diffused to that level on every frame (initial reference noise)."""
    x = sch.per_sample(first.noise, noise) * noise
    if reference is None:
        return x
    with _autocast(model.config, model.device):
        reference_latent = model.vae.encode(reference.to(noise.device)[:, :, None]).float()  # [1, C, 1, h, w]
    return x + sch.per_sample(first.signal, x) * reference_latent


@torch.no_grad()
def sample(model: LoadedModel, conditions: dict[str, Tensor], latent_shape: tuple[int, ...],
           sampler: SamplerConfig, articulated_noise: Tensor | None = None, reference: Tensor | None = None,
           progress=None) -> Tensor:
    """Latents [1, C, T', h, w] for one video.

    conditions: batch-1 tensors as the loader gives them, per-frame maps covering (T' - 1) k + 1 pixel frames;
    articulated_noise: [1, C, T', h, w] body-surface noise of the motion, or None for Gaussian noise;
    reference: the reference image [1, 3, H, W] in [-1, 1], used when sampler.reference_noise is on;
    progress: a callable run after every step with (step, steps), e.g. a progress bar's advance.
    """
    sampler.check()
    config, device = model.config, model.device
    generator = torch.Generator().manual_seed(sampler.seed)  # on the CPU: the same draws on every device
    noise = torch.randn(latent_shape, generator=generator)
    if articulated_noise is not None:
        if tuple(articulated_noise.shape) != tuple(latent_shape):
            raise ValueError(f"articulated noise {tuple(articulated_noise.shape)} does not match the latents "
                             f"{tuple(latent_shape)}")
        gamma = sampler.noise_gamma
        if gamma is None:
            trained = config.objectives.noise_gamma
            gamma = sum(trained) / 2 if isinstance(trained, (tuple, list)) else float(trained)
        noise = obj.mix_articulated_noise(articulated_noise.float().cpu(), noise, gamma)
    levels = noise_levels(config, sampler, device)
    if sampler.reference_noise and reference is None:
        raise ValueError("reference_noise needs the reference image")
    x = initial_latents(model, noise.to(device), levels[0], reference if sampler.reference_noise else None)
    frames = latent_shape[2]
    window = sampler.window or default_window(config, model.vae.temporal_stride) or frames
    overlap = sampler.overlap if sampler.overlap is not None else window // 4
    length = min(window, frames)
    stride = length - min(overlap, length - 1)  # as window_plan spaces the windows
    for step, (state, following) in enumerate(zip(levels[:-1], levels[1:])):
        offset = int(torch.randint(0, stride, (1,), generator=generator)) if sampler.random_offset else 0
        prediction = torch.zeros_like(x)
        for start, weights in window_plan(frames, window, overlap, offset):
            part = x[:, :, start:start + length]
            # The whole video's conditions stay where they are (the CPU); each window's go to the device.
            window_conditions = {name: value.to(device).float() for name, value in condition_window(
                conditions, start, length, model.vae.temporal_stride).items()}
            with _autocast(config, device):
                output = guided_prediction(model, part, state, window_conditions, sampler.guidance)
            x0 = obj.x0_from_prediction(config.objectives.prediction, output, part, state)
            prediction[:, :, start:start + length] += x0 * weights.to(device).reshape(1, 1, -1, 1, 1)
        # Re-noise the blended x0 with the noise it implies at this level, to the next level (DDIM / Euler).
        implied = (x - sch.per_sample(state.signal, x) * prediction) / sch.per_sample(state.noise, x)
        x = sch.per_sample(following.signal, x) * prediction + sch.per_sample(following.noise, x) * implied
        if progress is not None:
            progress(step + 1, len(levels) - 1)
    return x


def generate(model: LoadedModel, conditions: dict[str, np.ndarray], reference: np.ndarray, frames: int,
             sampler: SamplerConfig, articulated_noise: np.ndarray | None = None, progress=None) -> np.ndarray:
    """uint8 frames [frames, H, W, 3] of one video at the reference image's size, from numpy inputs:
    conditions as training.conditions draws them (per-frame maps over whole latent frames), the reference image
    [H, W, 3] uint8, and the noise stage's articulated noise [T', C, h, w] or None."""
    height, width = reference.shape[:2]
    spatial, temporal = model.vae.spatial_stride, model.vae.temporal_stride
    shape = (1, model.vae.latent_channels, latent_frame_count(frames, temporal), height // spatial, width // spatial)
    # float16, as the loader batches them: the model sees the conditions it was trained on, to the bit
    tensors = {name: torch.from_numpy(np.ascontiguousarray(value)).to(torch.float16)[None]
               for name, value in conditions.items()}
    noise = None if articulated_noise is None else \
        torch.from_numpy(articulated_noise).float().permute(1, 0, 2, 3)[None]  # stored [T', C, h, w]
    image = torch.from_numpy(reference).permute(2, 0, 1)[None].float() / 127.5 - 1
    latents = sample(model, tensors, shape, sampler, noise, image, progress)
    return decode(model, latents).numpy()[:frames]


@torch.no_grad()
def decode(model: LoadedModel, latents: Tensor) -> Tensor:
    """Latents -> uint8 frames [T, H, W, 3] on the CPU."""
    with _autocast(model.config, model.device):
        video = model.vae.decode(latents).float()  # [1, 3, T, H, W] in [-1, 1]
    return ((video[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu()


__all__ = ["SamplerConfig", "LoadedModel", "checkpoint_config", "load_model", "window_plan", "condition_window",
           "latent_frame_count", "noise_levels", "guided_prediction", "initial_latents", "sample", "generate", "decode"]
