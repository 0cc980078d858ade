"""Models the trainer drives, behind two small interfaces:

- denoiser: `model(noisy_latents [B, C, T', h, w], model_time [B], conditions {name: tensor}) -> [B, C + M, T', h, w]`
  where M is the number of motion channels (0, or 2 for the joint appearance-motion objective: channels C and
  C + 1 at latent frame t >= 1 predict the backward flow from frame t to frame t - 1, in latent cells).
  Optional: `enable_gradient_checkpointing()`.
- VAE: `encode(frames [B, 3, T, H, W] in [-1, 1]) -> latents [B, C, T', h, w]`; `decode` (the inverse) is only
  needed by the face-identity objective. T' = (T - 1) // k + 1 for a temporal stride k (causal, as Wan's VAE).

The tiny pair here is small enough to train on CPU in tests and builds from a few config numbers. The
diffusers adapters put models saved with diffusers' `save_pretrained` behind the same interfaces.
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

# Channels of each condition the loader draws (training.conditions), and whether it is per frame, one image
# [B, C, H, W] or one vector [B, C].
CONDITION_CHANNELS = {"pose": 3, "hand_blur": 3, "renders": 5, "reference": 3, "reference_pose": 3, "identity": 512}
IMAGE_CONDITIONS = ("reference", "reference_pose")
VECTOR_CONDITIONS = ("identity",)


def condition_channels(conditions: list[str]) -> dict[str, int]:
    """Condition tensors (name -> channels) the loader gives for the data config's `conditions`."""
    names = []
    for condition in conditions:
        names += ["reference", "reference_pose"] if condition == "reference" else [condition]
    return {name: CONDITION_CHANNELS[name] for name in names}


def _causal_pad(video: Tensor, temporal_stride: int) -> Tensor:
    """Repeat the first frame k - 1 times in front, so the first latent frame sees the first frame alone."""
    if temporal_stride == 1:
        return video
    return torch.cat([video[:, :, :1].expand(-1, -1, temporal_stride - 1, -1, -1), video], dim=2)


class TinyVideoVAE(nn.Module):
    """A frozen random video autoencoder: one strided 3D convolution each way. Its latents are a fixed, local,
    invertible-enough projection of the pixels, which is all the trainer's tests need from a VAE."""

    def __init__(self, latent_channels: int = 4, spatial_stride: int = 8, temporal_stride: int = 1,
                 hidden: int = 16, scaling_factor: float = 1.0, seed: int = 0):
        super().__init__()
        self.latent_channels, self.spatial_stride, self.temporal_stride = latent_channels, spatial_stride, temporal_stride
        self.scaling_factor = scaling_factor
        kernel = (temporal_stride, spatial_stride, spatial_stride)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # the same VAE in every process and every run, like loaded weights
        self.encoder = nn.Sequential(nn.Conv3d(3, hidden, (1, 3, 3), padding=(0, 1, 1)), nn.SiLU(),
                                     nn.Conv3d(hidden, latent_channels, kernel, stride=kernel))
        self.decoder = nn.Sequential(nn.ConvTranspose3d(latent_channels, hidden, kernel, stride=kernel), nn.SiLU(),
                                     nn.Conv3d(hidden, 3, (1, 3, 3), padding=(0, 1, 1)))
        torch.random.set_rng_state(generator_state)

    def encode(self, frames: Tensor) -> Tensor:
        return self.encoder(_causal_pad(frames, self.temporal_stride)) * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """[B, C, T', h, w] -> [B, 3, k (T' - 1) + 1, H, W]: the padded frames in front are dropped."""
        video = self.decoder(latents / self.scaling_factor)
        return torch.tanh(video[:, :, self.temporal_stride - 1:])


