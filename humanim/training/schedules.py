"""Noise schedules: where a training sample sits between clean latents and pure noise.

Three families cover the models humanim trains:
- "ddpm": discrete variance-preserving schedules from betas (SD / AnimateDiff / Champ / HIA backbones);
- "edm": continuous sigmas with Karras preconditioning (SVD, hence VividPose);
- "flow": rectified flow (SD3, Wan).
All three write the noisy latents the same way, x_t = signal * x0 + noise * eps, so `NoiseState` holds those two
per-sample scales plus what the denoiser is fed; objectives.py never needs to know which family made it.
Per-sample tensors are [B]; they broadcast over latents [B, C, T', h, w].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]


@dataclass(frozen=True)
class EdmPreconditioning:
    """Karras et al. 2022 (Table 1) scalings, each [B]: D(x) = c_skip x + c_out F(c_in x, c_noise)."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


@dataclass(frozen=True)
class NoiseState:
    """One batch's noise levels. The trainer calls model(input_scale * x_t, model_time, conditions)."""

    family: Literal["ddpm", "edm", "flow"]
    signal: Tensor  # [B] scale on x0 in x_t: sqrt(alpha_bar), 1, or 1 - t
    noise: Tensor  # [B] scale on eps in x_t: sqrt(1 - alpha_bar), sigma, or t
    model_time: Tensor  # [B] what the denoiser takes as time: DDPM index, EDM c_noise, or 1000 t (SD3 / Wan)
    input_scale: Tensor  # [B] multiplies x_t before the denoiser: 1, or EDM c_in
    preconditioning: EdmPreconditioning | None = None  # only the "edm" family has one

    @property
    def snr(self) -> Tensor:
        return (self.signal / self.noise) ** 2


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """[B] -> [B, 1, ..., 1] so that a per-sample scale broadcasts over a batch shaped like `like`."""
    return values.reshape(values.shape[:1] + (1,) * (like.ndim - 1)).to(like.dtype)


def add_noise(x0: Tensor, noise: Tensor, state: NoiseState) -> Tensor:
    return per_sample(state.signal, x0) * x0 + per_sample(state.noise, x0) * noise


# DDPM ---------------------------------------------------------------------------------------------------------


def ddpm_betas(
    kind: BetaSchedule, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02
) -> Tensor:
    """Betas as diffusers' DDPMScheduler builds them (float64). Stable Diffusion: scaled_linear, 0.00085 .. 0.012."""
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":
        # Nichol & Dhariwal's cosine alpha_bar, discretised as betas and capped at 0.999 so the last step keeps
        # a sliver of signal; the start and end arguments do not apply.
        def alpha_bar(fraction: float) -> float:
            return math.cos((fraction + 0.008) / 1.008 * math.pi / 2) ** 2

        steps = num_train_timesteps
        return torch.tensor(
            [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)],
            dtype=torch.float64,
        )
    raise ValueError(f"unknown beta schedule {kind!r}; choose linear, scaled_linear or squaredcos_cap_v2")


def alphas_cumprod_from_betas(betas: Tensor) -> Tensor:
    return torch.cumprod(1 - betas, dim=0)


def betas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """Inverse of `alphas_cumprod_from_betas`: hands a reshaped schedule to a sampler that takes betas."""
    previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    return 1 - alphas_cumprod / previous


def snr_from_alpha_bar(alpha_bar: Tensor) -> Tensor:
    return alpha_bar / (1 - alpha_bar)


def alpha_bar_from_snr(snr: Tensor) -> Tensor:
    return snr / (1 + snr)


