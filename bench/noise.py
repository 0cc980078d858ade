"""Speed of articulated noise at 480x832 with the wan latent layout (s=8, k=4, C=16); prints a table.

    PYTHONPATH=. python bench/noise.py [--clips 4] [--workers 1 2] [--baseline OLD_NOISE.py [--rounds 3]]

--baseline loads another version of humanim/stages/noise.py (e.g. `git show HEAD:humanim/stages/noise.py >
/tmp/noise_head.py`) and measures it and the current one alternately in the same run, so both see the same
load; it also says whether the two give bit-identical noise, flow and visibility.

Geometry: the tests' MovingSphere, 13,824 faces (SMPL has 13,776), covering 40% of the frame, moving 3 px and
spinning 0.02 rad per video frame; an 81-frame clip, so 21 latent frames. Each worker is one process with one
torch thread, as the pipeline runs the stage (Resources(cpus=1)); N workers on N cores is the build's throughput.
The load average is printed because this machine is shared: other jobs' load slows every figure.
"""
from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import platform
import sys
import time

import numpy as np
import torch

import humanim.stages.noise as current
from humanim.stages.noise import (
    PRESETS, CanonicalNoise, FrameSurface, articulated_noise, cell_index_map, draw_canonical, generator_for,
    latent_flow, latent_frame_noise,
)
from tests.test_noise import MovingSphere

HEIGHT, WIDTH, VIDEO_FRAMES = 480, 832, 81
LAYOUT = PRESETS["wan"]


def render_clip() -> tuple[np.ndarray, np.ndarray]:
    """[81, H, W] maps; only the latent frames 0, 4, ..., 80 are rendered (the stage reads no others)."""
    sphere = MovingSphere(HEIGHT, WIDTH, radius_px=226, longitudes=96, bands=72, velocity_px=3.0, spin=0.02,
                          start_x=WIDTH / 2 - 100)
    face_id, barycentric = sphere.render(LAYOUT.latent_frame_indices(VIDEO_FRAMES))
    repeat = LAYOUT.temporal_stride
    return (np.repeat(face_id, repeat, axis=0)[:VIDEO_FRAMES],
            np.repeat(barycentric, repeat, axis=0)[:VIDEO_FRAMES])