def timestep_embedding(model_time: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of the model time, as DDPM's and diffusers' UNets use them."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000) * torch.arange(half, device=model_time.device) / half)
    angles = model_time.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, time_dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(8, channels), nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)
        self.film = nn.Linear(time_dim, 2 * channels)  # time sets a per-channel scale and shift

    def forward(self, x: Tensor, time: Tensor) -> Tensor:
        scale, shift = self.film(time)[:, :, None, None, None].chunk(2, dim=1)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class TinyDenoiser(nn.Module):
    """A small 3D-convolutional denoiser: condition maps are cut to the latent grid by strided convolutions and
    added to the input features; time enters every block through FiLM, and vector conditions (identity) with
    it, projected and added to the time embedding.

    Parameter groups (names start with these, for `optim.freeze`): condition_encoders, time_embedding, input,
    blocks, output, motion_head.
    """

    def __init__(self, latent_channels: int = 4, conditions: dict[str, int] | None = None, hidden: int = 64,
                 depth: int = 3, time_dim: int = 64, motion_channels: int = 0, spatial_stride: int = 8,
                 temporal_stride: int = 1):
        super().__init__()
        self.temporal_stride, self.time_dim = temporal_stride, time_dim
        self.gradient_checkpointing = False
        kernel = (temporal_stride, spatial_stride, spatial_stride)
        self.condition_encoders = nn.ModuleDict({
            name: self._condition_encoder(name, channels, hidden, spatial_stride, kernel)
            for name, channels in (conditions or {}).items()})
        self.time_embedding = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.input = nn.Conv3d(latent_channels, hidden, 3, padding=1)
        self.blocks = nn.ModuleList([ResidualBlock(hidden, time_dim) for _ in range(depth)])
        self.output = nn.Sequential(nn.GroupNorm(8, hidden), nn.SiLU(), nn.Conv3d(hidden, latent_channels, 3, padding=1))
        self.motion_head = (nn.Sequential(nn.GroupNorm(8, hidden), nn.SiLU(),
                                          nn.Conv3d(hidden, motion_channels, 3, padding=1))
                            if motion_channels else None)

    def _condition_encoder(self, name: str, channels: int, hidden: int, spatial_stride: int,
                           kernel: tuple[int, int, int]) -> nn.Module:
        if name in VECTOR_CONDITIONS:
            return nn.Linear(channels, self.time_dim)
        if name in IMAGE_CONDITIONS:
            return nn.Conv2d(channels, hidden, spatial_stride, stride=spatial_stride)
        return nn.Conv3d(channels, hidden, kernel, stride=kernel)

    def enable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = True

    def forward(self, x: Tensor, model_time: Tensor, conditions: dict[str, Tensor]) -> Tensor:
        missing = sorted(set(self.condition_encoders) - set(conditions))
        if missing:
            raise ValueError(f"the denoiser was built for conditions {sorted(self.condition_encoders)}; "
                             f"the batch lacks {missing}")
        time = self.time_embedding(timestep_embedding(model_time, self.time_dim))
        h = self.input(x)
        for name, encoder in self.condition_encoders.items():
            condition = conditions[name].to(h.dtype)
            if name in VECTOR_CONDITIONS:
                time = time + encoder(condition)  # with time, FiLM carries it into every block
            elif name in IMAGE_CONDITIONS:
                h = h + encoder(condition)[:, :, None]  # one image, added to every latent frame
            else:
                h = h + encoder(_causal_pad(condition, self.temporal_stride))
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                h = checkpoint(block, h, time, use_reentrant=False)
            else:
                h = block(h, time)
        out = self.output(h)
        if self.motion_head is not None:
            out = torch.cat([out, self.motion_head(h)], dim=1)
        return out


# diffusers -----------------------------------------------------------------------------------------------------

DIFFUSERS_INSTALL = "pip install diffusers"


def _diffusers():
    try:
        import diffusers
    except ImportError as error:
        raise ImportError(f"loading a diffusers model needs the diffusers package: {DIFFUSERS_INSTALL}") from error
    return diffusers


def _load_diffusers(spec: dict[str, Any], role: str):
    diffusers = _diffusers()
    for key in ("path", "class"):
        if key not in spec:
            raise ValueError(f"model.{role} of kind diffusers needs '{key}' (a local folder and a diffusers class "
                             f"name such as UNetSpatioTemporalConditionModel or AutoencoderKL)")
    cls = getattr(diffusers, spec["class"], None)
    if cls is None:
        raise ValueError(f"diffusers {diffusers.__version__} has no class {spec['class']!r}")
    folder = Path(spec["path"]).expanduser() / (spec.get("subfolder") or "")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model.{role}.path: no diffusers model at {folder} (a folder written by "
                                f"save_pretrained, holding config.json and the weights, is needed)")
    # local_files_only: weights come from the path the user gives, never from a hub.
    return cls.from_pretrained(spec["path"], subfolder=spec.get("subfolder"), local_files_only=True)


