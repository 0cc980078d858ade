"""The trainer: any denoiser and video VAE (training.models), the objectives switched on in the config
(training.objectives), batches streamed from shards (training.data), on CPU, one GPU, or many through Ray
Train's TorchTrainer (or torchrun) with DDP.

One optimiser step = `optim.accumulation` micro-batches. Everything random in a step (timesteps, noise, gamma)
comes from a generator seeded by (seed, step, micro-batch, rank), and the data stream's position is saved
with the weights, so a resumed run takes the same steps an unbroken one would (docs/TRAINING.md).
"""
from __future__ import annotations

import csv
import hashlib
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from humanim.training import objectives as obj
from humanim.training import schedules as sch
from humanim.training.config import TrainConfig, from_dict, to_dict
from humanim.training.data import DataStream, StreamSpec, requested_fields, shard_urls
from humanim.training.models import build_denoiser, build_vae, load_arcface

CHECKPOINT_PATTERN = "step-{:08d}.pt"
MOTION_CHANNELS = 2


# What the objectives read --------------------------------------------------------------------------------------


def objective_fields(config: TrainConfig) -> tuple[str, ...]:
    """Shard fields the switched-on objectives need; the loader errors clearly when the shards lack one."""
    objectives = config.objectives
    names: list[str] = []
    if objectives.articulated_noise:
        names.append("noise")
    if objectives.motion_weight or objectives.geometric_weight:
        names += ["noise_flow", "noise_visible"]
    if objectives.face_weight or objectives.hand_weight:
        names.append("masks")
    if objectives.identity_weight:
        names += ["face_box", "face_embedding"]
    return tuple(names)


def require_batch_fields(batch: dict[str, Any], names: tuple[str, ...]) -> None:
    missing = [name for name in names if name not in batch]
    if missing:
        raise KeyError(f"the switched-on objectives need batch field(s) {missing}; the batch holds "
                       f"{sorted(k for k in batch if k != 'conditions')}")


def latent_region_masks(masks: Tensor, latent_shape: torch.Size, temporal_stride: int) -> tuple[Tensor, Tensor]:
    """Face and hand masks [B, T, 3, H, W] (0/1) at the latent grid [B, 1, T', h, w]: the area share of each
    cell, then the largest share over the frames a latent frame covers (causal: frame 0 alone, then k each)."""
    frames = masks.float().permute(0, 2, 1, 3, 4)  # [B, 3, T, H, W]
    height, width = latent_shape[-2:]
    pooled = F.adaptive_avg_pool3d(frames, (frames.shape[2], height, width))
    if temporal_stride > 1:
        pooled = torch.cat([pooled[:, :, :1].expand(-1, -1, temporal_stride - 1, -1, -1), pooled], dim=2)
        pooled = F.max_pool3d(pooled, (temporal_stride, 1, 1), stride=(temporal_stride, 1, 1))
    pooled = pooled[:, :, : latent_shape[2]]
    return pooled[:, 0:1], pooled[:, 1:3].amax(dim=1, keepdim=True)


