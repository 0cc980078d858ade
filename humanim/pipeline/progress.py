"""What a person watching a build sees: one progress bar while it runs, one summary table at the end."""
from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True)


class BuildProgress:
    def __init__(self, videos: int):
        self.progress = Progress(
            TextColumn("[bold]{task.description:<7}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(), console=console, transient=False)
        self.videos = self.progress.add_task("videos", total=videos, rate="", failed=0)
        self.clips = self.progress.add_task("clips", total=None, rate="", failed=0)
        self.clip_started, self.clips_this_run = time.perf_counter(), 0

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def videos_done(self, count: int, failed: bool = False) -> None:
        task = self.progress.tasks[self.videos]
        self.progress.update(self.videos, advance=count, failed=task.fields["failed"] + int(failed))

    def add_clips(self, total: int, already_done: int) -> None:
        self.progress.update(self.clips, total=total, completed=already_done)
        self.clip_started = time.perf_counter()

    def clip_done(self, failed: bool) -> None:
        self.clips_this_run += 1
        rate = self.clips_this_run / max(time.perf_counter() - self.clip_started, 1e-9)
        task = self.progress.tasks[self.clips]
        self.progress.update(self.clips, advance=1, rate=f"{rate:.2f} clips/s",
                             failed=task.fields["failed"] + int(failed))


def print_summary(record: dict) -> None:
    counts = record["counts"]
    table = Table(title=f"humanim build: {record['out']}", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("videos", str(counts["videos"]))
    table.add_row("videos unusable", str(counts["videos_failed"]))
    table.add_row("clips in shards", str(counts["clips_ok"]))
    table.add_row("clips flagged", str(counts["clips_flagged"]))
    table.add_row("clips failed", str(counts["clips_failed"]))
    table.add_row("shards", f"{len(record['shards'])} ({sum(s['bytes'] for s in record['shards']) / 1e6:.1f} MB)")
    for name, mean in record["qa_means"].items():
        table.add_row(f"mean {name}", f"{mean:.3f}")
    for stage, spent in record["stage_seconds"].items():
        table.add_row(f"time in {stage}", f"{spent:.1f} s")
    table.add_row("wall time (this run)", f"{record['wall_seconds']:.1f} s")
    console.print(table)
    if record["failure_reasons"]:
        reasons = Table(title="failures by stage and reason", show_header=True)
        reasons.add_column("stage")
        reasons.add_column("reason")
        reasons.add_column("count", justify="right")
        for item in record["failure_reasons"][:10]:
            reasons.add_row(item["stage"], item["reason"], str(item["count"]))
        console.print(reasons)
