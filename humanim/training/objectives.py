"""Training objectives, as pure torch functions the trainer switches on and off by config.

Latents are video latents [B, C, T', h, w]. Motion between latent frames is a backward flow
[B, 2, T'-1, h, w]: for each cell (x, y) of frame t+1, channel 0 and 1 hold the x (column) and y (row)
displacement, in latent cells, to its source position in frame t; visibility [B, T'-1, h, w] (or
[B, 1, T'-1, h, w]) is 1 where that surface point is seen in both frames. docs/OBJECTIVES.md gives each
objective's formula and the shard fields it reads.
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from humanim.training.schedules import EdmPreconditioning, NoiseState, add_noise, per_sample

PredictionKind = Literal["epsilon", "v", "flow", "edm"]


def masked_mean(values: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of `values` over the elements where `mask` (broadcastable, may be soft) is on; 0 where none is.

    The empty case stays attached to the graph, so a batch without a face or hand still back-propagates
    (distributed data parallel expects every parameter to receive a gradient).
    """
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp_min(torch.finfo(values.dtype).tiny)


# Denoising ----------------------------------------------------------------------------------------------------


def denoising_target(kind: PredictionKind, x0: Tensor, noise: Tensor, state: NoiseState) -> Tensor:
    """What the denoiser's raw output should equal, for x_t = signal x0 + noise eps.

    epsilon: eps.  v (Salimans & Ho): signal eps - noise x0.  flow (SD3 / Wan): eps - x0.
    edm: F with c_skip x_t + c_out F = x0 (Karras et al.); a plain MSE on F is exactly EDM's weighted loss,
    since their weight lambda(sigma) = 1 / c_out^2.
    """
    if kind == "epsilon":
        return noise
    if kind == "v":
        return per_sample(state.signal, x0) * noise - per_sample(state.noise, x0) * x0
    if kind == "flow":
        return noise - x0
    if kind == "edm":
        scalings = edm_scalings(state)
        x_t = add_noise(x0, noise, state)
        return (x0 - per_sample(scalings.c_skip, x0) * x_t) / per_sample(scalings.c_out, x0)
    raise ValueError(f"unknown prediction kind {kind!r}; choose epsilon, v, flow or edm")


def x0_from_prediction(kind: PredictionKind, prediction: Tensor, x_t: Tensor, state: NoiseState) -> Tensor:
    """The one-step estimate of the clean latents from the denoiser's raw output (inverts `denoising_target`)."""
    signal, noise = per_sample(state.signal, x_t), per_sample(state.noise, x_t)
    if kind == "epsilon":
        return (x_t - noise * prediction) / signal
    if kind == "v":
        # signal x_t - noise v = (signal^2 + noise^2) x0; the sum is 1 on variance-preserving schedules.
        return (signal * x_t - noise * prediction) / (signal**2 + noise**2)
    if kind == "flow":
        # x_t - noise v = (signal + noise) x0; the sum is 1 on rectified flow.
        return (x_t - noise * prediction) / (signal + noise)
    if kind == "edm":
        scalings = edm_scalings(state)
        return per_sample(scalings.c_skip, x_t) * x_t + per_sample(scalings.c_out, x_t) * prediction
    raise ValueError(f"unknown prediction kind {kind!r}; choose epsilon, v, flow or edm")


def edm_scalings(state: NoiseState) -> EdmPreconditioning:
    if state.preconditioning is None:
        raise ValueError(f"the edm prediction kind needs an edm noise state, got family {state.family!r}")
    return state.preconditioning


