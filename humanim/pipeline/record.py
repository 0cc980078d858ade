"""build.json: everything needed to know how a build was made and to make it again."""
from __future__ import annotations

import hashlib
import subprocess
from collections import Counter
from importlib import metadata
from pathlib import Path

import humanim
from humanim.pipeline.config import BuildConfig
from humanim.schemas.tables import QA_COLUMNS

PACKAGES = ("humanim", "numpy", "av", "pyarrow", "ray", "webdataset", "scenedetect",
            "opencv-contrib-python-headless", "torch", "pillow", "pyyaml")


def code_version() -> dict:
    """The package version and, from a git checkout, the commit and whether the tree had changes."""
    root = Path(humanim.__file__).resolve().parent.parent
    version = {"humanim": metadata.version("humanim")}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        version.update(commit=commit, dirty=bool(dirty))
    except (OSError, subprocess.SubprocessError):
        version.update(commit=None, dirty=None)
    return version


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    import av

    versions["ffmpeg"] = {lib: ".".join(map(str, v)) for lib, v in av.library_versions.items()}
    return versions


def models_record(names: list[str]) -> list[dict]:
    """Each model file a build loads: name, sha256, licence and source for store names; path and sha256 for a
    user's own file."""
    from humanim.schemas.keys import file_sha256
    from humanim.stages import model_store

    records = []
    for name in dict.fromkeys(names):
        if Path(name).expanduser().is_file():
            records.append({"name": name, "sha256": file_sha256(str(Path(name).expanduser())), "path": name})
        else:
            records += model_store.describe([name])
    return records


def _qa_means(rows: list[dict]) -> dict[str, float]:
    """Mean of every QA figure the stages reported, over the clips that have it."""
    means = {}
    for name in QA_COLUMNS:
        values = [r[name] for r in rows if r.get(name) is not None]
        if values:
            means[name] = round(float(sum(values) / len(values)), 4)
    return means


def build_record(out: Path, config: BuildConfig, sources: list[str], packed: list[dict], failures: list[dict],
                 stage_seconds: dict[str, float], wall_seconds: float, resumed: bool, models: list[dict]) -> dict:
    rows = [row for record in packed for row in record["rows"]]
    reasons = Counter((f["stage"], f["reason"][:160]) for f in failures)
    return {
        "out": str(out),
        "config": config.raw,
        "config_sha256": config.digest(),
        "code": code_version(),
        "packages": package_versions(),
        "models": models,
        "seed": config.seed,
        "sources": {"count": len(sources), "sha256": hashlib.sha256("\n".join(sources).encode()).hexdigest()},
        "counts": {
            "videos": len(sources),
            "videos_failed": sum(1 for f in failures if f.get("key") is None),
            "clips_ok": len(rows),
            "clips_flagged": sum(1 for r in rows if r["status"] == "flagged"),
            "clips_failed": sum(1 for f in failures if f.get("key") is not None),
            "failures": len(failures),
        },
        "shards": [{"name": r["shard"], "split": r["split"], "sha256": r["sha256"], "bytes": r["bytes"],
                    "samples": len(r["keys"])} for r in packed],
        "qa_means": _qa_means(rows),
        "stage_seconds": {k: round(v, 3) for k, v in sorted(stage_seconds.items())},
        "wall_seconds": round(wall_seconds, 3),
        "resumed": resumed,
        "failure_reasons": [{"stage": s, "reason": r, "count": n} for (s, r), n in reasons.most_common()],
    }
