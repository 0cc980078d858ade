"""Decode benchmark: humanim's probe + plan + Decode path against the FFmpeg command line doing the same work.

For every clip preset it times, on the same planned clips of the same videos and in one run:
  * humanim: `plan_source` (probe, scene cuts, plan) then the decode stage on every planned clip, through the
    pipeline's own functions (`plan_source`, `run_task_stage`) in a pool of warm worker processes, as Ray runs them
    (one clip per CPU); the headline leaves scene detection out (pass 1 run with `scene_threshold: 0`), and the
    scene detector's cost is reported on its own row;
  * ffmpeg CLI: one `ffmpeg -ss T0 -t DUR -i SRC -vf fps=..,scale=..:force_original_aspect_ratio=increase,crop=..
    -c:v libx264 -crf 18 -preset veryfast -threads 1` per clip: the script a user would otherwise write;
  * ffmpeg -f null: plain decoding of every video, the limit for any decode path.
Each figure is the fastest of --repeat runs (the machine is shared), and runs alternate between the paths.
Output frames/s counts clip frames written; source frames/s counts the source frames each clip spans (first to
last picked frame), the decode work both paths must at least do; -f null and scene detection decode every frame.

    python bench/decode.py [--videos DIR] [--quick] [--repeat N] [--procs 1,2] [--ffmpeg PATH] [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import datetime
import hashlib
import io
import json
import multiprocessing
import os
import platform
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing.pool import ThreadPool
from pathlib import Path

DEFAULT_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "assets" / "videos"
PRESETS = ("animatediff", "wan")


# ---- work done in the pool's worker processes ------------------------------------------------------

def _warm_worker() -> None:
    import av  # noqa: F401
    import scenedetect  # noqa: F401

    import humanim.pipeline.build  # noqa: F401


def _plan_one(args: tuple[str, dict]) -> dict:
    from humanim.pipeline.build import plan_source
    from humanim.pipeline.config import resolve

    source, raw = args
    return json.loads(plan_source({"source": source}, resolve(raw).plan)["plan"])


def _decode_one(args: tuple[dict, dict, dict]) -> dict:
    from humanim.pipeline.build import run_task_stage
    from humanim.stages.base import Clip, ClipSpec

    spec_dict, info, raw = args
    spec = ClipSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec_dict.items()})
    row = run_task_stage({"clip": Clip(spec=spec, meta={"source_info": info, "stages": {}})}, "decode", raw)
    clip = row["clip"]
    if clip.failure is not None:
        return {"key": spec.key, "failure": clip.failure}
    mp4 = clip.fields["frames"]
    # Only a digest travels back: shipping the frames is the object store's cost, not decoding's.
    return {"key": spec.key, "frames": int(clip.frames.shape[0]), "sha256": hashlib.sha256(mp4).hexdigest(),
            "x264": _x264_version(mp4)}


def _x264_version(mp4: bytes) -> str:
    found = re.search(rb"x264 - core (\d+ r\d+)", mp4)
    return found.group(1).decode() if found else "?"


# ---- the three paths --------------------------------------------------------------------------------

def config_raw(preset: str, scenes: bool) -> dict:
    from humanim.pipeline.config import resolve

    return resolve({"clips": {"preset": preset, **({} if scenes else {"scene_threshold": 0.0})}}).raw


def run_humanim(pool, videos: list[str], preset: str, plans: dict[str, dict]) -> dict:
    """Pass 1 without scene detection, then the decode stage on the clips planned with it (the default build)."""
    raw = config_raw(preset, scenes=False)
    started = time.perf_counter()
    pool.map(_plan_one, [(v, raw) for v in videos], chunksize=1)
    plan_seconds = time.perf_counter() - started
    jobs = [(clip, plans[v]["info"], raw) for v in videos for clip in plans[v].get("clips", [])]
    started = time.perf_counter()
    results = pool.map(_decode_one, jobs, chunksize=1)
    decode_seconds = time.perf_counter() - started
    failures = [r for r in results if "failure" in r]
    if failures:
        raise SystemExit(f"humanim decode failed: {failures[0]}")
    return {"plan": plan_seconds, "decode": decode_seconds, "seconds": plan_seconds + decode_seconds,
            "digests": {r["key"]: r["sha256"] for r in results}, "x264": sorted({r["x264"] for r in results}),
            "frames": sum(r["frames"] for r in results)}


def run_scene_pass(pool, videos: list[str], preset: str) -> tuple[float, dict[str, dict]]:
    """Pass 1 exactly as the default build runs it (probe, scene cuts, plan); returns its time and the plans."""
    raw = config_raw(preset, scenes=True)
    started = time.perf_counter()
    plans = pool.map(_plan_one, [(v, raw) for v in videos], chunksize=1)
    return time.perf_counter() - started, dict(zip(videos, plans))


def ffmpeg_clip_command(ffmpeg: str, clip: dict, info: dict, start_time: float, out: str) -> list[str]:
    width, height = 512, 512  # the default config's video.width / video.height
    frames, fps = len(clip["frame_times"]), clip["fps"]
    # Input -ss counts from the container's start time; our times are stream timestamps.
    seek = clip["frame_times"][0] - start_time
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            "-ss", f"{seek:.6f}", "-t", f"{frames / fps:.6f}", "-i", clip["source"],
            "-an", "-sn", "-dn",
            "-vf", f"fps={fps:g},scale={width}:{height}:force_original_aspect_ratio=increase,crop={width}:{height}",
            "-frames:v", str(frames), "-c:v", "libx264", "-crf", "18", "-preset", "veryfast", "-threads", "1",
            "-pix_fmt", "yuv420p", out]


def run_ffmpeg_cli(threads: ThreadPool, ffmpeg: str, videos: list[str], plans: dict[str, dict],
                   start_times: dict[str, float], workdir: str) -> dict:
    commands = [ffmpeg_clip_command(ffmpeg, clip, plans[v]["info"], start_times[v], os.path.join(workdir, f"{clip['key']}.mp4"))
                for v in videos for clip in plans[v].get("clips", [])]
    started = time.perf_counter()
    threads.map(lambda c: subprocess.run(c, check=True), commands, chunksize=1)
    return {"seconds": time.perf_counter() - started, "outputs": [c[-1] for c in commands]}


def run_ffmpeg_null(threads: ThreadPool, ffmpeg: str, videos: list[str]) -> float:
    commands = [[ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", v, "-an", "-sn", "-dn", "-f", "null", "-"]
                for v in videos]
    started = time.perf_counter()
    threads.map(lambda c: subprocess.run(c, check=True), commands, chunksize=1)
    return time.perf_counter() - started


# ---- helpers run untimed in the main process ----------------------------------------------------------

def count_frames(path: str) -> int:
    import av

    with av.open(path) as container:
        return sum(1 for _ in container.decode(video=0))


def container_start(path: str) -> float:
    import av

    with av.open(path, metadata_errors="ignore") as container:
        return (container.start_time or 0) / 1_000_000


def video_frames(path: str) -> int:
    import av

    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        return sum(1 for p in container.demux(stream) if p.size > 0)


def find_ffmpeg(explicit: str | None) -> str:
    if explicit:
        return explicit
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except ImportError:
        pass
    found = shutil.which("ffmpeg")
    if found:
        return found
    raise SystemExit("no ffmpeg binary: `pip install imageio-ffmpeg` (a static ffmpeg with libx264), "
                     "or pass --ffmpeg PATH")


def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), no GPU used"


def pick_videos(folder: Path, quick: bool) -> list[str]:
    import av

    videos = sorted(str(p) for p in folder.glob("*.mp4"))
    if not videos:
        raise SystemExit(f"no .mp4 files in {folder}")
    if not quick:
        return videos
    frames, fps = 24, 8.0  # the default (animatediff) clip
    long_enough = []
    for v in videos:
        with av.open(v, metadata_errors="ignore") as container:
            if (container.duration or 0) / 1_000_000 >= frames / fps + 0.1:
                long_enough.append(v)
    return sorted(long_enough, key=os.path.getsize)[:2]


def profile_decode(videos: list[str], plans: dict[str, dict], preset: str) -> None:
    """cProfile of the decode stage, in this process, on the clips of the video with the most pixels."""
    from humanim.pipeline.build import run_task_stage
    from humanim.stages.base import Clip, ClipSpec

    planned = [v for v in videos if plans[v].get("clips")]
    video = max(planned, key=lambda v: plans[v]["info"]["width"] * plans[v]["info"]["height"])
    raw = config_raw(preset, scenes=True)
    rows = [{"clip": Clip(spec=ClipSpec(**{k: tuple(x) if isinstance(x, list) else x for k, x in c.items()}),
                          meta={"source_info": plans[video]["info"], "stages": {}})} for c in plans[video]["clips"]]
    run_task_stage(rows[0], "decode", raw)  # builds the stage outside the profile
    profiler = cProfile.Profile()
    profiler.enable()
    for row in rows[1:] or rows:
        run_task_stage(row, "decode", raw)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
    print(f"\ncProfile of the decode stage ({preset}) on {Path(video).name} "
          f"({plans[video]['info']['width']}x{plans[video]['info']['height']}):")
    print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[:4000])


# ---- main ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS)
    parser.add_argument("--quick", action="store_true", help="2 short videos, the default preset, one repeat")
    parser.add_argument("--repeat", type=int, default=None, help="runs per figure, fastest kept (3; 1 with --quick)")
    parser.add_argument("--procs", default="1,2", help="process counts to run, comma separated")
    parser.add_argument("--presets", default=None, help=f"clip presets, comma separated ({','.join(PRESETS)})")
    parser.add_argument("--ffmpeg", default=None, help="ffmpeg binary (default: imageio-ffmpeg's, then PATH)")
    parser.add_argument("--profile", action="store_true", help="also cProfile the decode stage")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    ffmpeg = find_ffmpeg(args.ffmpeg)
    videos = pick_videos(args.videos, args.quick)
    presets = args.presets.split(",") if args.presets else (["animatediff"] if args.quick else list(PRESETS))
    repeat = args.repeat or (1 if args.quick else 3)
    procs = [int(p) for p in args.procs.split(",")]
    ffmpeg_version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    import av

    print(f"machine: {machine()}; {datetime.date.today().isoformat()}; python {platform.python_version()}")
    print(f"humanim: PyAV {av.__version__} (libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))})")
    print(f"reference: {ffmpeg_version} ({ffmpeg})")
    print(f"videos ({len(videos)}): {', '.join(Path(v).name for v in videos)}; fastest of {repeat} run(s)\n")

    total_frames = {v: video_frames(v) for v in videos}
    start_times = {v: container_start(v) for v in videos}
    figures, last_plans = [], {}
    with tempfile.TemporaryDirectory(prefix="humanim-bench-") as workdir:
        for preset in presets:
            for n in procs:
                with multiprocessing.get_context("spawn").Pool(n, initializer=_warm_worker) as pool, \
                        ThreadPool(n) as threads:
                    pool.map(time.sleep, [0.2] * n, chunksize=1)  # every worker up and imported
                    best: dict[str, float] = {}
                    digests, x264 = None, set()
                    plans = None
                    for _ in range(repeat):
                        scene_pass, plans = run_scene_pass(pool, videos, preset)
                        ours = run_humanim(pool, videos, preset, plans)
                        cli = run_ffmpeg_cli(threads, ffmpeg, videos, plans, start_times, workdir)
                        null = run_ffmpeg_null(threads, ffmpeg, videos)
                        if digests is not None and digests != ours["digests"]:
                            print("WARNING: humanim's mp4 bytes differ between repeats")
                        digests, x264 = ours["digests"], x264 | set(ours["x264"])
                        for name, seconds in (("pass1_scenes", scene_pass), ("pass1", ours["plan"]),
                                              ("decode", ours["decode"]), ("ours", ours["seconds"]),
                                              ("cli", cli["seconds"]), ("null", null)):
                            best[name] = min(best.get(name, float("inf")), seconds)
                    last_plans[preset] = plans
                    clips = [c for v in videos for c in plans[v].get("clips", [])]
                    out_frames = sum(len(c["frame_times"]) for c in clips)
                    spanned = sum(c["source_frame_indices"][-1] - c["source_frame_indices"][0] + 1 for c in clips)
                    cli_frames = [count_frames(p) for p in cli["outputs"]]
                    cli_x264 = sorted({_x264_version(Path(p).read_bytes()) for p in cli["outputs"]})
                    best["scenes"] = max(0.0, best["pass1_scenes"] - best["pass1"])
                    best["ours_scenes"] = best["ours"] + best["scenes"]
                    figures.append({"preset": preset, "procs": n, "clips": len(clips), "out_frames": out_frames,
                                    "spanned_frames": spanned, "all_frames": sum(total_frames.values()),
                                    "seconds": best, "x264_ours": sorted(x264), "x264_cli": cli_x264,
                                    "cli_frames_ok": all(f == len(c["frame_times"]) for f, c in zip(cli_frames, clips)),
                                    "ours_frames": ours["frames"], "digests": digests})
                    print_block(figures[-1])
    same = {}
    for f in figures:
        same.setdefault(f["preset"], []).append(f["digests"])
    for preset, runs in same.items():
        print(f"{preset}: humanim mp4 bytes identical across repeats and process counts: "
              f"{'yes' if all(r == runs[0] for r in runs) else 'NO'}")
    if args.profile:
        profile_decode(videos, last_plans[presets[0]], presets[0])
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in f.items() if k != "digests"} for f in figures], indent=2))
    return 0


def print_block(f: dict) -> None:
    s = f["seconds"]
    out, spanned, every = f["out_frames"], f["spanned_frames"], f["all_frames"]
    if not f["clips"]:
        print(f"== {f['preset']}: no video is long enough for one clip\n")
        return
    print(f"== preset {f['preset']}, {f['procs']} process(es): {f['clips']} clips, {out} clip frames, "
          f"{spanned} source frames spanned, {every} source frames in all")
    header = f"{'path':<44}{'wall s':>8}{'clip fr/s':>11}{'src fr/s':>10}{'vs CLI':>8}"
    print(header)
    print("-" * len(header))

    def row(name: str, seconds: float, clip_frames: int | None, source_frames: int, ratio: bool) -> None:
        clip_rate = f"{clip_frames / seconds:>11.1f}" if clip_frames else f"{'':>11}"
        ratio_text = f"{s['cli'] / seconds:>8.2f}" if ratio else f"{'':>8}"
        print(f"{name:<44}{seconds:>8.2f}{clip_rate}{source_frames / seconds:>10.1f}{ratio_text}")

    row("ffmpeg CLI, per clip (reference)", s["cli"], out, spanned, True)
    row("humanim probe+plan+decode stage (headline)", s["ours"], out, spanned, True)
    row("  of which probe+plan (pass 1, no cuts)", s["pass1"], None, every, False)
    row("  of which decode stage", s["decode"], out, spanned, True)
    row("humanim incl. scene detection", s["ours_scenes"], out, spanned, True)
    row("  scene detection alone (PySceneDetect)", s["scenes"], None, every, False)
    row("ffmpeg -f null, whole videos (limit)", s["null"], None, every, False)
    notes = [f"x264 ours {','.join(f['x264_ours'])} / CLI {','.join(f['x264_cli'])}",
             "CLI frame counts match" if f["cli_frames_ok"] else "CLI frame counts DIFFER from the plan"]
    print("  " + "; ".join(notes) + "\n")


if __name__ == "__main__":
    sys.exit(main())