def sigma_from_alpha_bar(alpha_bar: Tensor) -> Tensor:
    """The variance-exploding sigma of the same noise level: x_t / sqrt(alpha_bar) = x0 + sigma eps."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def alpha_bar_from_sigma(sigma: Tensor) -> Tensor:
    return 1 / (1 + sigma**2)


def shift_snr(alphas_cumprod: Tensor, gamma: float) -> Tensor:
    """Shifted-SNR schedule for HIA's high-resolution training: SNR'(t) = gamma^2 SNR(t), gamma in (0, 1].

    HIA (Xu et al. 2024, arXiv 2409.19580) names a shifted SNR with a scale gamma in its Algorithm 1; the
    algorithm's exact text could not be read here, so this is the standard resolution shift it builds on
    (Hoogeboom et al. 2023, "simple diffusion": scaling the image by gamma scales the SNR by gamma^2, i.e. shifts
    log SNR by 2 log gamma). In alpha_bar terms: alpha_bar' = gamma^2 a / (1 + (gamma^2 - 1) a).
    gamma < 1 makes every timestep noisier, which larger latents (more redundant pixels) need.
    """
    if not 0 < gamma <= 1:
        raise ValueError(f"shifted SNR needs gamma in (0, 1], got {gamma}")
    scale = gamma**2
    return scale * alphas_cumprod / (1 + (scale - 1) * alphas_cumprod)


def ddpm_state(alphas_cumprod: Tensor, timesteps: Tensor) -> NoiseState:
    """timesteps: [B] integer indices into alphas_cumprod [T] (drawn uniformly in [0, T) for training)."""
    alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return NoiseState(
        family="ddpm",
        signal=alpha_bar.sqrt(),
        noise=(1 - alpha_bar).sqrt(),
        model_time=timesteps,
        input_scale=torch.ones_like(alpha_bar),
    )


# EDM ----------------------------------------------------------------------------------------------------------


def sample_edm_sigmas(
    batch_size: int, p_mean: float = -1.2, p_std: float = 1.2, generator: torch.Generator | None = None
) -> Tensor:
    """Training sigmas, log-normal: ln sigma ~ N(p_mean, p_std^2). Karras et al. use (-1.2, 1.2); SVD fine-tuning
    recipes commonly move the mass to higher noise, e.g. (0.7, 1.6)."""
    return torch.exp(p_mean + p_std * torch.randn(batch_size, generator=generator))


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """Inference sigmas, decreasing from sigma_max to sigma_min, evenly spaced in sigma^(1/rho), then a final 0."""
    if num_steps < 2:
        raise ValueError("karras_sigmas needs at least 2 steps")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    inverse_max, inverse_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (inverse_max + ramp * (inverse_min - inverse_max)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def edm_preconditioning(sigma: Tensor, sigma_data: float = 1.0, output_sign: float = -1.0) -> EdmPreconditioning:
    """SVD's scalings by default (sigma_data = 1 and a negated c_out, so the network's raw output is the
    v-prediction of the matching variance-preserving schedule); Karras et al. use sigma_data = 0.5, sign +1."""
    total = sigma**2 + sigma_data**2
    return EdmPreconditioning(
        c_skip=sigma_data**2 / total,
        c_out=output_sign * sigma * sigma_data / total.sqrt(),
        c_in=1 / total.sqrt(),
        c_noise=0.25 * sigma.log(),
    )


def edm_state(sigma: Tensor, sigma_data: float = 1.0, output_sign: float = -1.0) -> NoiseState:
    """Variance-exploding noise: x_t = x0 + sigma eps; the denoiser sees c_in x_t at time c_noise."""
    preconditioning = edm_preconditioning(sigma, sigma_data, output_sign)
    return NoiseState(
        family="edm",
        signal=torch.ones_like(sigma),
        noise=sigma,
        model_time=preconditioning.c_noise,
        input_scale=preconditioning.c_in,
        preconditioning=preconditioning,
    )


# Flow matching ------------------------------------------------------------------------------------------------


def shift_flow_time(t: Tensor, shift: float) -> Tensor:
    """SD3 / Wan timestep shift: t' = s t / (1 + (s - 1) t); s > 1 spends more steps at high noise."""
    return shift * t / (1 + (shift - 1) * t)


def sample_flow_times(
    batch_size: int,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Training times, logit-normal (SD3: t = sigmoid(m + s n)), then shifted; t = 1 is pure noise."""
    t = torch.sigmoid(logit_mean + logit_std * torch.randn(batch_size, generator=generator))
    return shift_flow_time(t, shift)


def flow_sigmas(num_steps: int, shift: float = 1.0) -> Tensor:
    """Inference times from 1 to 0 in num_steps even steps before the shift (num_steps + 1 values)."""
    return shift_flow_time(torch.linspace(1, 0, num_steps + 1, dtype=torch.float64), shift)


def flow_state(t: Tensor) -> NoiseState:
    """Rectified flow: x_t = (1 - t) x0 + t eps; the denoiser takes 1000 t as its timestep, as SD3 and Wan do."""
    return NoiseState(
        family="flow",
        signal=1 - t,
        noise=t,
        model_time=1000 * t,
        input_scale=torch.ones_like(t),
    )