class DiffusersDenoiser(nn.Module):
    """A diffusers UNet / transformer behind the trainer's interface.

    Latents go in as [B, C, T', h, w]; `layout` says what the model takes: "BCTHW" (3D UNets, Wan and other
    video transformers), "BTCHW" (UNetSpatioTemporalConditionModel: SVD, VividPose) or "frames" (an image
    UNet run on each frame). Conditions whose names are arguments of the model's forward
    (encoder_hidden_states, added_time_ids, ...) are passed through; any other condition map is concatenated
    to the latents along channels, resized to the latent grid (the model's in_channels must allow for it). A
    vector condition (identity) has no grid to concatenate on: it needs a forward argument of its name.
    """

    def __init__(self, model: nn.Module, layout: str, inputs: dict[str, Any] | None = None,
                 conditions: list[str] | None = None):
        super().__init__()
        if layout not in ("BCTHW", "BTCHW", "frames"):
            raise ValueError(f"layout must be BCTHW, BTCHW or frames, got {layout!r}")
        self.model, self.layout = model, layout
        parameters = inspect.signature(model.forward).parameters
        self.arguments = set(parameters)
        # Fixed model inputs from the config (per sample, repeated over the batch): a nested list of numbers,
        # or {zeros: shape} (e.g. an unconditional encoder_hidden_states).
        self.inputs = {name: torch.zeros(value["zeros"]) if isinstance(value, dict) else torch.tensor(value)
                       for name, value in (inputs or {}).items()}
        unknown = sorted(set(self.inputs) - self.arguments)
        if unknown:
            raise ValueError(f"model.denoiser.inputs {unknown} are not arguments of {type(model).__name__}.forward")
        vectors = sorted(name for name in conditions or [] if name in VECTOR_CONDITIONS and name not in self.arguments)
        if vectors:
            raise ValueError(f"condition(s) {vectors} are vectors, which cannot be concatenated to the latents; "
                             f"the diffusers adapter takes them only where {type(model).__name__}.forward has an "
                             f"argument of that name: drop them from data.conditions for this model")
        given = set(self.inputs) | set(conditions or []) | {"sample", "timestep", "self"}
        required = [name for name, p in list(parameters.items())[2:]
                    if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                    and name not in given]
        if required:
            raise ValueError(f"{type(model).__name__}.forward needs {required}, which no condition gives: set them "
                             f"in model.denoiser.inputs (e.g. encoder_hidden_states: {{zeros: [1, 1024]}}, "
                             f"added_time_ids: [6, 127, 0.02])")

    def enable_gradient_checkpointing(self) -> None:
        self.model.enable_gradient_checkpointing()

    def forward(self, x: Tensor, model_time: Tensor, conditions: dict[str, Tensor]) -> Tensor:
        batch, _, frames, height, width = x.shape
        keyword = {name: value.to(x.device, x.dtype)[None].expand(batch, *value.shape)
                   for name, value in self.inputs.items()}
        keyword.update({name: value for name, value in conditions.items() if name in self.arguments})
        maps = [F.interpolate(value.to(x.dtype), size=(frames, height, width), mode="area") if value.ndim == 5
                else F.interpolate(value.to(x.dtype), size=(height, width), mode="area")[:, :, None].expand(
                    -1, -1, frames, -1, -1)
                for name, value in sorted(conditions.items()) if name not in self.arguments]
        x = torch.cat([x, *maps], dim=1)
        if self.layout == "BCTHW":
            return self.model(x, model_time, **keyword, return_dict=False)[0]
        if self.layout == "BTCHW":
            out = self.model(x.permute(0, 2, 1, 3, 4), model_time, **keyword, return_dict=False)[0]
            return out.permute(0, 2, 1, 3, 4)
        flat = x.permute(0, 2, 1, 3, 4).reshape(batch * frames, -1, height, width)
        keyword = {k: v.repeat_interleave(frames, dim=0) for k, v in keyword.items()}
        out = self.model(flat, model_time.repeat_interleave(frames), **keyword, return_dict=False)[0]
        return out.reshape(batch, frames, -1, height, width).permute(0, 2, 1, 3, 4)


