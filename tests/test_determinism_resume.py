"""Same build, same bytes: with one or two Ray workers, and after the driver or a worker is killed mid-build."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import build_command, output_digests, run_build, subprocess_env, write_config


def test_one_and_two_workers_give_identical_shards(real_videos, reference_build, tmp_path):
    config = write_config(tmp_path / "config.yaml")
    run_build(real_videos, tmp_path / "out", config, num_cpus=1)
    assert output_digests(tmp_path / "out") == output_digests(reference_build)


def _assert_only_complete_shards_visible(out: Path, reference_build: Path) -> None:
    """No partial shard under a final name: any shard already visible is byte-identical to the finished one."""
    reference = output_digests(reference_build)
    for shard in (out / "shards").glob("*.tar"):
        digest = hashlib.sha256(shard.read_bytes()).hexdigest()
        assert digest == reference[f"shards/{shard.name}"], f"{shard.name} is visible but incomplete"


def _start(real_videos: Path, out: Path, config: Path) -> subprocess.Popen:
    # A session of its own, so killing it takes the local Ray processes it started with it.
    return subprocess.Popen(build_command(real_videos, out, config, num_cpus=1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=subprocess_env(), start_new_session=True)


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, "the build ended before the test could interrupt it"
        assert time.time() < deadline, "the build made no progress"
        time.sleep(0.02)


def test_driver_killed_mid_build_resumes_to_identical_output(real_videos, reference_build, tmp_path):
    config, out = write_config(tmp_path / "config.yaml"), tmp_path / "out"
    process = _start(real_videos, out, config)
    # Kill the driver once the first clip sample is on disk: plans done, some clips done, no shard yet.
    _wait_for(lambda: any((out / "_work" / "samples").glob("*.tar")), process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "build.json").exists()
    _assert_only_complete_shards_visible(out, reference_build)
    run_build(real_videos, out, config, num_cpus=1)
    assert output_digests(out) == output_digests(reference_build)


def test_interrupt_after_a_shard_then_resume(real_videos, reference_build, tmp_path):
    config, out = write_config(tmp_path / "config.yaml"), tmp_path / "out"
    process = _start(real_videos, out, config)
    _wait_for(lambda: any((out / "_work" / "packed").glob("*.json")), process)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends
    try:
        process.wait(timeout=60)
    finally:
        os.killpg(process.pid, signal.SIGKILL) if process.poll() is None else None
    assert not (out / "build.json").exists()
    assert any((out / "shards").glob("*.tar"))
    _assert_only_complete_shards_visible(out, reference_build)
    run_build(real_videos, out, config, num_cpus=1)
    assert output_digests(out) == output_digests(reference_build)


def _ray_stage_workers() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if title.startswith(b"ray::") and b"run_task_stage" in title:
                pids.append(int(entry.name))
    return pids


def test_worker_killed_mid_build_then_rerun_gives_identical_output(real_videos, reference_build, tmp_path):
    config, out = write_config(tmp_path / "config.yaml"), tmp_path / "out"
    process = _start(real_videos, out, config)
    _wait_for(lambda: bool(_ray_stage_workers()), process)
    for pid in _ray_stage_workers():
        os.kill(pid, signal.SIGKILL)
    try:
        process.wait(timeout=300)  # Ray retries the lost task, or the driver fails; either way, rerun
    finally:
        os.killpg(process.pid, signal.SIGKILL) if process.poll() is None else None
    run_build(real_videos, out, config, num_cpus=1)
    assert output_digests(out) == output_digests(reference_build)
