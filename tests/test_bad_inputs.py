"""Bad inputs end as failures rows or valid clips, each with a readable reason; the build never stops."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import asset, run_build, write_config
from videos import coded_frame, moving_pattern, write_audio_only, write_video

from humanim.pipeline.verify import verify_build


@pytest.fixture(scope="module")
def bad_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    folder = root / "inputs"
    folder.mkdir()
    real = asset("videos/animatex_dance_1.mp4").read_bytes()
    (folder / "zero_bytes.mp4").write_bytes(b"")
    (folder / "text_named.mp4").write_text("this is a text file, not a video\n" * 20)
    (folder / "truncated.mp4").write_bytes(real[: len(real) // 3])
    write_audio_only(folder / "audio_only.mp4")
    write_video(folder / "shorter_than_a_clip.mp4", [coded_frame(i) for i in range(5)])
    gaps = [40 if i % 3 else 120 for i in range(40)]
    write_video(folder / "variable_rate.mp4", [moving_pattern(i) for i in range(40)],
                pts_ms=np.concatenate([[0], np.cumsum(gaps[:-1])]).tolist())
    write_video(folder / "rotated_phone.mp4", [moving_pattern(i, 96, 160) for i in range(30)], rotation=270)
    write_video(folder / "tiny.mp4", [moving_pattern(i, 8, 12) for i in range(30)])
    # Overwrite bytes in the middle of the media data: packets there no longer decode cleanly.
    corrupt = bytearray(real)
    middle = len(corrupt) // 2
    corrupt[middle:middle + 20000] = np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    (folder / "corrupt_middle.mp4").write_bytes(bytes(corrupt))
    (folder / "good.mp4").symlink_to(asset("videos/moore_talkinghead_3.mp4"))
    config = write_config(root / "bad.yaml", {"clips": {"max_clips_per_video": 0}})
    run_build(folder, root / "out", config)
    return root / "out"


def _outcomes(out):
    failures = pq.read_table(out / "failures.parquet").to_pylist()
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    name = lambda source: source.rsplit("/", 1)[-1]  # noqa: E731
    clips = {}
    for row in manifest:
        clips[name(row["source"])] = clips.get(name(row["source"]), 0) + 1
    return {name(f["source"]): f for f in failures}, clips, failures


def test_each_unusable_input_is_one_failure_row_with_a_reason(bad_build):
    failed, clips, failures = _outcomes(bad_build)
    assert "empty file" in failed["zero_bytes.mp4"]["reason"] and failed["zero_bytes.mp4"]["stage"] == "probe"
    assert "not a readable media container" in failed["text_named.mp4"]["reason"]
    assert "no video stream (streams: audio)" in failed["audio_only.mp4"]["reason"]
    assert "no scene is long enough" in failed["shorter_than_a_clip.mp4"]["reason"]
    assert failed["shorter_than_a_clip.mp4"]["stage"] == "plan"
    assert "12x8 is below clips.min_source_side" in failed["tiny.mp4"]["reason"]
    for row in failures:
        assert row["error_class"] and row["reason"] and row["stage"] in {"probe", "plan", "decode", "pack"}


def test_usable_odd_inputs_become_valid_clips(bad_build):
    failed, clips, _ = _outcomes(bad_build)
    for name in ("variable_rate.mp4", "rotated_phone.mp4", "good.mp4"):
        assert name not in failed and clips.get(name, 0) >= 1, name
    # The truncated and the corrupted file end one way or the other, never silently.
    for name in ("truncated.mp4", "corrupt_middle.mp4"):
        assert name in failed or clips.get(name, 0) >= 1, name
    assert verify_build(bad_build) == []


def test_every_input_is_accounted_for(bad_build):
    failed, clips, failures = _outcomes(bad_build)
    record = json.loads((bad_build / "build.json").read_text())
    sources = {f.name for f in (bad_build.parent / "inputs").iterdir()}
    assert sources == set(failed) | set(clips)
    assert record["counts"]["failures"] == len(failures) and record["counts"]["videos"] == len(sources)
