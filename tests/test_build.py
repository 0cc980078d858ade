"""An uninterrupted build of real videos: shards, manifest, build record, verify, inspect, WebDataset reading."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from conftest import subprocess_env

from humanim.pipeline.contact_sheet import read_sample
from humanim.pipeline.verify import verify_build
from humanim.schemas.fields import FIELDS, decode_field


def test_every_clip_is_a_sample_in_a_bounded_shard(reference_build):
    manifest = pq.read_table(reference_build / "manifest.parquet").to_pylist()
    record = json.loads((reference_build / "build.json").read_text())
    # street: 5 frames at 5 fps = 1.0 s = exactly one 8-frame clip at 8 fps; the talking head (4.8 s) and
    # the athlete (40 frames at 12 fps = 3.3 s) are capped at max_clips_per_video = 3.
    by_source = {}
    for row in manifest:
        by_source.setdefault(row["source"].rsplit("/", 1)[-1], []).append(row)
    assert {name: len(rows) for name, rows in by_source.items()} == {
        "mmpose_demo_street.mp4": 1, "moore_talkinghead_3.mp4": 3, "mmhuman3d_single_person_demo.mp4": 3}
    assert record["counts"]["clips_ok"] == 7 and record["counts"]["failures"] == 0
    assert [s["samples"] for s in record["shards"]] == [3, 3, 1]  # max_samples: 3, plan order
    assert [r["shard"][:-4] for r in manifest] == ["train-000000"] * 3 + ["train-000001"] * 3 + ["train-000002"]
    # Clips of one video never overlap and keep time order.
    talking = by_source["moore_talkinghead_3.mp4"]
    assert all(a["frame_end"] <= b["frame_start"] for a, b in zip(talking, talking[1:]))
    street = by_source["mmpose_demo_street.mp4"][0]
    assert street["repeated_frame_share"] > 0.3  # 5 fps source to 8 fps clip repeats 3 of 7 frames
    assert record["packages"]["av"] and record["code"]["humanim"] and record["seed"] == 0


def test_the_build_shows_progress_and_ends_with_a_summary(reference_build):
    log = (reference_build.parent / "build.log").read_text()
    assert "videos" in log and "3/3" in log and "7/7" in log and "clips/s" in log and "failed" in log
    assert "clips in shards" in log and "time in decode" in log


def test_verify_passes_and_webdataset_reads_every_sample(reference_build):
    assert verify_build(reference_build) == []
    urls = [str(p) for p in sorted((reference_build / "shards").glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    manifest = pq.read_table(reference_build / "manifest.parquet").to_pylist()
    assert [s["__key__"] for s in samples] == [r["key"] for r in manifest]
    for sample, row in zip(samples, manifest):
        frames = decode_field(FIELDS["frames"], sample["mp4"])
        meta = json.loads(sample["meta.json"])
        assert frames.shape == (8, 128, 128, 3) and frames.dtype == np.uint8
        assert meta["key"] == row["key"] and meta["num_frames"] == 8
        assert len(meta["frame_times"]) == 8 and np.allclose(np.diff(meta["frame_times"]), 1 / 8)
        assert frames.std() > 5  # real picture content, not a blank clip


def test_inspect_prints_fields_and_writes_a_contact_sheet(reference_build, tmp_path):
    key = pq.read_table(reference_build / "manifest.parquet").column("key")[0].as_py()
    png = tmp_path / "sheet.png"
    result = subprocess.run([sys.executable, "-m", "humanim.pipeline.cli", "inspect", str(reference_build), key,
                             "--png", str(png)], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "frames" in result.stdout and "(8, 128, 128, 3)" in result.stdout
    from PIL import Image

    sheet = np.asarray(Image.open(png))
    assert sheet.shape[0] >= 256 and sheet.std() > 10
    assert read_sample(reference_build, key)["meta"]["key"] == key


def test_verify_lists_what_is_wrong_and_exits_non_zero(reference_build, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    broken = tmp_path / "broken"
    shutil.copytree(reference_build, broken)
    shard = broken / "shards" / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF  # inside the first sample's mp4
    shard.write_bytes(bytes(data))
    table = pq.read_table(broken / "manifest.parquet")
    widths = table.column("width").to_pylist()
    widths[0] = 99
    pq.write_table(table.set_column(table.schema.get_field_index("width"), "width",
                                    pa.array(widths, type=pa.int32())), broken / "manifest.parquet")
    result = subprocess.run([sys.executable, "-m", "humanim.pipeline.cli", "verify", str(broken)],
                            capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert result.returncode == 1
    assert "train-000001.tar: sha256" in result.stderr
    assert "meta.json width=128 but the manifest says 99" in result.stderr


def test_default_config_without_weights_stops_before_any_worker_with_the_fetch_command(real_videos, tmp_path):
    from conftest import REPO

    env = {**subprocess_env(), "HUMANIM_MODELS": str(tmp_path / "empty"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "humanim.pipeline.cli", "build", str(real_videos),
                             str(tmp_path / "out"), "--config", str(REPO / "configs" / "default.yaml")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    assert "humanim models fetch" in result.stderr and "dw-ll_ucoco_384.onnx" in result.stderr + result.stdout \
        or "yolox_l.onnx" in result.stderr
    assert not (tmp_path / "out" / "shards").exists()
