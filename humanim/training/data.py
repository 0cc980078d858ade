"""Streaming training data: shards read as a stream, decoded through the sample registry, augmented, batched.

One stream per training process (rank) and, inside it, per DataLoader worker:

    shard list -> shard order -> split by rank -> split by worker -> tar members -> samples -> shuffle buffer
      -> skip (resume) -> decode (schemas.fields, no pickle) -> augment -> conditions -> batches

Epoch mode (`resampled: false`): every epoch visits each shard once, in an order shuffled by (seed, epoch) that
all ranks share, so the rank and worker slices are disjoint and together cover the epoch. Resampled mode
(`resampled: true`): each rank and worker draws shards with replacement from its own seeded generator, a
stream that never ends; WebDataset's `with_epoch` cuts it into epochs of `samples_per_epoch` samples in all,
which is what multi-node training wants (no rank runs out first, shard counts need not divide).

Each loader worker runs through its own epochs and tags every sample with (epoch, index in that epoch); the
stream's position is, per worker, the epoch and index after the last sample trained on. Everything random is
seeded from (seed, epoch, rank, worker, index), so a resumed stream skips what was already used, before
decoding it, and then yields exactly the batches an unbroken run would have.
"""
from __future__ import annotations

import glob
import os
import random
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, default_collate, get_worker_info
from webdataset.gopen import gopen, gopen_schemes
from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, tar_file_expander

from humanim.schemas.fields import FIELDS, decode_field
from humanim.stages.masks import unpack_masks
from humanim.training.augment import augment
from humanim.training.conditions import CONDITION_FIELDS, build_conditions
from humanim.training.config import DataConfig

# Latent-grid fields as stored -> as batched: time after channels, like the latents [C, T', h, w].
CHANNELS_FIRST = {"noise": (1, 0, 2, 3), "noise_flow": (1, 0, 2, 3)}


class MissingFieldError(ValueError):
    """A field the config asks for is not in a sample of the shards (or not in the registry at all)."""


# Shard lists ---------------------------------------------------------------------------------------------------


def shard_urls(specs: list[str] | str) -> list[str]:
    """Every shard named by `specs`: a build folder (its shards/*.tar), a .tar path, a glob, a brace pattern
    ("data/train-{000000..000009}.tar"), a URL, an fsspec path ("s3://bucket/x.tar") or a "pipe:" command."""
    urls: list[str] = []
    for spec in [specs] if isinstance(specs, str) else specs:
        spec = str(spec)
        if os.path.isdir(spec):
            folder = Path(spec) / "shards" if (Path(spec) / "shards").is_dir() else Path(spec)
            found = sorted(str(p) for p in folder.glob("*.tar"))
            if not found:
                raise FileNotFoundError(f"no .tar shards in {folder}")
            urls += found
        elif "://" not in spec and not spec.startswith("pipe:") and any(c in spec for c in "*?["):
            found = sorted(glob.glob(spec))
            if not found:
                raise FileNotFoundError(f"no shards match {spec}")
            urls += found
        else:
            urls += expand_urls(spec)
    if not urls:
        raise ValueError("data.shards names no shard")
    return urls


def open_shard(url: str):
    """A readable stream of one shard: WebDataset's gopen for paths, pipe: and its URL schemes, fsspec for
    any other scheme (s3, gcs, az, hf, memory, ...)."""
    scheme = urlparse(url).scheme
    if scheme in ("", "file") or scheme in gopen_schemes or len(scheme) == 1:  # len 1: a Windows drive letter
        return gopen(url, "rb")
    import fsspec  # only object-store readers need it

    return fsspec.open(url, "rb").open()


def _open_shards(source: Iterator[dict]) -> Iterator[dict]:
    for item in source:
        try:
            item["stream"] = open_shard(item["url"])
        except Exception as error:
            raise OSError(f"cannot open shard {item['url']}: {error}") from error
        yield item


# Decoding ------------------------------------------------------------------------------------------------------


def requested_fields(config: DataConfig, objective_fields: tuple[str, ...] = ()) -> list[str]:
    """The registry fields a run reads: frames and meta always, then what conditions, objectives and
    data.fields ask for, in a fixed order."""
    names = ["frames", "meta"]
    for condition in config.conditions:
        names += CONDITION_FIELDS.get(condition, ())
    names += list(objective_fields) + list(config.fields)
    return list(dict.fromkeys(names))


def check_registered(names: list[str]) -> None:
    for name in names:
        if name not in FIELDS:
            raise MissingFieldError(
                f"field {name!r} is not in the sample registry (humanim/schemas/fields.py): "
                f"no shard can hold it yet; registered fields: {sorted(FIELDS)}")


