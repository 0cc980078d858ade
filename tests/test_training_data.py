"""The streaming loader on shards built from real videos: decoding through the registry, augmentations that keep
annotations on their pixels, conditions, rank and worker splits, resampling, resume, and missing fields."""
from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from training_fixtures import CLIPS, training_shards  # noqa: F401 - the session fixture

from humanim.schemas.fields import FIELDS, decode_field
from humanim.schemas.keypoints import FLIP_PERMUTATION, KEYPOINT_NAMES
from humanim.stages.masks import unpack_masks
from humanim.training.augment import PART_FLIP, augment, crop_resize, flip, take_frames
from humanim.training.conditions import build_conditions, hand_blur_maps
from humanim.training.config import AugmentConfig, DataConfig
from humanim.training.data import (
    DataStream, MissingFieldError, StreamSpec, decode_sample, epoch_pipeline, requested_fields, shard_urls,
    to_training_sample)

LEFT_WRIST, RIGHT_WRIST = KEYPOINT_NAMES.index("left_wrist"), KEYPOINT_NAMES.index("right_wrist")
SAMPLE_FIELDS = ["frames", "meta", "kpts", "masks", "subject_box", "face_box", "face_landmarks", "hand_sharpness",
                 "hand_motion", "hand_valid"]


def raw_samples(shards: Path) -> list[dict]:
    """Every sample of the build as raw tar members, in shard order."""
    samples = []
    for path in shard_urls([str(shards)]):
        with tarfile.open(path) as tar:
            members: dict[str, dict] = {}
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                members.setdefault(key, {"__key__": key, "__url__": path})[ext] = tar.extractfile(member).read()
        samples += members.values()
    return samples


@pytest.fixture(scope="module")
def decoded(training_shards):
    """The decoded samples, the dancer's first (it has hands and a full body) ."""
    samples = [decode_sample(raw, SAMPLE_FIELDS) for raw in raw_samples(training_shards)]
    return sorted(samples, key=lambda s: -int(s["hand_valid"].sum()))


