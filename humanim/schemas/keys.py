"""Clip keys, video ids and seeds: the names and numbers every part of a build must agree on."""
from __future__ import annotations

import hashlib
import re

# WebDataset splits a member name at the first dot, so a key must never contain one.
KEY_PATTERN = re.compile(r"^(?P<video_id>[0-9a-f]{16})_(?P<clip_index>\d{5})$")


def video_id_from_sha256(sha256_hex: str) -> str:
    """A video's id is its content hash, so renaming or moving a file keeps its keys."""
    return sha256_hex[:16]


def clip_key(video_id: str, clip_index: int) -> str:
    key = f"{video_id}_{clip_index:05d}"
    if not KEY_PATTERN.match(key):
        raise ValueError(f"invalid clip key {key!r}: want 16 hex digits, '_', 5 digits")
    return key


def parse_clip_key(key: str) -> tuple[str, int]:
    match = KEY_PATTERN.match(key)
    if match is None:
        raise ValueError(f"invalid clip key {key!r}: want '{{video_id}}_{{clip:05d}}' with a 16-hex video id")
    return match["video_id"], int(match["clip_index"])


def derive_seed(build_seed: int, key: str, stage: str) -> int:
    """Seed of one stage on one clip, from names only, so output never depends on worker order or count."""
    digest = hashlib.sha256(f"{build_seed}/{key}/{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def file_sha256(path: str, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
