"""What every stage is: a class built from its config section that maps a clip to its own annotations.

Stages are plain Python with no Ray: the pipeline reads `resources` to place them on actors, and reads
`model_files()` to check weights on the driver before any worker starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class Resources:
    """What one instance of a stage wants; the pipeline turns this into Ray Data operator resources."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_bytes: int = 0
    # Stages that load models keep them loaded in a pool of actors; the rest run as stateless tasks.
    stateful: bool = False


class ClipRejected(Exception):
    """A clip (or a whole input) that cannot be used, for a reason a person can read; ends as a failures row."""


@dataclass(frozen=True)
class ClipSpec:
    """One planned clip: which source frames, at which times, go into it."""

    key: str
    video_id: str
    clip_index: int
    split: str
    source: str
    source_sha256: str
    source_frame_indices: tuple[int, ...]  # presentation-order index of the source frame for each clip frame
    source_frame_pts: tuple[int, ...]  # that frame's timestamp in the stream's time_base, to find it after a seek
    source_frame_times: tuple[float, ...]  # presentation time in seconds of that source frame
    frame_times: tuple[float, ...]  # target times in seconds, at the clip fps
    fps: float
    # The reference frame: a source frame of the same video outside the clip's frames (see plan.py); None when
    # the video has no frame outside the clip.
    reference_frame_index: int | None = None
    reference_frame_pts: int | None = None
    reference_frame_time: float | None = None
    reference_same_scene: bool | None = None


@dataclass
class Annotations:
    """What a stage returns: arrays (or encoded bytes) by registry field name, JSON-able metadata, QA figures."""

    fields: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    qa: dict[str, float] = field(default_factory=dict)
    frames: np.ndarray | None = None  # only the decode stage sets this: [T, H, W, 3] uint8
    reference: np.ndarray | None = None  # only the decode stage sets this: the reference frame [H, W, 3] uint8


@dataclass
class Clip:
    """A clip travelling through the stages: its plan, its frames and everything annotated so far."""

    spec: ClipSpec
    frames: np.ndarray | None = None
    reference: np.ndarray | None = None  # the reference frame [H, W, 3], cut like the clip's frames
    fields: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    qa: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # time spent per stage, for build.json
    failure: dict[str, str] | None = None  # set by the first stage that fails; later stages pass the clip on

    @property
    def key(self) -> str:
        return self.spec.key


class Stage:
    name: ClassVar[str]
    version: ClassVar[str]
    resources: ClassVar[Resources] = Resources()

    def __init__(self, config: dict[str, Any], build_seed: int = 0):
        self.config = config
        self.build_seed = build_seed

    @classmethod
    def check_environment(cls, config: dict[str, Any]) -> None:
        """Raise a clear error (with the install command) if this stage cannot run here; called on the driver
        before any worker starts, so a missing package never surfaces deep inside a worker."""

    @classmethod
    def model_names(cls, config: dict[str, Any]) -> list[str]:
        """Model-store names (or a user's own file paths) this stage loads with this config, for build.json."""
        return []

    def model_files(self) -> list[str]:
        """Names of model-store files this stage loads (checked on the driver before the build)."""
        return []

    def __call__(self, clip: Clip) -> Annotations:
        raise NotImplementedError