def with_training_only_fields(sample: dict, rng: np.random.Generator) -> dict:
    """The fields whose stages have not landed yet, with their planned shapes and dtypes, filled randomly."""
    frames, height, width = sample["frames"].shape[:3]
    out = dict(sample)
    out["ref_frame"] = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out["ref_kpts"] = sample["kpts"][0].copy()
    out["depth"] = rng.integers(0, 5000, (frames, height, width)).astype(np.uint16)
    out["normal"] = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    out["part"] = rng.integers(0, 25, (frames, height, width)).astype(np.uint8)
    out["face_id"] = rng.integers(-1, 1000, (frames, height, width)).astype(np.int32)
    out["noise"] = rng.standard_normal((frames, 4, height // 8, width // 8)).astype(np.float16)
    out["noise_flow"] = rng.standard_normal((frames - 1, 2, height // 8, width // 8)).astype(np.float32)
    out["noise_visible"] = rng.integers(0, 2, (frames - 1, height // 8, width // 8)).astype(np.uint8)
    return out


def assert_samples_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        if name == "meta":
            assert a[name] == b[name]
        elif np.asarray(a[name]).dtype.kind == "f":  # W - 1 - (W - 1 - x) rounds in float32
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-4, err_msg=name)
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_flip_twice_gives_the_sample_back(decoded):
    sample = with_training_only_fields(decoded[0], np.random.default_rng(0))
    once = flip(sample)
    assert not np.array_equal(once["frames"], sample["frames"])
    assert_samples_equal(flip(once), sample)


def test_flip_moves_the_left_wrist_to_the_right_index_at_mirrored_x(decoded):
    sample = decoded[0]
    width = sample["frames"].shape[2]
    flipped = flip(sample)
    seen = sample["kpts"][:, LEFT_WRIST, 2] > 0
    assert seen.any(), "the dancer's left wrist should be seen in some frame"
    left = sample["kpts"][seen, LEFT_WRIST]
    landed = flipped["kpts"][seen, RIGHT_WRIST]
    np.testing.assert_allclose(landed[:, 0], width - 1 - left[:, 0], atol=1e-4)
    np.testing.assert_array_equal(landed[:, 1:], left[:, 1:])
    assert FLIP_PERMUTATION[RIGHT_WRIST] == LEFT_WRIST
    # The hand masks swap channels with the keypoints: the left hand's mask becomes the right hand's, mirrored.
    np.testing.assert_array_equal(flipped["masks"][:, 2], sample["masks"][:, 1, :, ::-1])
    np.testing.assert_array_equal(flipped["hand_valid"][:, 1], sample["hand_valid"][:, 0])


def test_flip_of_training_only_fields():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    sample = with_training_only_fields({"frames": frames, "kpts": np.zeros((3, 133, 3), np.float32),
                                        "meta": {"width": 24}}, rng)
    flipped = flip(sample)
    # A right-pointing correspondence points left once mirrored; a left-hand part becomes the right hand.
    np.testing.assert_array_equal(flipped["noise_flow"][:, 0], -sample["noise_flow"][:, 0, :, ::-1])
    np.testing.assert_array_equal(flipped["noise_flow"][:, 1], sample["noise_flow"][:, 1, :, ::-1])
    left_hand, right_hand = 1 + 22, 1 + 23  # 1 + index in SMPL_PARTS
    assert PART_FLIP[left_hand] == right_hand and PART_FLIP[right_hand] == left_hand and PART_FLIP[0] == 0
    np.testing.assert_array_equal(flipped["normal"][..., 0], 255 - sample["normal"][:, :, ::-1, 0])


def _mark(frames: np.ndarray, x: float, y: float) -> np.ndarray:
    marked = frames.copy()
    marked[:, int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2] = (255, 0, 255)
    return marked


def _marker_centre(frame: np.ndarray) -> tuple[float, float]:
    magenta = (frame[..., 0] > 200) & (frame[..., 1] < 60) & (frame[..., 2] > 200)
    rows, columns = np.nonzero(magenta)
    return columns.mean(), rows.mean()


def test_crops_move_keypoints_and_boxes_with_the_pixels(decoded):
    sample = decoded[0]
    frame0 = sample["kpts"][0]
    visible = np.nonzero(frame0[:17, 2] > 0.5)[0]
    point = frame0[visible[0], :2]
    sample = dict(sample, frames=_mark(sample["frames"], *point))
    # A cut (no resize) moves points by the box origin exactly; a cut then a 2x enlargement scales them about
    # pixel centres. In both, the marked pixels land where the moved keypoint says.
    box = tuple(min(max(int(v) - 20, 0), 128 - 48) for v in point) + (48, 48)
    for size in ((48, 48), (96, 96)):
        out = crop_resize(sample, box, size)
        moved = out["kpts"][0, visible[0], :2]
        np.testing.assert_allclose(_marker_centre(out["frames"][0]), moved, atol=0.5 if size[0] == 48 else 1.0)
        scale = size[0] / 48
        np.testing.assert_allclose(moved, (point - box[:2] + 0.5) * scale - 0.5, atol=1e-4)
        face = sample["face_box"][0, :4]
        if np.isfinite(face).all():
            np.testing.assert_allclose(out["face_box"][0, :4], (face - np.tile(box[:2], 2) + 0.5) * scale - 0.5,
                                       atol=1e-4)
        assert out["masks"].shape[-2:] == size


def test_windows_and_resizes_refuse_latent_grid_fields(decoded):
    sample = with_training_only_fields(decoded[0], np.random.default_rng(2))
    with pytest.raises(ValueError, match="latent grid"):
        crop_resize(sample, (0, 0, 64, 64), (32, 32))
    with pytest.raises(ValueError, match="latent grid"):
        take_frames(sample, 1, 4)
    assert take_frames(sample, 0, len(sample["frames"]))["noise"] is sample["noise"]


def test_hand_blur_condition_paints_movement_and_blur_over_the_hands(decoded):
    sample = decoded[0]
    maps = hand_blur_maps(sample["masks"], sample["hand_motion"], sample["hand_sharpness"], sample["hand_valid"])
    t, hand = np.argwhere(sample["hand_valid"])[0]
    region = sample["masks"][t, 1 + hand] > 0
    expected_blur = 1 - np.clip(np.log1p(sample["hand_sharpness"][t, hand]) / np.log1p(1000.0), 0, 1)
    np.testing.assert_allclose(maps[2, t][region], expected_blur, atol=1e-6)
    anywhere = sample["masks"][:, 1:].any(axis=1) & sample["hand_valid"].any(axis=1)[:, None, None]
    assert np.abs(maps[:, ~anywhere]).max() == 0  # nothing outside the seen hands
    assert maps.shape == (3,) + sample["masks"].shape[:1] + sample["masks"].shape[2:]


def test_identity_condition_is_the_reference_face_embedding_through_flips_and_crops(decoded):
    embedding = np.random.default_rng(3).standard_normal(512).astype(np.float32)
    sample = dict(decoded[0], ref_face_embedding=embedding)
    # A flip and a crop move every annotation, but who the subject is stays: the vector passes untouched.
    augmented = augment(sample, np.random.default_rng(0), (32, 32), 4, flip_probability=1.0, crop_scale=(0.6, 0.8))
    conditions = build_conditions(augmented, ["pose", "identity"])
    assert conditions["identity"].dtype == np.float32 and conditions["identity"].shape == (512,)
    np.testing.assert_array_equal(conditions["identity"], embedding)
    assert conditions["pose"].shape == (3, 4, 32, 32)
    names = requested_fields(DataConfig(conditions=["pose", "identity"]))
    assert "ref_face_embedding" in names
    batched = to_training_sample(augmented, names, ["pose", "identity"])
    assert batched["conditions"]["identity"].shape == (512,)


def test_identity_condition_without_the_embedding_is_a_clear_error(decoded):
    with pytest.raises(ValueError, match=r"'ref_face_embedding', absent from sample \w+: the shards were built "
                                         r"without a face recogniser"):
        build_conditions(decoded[0], ["identity"])


def _stream_config(shards: Path, **values) -> DataConfig:
    base = dict(shards=[str(shards)], resolution=(64, 64), conditions=["pose"], batch_size=1, num_workers=2,
                shuffle_buffer=3, augment=AugmentConfig(flip=0.5, crop_scale=(0.7, 1.0)))
    return DataConfig(**{**base, **values})


def test_batches_hold_the_requested_fields_at_training_resolution(training_shards):
    config = _stream_config(training_shards, batch_size=2, num_workers=0, conditions=["pose", "hand_blur"])
    spec = StreamSpec(shard_urls(config.shards), requested_fields(config), config, seed=0)
    batch = next(iter(DataStream(spec)))
    assert batch["frames"].shape == (2, 3, 8, 64, 64) and batch["frames"].dtype == torch.uint8
    assert batch["conditions"]["pose"].shape == (2, 3, 8, 64, 64)
    assert batch["conditions"]["hand_blur"].shape == (2, 3, 8, 64, 64)
    assert batch["masks"].shape == (2, 8, 3, 64, 64) and batch["kpts"].shape == (2, 8, 133, 3)
    assert batch["conditions"]["pose"].float().amax() > 0.5  # a skeleton is drawn
    assert len(batch["key"]) == 2


def _keys_by_origin(shards: Path, config: DataConfig, world_size: int, batches: int) -> dict:
    """{(rank, worker): [(epoch, key), ...]} over `batches` batches of every rank's stream."""
    seen: dict[tuple[int, int], list] = {}
    for rank in range(world_size):
        spec = StreamSpec(shard_urls(config.shards), ["frames", "meta"], config, seed=3, rank=rank,
                          world_size=world_size)
        for batch in itertools.islice(DataStream(spec), batches):
            for key, worker, epoch in zip(batch["key"], batch["worker"].tolist(), batch["epoch"].tolist()):
                seen.setdefault((rank, worker), []).append((epoch, key))
    return seen


def test_epoch_mode_splits_ranks_and_workers_disjointly_and_covers_the_epoch(training_shards):
    config = _stream_config(training_shards, resampled=False, conditions=[], augment=AugmentConfig())
    # 6 shards over 2 ranks x 2 workers: 2 + 1 shards per rank; 3 batches reach the end of epoch 0 on each rank.
    seen = _keys_by_origin(training_shards, config, world_size=2, batches=3)
    epoch0 = {origin: [key for epoch, key in items if epoch == 0] for origin, items in seen.items()}
    assert sorted(epoch0) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    every = [key for keys in epoch0.values() for key in keys]
    assert len(every) == len(set(every)) == CLIPS  # disjoint, and together the whole epoch


def test_resampled_stream_never_ends_and_with_epoch_bounds_it(training_shards):
    config = _stream_config(training_shards, resampled=True, samples_per_epoch=8, num_workers=0, conditions=[],
                            augment=AugmentConfig())
    spec = StreamSpec(shard_urls(config.shards), ["frames", "meta"], config, seed=0, world_size=2)
    # One rank of two, one loader worker: its share of an 8-sample epoch is 4 batches of 1.
    assert sum(1 for _ in epoch_pipeline(spec, epoch=0, worker=0)) == 4
    unbounded = StreamSpec(spec.urls, spec.names, DataConfig(**{**config.__dict__, "samples_per_epoch": 10**9}),
                           seed=0)
    drawn = list(itertools.islice(epoch_pipeline(unbounded, epoch=0, worker=0), 5 * CLIPS))
    assert len(drawn) == 5 * CLIPS  # five times the shards' samples and still going: drawn with replacement
    assert len({b["key"][0] for b in drawn}) > 1


def test_a_resumed_stream_continues_exactly(training_shards):
    config = _stream_config(training_shards, batch_size=1, num_workers=2)
    straight = list(itertools.islice(DataStream(StreamSpec(shard_urls(config.shards), ["frames", "meta", "kpts"],
                                                           config, seed=5)), 9))
    first = DataStream(StreamSpec(shard_urls(config.shards), ["frames", "meta", "kpts"], config, seed=5))
    head = list(itertools.islice(first, 5))
    resumed = DataStream(StreamSpec(shard_urls(config.shards), ["frames", "meta", "kpts"], config, seed=5))
    resumed.load_state_dict(first.state_dict())
    tail = list(itertools.islice(resumed, 4))
    assert [b["key"] for b in head + tail] == [b["key"] for b in straight]
    assert [int(b["epoch"][0]) for b in straight][-1] >= 1  # the run crossed into a second epoch
    for a, b in zip(head + tail, straight):
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["kpts"], b["kpts"])  # same augmentations


def test_shards_stream_from_pipes_braces_and_fsspec(training_shards):
    paths = shard_urls([str(training_shards)])
    folder, names = Path(paths[0]).parent, [Path(p).name for p in paths]
    brace = f"{folder}/train-{{{names[0][6:12]}..{names[-1][6:12]}}}.tar"
    assert shard_urls(brace) == paths
    config = _stream_config(training_shards, num_workers=0, shard_shuffle=False, conditions=[],
                            augment=AugmentConfig())

    def keys(urls):
        spec = StreamSpec(urls, ["frames", "meta"], DataConfig(**{**config.__dict__, "shards": urls}), seed=0)
        return [b["key"][0] for b in epoch_pipeline(spec, epoch=0, worker=0)]

    expected = keys(paths)
    assert len(expected) == CLIPS
    assert keys([f"pipe:cat {p}" for p in paths]) == expected
    assert keys([f"file://{p}" for p in paths]) == expected  # a file:// URL
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    for path in paths:
        memory.pipe(f"/shards/{Path(path).name}", Path(path).read_bytes())
    assert keys([f"memory://shards/{Path(p).name}" for p in paths]) == expected


def test_a_requested_field_missing_from_the_shards_is_a_clear_error(training_shards, tmp_path):
    source = shard_urls([str(training_shards)])[0]
    stripped = tmp_path / "no-kpts-000000.tar"
    with tarfile.open(source) as tar, tarfile.open(stripped, "w") as out:
        for member in tar.getmembers():
            if not member.name.endswith(".kpts.npy"):
                out.addfile(member, io.BytesIO(tar.extractfile(member).read()))
    config = _stream_config(stripped, num_workers=0)
    spec = StreamSpec([str(stripped)], requested_fields(config), config, seed=0)
    with pytest.raises(MissingFieldError, match=r"field 'kpts'.*absent from sample \w+ in shard .*no-kpts-000000\.tar"):
        next(iter(DataStream(spec)))
    # A registered field these shards lack (no render stage ran): named with the shard and the stage to run.
    with pytest.raises(MissingFieldError, match=r"field 'depth'.*absent from sample.*train-\d+\.tar.*\(render\)"):
        next(iter(DataStream(StreamSpec([str(source)], ["frames", "meta", "depth"], config, seed=0))))
    with pytest.raises(MissingFieldError, match=r"'depht' is not in the sample registry"):
        next(iter(DataStream(StreamSpec([str(source)], ["frames", "meta", "depht"], config, seed=0))))


def test_fields_decode_through_the_registry_without_pickle(training_shards):
    raw = raw_samples(training_shards)[0]
    sample = decode_sample(raw, SAMPLE_FIELDS)
    assert sample["masks"].shape[1:] == (3, 128, 128)
    np.testing.assert_array_equal(sample["masks"], unpack_masks(decode_field(FIELDS["masks"], raw["masks.npy.gz"]), 128))
    assert sample["frames"].shape == (8, 128, 128, 3)
