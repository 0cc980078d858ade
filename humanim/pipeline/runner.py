"""Runs one stage on one clip inside a Ray worker, with the error travelling as a value.

A stage that raises ends the clip as a failure record (stage, error class, readable reason) that later
stages pass through untouched; it never takes the worker or the build down.
"""
from __future__ import annotations

import time
import traceback

from humanim.stages.base import Clip, ClipRejected, Stage


def failure_record(stage: str, error: BaseException) -> dict[str, str]:
    if isinstance(error, ClipRejected):
        return {"stage": stage, "error_class": "ClipRejected", "reason": str(error)}
    where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    place = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return {"stage": stage, "error_class": type(error).__name__, "reason": f"{error}{place}"}


class StageRunner:
    def __init__(self, stage: Stage):
        self.stage = stage

    def __call__(self, row: dict) -> dict:
        clip: Clip = row["clip"]
        if clip.failure is not None:
            return row
        name = self.stage.name
        started = time.perf_counter()
        try:
            annotations = self.stage(clip)
        except Exception as error:  # noqa: BLE001 - every error becomes a failures row, by contract
            clip.failure = failure_record(name, error)
        else:
            if annotations.frames is not None:
                clip.frames = annotations.frames
            if annotations.reference is not None:
                clip.reference = annotations.reference
            clip.fields.update(annotations.fields)
            clip.qa.update(annotations.qa)
            clip.meta.setdefault("stages", {})[name] = {"version": self.stage.version, **annotations.meta}
            # A stage keeps a doubtful clip by flagging it: the manifest's status and flags columns say why.
            clip.meta.setdefault("flags", []).extend(annotations.meta.get("flags", []))
        clip.seconds[name] = time.perf_counter() - started
        return row
