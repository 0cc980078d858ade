"""`humanim verify`: every sample of every shard against the registry, the manifest and build.json."""
from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from humanim.pipeline.shards import BLOCK
from humanim.schemas.fields import FIELDS, META_KEYS, decode_field, field_for_member, resolve_shape
from humanim.schemas.keys import KEY_PATTERN
from humanim.schemas.tables import FAILURES, manifest_schema


def verify_build(out: Path) -> list[str]:
    if not (out / "build.json").exists():
        return [f"{out}/build.json is missing: the build did not finish (run the same build command to resume it)"]
    record = json.loads((out / "build.json").read_text())
    stages = record["config"]["stages"]
    problems: list[str] = []
    manifest = pq.read_table(out / "manifest.parquet")
    expected = manifest_schema(stages)
    if not manifest.schema.equals(expected):
        problems.append(f"manifest.parquet schema differs from the registry's:\n{manifest.schema}\nexpected:\n{expected}")
    if not pq.read_table(out / "failures.parquet").schema.equals(FAILURES):
        problems.append("failures.parquet schema differs from the registry's")
    rows = manifest.to_pylist()
    by_key = {}
    for row in rows:
        if row["key"] in by_key:
            problems.append(f"{row['key']}: listed twice in the manifest")
        by_key[row["key"]] = row
    on_disk = {p.name for p in (out / "shards").glob("*.tar")}
    listed = {s["name"]: s for s in record["shards"]}
    for name in sorted(on_disk ^ set(listed)):
        problems.append(f"shard {name}: {'not in build.json' if name in on_disk else 'listed in build.json but missing'}")
    seen: set[str] = set()
    for name in sorted(on_disk & set(listed)):
        problems += _verify_shard(out / "shards" / name, listed[name], by_key, stages, seen)
    for key in sorted(set(by_key) - seen):
        problems.append(f"{key}: in the manifest but in no shard")
    if record["counts"]["clips_ok"] != len(rows):
        problems.append(f"build.json counts {record['counts']['clips_ok']} clips, the manifest {len(rows)}")
    return problems


def _verify_shard(path: Path, listed: dict, by_key: dict, stages: list[str], seen: set[str]) -> list[str]:
    problems = []
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != listed["sha256"]:
        problems.append(f"shard {path.name}: sha256 {digest[:12]}… differs from build.json's {listed['sha256'][:12]}…")
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(path, mode="r:") as archive:
            for member in archive:
                key, _, ext = member.name.partition(".")
                sample = samples.setdefault(key, {"start": member.offset, "members": {}})
                if ext in sample["members"]:
                    problems.append(f"{key}: member .{ext} appears twice in {path.name}")
                sample["members"][ext] = data[member.offset_data:member.offset_data + member.size]
                sample["end"] = member.offset_data + member.size + (-member.size % BLOCK)
    except tarfile.TarError as error:
        return problems + [f"shard {path.name}: not a readable tar ({error})"]
    required = [f for f in FIELDS.values() if f.stage in stages and not f.optional]
    for key, sample in samples.items():
        seen.add(key)
        row = by_key.get(key)
        if not KEY_PATTERN.match(key):
            problems.append(f"{key}: not a valid clip key")
        if row is None:
            problems.append(f"{key}: in {path.name} but not in the manifest")
            continue
        if row["shard"] != path.name or row["shard_sha256"] != digest:
            problems.append(f"{key}: manifest places it in {row['shard']} (sha {row['shard_sha256'][:12]}…)")
        if (row["offset"], row["size"]) != (sample["start"], sample["end"] - sample["start"]):
            problems.append(f"{key}: manifest offset/size {row['offset']}/{row['size']} but the shard has "
                            f"{sample['start']}/{sample['end'] - sample['start']}")
        problems += [f"{key}: {p}" for p in _verify_sample(sample["members"], row, required)]
    return problems


def _verify_sample(members: dict[str, bytes], row: dict, required) -> list[str]:
    problems = [f"missing field '{f.name}' (.{f.ext})" for f in required if f.ext not in members]
    problems += [f"unknown member .{ext}" for ext in members if field_for_member(ext) is None]
    if "meta.json" not in members:
        return problems
    try:
        meta = json.loads(members["meta.json"])
    except ValueError as error:
        return problems + [f"meta.json is not JSON ({error})"]
    problems += [f"meta.json lacks '{k}'" for k in META_KEYS if k not in meta]
    for name in ("num_frames", "width", "height", "split", "video_id"):
        if name in meta and meta[name] != row[name]:
            problems.append(f"meta.json {name}={meta[name]!r} but the manifest says {row[name]!r}")
    if meta.get("key") != row["key"]:
        problems.append(f"meta.json key {meta.get('key')!r} differs from the sample key")
    if any(k not in meta for k in ("num_frames", "width", "height")):
        return problems
    for ext, data in members.items():
        field = field_for_member(ext)
        if field is None or field.codec == "json":
            continue
        try:
            value = decode_field(field, data)
        except Exception as error:  # noqa: BLE001 - any undecodable member is a finding, not a crash
            problems.append(f"{field.name} (.{ext}) does not decode: {error}")
            continue
        if isinstance(value, dict):  # an npz archive: its own stage's reader checks its keys
            continue
        shape = resolve_shape(field, meta)
        if value.shape != shape:
            problems.append(f"{field.name}: shape {value.shape}, expected {shape} {field.shape}")
        if value.dtype != np.dtype(field.dtype):
            problems.append(f"{field.name}: dtype {value.dtype}, expected {field.dtype}")
        if field.value_range is not None and value.size:
            finite = value[np.isfinite(value)] if np.issubdtype(value.dtype, np.floating) else value
            low, high = field.value_range
            if finite.size and (finite.min() < low or finite.max() > high):
                problems.append(f"{field.name}: values in [{finite.min()}, {finite.max()}], allowed [{low}, {high}]")
    return problems