def drop_conditions(conditions: dict[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
    """Every condition tensor (batch first, any rank) with the samples where `keep` [B] is False set to zeros.

    Zeros in every condition at once are the unconditional input: training drops them together (HIA eq. 4,
    the reference and the motion in one go) so that inference's classifier-free guidance can ask for exactly
    this with `keep` all False."""
    for name, value in conditions.items():
        if keep.shape != value.shape[:1]:
            raise ValueError(f"keep has shape {tuple(keep.shape)}; condition {name!r} has a batch of {len(value)}")
    return {name: torch.where(keep.to(value.device).view(-1, *[1] * (value.ndim - 1)), value, torch.zeros_like(value))
            for name, value in conditions.items()}


def step_generator(seed: int, step: int, micro: int, rank: int, device: torch.device) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{step}/{micro}/{rank}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


# The trainer ---------------------------------------------------------------------------------------------------


class Trainer:
    """Model, EMA, optimiser and schedule of one training process; `fit` runs steps over a batch iterator."""

    def __init__(self, config: TrainConfig, rank: int = 0, world_size: int = 1, device: torch.device | None = None):
        self.config, self.rank, self.world_size = config, rank, world_size
        self.device = device or default_device(config.device)
        torch.manual_seed(config.seed)  # identical initial weights on every rank and every run
        self.vae = build_vae(config.model.vae).to(self.device).eval().requires_grad_(False)
        motion = MOTION_CHANNELS if config.objectives.motion_weight else 0
        model = build_denoiser(config.model.denoiser, self.vae, config.data.conditions, motion).to(self.device)
        if config.model.gradient_checkpointing:
            if not hasattr(model, "enable_gradient_checkpointing"):
                raise ValueError(f"{type(model).__name__} has no enable_gradient_checkpointing()")
            model.enable_gradient_checkpointing()
        self.frozen = freeze(model, config.optim.freeze)
        self.model = model
        self.ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.optim.ema_decay), use_buffers=True)
                    if config.optim.ema_decay else None)
        self.ddp = (nn.parallel.DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda"
                                                        else None)
                    if world_size > 1 else model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optim = config.optim
        self.optimizer = torch.optim.AdamW(trainable, lr=optim.lr, betas=tuple(optim.betas),
                                           weight_decay=optim.weight_decay)
        warmup = optim.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        self.alphas_cumprod = self._alphas_cumprod()
        self.arcface = load_arcface(config.objectives.arcface).to(self.device) if config.objectives.identity_weight \
            else None
        if config.objectives.identity_weight and not config.objectives.arcface:
            raise ValueError("objectives.identity_weight needs objectives.arcface (a TorchScript ArcFace file)")
        if not 0 <= config.objectives.condition_dropout < 1:
            raise ValueError(f"objectives.condition_dropout is the probability of dropping a sample's conditions: "
                             f"it must be in [0, 1), got {config.objectives.condition_dropout}")
        self.step = 0

    # schedule ----------------------------------------------------------------------------------------------

    def _alphas_cumprod(self) -> Tensor | None:
        schedule = self.config.schedule
        if schedule.family != "ddpm":
            if schedule.shifted_snr_gamma is not None:
                raise ValueError("schedule.shifted_snr_gamma applies to the ddpm family only")
            return None
        betas = sch.ddpm_betas(schedule.beta_schedule, schedule.num_train_timesteps, schedule.beta_start,
                               schedule.beta_end)
        alphas_cumprod = sch.alphas_cumprod_from_betas(betas)
        if schedule.shifted_snr_gamma is not None:
            alphas_cumprod = sch.shift_snr(alphas_cumprod, schedule.shifted_snr_gamma)
        return alphas_cumprod.to(self.device)

    def noise_state(self, batch_size: int, generator: torch.Generator) -> sch.NoiseState:
        schedule = self.config.schedule
        if schedule.family == "ddpm":
            t = torch.randint(0, schedule.num_train_timesteps, (batch_size,), generator=generator,
                              device=self.device)
            return sch.ddpm_state(self.alphas_cumprod, t)
        if schedule.family == "edm":
            sigma = torch.exp(schedule.edm_p_mean + schedule.edm_p_std *
                              torch.randn(batch_size, generator=generator, device=self.device))
            return sch.edm_state(sigma, schedule.edm_sigma_data)
        if schedule.family == "flow":
            u = torch.randn(batch_size, generator=generator, device=self.device)
            t = sch.shift_flow_time(torch.sigmoid(schedule.flow_logit_mean + schedule.flow_logit_std * u),
                                    schedule.flow_shift)
            return sch.flow_state(t)
        raise ValueError(f"schedule.family must be ddpm, edm or flow, got {schedule.family!r}")

    # one micro-batch ---------------------------------------------------------------------------------------

    def loss_terms(self, batch: dict[str, Any], generator: torch.Generator, model: nn.Module | None = None
                   ) -> dict[str, Tensor]:
        """Every switched-on loss for one batch; 'total' is their weighted sum."""
        config, objectives = self.config, self.config.objectives
        model = model or self.ddp
        require_batch_fields(batch, objective_fields(config))
        frames = batch["frames"].to(self.device).float() / 127.5 - 1  # uint8 [B, 3, T, H, W] -> [-1, 1]
        conditions = {name: value.to(self.device).float() for name, value in batch["conditions"].items()}
        with torch.no_grad(), self.autocast():
            x0 = self.vae.encode(frames).float()
        batch_size, channels = x0.shape[:2]
        noise = torch.randn(x0.shape, generator=generator, device=self.device)
        if objectives.articulated_noise:
            noise = obj.mix_articulated_noise(self._latent_field(batch, "noise", x0.shape), noise, self._gamma(
                batch_size, generator))
        state = self.noise_state(batch_size, generator)
        if objectives.condition_dropout and model.training:
            # Like nn.Dropout, in training mode only (evaluate scores the conditional loss). Drawn last, so noise
            # and timesteps are those of the same step without dropout.
            keep = torch.rand(batch_size, generator=generator, device=self.device) >= objectives.condition_dropout
            conditions = drop_conditions(conditions, keep)
        x_t = sch.add_noise(x0, noise, state)
        with self.autocast():
            output = model(sch.per_sample(state.input_scale, x_t) * x_t, state.model_time, conditions)
        output = output.float()
        prediction = output[:, :channels]
        target = obj.denoising_target(objectives.prediction, x0, noise, state)
        terms = {"denoise": obj.denoising_loss(prediction, target)}
        weights = {"denoise": 1.0}
        needs_x0 = objectives.geometric_weight or objectives.face_weight or objectives.hand_weight or \
            objectives.identity_weight
        x0_hat = obj.x0_from_prediction(objectives.prediction, prediction, x_t, state) if needs_x0 else None
        if objectives.motion_weight or objectives.geometric_weight:
            flow_shape = (batch_size, 2, x0.shape[2] - 1) + tuple(x0.shape[3:])
            flow = self._latent_field(batch, "noise_flow", flow_shape)
            visible = self._latent_field(batch, "noise_visible", (batch_size,) + flow_shape[2:])
            if objectives.motion_weight:
                # Motion channels at latent frame t >= 1 predict the backward flow from t to t - 1.
                terms["motion"] = obj.motion_loss(output[:, channels:channels + MOTION_CHANNELS, 1:], flow, visible)
                weights["motion"] = objectives.motion_weight
            if objectives.geometric_weight:
                terms["geometric"] = obj.geometric_consistency_loss(x0_hat, flow, visible)
                weights["geometric"] = objectives.geometric_weight
        if objectives.face_weight or objectives.hand_weight:
            face, hands = latent_region_masks(batch["masks"].to(self.device), x0.shape, self.vae.temporal_stride)
            for name, mask, weight in (("face", face, objectives.face_weight), ("hands", hands, objectives.hand_weight)):
                if weight:
                    terms[name] = obj.regional_x0_loss(x0_hat, x0, mask, state, objectives.regional_max_time)
                    weights[name] = weight
        if objectives.identity_weight:
            terms["identity"] = self._identity_loss(batch, x0_hat, state)
            weights["identity"] = objectives.identity_weight
        terms["total"] = sum(weights[name] * terms[name] for name in weights)
        return terms

    def _latent_field(self, batch: dict[str, Any], name: str, shape: tuple[int, ...]) -> Tensor:
        value = batch[name].to(self.device).float()
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"batch field {name!r} has shape {tuple(value.shape)} but this VAE's latents need "
                             f"{tuple(shape)}: build the shards' noise for the target VAE's latent grid")
        return value

    def _gamma(self, batch_size: int, generator: torch.Generator) -> float | Tensor:
        gamma = self.config.objectives.noise_gamma
        if isinstance(gamma, (tuple, list)):
            low, high = gamma
            return (low + (high - low) * torch.rand(batch_size, generator=generator, device=self.device))
        return float(gamma)

    def _identity_loss(self, batch: dict[str, Any], x0_hat: Tensor, state: sch.NoiseState) -> Tensor:
        """HIA face identity: ArcFace of the faces in the decoded one-step x0 against the subject's embedding."""
        decoded = self.vae.decode(x0_hat)  # [B, 3, T'', H, W]
        batch_size, _, frames = decoded.shape[:3]
        boxes = batch["face_box"].to(self.device).float()[:, :frames, :4]  # pixel centres, NaN where unseen
        reference = batch["face_embedding"].to(self.device).float()
        seen = torch.isfinite(boxes).all(dim=-1) & batch["face_embedding_present"].to(self.device)[:, None]
        seen = seen & (state.model_time < self.config.objectives.regional_max_time).to(self.device)[:, None]
        edges = torch.nan_to_num(boxes) + torch.tensor([-0.5, -0.5, 0.5, 0.5], device=self.device)
        crops = obj.crop_faces(decoded.permute(0, 2, 1, 3, 4).flatten(0, 1), edges.flatten(0, 1))
        return obj.face_identity_loss(crops, reference.repeat_interleave(frames, dim=0), self.arcface,
                                      seen.flatten().float())

    def autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.config.precision != "fp32":
            raise ValueError(f"precision must be fp32 or bf16, got {self.config.precision!r}")
        return nullcontext()

    # steps -------------------------------------------------------------------------------------------------

    def train_step(self, batches: Iterator[dict[str, Any]]) -> dict[str, float]:
        """One optimiser step over `optim.accumulation` micro-batches drawn from `batches`."""
        self.model.train()
        accumulation = self.config.optim.accumulation
        totals: dict[str, float] = {}
        for micro in range(accumulation):
            batch = next(batches)
            generator = step_generator(self.config.seed, self.step, micro, self.rank, self.device)
            last = micro == accumulation - 1
            # DDP all-reduces gradients only on the last micro-batch of the step.
            sync = self.ddp.no_sync() if (self.world_size > 1 and not last) else nullcontext()
            with sync:
                terms = self.loss_terms(batch, generator)
                (terms["total"] / accumulation).backward()
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach()) / accumulation
        if self.config.optim.grad_clip:
            totals["grad_norm"] = float(nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.config.optim.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        totals["lr"] = self.scheduler.get_last_lr()[0]
        return totals

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any], seed: int = 1234, use_ema: bool = False) -> dict[str, float]:
        """Loss terms of one batch at fixed noise and timesteps (seeded), for comparing weights over training."""
        model = self.ema.module if (use_ema and self.ema is not None) else self.model
        was_training = model.training
        model.eval()
        try:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            return {name: float(value) for name, value in self.loss_terms(batch, generator, model).items()}
        finally:
            model.train(was_training)

    # checkpoints -------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "config": to_dict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError("the checkpoint has no EMA weights but optim.ema_decay is set")
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])


