"""The trainer on CPU with the tiny denoiser and VAE, on shards built from real videos: it overfits a few clips
with each objective, resumes exactly, freezes what it is told, drops conditions for classifier-free guidance,
conditions on identity, and runs under Ray Train with DDP."""
from __future__ import annotations

import csv
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import subprocess_env
from torch import nn
from training_fixtures import (  # noqa: F401 - the session fixture
    CLIPS, tiny_arcface_standin_file, tiny_config, training_shards, with_identity_condition, with_synthetic_fields)

from humanim.training import objectives as obj
from humanim.training.config import to_dict
from humanim.training.data import DataStream, MissingFieldError, StreamSpec, requested_fields, shard_urls
from humanim.training.models import DiffusersDenoiser, TinyDenoiser, condition_channels
from humanim.training.train import Trainer, drop_conditions, load_checkpoint, objective_fields, run


def shard_files(shards: Path, count: int) -> list[str]:
    return shard_urls([str(shards)])[:count]


def stream_of(config, extra_fields: tuple[str, ...] = ()):
    names = requested_fields(config.data, tuple(extra_fields))
    return DataStream(StreamSpec(shard_urls(config.data.shards), names, config.data, config.seed))


def overfit(config, batches, steps: int) -> tuple[dict, dict]:
    """Loss terms of the first batch at fixed noise and timesteps, before and after `steps` optimiser steps."""
    trainer = Trainer(config)
    iterator = iter(batches)
    probe = next(iterator)
    before = trainer.evaluate(probe)
    for _ in range(steps):
        trainer.train_step(iterator)
    return before, trainer.evaluate(probe)


def test_the_plain_objective_overfits_real_clips(training_shards, tmp_path):
    # Two clips (one talking head, one dancer) at 32 x 32; no augmentation, so the same two clips come back.
    files = [f for f in shard_files(training_shards, CLIPS)][::3][:2]
    config = tiny_config(tmp_path, files, data={"resolution": [32, 32]}, optim={"lr": 4e-3})
    before, after = overfit(config, stream_of(config), steps=50)
    assert after["denoise"] < before["denoise"] / 5, (before, after)


def with_reachable_face_embeddings(batches, trainer: Trainer):
    """Face embeddings the identity loss can reach: the stand-in ArcFace of the faces in the decoded clean
    latents (so the loss is 0 when the one-step x0 equals the clean latents), averaged over the seen frames."""
    for batch in batches:
        with torch.no_grad():
            frames = batch["frames"].float() / 127.5 - 1
            decoded = trainer.vae.decode(trainer.vae.encode(frames))
            count = decoded.shape[2]
            boxes = batch["face_box"][:, :count, :4]
            seen = torch.isfinite(boxes).all(dim=-1)
            crops = obj.crop_faces(decoded.permute(0, 2, 1, 3, 4).flatten(0, 1),
                                   torch.nan_to_num(boxes).flatten(0, 1) + torch.tensor([-0.5, -0.5, 0.5, 0.5]))
            embeddings = trainer.arcface(crops).reshape(len(frames), count, -1)
            embeddings = (embeddings * seen[..., None]).sum(dim=1)
        batch["face_embedding"] = embeddings / embeddings.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        batch["face_embedding_present"] = seen.any(dim=1)
        yield batch


def test_every_objective_switched_on_overfits(training_shards, tmp_path):
    """Real fields for the conditions and HIA's regional losses; synthetic articulated noise, correspondences
    and a stand-in ArcFace for the objectives whose fields the shards lack today."""
    files = [f for f in shard_files(training_shards, CLIPS)][::3][:2]
    config = tiny_config(
        tmp_path, files,
        data={"resolution": [32, 32], "conditions": ["pose", "hand_blur"]},
        schedule={"shifted_snr_gamma": 0.5},
        objectives={"prediction": "v", "articulated_noise": True, "noise_gamma": [0.2, 0.8], "motion_weight": 0.5,
                    "geometric_weight": 0.1, "face_weight": 1.0, "hand_weight": 1.0, "regional_max_time": 1000,
                    "identity_weight": 1.0, "arcface": str(tiny_arcface_standin_file(tmp_path))},
        optim={"lr": 4e-3})
    trainer = Trainer(config)
    real = stream_of(config, ("masks", "face_box"))
    batches = with_reachable_face_embeddings(with_synthetic_fields(real, (4, 8, 4, 4)), trainer)
    probe = next(batches)
    before = trainer.evaluate(probe)
    for _ in range(60):
        trainer.train_step(batches)
    after = trainer.evaluate(probe)
    assert set(before) == {"denoise", "motion", "geometric", "face", "hands", "identity", "total"}
    assert after["total"] < before["total"] / 3, (before, after)
    for name in ("denoise", "motion", "face", "hands", "identity"):
        assert after[name] < before[name] / 2, (name, before, after)


