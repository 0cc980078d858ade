"""Shared test helpers: the real assets beside the repo, small build configs, builds run as the CLI runs them."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"

# Small, fast clips: 8 frames at 8 fps, 128x128, a few clips per video. The pipeline's mechanics (planning,
# packing, determinism, resume) are tested with the video stages only; test_offline_build runs the rest.
SMALL_BUILD = {
    "base": str(REPO / "configs" / "offline.yaml"),
    "stages": ["decode"],
    "clips": {"frames": 8, "fps": 8, "max_clips_per_video": 3},
    "video": {"width": 128, "height": 128},
    "shards": {"max_samples": 3},
}


def asset(relative: str) -> Path:
    path = ASSETS / relative
    if not path.exists():
        pytest.skip(f"test asset {path} is absent (tests read ../shared/assets beside the repository)")
    return path


def write_config(path: Path, overrides: dict | None = None) -> Path:
    config = {**SMALL_BUILD}
    for key, value in (overrides or {}).items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(config))
    return path


def build_command(src: Path | str, out: Path, config: Path, num_cpus: int = 2) -> list[str]:
    return [sys.executable, "-m", "humanim.pipeline.cli", "build", str(src), str(out),
            "--config", str(config), "--num-cpus", str(num_cpus)]


def run_build(src: Path | str, out: Path, config: Path, num_cpus: int = 2,
              env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(build_command(src, out, config, num_cpus), capture_output=True, text=True,
                            timeout=600, env={**subprocess_env(), **(env or {})})
    assert result.returncode == 0, f"build failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def subprocess_env() -> dict:
    # No colour codes in captured output, and Ray kept quiet about features the tests do not use.
    return {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "RAY_USAGE_STATS_ENABLED": "0"}


def output_digests(out: Path) -> dict[str, str]:
    """sha256 of everything a build promises to reproduce byte for byte: shards and manifest."""
    files = sorted((out / "shards").glob("*.tar")) + [out / "manifest.parquet", out / "failures.parquet"]
    return {f.relative_to(out).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="session")
def real_videos(tmp_path_factory) -> Path:
    """A folder of three short real videos: a crowd street scene, a talking head, a full-body athlete."""
    folder = tmp_path_factory.mktemp("videos")
    for name in ("mmpose_demo_street.mp4", "moore_talkinghead_3.mp4", "mmhuman3d_single_person_demo.mp4"):
        (folder / name).symlink_to(asset(f"videos/{name}"))
    return folder


@pytest.fixture(scope="session")
def reference_build(real_videos, tmp_path_factory) -> Path:
    """One uninterrupted build of the real videos, with two Ray CPUs: the output other tests compare to."""
    root = tmp_path_factory.mktemp("reference")
    config = write_config(root / "config.yaml")
    result = run_build(real_videos, root / "out", config, num_cpus=2)
    (root / "build.log").write_text(result.stdout + result.stderr)
    return root / "out"
