"""Decode benchmark: humanim's probe + plan + decode stage against the FFmpeg command line doing the same work.

For each clip preset, on the clips `humanim build` plans for the videos, and in one run, it times:
  * humanim: pass 1 (`plan_source`: probe, plan) then the decode stage on every planned clip through the
    pipeline's own runner (`run_task_stage`), in a pool of warm worker processes each taking one clip at a time,
    as Ray places the stage. The headline runs pass 1 with scene detection off; the default build's pass 1
    (with PySceneDetect) is timed too, and the difference is the scene detector's cost;
  * ffmpeg CLI: per clip, `ffmpeg -ss T0 -t DUR -i SRC -vf fps=F,scale=W:H:force_original_aspect_ratio=increase:
    flags=area,crop=W:H -c:v libx264 -crf 18 -preset veryfast -threads 1`: the script a user would otherwise write,
    with the same resampling, scaler, crop and x264 settings as the default config;
  * ffmpeg -f null: the same segments (same -ss/-t) decoded and thrown away: the limit for any decode path.
Each at 1 and 2 processes. out f/s counts clip frames written per wall second; in f/s counts the source frames a
decoder has to decode per wall second (from the keyframe a seek lands on to the clip's last source frame; every
frame for the scene detector).

    python bench/decode.py [--videos DIR] [--quick] [--repeat N] [--profile]

The ffmpeg binary comes from the imageio-ffmpeg wheel when installed, else from PATH.
"""
from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import multiprocessing
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing.pool import ThreadPool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VIDEOS = ROOT.parent / "shared" / "assets" / "videos"
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"
# Two short videos: a 1080x1920 one and an 8 s 512x758 one (long enough for one `wan` clip).
QUICK_VIDEOS = ("mmhuman3d_single_person_demo.mp4", "animatex_dance_1.mp4")
PRESETS = ("animatediff", "wan")
PROCESSES = (1, 2)
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}


def find_ffmpeg() -> str:
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except ImportError:
        pass
    found = shutil.which("ffmpeg")
    if found:
        return found
    sys.exit("bench/decode.py needs an ffmpeg binary for its reference figures and found none.\n"
             "Install one: pip install imageio-ffmpeg   (ships a static ffmpeg with libx264),\n"
             "or put an ffmpeg built with libx264 on PATH.")


def build_config(preset: str, scenes: bool):
    from humanim.pipeline.config import load

    return load(DEFAULT_CONFIG, {"clips": {"preset": preset, **({} if scenes else {"scene_threshold": 0.0})}})


# ---- work done in the pool's worker processes ------------------------------------------------------

def _warm_worker() -> None:
    import numpy as np

    import scenedetect  # noqa: F401 - imported once here, not inside the first timed task
    import humanim.pipeline.build  # noqa: F401
    from humanim.stages.media import av

    # PySceneDetect's PyAV backend hands FFmpeg's messages to FFmpeg's own stderr printer: errors only.
    av.logging.set_libav_level(av.logging.ERROR)
    with av.open(io.BytesIO(), "w", format="mp4") as container:  # libx264 paged in
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode())


def _wait(_: int) -> None:
    time.sleep(0.3)  # every pool process takes one of these, so all have run their initializer


def plan_task(args: tuple[str, dict]) -> dict:
    from humanim.pipeline.build import plan_source
    from humanim.pipeline.config import BuildConfig

    source, raw = args
    started = time.process_time()  # this process's CPU time, all its threads included
    plan = json.loads(plan_source({"source": source}, BuildConfig(raw).plan)["plan"])
    return {**plan, "cpu": time.process_time() - started}


def decode_task(args: tuple[dict, dict, dict]) -> dict:
    from humanim.pipeline.build import run_task_stage
    from humanim.stages.base import Clip, ClipSpec

    spec, info, raw = args
    spec = ClipSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
    started = time.process_time()  # the decoder's threads included
    clip = run_task_stage({"clip": Clip(spec=spec, meta={"source_info": info, "stages": {}})}, "decode", raw)["clip"]
    if clip.failure is not None:
        return {"key": spec.key, "failure": clip.failure}
    mp4 = clip.fields["frames"]
    cpu = time.process_time() - started
    # Only a digest goes back: moving the frames to the next stage is the object store's cost, not decoding's.
    return {"key": spec.key, "cpu": cpu, "frames": int(clip.frames.shape[0]), "sha256": hashlib.sha256(mp4).hexdigest(),
            "x264": x264_options(mp4)}


def command_task(command: list[str]) -> None:
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr.decode(errors='replace')[-2000:]}")


# ---- helpers run untimed in the main process ---------------------------------------------------------