def test_an_objective_without_its_field_is_a_clear_error(training_shards, tmp_path):
    config = tiny_config(tmp_path, shard_files(training_shards, 1), objectives={"articulated_noise": True})
    assert objective_fields(config) == ("noise",)
    with pytest.raises(MissingFieldError, match=r"field 'noise'.*absent from sample.*train-\d+\.tar"):
        run(config)
    # Fed batches directly (as for fields the shards do not have yet), the trainer names what is missing.
    config = tiny_config(tmp_path, shard_files(training_shards, 2), objectives={"motion_weight": 1.0})
    batch = next(iter(stream_of(config)))
    with pytest.raises(KeyError, match="noise_flow"):
        Trainer(config).loss_terms(batch, torch.Generator().manual_seed(0))


def weights(path: Path) -> dict:
    return load_checkpoint(path)


def test_resume_continues_exactly_as_an_unbroken_run(training_shards, tmp_path):
    """4 steps straight == 2 steps, save, resume, 2 steps: two loader workers, a shuffle buffer, flips and
    crops, gradient accumulation, warm-up, EMA."""
    common = dict(data={"num_workers": 2, "shuffle_buffer": 3, "shard_shuffle": True,
                        "augment": {"flip": 0.5, "crop_scale": [0.6, 1.0]}},
                  optim={"accumulation": 2, "warmup_steps": 3})
    straight = tiny_config(tmp_path / "straight", str(training_shards), max_steps=4, **common)
    run(straight)
    broken = tiny_config(tmp_path / "broken", str(training_shards), max_steps=2, checkpoint_every=2, **common)
    run(broken)
    resumed = tiny_config(tmp_path / "broken", str(training_shards), max_steps=4, **common)
    run(resumed, resume=True)
    a = weights(tmp_path / "straight" / "run" / "checkpoints" / "step-00000004.pt")
    b = weights(tmp_path / "broken" / "run" / "checkpoints" / "step-00000004.pt")
    assert a["step"] == b["step"] == 4 and a["data"] == b["data"]
    for part in ("model", "ema"):
        for name, value in a[part].items():
            torch.testing.assert_close(b[part][name], value, rtol=1e-5, atol=1e-6, msg=f"{part} {name}")
    for index, state in a["optimizer"]["state"].items():
        torch.testing.assert_close(b["optimizer"]["state"][index]["exp_avg"], state["exp_avg"], rtol=1e-5, atol=1e-7)
    # And the run did learn something in those steps: the weights moved from their start.
    start = Trainer(straight).model.state_dict()
    assert any(not torch.equal(start[name], value) for name, value in a["model"].items())


def test_frozen_groups_stay_put(training_shards, tmp_path):
    config = tiny_config(tmp_path, shard_files(training_shards, 2),
                         optim={"freeze": ["condition_encoders", "time_embedding"]})
    trainer = Trainer(config)
    start = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    batches = iter(stream_of(config))
    for _ in range(3):
        trainer.train_step(batches)
    after = trainer.model.state_dict()
    frozen = [name for name in after if name.startswith(("condition_encoders", "time_embedding"))]
    assert frozen and all(torch.equal(after[name], start[name]) for name in frozen)
    trained = [name for name in after if name.startswith(("input", "blocks", "output"))]
    assert all(not torch.equal(after[name], start[name]) for name in trained if name.endswith("weight"))
    with pytest.raises(ValueError, match="no parameter name starts with 'encoder'"):
        Trainer(tiny_config(tmp_path, shard_files(training_shards, 1), optim={"freeze": ["encoder"]}))


def test_gradient_checkpointing_gives_the_same_gradients_and_bf16_trains(training_shards, tmp_path):
    batch = next(iter(stream_of(tiny_config(tmp_path, shard_files(training_shards, 2)))))
    gradients = []
    for checkpointing in (False, True):
        trainer = Trainer(tiny_config(tmp_path, shard_files(training_shards, 2),
                                      model={"gradient_checkpointing": checkpointing}))
        trainer.loss_terms(batch, torch.Generator().manual_seed(0))["total"].backward()
        gradients.append({n: p.grad.clone() for n, p in trainer.model.named_parameters()})
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, msg=name)
    bf16 = Trainer(tiny_config(tmp_path, shard_files(training_shards, 2), precision="bf16"))
    metrics = bf16.train_step(itertools.repeat(batch))
    assert torch.isfinite(torch.tensor(metrics["total"]))