def per_pixel_noise(surface: FrameSurface, canonical: CanonicalNoise, generator: torch.Generator) -> torch.Tensor:
    """The straightforward torch version, for comparison under the same load: one fresh normal per body pixel
    and channel, texel means by index_add, pixels summed into cells; the background in closed form."""
    channels, stride = LAYOUT.channels, LAYOUT.spatial_stride
    texels = torch.from_numpy(surface.texels.astype(np.int64))
    count = torch.from_numpy(surface.texel_pixels)[texels].unsqueeze(1)
    table = torch.from_numpy(canonical.texels[surface.level])
    fresh = torch.randn(len(texels), channels, generator=generator)
    mean = torch.zeros(len(table), channels).index_add_(0, texels, fresh)[texels] / count
    image = torch.zeros(HEIGHT * WIDTH, channels)
    image[torch.from_numpy(surface.pixels)] = table[texels] / count.sqrt() + fresh - mean
    cells = image.reshape(HEIGHT // stride, stride, WIDTH // stride, stride, channels).sum(dim=(1, 3))
    cell_pixels = np.bincount(surface.cells, minlength=(HEIGHT // stride) * (WIDTH // stride))
    background = torch.from_numpy(np.sqrt(stride * stride - cell_pixels).astype(np.float32))
    return (cells.reshape(-1, channels) + background[:, None] * torch.from_numpy(canonical.background)) / stride


def stage_breakdown(face_id: np.ndarray, barycentric: np.ndarray) -> dict[str, float]:
    """Milliseconds per latent frame of each step, timed on the stage's own functions, and of the per-pixel
    version in place of the fast noise path, as a baseline measured under the same load."""
    frames = LAYOUT.latent_frame_indices(VIDEO_FRAMES)
    cell_of_pixel = cell_index_map(HEIGHT, WIDTH, LAYOUT.spatial_stride)
    grid = (HEIGHT // LAYOUT.spatial_stride, WIDTH // LAYOUT.spatial_stride)
    spent = dict.fromkeys(("read body pixels", "texels and pairs", "noise", "flow", "canonical (per clip)",
                           "per-pixel noise, 1 torch thread(s)", "per-pixel noise, 2 torch thread(s)"), 0.0)
    start = time.perf_counter()
    surfaces = [FrameSurface.from_render(face_id[t], barycentric[t], cell_of_pixel) for t in frames]
    spent["read body pixels"] += time.perf_counter() - start
    seen = np.unique(np.concatenate([s.faces for s in surfaces]))
    result = articulated_noise(face_id, barycentric, LAYOUT, 0)
    start = time.perf_counter()
    canonical = draw_canonical(seen, int(seen.max()) + 1, max(result.levels), LAYOUT.channels,
                               grid[0] * grid[1], generator_for(0, 0))
    spent["canonical (per clip)"] += time.perf_counter() - start
    for t, (surface, level) in enumerate(zip(surfaces, result.levels)):
        start = time.perf_counter()
        surface.assign_texels(level, canonical.face_row, len(seen), grid[0] * grid[1])
        spent["texels and pairs"] += time.perf_counter() - start
        start = time.perf_counter()
        latent_frame_noise(surface, canonical, LAYOUT.spatial_stride, generator_for(0, t + 1))
        spent["noise"] += time.perf_counter() - start
        for threads in (1, 2):
            torch.set_num_threads(threads)
            start = time.perf_counter()
            per_pixel_noise(surface, canonical, generator_for(0, t + 1))
            spent[f"per-pixel noise, {threads} torch thread(s)"] += time.perf_counter() - start
        torch.set_num_threads(1)
        if t:
            start = time.perf_counter()
            latent_flow(surfaces[t - 1], surface, len(seen), WIDTH, grid, LAYOUT.spatial_stride)
            spent["flow"] += time.perf_counter() - start
    return {name: 1e3 * seconds / len(frames) for name, seconds in spent.items()}


CLIP: dict[str, np.ndarray] = {}  # set before the workers fork, so they share the maps instead of pickling them
MODULES: dict[str, object] = {"current": current}  # and the --baseline module, loaded before the fork too


def run_clips(job: tuple[str, list[int]]) -> int:
    torch.set_num_threads(1)
    module, seeds = MODULES[job[0]], job[1]
    return sum(module.articulated_noise(CLIP["face_id"], CLIP["barycentric"], LAYOUT, seed).noise.shape[0]
               for seed in seeds)


def throughput(workers: int, clips_per_worker: int, module: str = "current") -> float:
    """Latent frames per second over `workers` processes, each running its own clips end to end."""
    jobs = [(module, list(range(w * clips_per_worker, (w + 1) * clips_per_worker))) for w in range(workers)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(run_clips, [(module, [999])] * workers, chunksize=1)  # warm-up, outside the timed window
        start = time.perf_counter()
        frames = sum(pool.map(run_clips, jobs, chunksize=1))
        return frames / (time.perf_counter() - start)


def load_baseline(path: str) -> None:
    spec = importlib.util.spec_from_file_location("noise_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["noise_baseline"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    MODULES["baseline"] = module
    new = current.articulated_noise(CLIP["face_id"], CLIP["barycentric"], LAYOUT, 0)
    old = module.articulated_noise(CLIP["face_id"], CLIP["barycentric"], LAYOUT, 0)
    same = all(getattr(new, name).tobytes() == getattr(old, name).tobytes()
               for name in ("noise", "flow", "visibility"))
    print(f"baseline {path}: noise, flow and visibility {'bit-identical' if same else 'DIFFER'} for seed 0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4, help="clips per worker")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--baseline", help="another noise.py to measure alternately with the current one")
    parser.add_argument("--rounds", type=int, default=3, help="alternations with --baseline (best of each)")
    options = parser.parse_args()
    torch.set_num_threads(1)
    face_id, barycentric = render_clip()
    CLIP.update(face_id=face_id, barycentric=barycentric)
    result = articulated_noise(face_id, barycentric, LAYOUT, 0)
    latent = LAYOUT.latent_frame_indices(VIDEO_FRAMES)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} at start")
    print(f"clip: {WIDTH}x{HEIGHT}, {VIDEO_FRAMES} frames -> {len(latent)} latent frames x {LAYOUT.channels} x "
          f"{HEIGHT // LAYOUT.spatial_stride} x {WIDTH // LAYOUT.spatial_stride}; body on "
          f"{(face_id[latent] >= 0).mean():.0%} of pixels; texel level {result.levels[0]} "
          f"({result.pixels_per_face[0]:.0f} pixels per face)")
    print("\nper latent frame, one process, one thread:")
    for name, milliseconds in stage_breakdown(face_id, barycentric).items():
        print(f"  {name:<38} {milliseconds:7.2f} ms")
    if options.baseline:
        load_baseline(options.baseline)
        print("\nworkers  latent frames/s (noise + flow, end to end), best of "
              f"{options.rounds} alternated rounds:  baseline   current   ratio")
        for workers in options.workers:
            best = dict.fromkeys(("baseline", "current"), 0.0)
            for _ in range(options.rounds):
                for module in best:
                    best[module] = max(best[module], throughput(workers, options.clips, module))
            print(f"{workers:>7}  {'':43}{best['baseline']:9.1f} {best['current']:9.1f} "
                  f"{best['current'] / best['baseline']:7.2f}")
    else:
        print("\nworkers  latent frames/s (noise + flow, end to end)")
        for workers in options.workers:
            print(f"{workers:>7}  {throughput(workers, options.clips):15.1f}")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
