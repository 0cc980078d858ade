"""What `humanim synth` runs: synthetic shots written as one video and its ground truth, with a progress bar."""
from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from humanim.pipeline.progress import console
from humanim.stages.body_models import load_body_model
from humanim.synth.generator import SyntheticClip, synth_shots, write_synth


def make_synthetic_video(out_dir: Path, name: str, frames: int, fps: float, height: int, width: int, seed: int,
                         shots: int) -> tuple[Path, Path, list[SyntheticClip]]:
    """Render `shots` shots of `frames` frames into out_dir/{name}.mp4 and {name}.gt.npz; returns both paths and
    the shots themselves."""
    bar = Progress(TextColumn("[bold]synth"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
                   TimeElapsedColumn(), console=console, transient=False)
    with bar:
        task = bar.add_task("frames", total=frames * shots)
        model = load_body_model("anny")
        clips = synth_shots(frames, fps, height, width, seed, shots, model,
                            progress=lambda done: bar.advance(task, done))
        video, truth = write_synth(out_dir, name, clips, seed)
    return video, truth, clips