def denoising_loss(
    prediction: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """Squared error, times `weight`, averaged over the elements `mask` keeps.

    weight: a 1-D [B] tensor is a per-sample weight (e.g. min-SNR); anything else must broadcast to the latents.
    mask: broadcastable to the latents, e.g. [B, 1, T', h, w] to drop padded frames or cells.
    """
    error = (prediction.float() - target.float()) ** 2
    if weight is not None:
        error = error * (per_sample(weight, error) if weight.ndim == 1 else weight.to(error.dtype))
    return masked_mean(error, mask)


# Articulated noise (HumANDiff) --------------------------------------------------------------------------------


def mix_articulated_noise(articulated: Tensor, fresh: Tensor, gamma: float | Tensor) -> Tensor:
    """eps = (gamma xi + (1 - gamma) eps_art) / sqrt(gamma^2 + (1 - gamma)^2).

    articulated: the shard's body-surface noise as latents [B, C, T', h, w] (the shard stores [T', C, h, w]);
    fresh: independent N(0, 1) noise xi of the same shape; gamma: a float or a [B] tensor in [0, 1].
    The divisor makes the result exactly unit variance when both inputs are independent unit Gaussians.
    """
    gamma = per_sample(gamma, fresh) if isinstance(gamma, Tensor) else torch.as_tensor(gamma, dtype=fresh.dtype)
    mixed = gamma * fresh + (1 - gamma) * articulated.to(fresh.dtype)
    return mixed / (gamma**2 + (1 - gamma) ** 2).sqrt()


def draw_mixing_gamma(
    batch_size: int, low: float, high: float, generator: torch.Generator | None = None
) -> Tensor:
    """Per-sample gamma ~ U(low, high), for training on a spread of articulated-noise strengths."""
    if not 0 <= low <= high <= 1:
        raise ValueError(f"gamma range must satisfy 0 <= low <= high <= 1, got ({low}, {high})")
    return low + (high - low) * torch.rand(batch_size, generator=generator)


# Motion (HumANDiff) -------------------------------------------------------------------------------------------


def motion_loss(
    predicted_flow: Tensor, target_flow: Tensor, visibility: Tensor, norm: Literal["l1", "l2"] = "l1"
) -> Tensor:
    """Joint appearance-motion objective: the model's extra head predicts the latent flow [B, 2, T'-1, h, w].

    The per-component |error| (l1) or error^2 (l2) is averaged over the cells visible in both frames only.
    """
    difference = predicted_flow.float() - target_flow.float()
    error = difference.abs() if norm == "l1" else difference**2
    return masked_mean(error, flow_cells(visibility))


def warp_to_next_frame(latents: Tensor, flow: Tensor) -> Tensor:
    """Frames 0..T'-2 of `latents` [B, C, T', h, w] resampled (bilinear) at the source positions `flow` gives
    for frames 1..T'-1; returns [B, C, T'-1, h, w]. Zero flow returns the frames unchanged."""
    batch, channels, frames, height, width = latents.shape
    previous = latents[:, :, :-1].permute(0, 2, 1, 3, 4).reshape(batch * (frames - 1), channels, height, width)
    source_x, source_y = source_positions(flow)
    # align_corners=True puts cell centres on integer positions, the unit the flow is written in.
    grid = torch.stack([2 * source_x / max(width - 1, 1) - 1, 2 * source_y / max(height - 1, 1) - 1], dim=-1)
    grid = grid.reshape(batch * (frames - 1), height, width, 2).to(latents.dtype)
    warped = F.grid_sample(previous, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return warped.reshape(batch, frames - 1, channels, height, width).permute(0, 2, 1, 3, 4)


def geometric_consistency_loss(x0_prediction: Tensor, flow: Tensor, visibility: Tensor) -> Tensor:
    """Predictions at the same body-surface point in consecutive latent frames must agree:
    MSE between frame t+1 and frame t warped by the flow, over visible cells whose source lies on the grid."""
    _, _, _, height, width = x0_prediction.shape
    source_x, source_y = source_positions(flow)
    on_grid = (source_x >= 0) & (source_x <= width - 1) & (source_y >= 0) & (source_y <= height - 1)
    mask = flow_cells(visibility) * on_grid.unsqueeze(1)
    error = (x0_prediction[:, :, 1:].float() - warp_to_next_frame(x0_prediction, flow).float()) ** 2
    return masked_mean(error, mask)


def source_positions(flow: Tensor) -> tuple[Tensor, Tensor]:
    """[B, 2, T'-1, h, w] displacements -> absolute source (x, y) in cells, each [B, T'-1, h, w]."""
    height, width = flow.shape[-2:]
    rows = torch.arange(height, dtype=flow.dtype, device=flow.device).reshape(height, 1)
    columns = torch.arange(width, dtype=flow.dtype, device=flow.device).reshape(1, width)
    return columns + flow[:, 0], rows + flow[:, 1]


def flow_cells(visibility: Tensor) -> Tensor:
    """Visibility [B, T'-1, h, w] or [B, 1, T'-1, h, w] -> [B, 1, T'-1, h, w], broadcastable over channels."""
    return visibility.unsqueeze(1) if visibility.ndim == 4 else visibility


# Regional supervision (HIA) -----------------------------------------------------------------------------------


def regional_x0_loss(
    x0_prediction: Tensor, x0: Tensor, region_mask: Tensor, state: NoiseState, max_model_time: float
) -> Tensor:
    """Masked MSE between the one-step x0 estimate and the clean latents inside one region (face or hands).

    region_mask: [B, 1, T', h, w] at latent resolution (soft values allowed). Only samples whose
    state.model_time is below max_model_time count: at high noise the one-step x0 is a blur and a regional
    loss on it would only push toward the mean. The threshold is in the family's own time units
    (DDPM index, 1000 t for flow, c_noise for EDM).
    """
    active = per_sample(state.model_time < max_model_time, region_mask)
    error = (x0_prediction.float() - x0.float()) ** 2
    return masked_mean(error, region_mask * active)


def crop_faces(frames: Tensor, boxes: Tensor, size: int = 112) -> Tensor:
    """Differentiable crop-and-resize: frames [N, 3, H, W], boxes [N, 4] as pixel edges (x0, y0, x1, y1)
    -> [N, 3, size, size], sampled bilinearly at the output pixel centres."""
    height, width = frames.shape[-2:]
    steps = (torch.arange(size, dtype=frames.dtype, device=frames.device) + 0.5) / size
    x0, y0, x1, y1 = (boxes.to(frames.dtype)[:, i : i + 1] for i in range(4))
    pixel_x = x0 + steps * (x1 - x0)  # [N, size]
    pixel_y = y0 + steps * (y1 - y0)
    # align_corners=False: -1 and 1 are the image's outer edges, so a pixel centre u maps to 2u / W - 1.
    grid_x = (2 * pixel_x / width - 1)[:, None, :].expand(-1, size, -1)
    grid_y = (2 * pixel_y / height - 1)[:, :, None].expand(-1, -1, size)
    grid = torch.stack([grid_x, grid_y], dim=-1)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)


def face_identity_loss(
    face_crops: Tensor,
    reference_embedding: Tensor,
    arcface: Callable[[Tensor], Tensor],
    valid: Tensor | None = None,
) -> Tensor:
    """1 - cos(arcface(crop), reference), averaged over the crops marked valid.

    face_crops: [N, 3, 112, 112] RGB in [-1, 1], the range insightface's ArcFace normalises to and the VAE
    decodes to; reference_embedding: [N, 512], the shard's face embedding; arcface: any callable that maps
    crops to embeddings; valid: [N] (frames with a detected face and an available embedding).
    """
    similarity = F.cosine_similarity(arcface(face_crops).float(), reference_embedding.float(), dim=-1)
    return masked_mean(1 - similarity, valid)