def default_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def freeze(model: nn.Module, prefixes: list[str]) -> list[str]:
    """Stop training the parameters whose names start with any of `prefixes`; returns their names."""
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            groups = sorted({name.split(".")[0] for name in names})
            raise ValueError(f"optim.freeze: no parameter name starts with {prefix!r}; top-level groups: {groups}")
    frozen = []
    for name, parameter in model.named_parameters():
        if any(name.startswith(prefix) for prefix in prefixes):
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """torch.save to a temporary name, then rename: a crash mid-write never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)
    return path


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("step-*.pt"))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only: a checkpoint holds tensors and plain values, so nothing in it is ever unpickled as code.
    return torch.load(path, map_location="cpu", weights_only=True)


# Logging -------------------------------------------------------------------------------------------------------


class MetricsLog:
    """metrics.csv always; TensorBoard event files where tensorboard (or tensorboardX) is installed."""

    def __init__(self, folder: Path, enabled: bool):
        self.enabled, self.folder = enabled, folder
        self.rows: list[dict[str, float]] = []
        self.writer = None
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = folder / "metrics.csv"
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                SummaryWriter = None
        self.writer = SummaryWriter(str(folder / "tensorboard")) if SummaryWriter else None

    def write(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **values}
        self.rows.append(row)
        if not self.enabled:
            return
        new_file = not self.csv_path.exists()
        columns = list(row)
        if not new_file:
            with self.csv_path.open() as handle:
                columns = next(csv.reader(handle))
            columns += [name for name in row if name not in columns]
        with self.csv_path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore", restval="")
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"train/{name}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class SampleKeyLog:
    """samples-rank{R}.csv: the clip keys each step trained on, with the loader worker that read them."""

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, batch: dict[str, Any]) -> None:
        if self.path is None:
            return
        new_file = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new_file:
                writer.writerow(["step", "rank", "worker", "key"])
            for key, rank, worker in zip(batch["key"], batch["rank"].tolist(), batch["worker"].tolist()):
                writer.writerow([step, rank, worker, key])


def progress_bar(enabled: bool, total: int, start: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("[bold]step"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                        TimeElapsedColumn(), disable=not enabled, transient=False)
    task = progress.add_task("train", total=total, completed=start, info="")
    return progress, task


# The loop ------------------------------------------------------------------------------------------------------


class CountingBatches:
    """Batches from the stream, timing how long the trainer waits for each and logging the keys it trains on."""

    def __init__(self, stream: Iterable[dict[str, Any]], keys: SampleKeyLog, trainer: Trainer):
        self.iterator, self.keys, self.trainer = iter(stream), keys, trainer
        self.wait_seconds, self.samples = 0.0, 0

    def __next__(self) -> dict[str, Any]:
        started = time.perf_counter()
        batch = next(self.iterator)
        self.wait_seconds += time.perf_counter() - started
        self.samples += len(batch["frames"])
        self.keys.write(self.trainer.step, batch)
        return batch


def run(config: TrainConfig, resume: bool = False, rank: int = 0, world_size: int = 1,
        device: torch.device | None = None, batches: Iterable[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train one process (rank) to config.max_steps; returns the final metrics.

    `batches` replaces the shard stream (tests feed synthetic fields through it); with it, the stream's
    position is not checkpointed.
    """
    output = Path(config.output_dir)
    trainer = Trainer(config, rank, world_size, device)
    stream = None
    if batches is None:
        spec = StreamSpec(shard_urls(config.data.shards), requested_fields(config.data, objective_fields(config)),
                          config.data, config.seed, rank, world_size)
        stream = batches = DataStream(spec)
    if resume:
        found = latest_checkpoint(output / "checkpoints")
        if found is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {output / 'checkpoints'}")
        state = load_checkpoint(found)
        trainer.load_state_dict(state)
        if stream is not None:
            positions = state.get("data") or []
            if len(positions) != world_size:
                raise ValueError(f"{found} holds the data position of {len(positions)} rank(s); this run has "
                                 f"{world_size}: resume with the same number of training processes")
            stream.load_state_dict(positions[rank])
    is_main = rank == 0
    log = MetricsLog(output, enabled=is_main)
    keys = SampleKeyLog(output / f"samples-rank{rank}.csv" if config.log_sample_keys else None)
    counting = CountingBatches(batches, keys, trainer)
    progress, task = progress_bar(config.progress and is_main, config.max_steps, trainer.step)
    window_start, window_wait, window_samples = time.perf_counter(), 0.0, 0
    metrics: dict[str, float] = {}
    with progress:
        while trainer.step < config.max_steps:
            metrics = trainer.train_step(counting)
            step = trainer.step
            if step % max(config.log_every, 1) == 0 or step == config.max_steps:
                elapsed = time.perf_counter() - window_start
                metrics["samples_per_s"] = (counting.samples - window_samples) * world_size / max(elapsed, 1e-9)
                metrics["data_wait_share"] = (counting.wait_seconds - window_wait) / max(elapsed, 1e-9)
                window_start, window_wait, window_samples = time.perf_counter(), counting.wait_seconds, counting.samples
                log.write(step, metrics)
                progress.update(task, completed=step, info=(
                    f"loss {metrics['total']:.4f}  {metrics['samples_per_s']:.1f} samples/s  "
                    f"data wait {100 * metrics['data_wait_share']:.0f}%"))
            if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == config.max_steps:
                checkpoint(trainer, stream, output, rank, world_size)
    log.close()
    metrics["data_wait_seconds"] = counting.wait_seconds
    return {"step": trainer.step, "metrics": metrics, "trainer": trainer}