def flagged(name: str) -> bool:
    """An optional field of fixed shape (an embedding) may be absent from some samples: it is batched as zeros
    with a `{name}_present` flag. Any other field a run asks for must be in every sample."""
    spec = FIELDS[name]
    return spec.optional and all(isinstance(d, int) for d in spec.shape)


def decode_sample(raw: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Raw tar members of one sample -> {field name: value} for `names`, each through the registry."""
    out: dict[str, Any] = {}
    for name in names:
        spec = FIELDS[name]
        if spec.ext not in raw:
            if flagged(name):
                continue
            held = sorted(f.name for f in FIELDS.values() if f.ext in raw)
            raise MissingFieldError(
                f"field {name!r} (member {raw['__key__']}.{spec.ext}) is requested by the training config but "
                f"absent from sample {raw['__key__']} in shard {raw.get('__url__')}; the shards hold {held}. "
                f"Rebuild them with the stage that writes it ({spec.stage}) or drop what needs it from the config")
        out[name] = decode_field(spec, raw[spec.ext])
    for name in ("masks", "body_mask"):  # bit-packed along W
        if name in out:
            out[name] = unpack_masks(out[name], int(out["meta"]["width"]))
    return out


def to_training_sample(sample: dict[str, Any], names: list[str], conditions: list[str]) -> dict[str, Any]:
    """An augmented sample -> what the trainer batches: tensors only, plus the clip key."""
    out: dict[str, Any] = {"key": sample["meta"]["key"],
                           "frames": torch.from_numpy(sample["frames"]).permute(3, 0, 1, 2).contiguous()}
    out["conditions"] = {name: torch.from_numpy(value).to(torch.float16)
                         for name, value in build_conditions(sample, conditions).items()}
    for name in names:
        if name in ("frames", "meta"):
            continue
        if flagged(name):  # batches need every key in every sample
            present = name in sample
            out[f"{name}_present"] = present
            value = sample[name] if present else np.zeros(
                [d for d in FIELDS[name].shape if isinstance(d, int)], dtype=FIELDS[name].dtype)
        else:
            value = sample[name]
        if isinstance(value, dict):  # npz: body-model fit parameters
            out[name] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in value.items()}
            continue
        value = torch.from_numpy(np.ascontiguousarray(value))
        if name in CHANNELS_FIRST:
            value = value.permute(CHANNELS_FIRST[name]).contiguous()
        if name == "ref_frame":
            value = value.permute(2, 0, 1).contiguous()
        out[name] = value.float() if value.dtype == torch.float16 else value
    return out


# The stream ----------------------------------------------------------------------------------------------------


@dataclass
class StreamPosition:
    """Where each loader worker of one training process stands: (epoch, samples of that epoch already used).

    Workers run through epochs independently (one with more shards finishes its part of an epoch later);
    every (epoch, shard) pair is still read by exactly one worker of one rank."""

    workers: dict[int, tuple[int, int]] = field(default_factory=dict)
    batches: int = 0  # batches trained on, all workers together

    def start(self, worker: int) -> tuple[int, int]:
        return self.workers.get(worker, (0, 0))


@dataclass
class StreamSpec:
    """Everything a loader worker needs to make its part of the stream (plain values: it crosses processes)."""

    urls: list[str]
    names: list[str]
    config: DataConfig
    seed: int
    rank: int = 0
    world_size: int = 1
    position: StreamPosition = field(default_factory=StreamPosition)

    @property
    def workers(self) -> int:
        return max(1, self.config.num_workers)


def _worker() -> int:
    info = get_worker_info()
    return 0 if info is None else info.id


class ShardOrder(torch.utils.data.IterableDataset):
    """The shards one rank's loader worker reads in one epoch, as WebDataset's {"url": ...} items."""

    def __init__(self, spec: StreamSpec, epoch: int, worker: int):
        self.spec, self.epoch, self.worker = spec, epoch, worker

    def __iter__(self) -> Iterator[dict]:
        spec = self.spec
        if spec.config.resampled:
            # Each (rank, worker) draws its own endless sequence: nothing to split, no rank runs out first.
            rng = random.Random(f"{spec.seed}/{self.epoch}/{spec.rank}/{self.worker}/shards")
            while True:
                yield {"url": rng.choice(spec.urls)}
        order = list(spec.urls)
        if spec.config.shard_shuffle:
            random.Random(f"{spec.seed}/{self.epoch}/shards").shuffle(order)  # the same order on every rank
        # Split by rank, then by worker, as wds.split_by_node and wds.split_by_worker do, with the rank given
        # explicitly (Ray Train and torchrun both tell it) rather than read from a global process group.
        for url in list(islice(order, spec.rank, None, spec.world_size))[self.worker::spec.workers]:
            yield {"url": url}


def epoch_pipeline(spec: StreamSpec, epoch: int, worker: int, skip: int = 0) -> wds.DataPipeline:
    """One epoch of batches for one loader worker of one rank, after skipping `skip` samples (resume).

    Epoch mode: the worker's share of the shards, once. Resampled mode: an endless draw that with_epoch cuts
    to this worker's share of data.samples_per_epoch.
    """
    config = spec.config

    def shuffle(samples):
        if config.shuffle_buffer <= 1:
            return samples
        rng = random.Random(f"{spec.seed}/{epoch}/{spec.rank}/{worker}/buffer")
        return wds.shuffle(config.shuffle_buffer, initial=config.shuffle_buffer, rng=rng)(samples)

    def prepare(samples):
        # Indices count the samples skipped too, so seeds (and so augmentations) match an unbroken run.
        for index, raw in enumerate(samples):
            if index < skip:
                continue  # skipped before decoding: resuming costs reading, not decoding
            sample = decode_sample(raw, spec.names)
            rng = np.random.default_rng([spec.seed, epoch, spec.rank, worker, index])
            sample = augment(sample, rng, config.resolution, config.frames, config.augment.flip,
                             config.augment.crop_scale)
            item = to_training_sample(sample, spec.names, config.conditions)
            item.update(rank=spec.rank, worker=worker, epoch=epoch, index=index)
            yield item

    pipeline = wds.DataPipeline(
        ShardOrder(spec, epoch, worker), _open_shards, tar_file_expander, group_by_keys, shuffle, prepare,
        wds.batched(config.batch_size, collation_fn=default_collate, partial=False),
    )
    if config.resampled:
        pipeline = pipeline.with_epoch(nbatches=batches_per_worker_epoch(spec))
    return pipeline


def batches_per_worker_epoch(spec: StreamSpec) -> int:
    config = spec.config
    if not config.samples_per_epoch:
        raise ValueError("data.resampled needs data.samples_per_epoch: a resampled stream never ends by itself")
    per_worker = config.samples_per_epoch // (spec.world_size * spec.workers * config.batch_size)
    if per_worker < 1:
        raise ValueError(f"data.samples_per_epoch = {config.samples_per_epoch} is less than one batch of "
                         f"{config.batch_size} for each of {spec.world_size * spec.workers} loader workers")
    return per_worker


class WorkerStream(torch.utils.data.IterableDataset):
    """Epoch after epoch, for whichever loader worker iterates it; never ends."""

    def __init__(self, spec: StreamSpec):
        check_registered(spec.names)
        self.spec = spec

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # The DataLoader takes batches from its workers in turn, always starting at its worker 0; a resumed
        # stream renames its workers so that the one whose turn was next in the saved run goes first.
        worker = (_worker() + self.spec.position.batches) % self.spec.workers
        epoch, skip = self.spec.position.start(worker)
        while True:
            produced = 0
            for batch in epoch_pipeline(self.spec, epoch, worker, skip):
                produced += 1
                yield batch
            if produced == 0 and skip == 0:
                spec = self.spec
                raise ValueError(
                    f"loader worker {worker} of rank {spec.rank} got no batch in epoch {epoch}: "
                    f"{len(spec.urls)} shard(s) shared by {spec.world_size} rank(s) x {spec.workers} worker(s), "
                    f"batch size {spec.config.batch_size}; use fewer workers, a smaller batch, smaller shards "
                    f"or data.resampled")
            epoch, skip = epoch + 1, 0


class DataStream:
    """Endless batches for one training process, with a position to save and restore exactly."""

    def __init__(self, spec: StreamSpec):
        self.spec = spec

    def state_dict(self) -> dict[str, Any]:
        position = self.spec.position
        return {"num_workers": self.spec.workers, "batches": position.batches,
                "workers": {str(w): list(p) for w, p in position.workers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["num_workers"]) != self.spec.workers:
            raise ValueError(f"the saved stream ran {state['num_workers']} loader worker(s); this run has "
                             f"{self.spec.workers}: resume with the same data.num_workers")
        self.spec.position = StreamPosition({int(w): (int(e), int(i)) for w, (e, i) in state["workers"].items()},
                                            int(state["batches"]))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        config = self.spec.config
        loader = DataLoader(WorkerStream(self.spec), batch_size=None, num_workers=config.num_workers,
                            prefetch_factor=2 if config.num_workers else None, pin_memory=torch.cuda.is_available())
        for batch in loader:
            worker = int(batch["worker"][0])
            self.spec.position.workers[worker] = (int(batch["epoch"][-1]), int(batch["index"][-1]) + 1)
            self.spec.position.batches += 1
            yield batch
