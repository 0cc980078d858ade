"""The `humanim` command."""
from __future__ import annotations

import sys
from pathlib import Path

import click

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Build human-animation training shards from videos of people."""


@main.command()
@click.argument("src")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Build config (YAML); configs/default.yaml when omitted.")
@click.option("--address", default=None, help="Join a running Ray cluster (e.g. 'auto') instead of starting one.")
@click.option("--num-cpus", type=int, default=None, help="CPUs for the local Ray instance (default: all).")
def build(src: str, out: Path, config_path: str | None, address: str | None, num_cpus: int | None) -> None:
    """Build shards from SRC (a folder, a glob, or a .txt/.parquet list of videos) into OUT."""
    from humanim.pipeline import config as config_module
    from humanim.pipeline.build import build as run_build

    config = config_module.load(config_path or CONFIGS / "default.yaml")
    run_build(src, out, config, address=address, num_cpus=num_cpus)


@main.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
def verify(out: Path) -> None:
    """Check every sample of every shard in OUT against the schema and the manifest."""
    from humanim.pipeline.verify import verify_build

    problems = verify_build(out)
    if problems:
        click.echo(f"{len(problems)} problem(s) in {out}:", err=True)
        for problem in problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(1)
    click.echo(f"{out}: every shard and sample matches the schema and the manifest")


@main.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("key")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the contact sheet (default: OUT/inspect/KEY.png).")
def inspect(out: Path, key: str, png: Path | None) -> None:
    """Print a sample's fields and write a contact sheet of its frames."""
    from humanim.pipeline.contact_sheet import inspect_sample

    inspect_sample(out, key, png or out / "inspect" / f"{key}.png")


@main.command()
def schema() -> None:
    """Print the sample format (docs/FORMAT.md) generated from the registry."""
    from humanim.schemas.format_doc import render_format_doc

    click.echo(render_format_doc(), nl=False)


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"))
def demo(out: Path) -> None:
    """Build the offline preset on an embedded input, verify it and draw a contact sheet."""
    from humanim.pipeline.demo import run_demo

    run_demo(out, CONFIGS / "offline.yaml")


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--frames", type=click.IntRange(min=1), default=48, show_default=True, help="Frames per shot.")
@click.option("--fps", type=float, default=24.0, show_default=True)
@click.option("--size", default="512x512", show_default=True, help="WIDTHxHEIGHT, both even.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--shots", type=click.IntRange(min=1), default=2, show_default=True,
              help="Shots with hard cuts between them, each with its own person, motion and room.")
@click.option("--name", default="synth", show_default=True, help="File stem of the video and its ground truth.")
def synth(out: Path, frames: int, fps: float, size: str, seed: int, shots: int, name: str) -> None:
    """Render a synthetic person (Anny) into OUT/NAME.mp4, with its exact ground truth in OUT/NAME.gt.npz."""
    from humanim.synth.command import make_synthetic_video

    try:
        width, height = (int(side) for side in size.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT, got {size!r}", param_hint="--size") from None
    if width % 2 or height % 2 or min(width, height) < 16:
        raise click.BadParameter(f"width and height must be even and at least 16, got {size}", param_hint="--size")
    video, truth, _ = make_synthetic_video(out, name, frames, fps, height, width, seed, shots)
    click.echo(f"{video}\n{truth}")


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="Training config (YAML); configs/train_tiny.yaml is an example, docs/TRAINING.md lists every key.")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in the config's output_dir.")
@click.option("--output-dir", default=None, help="Overrides output_dir.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Overrides max_steps.")
def train(config_path: str, resume: bool, output_dir: str | None, max_steps: int | None) -> None:
    """Train a denoiser on shards streamed from local paths or URLs (one process, torchrun, or Ray Train)."""
    from humanim.training import config as training_config
    from humanim.training.train import train as run_training

    overrides = {k: v for k, v in (("output_dir", output_dir), ("max_steps", max_steps)) if v is not None}
    result = run_training(training_config.load(config_path, overrides), resume=resume)
    click.echo(f"trained to step {result['step']}")


@main.command()
@click.option("--ref", "reference", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Reference image of the person to animate.")
@click.option("--motion", required=True,
              help="Driving video, a motion file from --save-motion (.npz), or a shard sample as BUILD_OR_SHARD#KEY.")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output video (.mp4).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Build config whose stages annotate the inputs; default: the build.json of the checkpoint's shards.")
@click.option("--steps", type=click.IntRange(min=1), default=25, show_default=True)
@click.option("--guidance", type=float, default=3.5, show_default=True,
              help="Animation CFG scale (reference and motion dropped together); 1 turns it off.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--window", type=click.IntRange(min=1), default=None,
              help="Latent frames per window; default: the checkpoint's clip length.")
@click.option("--overlap", type=click.IntRange(min=0), default=None,
              help="Latent frames neighbouring windows share; default: a quarter window.")
@click.option("--fixed-windows", is_flag=True, help="Keep the window grid in place instead of moving it every step.")
@click.option("--reference-noise", is_flag=True, help="Start from the reference latent diffused to the first level.")
@click.option("--noise-gamma", type=click.FloatRange(0, 1), default=None,
              help="Share of fresh noise mixed into articulated noise; default: the checkpoint's.")
@click.option("--max-side", type=click.IntRange(min=8), default=None,
              help="Longer side the reference is animated at (the output keeps the image's size); default: that of "
                   "the checkpoint's training resolution, else 512.")
@click.option("--fps", type=float, default=None, help="Resample the driving video to this rate; default: its own.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Animate the first N driving frames.")
@click.option("--side-by-side", "side_by_side", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write reference | driving | conditions | result as a video.")
@click.option("--save-motion", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Save the driving motion's annotations (.npz) to animate other references with it.")
@click.option("--no-align", "no_align", is_flag=True,
              help="Keep the driving motion as it is (self-reenactment: the reference is a frame of the driving "
                   "video).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
def animate(reference: Path, motion: str, checkpoint: Path, out: Path, config_path: str | None, steps: int,
            guidance: float, seed: int, window: int | None, overlap: int | None, fixed_windows: bool,
            reference_noise: bool, noise_gamma: float | None, max_side: int | None, fps: float | None,
            max_frames: int | None, side_by_side: Path | None, save_motion: Path | None, no_align: bool,
            device: str) -> None:
    """Animate a reference image with a driving motion through a trained checkpoint (docs/INFERENCE.md)."""
    from humanim.pipeline import config as config_module
    from humanim.pipeline.animate import AnimateInputError
    from humanim.pipeline.animate import animate as run_animate
    from humanim.training.inference import SamplerConfig

    sampler = SamplerConfig(steps=steps, guidance=guidance, window=window, overlap=overlap,
                            random_offset=not fixed_windows, reference_noise=reference_noise,
                            noise_gamma=noise_gamma, seed=seed)
    try:
        build = config_module.load(config_path) if config_path is not None else None
        result = run_animate(reference, motion, checkpoint, out, build, sampler, device=device, max_side=max_side,
                             fps=fps, max_frames=max_frames, side_by_side_path=side_by_side, save_motion=save_motion,
                             align=not no_align, log=click.echo)
    except AnimateInputError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"{result['out']}: {result['frames']} frames at {result['fps']:g} fps, "
               f"{result['size'][1]}x{result['size'][0]}")


from humanim.pipeline.models_cli import models  # noqa: E402 - attached after the group exists

main.add_command(models)

if __name__ == "__main__":
    main()