def random_conditions(batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Nowhere-zero conditions of every rank, as the loader gives pose, reference and identity: maps per frame,
    images, a vector."""
    return {"pose": torch.rand(batch_size, 3, 2, 16, 16, generator=generator) + 0.1,
            "reference": torch.rand(batch_size, 3, 16, 16, generator=generator) + 0.1,
            "reference_pose": torch.rand(batch_size, 3, 16, 16, generator=generator) + 0.1,
            "identity": torch.rand(batch_size, 512, generator=generator) + 0.1}


def test_drop_conditions_zeroes_every_condition_of_the_dropped_samples():
    conditions = random_conditions(4, torch.Generator().manual_seed(0))
    keep = torch.tensor([True, False, True, False])
    dropped = drop_conditions(conditions, keep)
    for name, value in conditions.items():
        assert dropped[name].shape == value.shape and dropped[name].dtype == value.dtype
        assert torch.equal(dropped[name][keep], value[keep]), name
        assert not dropped[name][~keep].any(), name
    unconditional = drop_conditions(conditions, torch.zeros(4, dtype=torch.bool))  # what guidance asks for
    assert all(not value.any() for value in unconditional.values())
    with pytest.raises(ValueError, match="keep has shape"):
        drop_conditions(conditions, torch.ones(3, dtype=torch.bool))


class Spy(nn.Module):
    """The model, recording what loss_terms gives it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x, model_time, conditions):
        self.calls.append((x, model_time, conditions))
        return self.model(x, model_time, conditions)


def synthetic_batch(batch_size: int) -> dict:
    """Frames [B, 3, 2, 16, 16] and nowhere-zero conditions, float16 as the loader batches them."""
    generator = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (batch_size, 3, 2, 16, 16), generator=generator, dtype=torch.uint8)
    conditions = random_conditions(batch_size, generator)
    return {"frames": frames, "conditions": {name: value.half() for name, value in conditions.items()}}


def test_condition_dropout_zeroes_all_conditions_of_some_samples_in_a_step(tmp_path):
    batch = synthetic_batch(8)
    calls = {}
    for dropout in (0.0, 0.5):
        config = tiny_config(tmp_path, [], data={"conditions": ["pose", "reference", "identity"]},
                             objectives={"condition_dropout": dropout})
        trainer = Trainer(config)
        spy = Spy(trainer.model)
        trainer.loss_terms(batch, torch.Generator().manual_seed(0), spy)
        calls[dropout] = spy.calls[0]
    (x, time, kept), (x_dropped, time_dropped, dropped) = calls[0.0], calls[0.5]
    # Dropout 0 hands the batch's conditions over untouched; dropout changes nothing but the conditions.
    assert all(torch.equal(kept[name], batch["conditions"][name].float()) for name in kept)
    assert torch.equal(x, x_dropped) and torch.equal(time, time_dropped)
    zeroed = torch.stack([~dropped[name].flatten(1).any(dim=1) for name in dropped])  # [conditions, B]
    assert (zeroed.all(dim=0) | ~zeroed.any(dim=0)).all(), "a sample's conditions are dropped together"
    assert 0 < int(zeroed[0].sum()) < 8, zeroed  # this seed drops some samples of the 8, not all
    for name in dropped:
        assert torch.equal(dropped[name][~zeroed[0]], kept[name][~zeroed[0]]), name
    # evaluate (eval mode) scores the conditional loss: the same with and without dropout.
    plain, with_dropout = (Trainer(tiny_config(tmp_path, [], data={"conditions": ["pose", "reference", "identity"]},
                                               objectives={"condition_dropout": p})) for p in (0.0, 0.5))
    assert plain.evaluate(batch) == with_dropout.evaluate(batch)


@pytest.mark.parametrize("dropout", [1.0, -0.1])
def test_condition_dropout_outside_0_1_is_an_error(tmp_path, dropout):
    with pytest.raises(ValueError, match=r"condition_dropout .* must be in \[0, 1\)"):
        Trainer(tiny_config(tmp_path, [], objectives={"condition_dropout": dropout}))


