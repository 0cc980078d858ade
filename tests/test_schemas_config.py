"""The sample registry, keys, seeds, the generated format document, and config loading."""
from __future__ import annotations

import io

import numpy as np
import pytest
import yaml
from conftest import REPO

from humanim.pipeline import config as config_module
from humanim.schemas.fields import FIELDS, Field, decode_field, encode_field
from humanim.schemas.format_doc import render_format_doc
from humanim.schemas.keys import clip_key, derive_seed, parse_clip_key


def test_format_doc_is_generated_from_the_registry():
    assert (REPO / "docs" / "FORMAT.md").read_text() == render_format_doc(), \
        "docs/FORMAT.md is stale: run `humanim schema > docs/FORMAT.md`"
    from humanim.schemas.fields import FIELDS
    from humanim.schemas.format_doc import MEASURED_BYTES

    assert set(MEASURED_BYTES) == set(FIELDS), "measure the bytes per clip of every registered field"


def test_clip_keys_have_no_dots_and_round_trip():
    key = clip_key("0123456789abcdef", 42)
    assert key == "0123456789abcdef_00042" and "." not in key
    assert parse_clip_key(key) == ("0123456789abcdef", 42)
    with pytest.raises(ValueError):
        parse_clip_key("0123456789abcdef_42.mp4")


def test_seeds_depend_on_names_only():
    seed = derive_seed(7, "0123456789abcdef_00001", "noise")
    assert seed == derive_seed(7, "0123456789abcdef_00001", "noise")
    assert len({seed, derive_seed(8, "0123456789abcdef_00001", "noise"),
                derive_seed(7, "0123456789abcdef_00002", "noise"), derive_seed(7, "0123456789abcdef_00001", "pose")}) == 4


def test_arrays_round_trip_without_pickle():
    field = Field(name="probe", ext="probe.npy", codec="npy", dtype="float32", shape=("T", 3), units="-", frame="-",
                  stage="test", description="test field")
    value = np.arange(12, dtype=np.float64).reshape(4, 3)
    decoded = decode_field(field, encode_field(field, value))
    assert decoded.dtype == np.float32 and np.array_equal(decoded, value)
    # An object array would need pickle; the reader refuses it.
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        decode_field(field, buffer.getvalue())
    assert encode_field(FIELDS["meta"], {"b": 1, "a": [1.5]}) == b'{"a":[1.5],"b":1}'


def test_config_presets_and_base_files(tmp_path):
    default = config_module.load(REPO / "configs" / "default.yaml")
    assert (default.plan.frames, default.plan.fps, default.plan.stride) == (24, 8.0, 24)
    path = tmp_path / "wan.yaml"
    path.write_text(yaml.safe_dump({"base": str(REPO / "configs" / "offline.yaml"),
                                    "clips": {"preset": "wan", "stride": 40}}))
    wan = config_module.load(path)
    assert (wan.plan.frames, wan.plan.fps, wan.plan.stride) == (81, 16.0, 40)
    assert wan.raw["video"] == default.raw["video"]


@pytest.mark.parametrize("override, message", [
    ({"clips": {"framez": 8}}, "unknown config key clips.'framez'"),
    ({"clips": {"preset": "sora"}}, "unknown clips.preset 'sora'"),
    ({"video": {"crop": "face"}}, "unknown video.crop 'face'; choose 'center' or 'subject'"),
    ({"stages": ["pose"]}, "the first stage must be 'decode'"),
])
def test_config_errors_name_the_problem(override, message):
    with pytest.raises(config_module.ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        config_module.resolve(override)


def test_cluster_config_is_valid_for_rays_launcher():
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    node_types = config["available_node_types"]
    assert node_types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert any(t["resources"].get("GPU", 0) >= 1 for t in node_types.values())
    assert any("make install" in command for command in config["setup_commands"])
    broken = copy.deepcopy(config)
    broken["available_node_types"]["worker_gpu"]["min_wrokers"] = 1
    with pytest.raises(Exception, match="min_wrokers"):
        validate_config(prepare_config(broken))


def test_one_opencv_distribution_and_cv2_imports():
    from importlib import metadata

    import cv2

    opencv = sorted(d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"].startswith("opencv"))
    assert opencv == ["opencv-contrib-python-headless"], f"several OpenCV wheels share the cv2 folder: {opencv}"
    assert hasattr(cv2, "FaceDetectorYN") and cv2.imdecode is not None


def test_sources_from_a_folder_a_glob_and_lists(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from humanim.pipeline.sources import expand_sources

    (tmp_path / "clips" / "day1").mkdir(parents=True)
    for name in ("clips/a.mp4", "clips/day1/b.MOV", "clips/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    folder = expand_sources(str(tmp_path / "clips"))
    assert [p.rsplit("/", 1)[-1] for p in folder] == ["a.mp4", "b.MOV"]
    assert expand_sources(str(tmp_path / "clips" / "*.mp4")) == [str(tmp_path / "clips" / "a.mp4")]
    (tmp_path / "list.txt").write_text("# my videos\nclips/a.mp4\n\nclips/day1/b.MOV\n")
    assert expand_sources(str(tmp_path / "list.txt")) == folder
    pq.write_table(pa.table({"path": ["clips/day1/b.MOV", "clips/a.mp4"]}), tmp_path / "list.parquet")
    assert expand_sources(str(tmp_path / "list.parquet")) == folder
    with pytest.raises(FileNotFoundError, match="holds no video files"):
        expand_sources(str(tmp_path / "clips" / "day1" / "*.mp4"))
