"""WebDataset shards with deterministic bytes.

A sample is stored as its tar members (fixed header metadata, registry order), and a shard is the plain
concatenation of its samples' members followed by the end-of-archive blocks. So a sample's bytes are
final the moment its clip is done, its offset in the shard is a running sum, and a shard is written in one
sequential pass to a hidden name, then renamed: no partial shard is ever visible under its final name.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

from humanim.pipeline.workdir import WorkDir

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)


def tar_members(key: str, members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    for ext, data in members:
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        out.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        out.write(data)
        out.write(b"\0" * (-len(data) % BLOCK))
    return out.getvalue()


def read_members(data: bytes) -> list[tuple[str, bytes]]:
    """(name, bytes) of every regular member of a tar held in memory, in order."""
    with tarfile.open(fileobj=io.BytesIO(data + END_OF_ARCHIVE), mode="r:") as archive:
        return [(m.name, archive.extractfile(m).read()) for m in archive.getmembers() if m.isfile()]


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


class ShardPacker:
    """Packs one split's samples into shards in plan order, as soon as an ordered prefix of clips is done.

    Shard boundaries depend only on the ordered sequence of finished samples and the size limits, never on
    which worker finished first, so every run of the same build cuts the same shards.
    """

    def __init__(self, work: WorkDir, shard_dir: Path, split: str, keys: list[str], max_samples: int, max_bytes: int):
        self.work, self.shard_dir, self.split = work, shard_dir, split
        self.keys, self.max_samples, self.max_bytes = keys, max_samples, max_bytes
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.shard_dir.glob(f".{split}-*.tmp"):
            stale.unlink()
        records = [r for r in work.packed_records() if r["split"] == split]
        packed = {key for record in records for key in record["keys"]}
        for key in packed:  # a crash between journaling a shard and dropping its samples leaves them behind
            work.drop_sample(key)
        self.next_index = len(records)
        self.position = 0
        self.pending: list[tuple[str, int]] = []  # (key, bytes) of the shard being filled
        self.packed = packed

    def advance(self) -> list[str]:
        """Pack every shard that the finished prefix of clips completes; returns the shards written."""
        written = []
        while self.position < len(self.keys):
            key = self.keys[self.position]
            if key in self.packed or self.work.has_failure(key):
                self.position += 1
                continue
            if not self.work.has_sample(key):
                break
            size = self.work.sample_blob(key).stat().st_size
            pending_bytes = sum(s for _, s in self.pending)
            if self.pending and pending_bytes + size + len(END_OF_ARCHIVE) > self.max_bytes:
                written.append(self._write())
            self.pending.append((key, size))
            self.position += 1
            if len(self.pending) >= self.max_samples:
                written.append(self._write())
        return written

    def finish(self) -> list[str]:
        written = self.advance()
        if self.position < len(self.keys):
            raise RuntimeError(f"split {self.split}: clip {self.keys[self.position]} is neither done nor failed")
        if self.pending:
            written.append(self._write())
        return written

    def _write(self) -> str:
        name = shard_name(self.split, self.next_index)
        final, tmp = self.shard_dir / name, self.shard_dir / f".{name}.tmp"
        digest, offset, rows = hashlib.sha256(), 0, []
        with open(tmp, "wb") as handle:
            for key, size in self.pending:
                blob = self.work.sample_blob(key).read_bytes()
                handle.write(blob)
                digest.update(blob)
                rows.append({**self.work.sample_row(key), "shard": name, "offset": offset, "size": size})
                offset += size
            handle.write(END_OF_ARCHIVE)
            digest.update(END_OF_ARCHIVE)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        keys = [key for key, _ in self.pending]
        self.work.write_packed(name.removesuffix(".tar"), {
            "split": self.split, "shard": name, "index": self.next_index, "sha256": digest.hexdigest(),
            "bytes": offset + len(END_OF_ARCHIVE), "keys": keys, "rows": rows})
        for key in keys:
            self.work.drop_sample(key)
            self.packed.add(key)
        self.pending = []
        self.next_index += 1
        return name