def test_the_identity_condition_reaches_the_tiny_denoiser():
    torch.manual_seed(0)
    model = TinyDenoiser(latent_channels=4, conditions=condition_channels(["pose", "identity"]), hidden=16, depth=1,
                         time_dim=16)
    assert isinstance(model.condition_encoders["identity"], nn.Linear)
    x, time = torch.randn(2, 4, 2, 2, 2), torch.tensor([10.0, 500.0])
    conditions = {"pose": torch.rand(2, 3, 2, 16, 16), "identity": torch.randn(2, 512)}
    out = model(x, time, conditions)
    other = dict(conditions, identity=torch.cat([conditions["identity"][:1], torch.randn(1, 512)]))
    changed = model(x, time, other)
    assert out.shape == x.shape
    assert torch.equal(changed[0], out[0]) and not torch.allclose(changed[1], out[1])  # per sample


def test_a_trainer_conditioned_on_pose_and_identity_trains(training_shards, tmp_path):
    config = tiny_config(tmp_path, shard_files(training_shards, 2), data={"conditions": ["pose", "identity"]})
    trainer = Trainer(config)
    start = trainer.model.condition_encoders["identity"].weight.clone()
    # The shards have no reference face embedding (detection-only face back-end): the loader says so ...
    with pytest.raises(ValueError, match="'ref_face_embedding', absent from sample .*face recogniser"):
        next(iter(stream_of(config)))
    # ... so the condition comes in synthetic, beside the real pose maps.
    pose_only = tiny_config(tmp_path, shard_files(training_shards, 2))
    batches = with_identity_condition(stream_of(pose_only))
    for _ in range(2):
        metrics = trainer.train_step(batches)
    assert torch.isfinite(torch.tensor(metrics["total"]))
    assert not torch.equal(trainer.model.condition_encoders["identity"].weight, start)


def test_diffusers_adapters_take_a_vector_condition_only_as_a_forward_argument():
    class Net(nn.Module):
        def forward(self, sample, timestep, return_dict=True):
            return (sample,)

    class NetWithIdentity(nn.Module):
        def forward(self, sample, timestep, identity=None, return_dict=True):
            return (sample,)

    with pytest.raises(ValueError, match=r"\['identity'\] are vectors.*Net.forward has an argument of that name"):
        DiffusersDenoiser(Net(), "BCTHW", conditions=["pose", "identity"])
    DiffusersDenoiser(NetWithIdentity(), "BCTHW", conditions=["pose", "identity"])


def test_diffusers_models_need_diffusers(tmp_path, training_shards, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # an import of it fails, as where it is not installed
    config = tiny_config(tmp_path, shard_files(training_shards, 1),
                         model={"denoiser": {"kind": "diffusers", "path": str(tmp_path),
                                             "class": "UNet3DConditionModel"}})
    with pytest.raises(ImportError, match="pip install diffusers"):
        Trainer(config)


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_ray_train_workers_split_the_epoch_through_the_cli(training_shards, tmp_path):
    """`humanim train` with Ray Train: 2 training workers (DDP over gloo) x 2 loader workers each. In epoch
    mode, each rank reads 3 of the 6 single-clip shards (2 by its loader worker 0, 1 by worker 1), so 3 steps of
    batch 1 are exactly one epoch: the four loaders saw disjoint clips that together are the whole build."""
    config = tiny_config(tmp_path, str(training_shards), max_steps=3, log_every=1, log_sample_keys=True,
                         data={"num_workers": 2, "batch_size": 1, "shard_shuffle": True},
                         distributed={"backend": "ray", "num_workers": 2})
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    env = subprocess_env()
    result = subprocess.run([sys.executable, "-m", "humanim.pipeline.cli", "train", "--config", str(path)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    output = Path(config.output_dir)
    rows = read_csv(output / "samples-rank0.csv") + read_csv(output / "samples-rank1.csv")
    by_loader: dict[tuple[str, str], set] = {}
    for row in rows:
        by_loader.setdefault((row["rank"], row["worker"]), set()).add(row["key"])
    assert sorted(by_loader) == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    keys = [key for loader in by_loader.values() for key in loader]
    assert len(keys) == len(set(keys)) == CLIPS
    assert [int(r["step"]) for r in read_csv(output / "metrics.csv")] == [1, 2, 3]
    checkpoint = load_checkpoint(output / "checkpoints" / "step-00000003.pt")
    assert len(checkpoint["data"]) == 2  # each rank's stream position
