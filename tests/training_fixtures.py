"""Shards for the trainer's tests, built once per session from two real videos, and synthetic stand-ins for
the fields whose stages have not landed yet (articulated noise, correspondences, face embeddings) or that
the build's detection-only face back-end does not write (the reference face embedding of the identity
condition).

The build: a talking head and a full-body dancer, 3 clips each of 8 frames at 128 x 128, one sample per
shard (6 shards, so two ranks with two loader workers each all get shards), with pose, face boxes (YuNet),
masks and hand blur. Import the fixtures into a test module with `from training_fixtures import *`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from conftest import asset, run_build, write_config

from humanim.training import config as training_config

VIDEOS = ("moore_talkinghead_3.mp4", "animatex_dance_1.mp4")
CLIPS = 6


# Each test module that imports the fixture gets its own copy of it, so "session" scope alone would build once
# per module; the build is kept here, per session base folder, and made once.
_BUILDS: dict[str, Path] = {}


@pytest.fixture(scope="session")
def training_shards(tmp_path_factory) -> Path:
    """The build folder; its shards/ holds CLIPS single-sample shards."""
    session = str(tmp_path_factory.getbasetemp())
    if session not in _BUILDS:
        _BUILDS[session] = _build(tmp_path_factory)
    return _BUILDS[session]


def _build(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("training-shards")
    videos = root / "videos"
    videos.mkdir()
    for name in VIDEOS:
        (videos / name).symlink_to(asset(f"videos/{name}"))
    models = asset("models/face_detection_yunet_2026may.onnx").parent
    config = write_config(root / "config.yaml", {"stages": ["decode", "pose", "face", "masks", "blur"],
                                                 "face": {"backend": "yunet"},
                                                 "shards": {"max_samples": 1}})
    run_build(videos, root / "out", config, num_cpus=2, env={"HUMANIM_MODELS": str(models)})
    shards = sorted((root / "out" / "shards").glob("*.tar"))
    assert len(shards) == CLIPS, f"expected {CLIPS} single-sample shards, got {[s.name for s in shards]}"
    return root / "out"


def tiny_config(tmp_path: Path, shards: list[str] | str, **overrides) -> training_config.TrainConfig:
    """A tiny CPU run: 64 x 64 frames, a 4-channel VAE at stride 8, a small denoiser, no progress bar."""
    values = {
        "output_dir": str(tmp_path / "run"), "seed": 0, "max_steps": 10, "log_every": 5, "progress": False,
        "data": {"shards": [str(s) for s in ([shards] if isinstance(shards, (str, Path)) else shards)],
                 "resolution": [64, 64], "conditions": ["pose"], "batch_size": 2, "num_workers": 0,
                 "shard_shuffle": False},
        "model": {"vae": {"kind": "tiny", "latent_channels": 4, "spatial_stride": 8},
                  "denoiser": {"kind": "tiny", "hidden": 32, "depth": 2}},
        "optim": {"lr": 2e-3, "ema_decay": 0.9},
    }
    return training_config.from_dict(training_config.TrainConfig, training_config.merge(values, overrides))


def _key_generator(key: str, salt: str) -> torch.Generator:
    digest = hashlib.sha256(f"{key}/{salt}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def with_synthetic_fields(batches, latent_shape: tuple[int, int, int, int], flow_shift: float = 1.0):
    """Batches with the fields the shards lack today, as the loader will batch them: a fixed Gaussian noise per
    clip [B, C, T', h, w], a uniform backward flow of `flow_shift` cells to the left [B, 2, T'-1, h, w],
    visibility 1 [B, T'-1, h, w], and a unit face embedding per clip [B, 512] marked present."""
    channels, frames, height, width = latent_shape
    for batch in batches:
        batch = dict(batch)
        keys = batch["key"]
        batch["noise"] = torch.stack([torch.randn(latent_shape, generator=_key_generator(k, "noise")) for k in keys])
        flow = torch.zeros(len(keys), 2, frames - 1, height, width)
        flow[:, 0] = flow_shift
        batch["noise_flow"] = flow
        batch["noise_visible"] = torch.ones(len(keys), frames - 1, height, width)
        embeddings = torch.stack([torch.randn(512, generator=_key_generator(k, "face")) for k in keys])
        batch["face_embedding"] = embeddings / embeddings.norm(dim=-1, keepdim=True)
        batch["face_embedding_present"] = torch.ones(len(keys), dtype=torch.bool)
        yield batch


def with_identity_condition(batches):
    """Batches with the identity condition as the loader batches it: a unit reference face embedding per clip,
    float16 [B, 512] (the build's YuNet back-end has no recognition model, so the shards lack it)."""
    for batch in batches:
        embeddings = torch.stack([torch.randn(512, generator=_key_generator(k, "ref_face")) for k in batch["key"]])
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        yield dict(batch, conditions=dict(batch["conditions"], identity=embeddings.to(torch.float16)))


class TinyArcFaceStandIn(torch.nn.Module):
    """Stands in for ArcFace (same interface: RGB [N, 3, 112, 112] in [-1, 1] -> [N, 512]); random weights."""

    def __init__(self):
        super().__init__()
        # No biases and no pooling: the embedding follows the crop's content closely, so the identity loss has
        # a gradient worth following (a random network with biases maps every crop to nearly one vector).
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 8, stride=8, bias=False), torch.nn.SiLU(),
                                            torch.nn.Flatten())
        self.project = torch.nn.Linear(16 * 14 * 14, 512, bias=False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(crops))


def tiny_arcface_standin_file(folder: Path) -> Path:
    torch.manual_seed(0)
    path = folder / "tiny_arcface_standin.pt"
    torch.jit.script(TinyArcFaceStandIn()).save(str(path))
    return path
