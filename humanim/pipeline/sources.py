"""Turn the SRC argument of `humanim build` into a sorted list of video paths."""
from __future__ import annotations

import glob
import os
from pathlib import Path

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp"}


def expand_sources(src: str) -> list[str]:
    """A folder (searched recursively for video files), a glob, a .txt list (one path a line, # comments),
    or a .parquet list (column 'path' or 'source'); relative paths in a list are relative to the list.
    Paths are made absolute but symlinks are kept, so the manifest names files as the user did."""
    path = Path(src)
    if any(ch in src for ch in "*?["):
        found = [os.path.abspath(p) for p in glob.glob(src, recursive=True) if Path(p).is_file()]
    elif path.is_dir():
        found = [os.path.abspath(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    elif path.suffix == ".txt":
        lines = [line.strip() for line in path.read_text().splitlines()]
        found = [_relative_to(path, line) for line in lines if line and not line.startswith("#")]
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        column = next((c for c in ("path", "source") if c in table.column_names), None)
        if column is None:
            raise ValueError(f"{src}: a source list in parquet needs a 'path' or 'source' column, "
                             f"found {table.column_names}")
        found = [_relative_to(path, p) for p in table.column(column).to_pylist() if p]
    elif path.is_file():
        found = [os.path.abspath(path)]
    else:
        raise FileNotFoundError(f"SRC {src!r} is not a folder, a glob, a .txt or .parquet list, or a video file")
    sources = sorted(set(found))
    if not sources:
        raise FileNotFoundError(f"SRC {src!r} holds no video files (looked for {', '.join(sorted(VIDEO_SUFFIXES))})")
    return sources


def _relative_to(listing: Path, entry: str) -> str:
    entry_path = Path(entry)
    return os.path.abspath(entry_path if entry_path.is_absolute() else listing.parent / entry_path)