def checkpoint(trainer: Trainer, stream: DataStream | None, output: Path, rank: int, world_size: int) -> None:
    position = stream.state_dict() if stream is not None else None
    positions = [position]
    if world_size > 1:
        positions = [None] * world_size
        dist.all_gather_object(positions, position)
    if rank == 0:
        state = trainer.state_dict()
        state["data"] = positions if stream is not None else None
        save_checkpoint(output / "checkpoints" / CHECKPOINT_PATTERN.format(trainer.step), state)
    if world_size > 1:
        dist.barrier()  # no rank runs ahead (and may resume) before the checkpoint exists


# Entry points --------------------------------------------------------------------------------------------------


def train(config: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """`humanim train`: one process, torchrun's processes, or Ray Train workers, as config.distributed says."""
    backend = config.distributed.backend
    if backend == "ray":
        return train_with_ray(config, resume)
    if backend != "none":
        raise ValueError(f"distributed.backend must be none or ray, got {backend!r}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:  # launched by torchrun
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = default_device(config.device)
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        try:
            return run(config, resume, dist.get_rank(), world_size, device)
        finally:
            dist.destroy_process_group()
    return run(config, resume)


def _ray_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    config = from_dict(TrainConfig, loop_config["config"])
    context = ray.train.get_context()
    device = ray.train.torch.get_device() if config.distributed.use_gpu else torch.device("cpu")
    result = run(config, loop_config["resume"], context.get_world_rank(), context.get_world_size(), device)
    ray.train.report({"step": result["step"], **{k: v for k, v in result["metrics"].items()
                                                 if isinstance(v, (int, float)) and math.isfinite(v)}})


def train_with_ray(config: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Ray Train's TorchTrainer: one worker per GPU (or CPU process), DDP set up by Ray; each worker runs `run`.

    output_dir must be a folder every worker can reach (one machine, or a shared file system): rank 0 writes
    the checkpoints there and every rank reads them on --resume.
    """
    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as error:
        raise ImportError(f"distributed.backend: ray needs Ray Train: pip install 'ray[train]' ({error})") from error

    distributed = config.distributed
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=distributed.address, include_dashboard=False)
    try:
        output = Path(config.output_dir).resolve()
        plain = to_dict(config)
        plain["output_dir"] = str(output)
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={"config": plain, "resume": resume},
            scaling_config=ScalingConfig(num_workers=distributed.num_workers, use_gpu=distributed.use_gpu),
            run_config=RunConfig(storage_path=distributed.storage_path or str(output / "ray"), name="train"),
        )
        result = trainer.fit()
        return {"step": (result.metrics or {}).get("step"), "metrics": result.metrics or {}}
    finally:
        if started_here:
            ray.shutdown()


__all__ = ["Trainer", "run", "train", "train_with_ray", "objective_fields", "latent_region_masks", "drop_conditions",
           "freeze", "save_checkpoint", "load_checkpoint", "latest_checkpoint"]
