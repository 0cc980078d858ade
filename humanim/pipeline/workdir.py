"""A build's state on disk under OUT/_work: what is planned, what is done, what failed, what is packed.

Every file appears atomically (written beside its final name, flushed, renamed), so a build killed at
any moment leaves only complete records, and the next run picks up from them.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def dump_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, indent=1, allow_nan=False).encode()


def source_id(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()[:16]


class WorkDir:
    def __init__(self, out: Path):
        self.out = out
        self.root = out / "_work"
        self.plans, self.samples = self.root / "plans", self.root / "samples"
        self.failures, self.packed = self.root / "failures", self.root / "packed"

    def claim(self, config_digest: str, sources: list[str]) -> bool:
        """Tie OUT to one (config, sources); True when resuming an earlier run of the same build."""
        identity = {"config_sha256": config_digest,
                    "sources_sha256": hashlib.sha256("\n".join(sources).encode()).hexdigest()}
        state = self.root / "build-identity.json"
        if state.exists():
            earlier = json.loads(state.read_text())
            if earlier != identity:
                changed = [k.split("_")[0] for k in identity if earlier.get(k) != identity[k]]
                raise RuntimeError(f"{self.out} holds a build with other {' and '.join(changed)}; "
                                   "resume needs the same command, so build into a new OUT")
            return True
        atomic_write(state, dump_json(identity))
        return False

    # plans: one per source
    def plan_path(self, source: str) -> Path:
        return self.plans / f"{source_id(source)}.json"

    def write_plan(self, source: str, plan: dict) -> None:
        atomic_write(self.plan_path(source), dump_json(plan))

    def read_plan(self, source: str) -> dict | None:
        path = self.plan_path(source)
        return json.loads(path.read_text()) if path.exists() else None

    # samples: the encoded tar members of one clip, plus its manifest row
    def write_sample(self, key: str, blob: bytes, row: dict) -> None:
        atomic_write(self.samples / f"{key}.row.json", dump_json(row))
        atomic_write(self.samples / f"{key}.tar", blob)  # the blob last: its presence marks the sample done

    def sample_blob(self, key: str) -> Path:
        return self.samples / f"{key}.tar"

    def sample_row(self, key: str) -> dict:
        return json.loads((self.samples / f"{key}.row.json").read_text())

    def has_sample(self, key: str) -> bool:
        return self.sample_blob(key).exists()

    def drop_sample(self, key: str) -> None:
        for suffix in (".tar", ".row.json"):
            (self.samples / f"{key}{suffix}").unlink(missing_ok=True)

    # failures: one file per failed input or clip
    def write_failure(self, name: str, failure: dict) -> None:
        atomic_write(self.failures / f"{name}.json", dump_json(failure))

    def has_failure(self, name: str) -> bool:
        return (self.failures / f"{name}.json").exists()

    def all_failures(self) -> list[dict]:
        if not self.failures.exists():
            return []
        return [json.loads(p.read_text()) for p in sorted(self.failures.glob("*.json"))]

    # packed shards: the manifest rows of each shard that reached its final name
    def write_packed(self, shard: str, record: dict) -> None:
        atomic_write(self.packed / f"{shard}.json", dump_json(record))

    def packed_records(self) -> list[dict]:
        if not self.packed.exists():
            return []
        return [json.loads(p.read_text()) for p in sorted(self.packed.glob("*.json"))]