def x264_options(mp4: bytes) -> str:
    """The settings string x264 writes into its first SEI, to check both paths encode alike."""
    at = mp4.find(b"options: ")
    return mp4[at + 9:mp4.find(b"\x00", at)].decode(errors="replace") if at >= 0 else "?"


def stream_layout(path: str) -> dict:
    """Every frame's pts, the keyframes' pts and the container start (which ffmpeg's -ss counts from)."""
    import av

    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.pts is not None and p.size]
        start = (container.start_time or 0) / 1_000_000
    return {"pts": sorted(p for p, _ in packets), "keys": sorted(p for p, k in packets if k), "start": start}


def decoded_frames(layout: dict, clip: dict) -> int:
    """Source frames a decoder decodes for a clip: from the keyframe a seek lands on to the last frame used."""
    first, last = clip["source_frame_pts"][0], clip["source_frame_pts"][-1]
    key = max((k for k in layout["keys"] if k <= first), default=layout["pts"][0])
    return sum(1 for p in layout["pts"] if key <= p <= last)


def decoded_once(layout: dict, clips: list[dict]) -> int:
    """Source frames a decoder would decode for all of a video's clips in one pass (no seek per clip)."""
    first = min(c["source_frame_pts"][0] for c in clips)
    last = max(c["source_frame_pts"][-1] for c in clips)
    key = max((k for k in layout["keys"] if k <= first), default=layout["pts"][0])
    return sum(1 for p in layout["pts"] if key <= p <= last)


def ffmpeg_commands(ffmpeg: str, clip: dict, video: dict, start: float, out: str) -> tuple[list[str], list[str]]:
    width, height, frames, fps = video["width"], video["height"], len(clip["frame_times"]), clip["fps"]
    # -ss before -i: a fast keyframe seek then exact frames, as our stage does.
    head = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            "-ss", f"{clip['frame_times'][0] - start:.6f}", "-t", f"{frames / fps:.6f}", "-i", clip["source"],
            "-map", "0:v:0", "-an", "-sn", "-dn"]
    encode = [*head, "-vf", f"fps={fps:g},scale={width}:{height}:force_original_aspect_ratio=increase:flags=area,"
                            f"crop={width}:{height}",
              "-frames:v", str(frames), "-c:v", "libx264", "-crf", str(video["crf"]), "-preset", video["preset"],
              "-threads", str(video["threads"]), "-pix_fmt", "yuv420p", out]
    return encode, [*head, "-f", "null", "-"]


def timed(run, repeat: int):
    """(wall s, CPU s, result) of the fastest of `repeat` runs (the machine is shared).

    `run` returns (result, CPU seconds it used): CPU time is what the work costs whatever else the machine
    runs, so its ratios hold on a busy machine where wall-clock ratios drift.
    """
    best = (float("inf"), 0.0, None)
    for _ in range(repeat):
        started = time.perf_counter()
        result, cpu = run()
        best = min(best, (time.perf_counter() - started, cpu, result), key=lambda b: b[0])
    return best


def in_pool(pool, task, jobs: list):
    results = pool.map(task, jobs, chunksize=1)
    return results, sum(r.get("cpu", 0.0) for r in results)


