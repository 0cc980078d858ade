"""Training configs: a YAML file read into dataclasses, one per section, with every unknown key an error.

`humanim train --config FILE` reads it; docs/TRAINING.md lists every key. A section left out takes its
defaults, so a config holds only what differs from them (configs/train_tiny.yaml).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class AugmentConfig:
    flip: float = 0.0  # probability of a horizontal flip (sides swapped in every annotation)
    crop_scale: tuple[float, float] | None = None  # side of a random crop as a share of the frame's, then resized


@dataclass
class DataConfig:
    shards: list[str] = field(default_factory=list)  # build folders, .tar paths, globs, brace patterns, URLs, pipe:
    resolution: tuple[int, int] | None = None  # (H, W) at training; None keeps the shards' resolution
    frames: int | None = None  # frames per training clip (a random window); None keeps the whole clip
    fields: list[str] = field(default_factory=list)  # registry fields to load beyond what conditions/objectives need
    conditions: list[str] = field(default_factory=list)  # pose | hand_blur | renders | reference | identity
    batch_size: int = 1
    num_workers: int = 0  # DataLoader workers per training process
    resampled: bool = False  # draw shards with replacement forever (multi-node); with_epoch bounds an "epoch"
    samples_per_epoch: int | None = None  # all processes together; required with resampled
    shard_shuffle: bool = True
    shuffle_buffer: int = 0  # samples held for shuffling in each loader worker; 0 keeps shard order
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    denoiser: dict[str, Any] = field(default_factory=lambda: {"kind": "tiny"})
    vae: dict[str, Any] = field(default_factory=lambda: {"kind": "tiny"})
    gradient_checkpointing: bool = False


@dataclass
class ScheduleConfig:
    family: str = "ddpm"  # ddpm | edm | flow
    beta_schedule: str = "scaled_linear"
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    shifted_snr_gamma: float | None = None  # HIA: SNR'(t) = gamma^2 SNR(t) (ddpm only)
    edm_p_mean: float = -1.2
    edm_p_std: float = 1.2
    edm_sigma_data: float = 1.0
    flow_logit_mean: float = 0.0
    flow_logit_std: float = 1.0
    flow_shift: float = 1.0


@dataclass
class ObjectivesConfig:
    prediction: str = "epsilon"  # epsilon | v | flow | edm
    articulated_noise: bool = False  # the shards' body-surface noise in place of Gaussian noise
    noise_gamma: float | tuple[float, float] = 0.5  # share of fresh noise: a number, or (low, high) per sample
    motion_weight: float = 0.0  # joint appearance-motion: extra head predicts the latent flow
    geometric_weight: float = 0.0  # geometric motion consistency of the one-step x0
    face_weight: float = 0.0  # HIA regional MSE on the one-step x0 inside the face mask
    hand_weight: float = 0.0  # ... inside the hand masks
    regional_max_time: float = 200.0  # regional and identity losses only below this model time
    identity_weight: float = 0.0  # HIA face cosine through ArcFace
    arcface: str | None = None  # TorchScript file of an ArcFace network (112 x 112 RGB in [-1, 1] -> 512)
    condition_dropout: float = 0.0  # per sample, every condition zeroed together: the unconditional branch of CFG


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    accumulation: int = 1  # micro-batches per optimiser step
    ema_decay: float | None = 0.999  # None keeps no EMA weights
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes left untrained (stage-wise training)


@dataclass
class DistributedConfig:
    backend: str = "none"  # none (one process, or torchrun's env) | ray (Ray Train TorchTrainer, DDP)
    num_workers: int = 1  # Ray Train workers
    use_gpu: bool = False
    address: str | None = None  # Ray cluster to join; None starts a local one
    storage_path: str | None = None  # Ray Train's run folder; None puts it under output_dir


@dataclass
class TrainConfig:
    output_dir: str = "runs/train"
    seed: int = 0
    max_steps: int = 100  # optimiser steps
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    device: str = "auto"  # auto | cpu | cuda
    checkpoint_every: int = 0  # steps between checkpoints; 0 saves at the end only
    log_every: int = 10
    log_sample_keys: bool = False  # write samples.csv: which clip keys each step saw, and from which worker
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


def from_dict(cls, values: dict[str, Any] | None, where: str = "config"):
    """Build dataclass `cls` from a mapping; a key it does not have is an error that lists the ones it has."""
    values = dict(values or {})
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; known: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        default = known[name].default_factory() if known[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            value = from_dict(type(default), value, f"{where}.{name}")
        elif isinstance(value, list) and name in ("resolution", "crop_scale", "betas", "noise_gamma"):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A TrainConfig from YAML; `overrides` (nested dicts) are merged over the file first."""
    values = yaml.safe_load(Path(path).read_text()) or {}
    return from_dict(TrainConfig, merge(values, overrides or {}))


def merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = merge(merged.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain, YAML- and JSON-able values (tuples become lists), e.g. to store in a checkpoint."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))