class DiffusersVAE(nn.Module):
    """A diffusers autoencoder behind the trainer's interface: video VAEs (5D input) take the clip whole, image
    VAEs (AutoencoderKL) take it frame by frame. Latents are scaled by the model's scaling_factor."""

    def __init__(self, vae: nn.Module, video: bool):
        super().__init__()
        self.vae, self.video = vae, video
        config = vae.config
        self.scaling_factor = float(getattr(config, "scaling_factor", 1.0) or 1.0)
        self.latent_channels = int(getattr(config, "latent_channels", None) or getattr(config, "z_dim"))
        if getattr(config, "scale_factor_spatial", None):  # Wan
            self.spatial_stride = int(config.scale_factor_spatial)
            self.temporal_stride = int(config.scale_factor_temporal) if video else 1
        else:
            self.spatial_stride = 2 ** (len(config.block_out_channels) - 1)
            self.temporal_stride = int(getattr(config, "temporal_compression_ratio", 1) or 1) if video else 1
        # Wan normalises latents per channel (latents_mean / latents_std) instead of by one scaling factor.
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        shape = (1, -1, 1, 1, 1)
        self.register_buffer("latents_mean", torch.tensor(mean).view(shape) if mean and std else torch.zeros(1),
                             persistent=False)
        self.register_buffer("latents_std", torch.tensor(std).view(shape) if mean and std else torch.ones(1),
                             persistent=False)
        self.decode_takes_frames = "num_frames" in inspect.signature(vae.decode).parameters

    def _normalise(self, latents: Tensor) -> Tensor:
        return (latents - self.latents_mean) / self.latents_std * self.scaling_factor

    def _denormalise(self, latents: Tensor) -> Tensor:
        return latents / self.scaling_factor * self.latents_std + self.latents_mean

    def encode(self, frames: Tensor) -> Tensor:
        if self.video:
            return self._normalise(self.vae.encode(frames).latent_dist.sample())
        batch, _, count = frames.shape[:3]
        flat = frames.permute(0, 2, 1, 3, 4).flatten(0, 1)
        latents = self.vae.encode(flat).latent_dist.sample()
        return self._normalise(latents.reshape(batch, count, *latents.shape[1:]).permute(0, 2, 1, 3, 4))

    def decode(self, latents: Tensor) -> Tensor:
        latents = self._denormalise(latents)
        if self.video:
            return self.vae.decode(latents).sample
        batch, _, count = latents.shape[:3]
        flat = latents.permute(0, 2, 1, 3, 4).flatten(0, 1)
        # AutoencoderKLTemporalDecoder (SVD) decodes with attention over the clip's frames.
        frames = (self.vae.decode(flat, num_frames=count) if self.decode_takes_frames else self.vae.decode(flat)).sample
        return frames.reshape(batch, count, *frames.shape[1:]).permute(0, 2, 1, 3, 4)


# Building from the config --------------------------------------------------------------------------------------


def build_vae(spec: dict[str, Any]) -> nn.Module:
    spec = dict(spec)
    kind = spec.pop("kind", "tiny")
    if kind == "tiny":
        return TinyVideoVAE(**spec)
    if kind == "diffusers":
        vae = _load_diffusers(spec, "vae")
        return DiffusersVAE(vae, video=bool(spec.get("video", "Wan" in spec["class"] or "CogVideoX" in spec["class"])))
    raise ValueError(f"model.vae.kind must be tiny or diffusers, got {kind!r}")


def build_denoiser(spec: dict[str, Any], vae: nn.Module, conditions: list[str], motion_channels: int) -> nn.Module:
    spec = dict(spec)
    kind = spec.pop("kind", "tiny")
    if kind == "tiny":
        return TinyDenoiser(latent_channels=vae.latent_channels, conditions=condition_channels(conditions),
                            motion_channels=motion_channels, spatial_stride=vae.spatial_stride,
                            temporal_stride=vae.temporal_stride, **spec)
    if kind == "diffusers":
        if motion_channels:
            raise ValueError("the motion objective needs a denoiser with an extra motion head; the diffusers "
                             "adapter passes the model's output through unchanged")
        return DiffusersDenoiser(_load_diffusers(spec, "denoiser"), spec.get("layout", "BCTHW"), spec.get("inputs"),
                                 list(condition_channels(conditions)))
    raise ValueError(f"model.denoiser.kind must be tiny or diffusers, got {kind!r}")


def load_arcface(path: str) -> nn.Module:
    """A TorchScript ArcFace network (RGB [N, 3, 112, 112] in [-1, 1] -> [N, 512]), frozen. TorchScript keeps
    the trainer free of insightface's own runtime and lets the identity loss back-propagate into the crops."""
    model = torch.jit.load(path, map_location="cpu")
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