def in_processes(threads: ThreadPool, commands: list[list[str]]):
    """Runs the commands, `threads` at a time; their CPU time comes from the kernel's count for reaped children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    threads.map(command_task, commands, chunksize=1)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return None, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def machine() -> str:
    model = "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model})"


# ---- the run -----------------------------------------------------------------------------------------

def measure(videos: list[str], ffmpeg: str, repeat: int, scratch: str) -> dict:
    layouts = {v: stream_layout(v) for v in videos}
    all_frames = sum(len(layout["pts"]) for layout in layouts.values())
    figures: dict = {}
    for processes in PROCESSES:
        with multiprocessing.get_context("spawn").Pool(processes, initializer=_warm_worker) as pool, \
                ThreadPool(processes) as threads:
            pool.map(_wait, range(processes), chunksize=1)
            for preset in PRESETS:
                with_cuts, without_cuts = build_config(preset, True), build_config(preset, False)
                f = figures.setdefault(preset, {"frames": with_cuts.plan.frames, "fps": with_cuts.plan.fps,
                                                "video": with_cuts.section("video"), "all_frames": all_frames})
                # Pass 1 as the default build runs it (probe, scene cuts, plan): its plans are the clips used.
                pass1_cuts, pass1_cuts_cpu, plans = timed(
                    lambda: in_pool(pool, plan_task, [(v, with_cuts.raw) for v in videos]), repeat)
                pass1, pass1_cpu, _ = timed(
                    lambda: in_pool(pool, plan_task, [(v, without_cuts.raw) for v in videos]), repeat)
                plans = dict(zip(videos, plans))
                f["rejected"] = {Path(v).name: p["failure"]["reason"] for v, p in plans.items() if "failure" in p}
                clips = [(v, c) for v in videos for c in plans[v].get("clips", [])]
                f["clips"], f["videos"] = len(clips), len({v for v, _ in clips})
                if not clips:
                    continue
                jobs = [(c, plans[v]["info"], with_cuts.raw) for v, c in clips]
                decode, decode_cpu, results = timed(lambda: in_pool(pool, decode_task, jobs), repeat)
                failed = [r for r in results if "failure" in r]
                if failed:
                    sys.exit(f"the decode stage failed on {failed[0]['key']}: {failed[0]['failure']}")
                outputs = [os.path.join(scratch, f"{c['key']}.mp4") for _, c in clips]
                commands = [ffmpeg_commands(ffmpeg, c, f["video"], layouts[v]["start"], out)
                            for (v, c), out in zip(clips, outputs)]
                cli, cli_cpu, _ = timed(lambda: in_processes(threads, [c[0] for c in commands]), repeat)
                null, null_cpu, _ = timed(lambda: in_processes(threads, [c[1] for c in commands]), repeat)
                f[processes] = {"pass1": pass1, "pass1_cuts": pass1_cuts, "decode": decode, "cli": cli, "null": null}
                f[processes]["cpu"] = {"pass1": pass1_cpu, "pass1_cuts": pass1_cuts_cpu, "decode": decode_cpu,
                                       "cli": cli_cpu, "null": null_cpu}
                f["out_frames"] = sum(r["frames"] for r in results)
                f["in_frames"] = sum(decoded_frames(layouts[v], c) for v, c in clips)
                f["in_frames_once"] = sum(decoded_once(layouts[v], plans[v]["clips"]) for v in videos
                                          if plans[v].get("clips"))
                f.setdefault("digests", []).append([r["sha256"] for r in results])
                if processes == PROCESSES[0]:
                    import av

                    counts = []
                    for out in outputs:
                        with av.open(out) as container:
                            counts.append(sum(1 for p in container.demux(video=0) if p.size))
                    f["cli_frames"] = sum(counts)
                    f["x264_ours"], f["x264_cli"] = results[0]["x264"], x264_options(Path(outputs[0]).read_bytes())
                    f["command"] = commands[0][0]
                    f["plans"] = plans
                for out in outputs:
                    os.remove(out)
    return figures


def rate(frames: int, seconds: float) -> str:
    return f"{frames / seconds:8.1f}" if frames else f"{'':8}"


def report(figures: dict) -> bool:
    """Prints the tables; True when humanim is at least as fast as the CLI everywhere."""
    fast_enough = True
    for preset, f in figures.items():
        video = f["video"]
        print(f"== {preset}: {f['frames']} frames @ {f['fps']:g} fps, {video['width']}x{video['height']}, "
              f"x264 crf {video['crf']} {video['preset']} threads {video['threads']}: "
              f"{f['clips']} clips from {f['videos']} videos")
        for name, reason in sorted(f["rejected"].items()):
            print(f"   no clip from {name}: {reason}")
        if not f["clips"]:
            print()
            continue
        out, spanned, every = f["out_frames"], f["in_frames"], f["all_frames"]
        print(f"   {out} clip frames; {spanned} source frames to decode (seek to keyframe .. last frame used; "
              f"{f['in_frames_once']} if each video's clips were decoded in one pass); {every} source frames in all")
        print(f"{'':46}" + "".join(f"| {n} process{'es' if n > 1 else '  '} {'':26}" for n in PROCESSES))
        print(f"{'path':46}" + f"| {'wall s':>7} {'out f/s':>8} {'in f/s':>8} {'CPU s':>7} " * len(PROCESSES))
        rows = [
            ("humanim pass 1 + decode stage (headline)", lambda s: s["pass1"] + s["decode"], out, spanned),
            ("  pass 1: probe + plan, no scene cuts", lambda s: s["pass1"], 0, 0),
            ("  decode stage", lambda s: s["decode"], out, spanned),
            ("scene detection (PySceneDetect)", lambda s: max(1e-9, s["pass1_cuts"] - s["pass1"]), 0, every),
            ("humanim incl. scene detection (default)", lambda s: s["pass1_cuts"] + s["decode"], out, spanned),
            ("ffmpeg CLI, same filters + x264 (reference)", lambda s: s["cli"], out, spanned),
            ("ffmpeg -f null, same segments (limit)", lambda s: s["null"], out, spanned),
        ]
        for label, seconds, frames_out, frames_in in rows:
            cells = ""
            for n in PROCESSES:
                wall = seconds(f[n])
                cells += f"| {wall:7.2f} {rate(frames_out, wall)} {rate(frames_in, wall)} {seconds(f[n]['cpu']):7.2f} "
            print(f"{label:46}{cells}")
        ratios = [
            ("ratio CLI / humanim headline (goal >= 1)", lambda s: s["cli"] / (s["pass1"] + s["decode"])),
            ("ratio CLI / humanim incl. scene detection", lambda s: s["cli"] / (s["pass1_cuts"] + s["decode"])),
            ("ratio CLI / decode stage", lambda s: s["cli"] / s["decode"]),
            ("ratio decode limit / humanim headline", lambda s: s["null"] / (s["pass1"] + s["decode"])),
        ]
        print("ratios (wall-clock, then CPU time)")
        for label, ratio in ratios:
            print(f"{label:46}" + "".join(f"| {ratio(f[n]):7.2f} {'':17} {ratio(f[n]['cpu']):7.2f} " for n in PROCESSES))
        fast_enough &= all(f[n]["cli"] >= f[n]["pass1"] + f[n]["decode"] for n in PROCESSES)
        speedup = f[PROCESSES[0]]["pass1"] + f[PROCESSES[0]]["decode"]
        print(f"humanim 1 -> 2 processes: {speedup / (f[2]['pass1'] + f[2]['decode']):.2f}x; ffmpeg CLI: "
              f"{f[1]['cli'] / f[2]['cli']:.2f}x")
        checks = [
            f"CLI wrote {f['cli_frames']} frames (plan: {out})",
            "x264 settings identical" if f["x264_ours"] == f["x264_cli"] else
            f"x264 settings DIFFER:\n     ours: {f['x264_ours']}\n     CLI:  {f['x264_cli']}",
            "humanim mp4 bytes identical at 1 and 2 processes" if all(d == f["digests"][0] for d in f["digests"])
            else "humanim mp4 bytes DIFFER between process counts",
        ]
        print("checks: " + "; ".join(checks))
        print("CLI command for the first clip:\n  " + " ".join(f["command"]) + "\n")
    return fast_enough


def profile(figures: dict, preset: str) -> None:
    """cProfile of the decode stage in this process, over the preset's clips of the video with the most pixels."""
    from humanim.pipeline.build import run_task_stage  # noqa: F401 - builds outside the profile

    plans = figures[preset]["plans"]
    video = max((v for v in plans if plans[v].get("clips")),
                key=lambda v: plans[v]["info"]["width"] * plans[v]["info"]["height"])
    raw = build_config(preset, True).raw
    jobs = [(c, plans[video]["info"], raw) for c in plans[video]["clips"]]
    _warm_worker()
    decode_task(jobs[0])  # the stage is built outside the profile, as a warm worker has it
    profiler = cProfile.Profile()
    profiler.enable()
    for job in jobs:
        decode_task(job)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(14)
    info = plans[video]["info"]
    print(f"cProfile of the decode stage ({preset}, {len(jobs)} clips of {Path(video).name}, "
          f"{info['width']}x{info['height']}), by own time:")
    print("\n".join(line for line in text.getvalue().splitlines()[4:] if line.strip()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS, help=f"folder of videos ({DEFAULT_VIDEOS})")
    parser.add_argument("--quick", action="store_true", help=f"only {' and '.join(QUICK_VIDEOS)}: under a minute")
    parser.add_argument("--repeat", type=int, default=1, help="runs per figure; the fastest is kept (default 1)")
    parser.add_argument("--profile", action="store_true", help="also cProfile the decode stage")
    args = parser.parse_args(argv)

    if not args.videos.is_dir():
        sys.exit(f"no video folder at {args.videos}; pass --videos DIR")
    videos = sorted(str(p) for p in args.videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if args.quick:
        named = [v for v in videos if Path(v).name in QUICK_VIDEOS]
        videos = named if len(named) == len(QUICK_VIDEOS) else sorted(videos, key=os.path.getsize)[:2]
    if not videos:
        sys.exit(f"no videos in {args.videos}")
    ffmpeg = find_ffmpeg()
    ffmpeg_version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    from humanim.stages.media import av

    print(f"{time.strftime('%Y-%m-%d')} | {machine()} | python {sys.version.split()[0]} | "
          f"PyAV {av.__version__} (libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))})")
    print(f"reference: {ffmpeg_version} ({ffmpeg})")
    print(f"videos ({len(videos)}) in {args.videos}: {', '.join(Path(v).name for v in videos)}; "
          f"fastest of {max(1, args.repeat)} run(s) per figure\n")
    with tempfile.TemporaryDirectory(prefix="humanim-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None) \
            as scratch:
        figures = measure(videos, ffmpeg, max(1, args.repeat), scratch)
    fast_enough = report(figures)
    print(f"goal (humanim at least as fast as the ffmpeg CLI at every process count): "
          f"{'met' if fast_enough else 'NOT met'}")
    if args.profile:
        print()
        profile(figures, PRESETS[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
