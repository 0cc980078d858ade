"""Build configs: a YAML file, optionally based on another (`base:`), merged over the defaults and checked.

An unknown key is an error that lists the known ones, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from humanim.stages.plan import CLIP_PRESETS, PlanConfig

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "stages": ["decode"],
    "clips": {
        "preset": "animatediff",  # sets frames and fps; explicit frames/fps win
        "frames": None,
        "fps": None,
        "stride": None,  # None: back-to-back clips (stride = frames)
        "scene_threshold": 27.0,
        "min_scene_frames": 8,
        "max_clips_per_video": 0,
        "min_source_side": 64,
        "val_fraction": 0.0,
    },
    "video": {
        "width": 512,
        "height": 512,
        "crop": "center",  # center | subject (cut around the tracked main subject; needs a YOLOX file)
        "subject_detector": "yolox_nano_humanart.onnx",  # crop: subject only; model-store name or file path
        "subject_margin": 0.1,
        "detect_side": 416,
        "subject_max_lost_share": 0.25,
        "crf": 18,
        "preset": "veryfast",
        "threads": 1,
    },
    "pose": {
        "backend": "dwpose",  # dwpose | rtmw (rtmlib ONNX, model store) | mediapipe (offline, weights in its wheel)
        "detector": None,  # model-store names; null takes the back-end's
        "pose_model": None,
        "device": "cpu",  # cpu | cuda
        "batch_size": 16,
        "det_threshold": 0.3,
        "kpt_threshold": 0.3,
        "threads": 1,
        "max_lost_share": 0.25,  # a clip whose subject is missing from more of its frames becomes a failures row
        "model_complexity": 1,  # mediapipe only
        "min_detection_confidence": 0.5,
        "min_tracking_confidence": 0.5,
    },
    "face": {
        "backend": "insightface",  # insightface (buffalo_l, NON-COMMERCIAL) | scrfd | yunet | mediapipe (detection only)
        "detector": None,
        "recognizer": None,
        "det_size": 640,
        "det_threshold": 0.5,
        "nms_threshold": 0.4,
        "kpt_threshold": 0.3,
        "box_margin": 0.25,
        "min_inside": 0.5,
        "min_face_share": 0.5,
        "turn_margin": 0.5,
        "frontal_tolerance": 0.1,
    },
    "masks": {"threshold": 0.3, "face_margin": 0.2, "hand_margin": 0.2},
    "blur": {"threshold": 0.3, "margin": 0.2, "crop_size": 32},
    "body": {
        "model": "anny",  # anny (ships in its wheel) | smpl | smplx (model files under their licence)
        "model_path": None,  # smpl / smplx: the model file, or a folder holding it
        "iterations": 30,  # Adam iterations after the Gauss-Newton steps (docs/BENCHMARKS.md, body fitting)
        "score_threshold": 0.3,
        "focal": None,  # pixels; null: from the frame size (recorded as such)
        "max_error_px": 25.0,  # a clip whose mean reprojection error is above this is a bad fit
        "bad_frame_px": 15.0,  # per-frame threshold for fit_bad_frame_share
        "on_bad_fit": "fail",  # fail (a failures row with the reason) | flag (kept, flagged in the manifest)
        "device": "cpu",
        "import_dir": None,  # a folder of 4D-Humans / HMR2 outputs to read instead of fitting
    },
    # model_path: null takes body.model_path; method: raster (z-buffer) | raycast (BVH) | pytorch3d: the same maps
    "render": {"model_path": None, "device": "cpu", "threads": 1, "method": "raster"},
    "noise": {"preset": "wan", "texel_level": "auto", "model_path": None, "device": "cpu"},
    "shards": {
        "max_samples": 1000,
        "max_bytes": 1_000_000_000,
    },
}


class ConfigError(ValueError):
    pass


def _merge(base: dict, override: dict, where: str) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            raise ConfigError(f"unknown config key {where}{key!r}; known keys here: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {where}{key!r} must be a mapping")
            merged[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            merged[key] = value
    return merged


def _read_layers(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config {path} includes itself through 'base'")
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a YAML mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    parent = _read_layers(path.parent / base, seen + (path,))
    return _deep_update(parent, data)


def _deep_update(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@dataclass(frozen=True)
class BuildConfig:
    raw: dict[str, Any]  # fully resolved, as recorded in build.json

    @property
    def seed(self) -> int:
        return int(self.raw["seed"])

    @property
    def stages(self) -> list[str]:
        return list(self.raw["stages"])

    @property
    def plan(self) -> PlanConfig:
        c = self.raw["clips"]
        return PlanConfig(frames=int(c["frames"]), fps=float(c["fps"]), stride=int(c["stride"]),
                          scene_threshold=float(c["scene_threshold"]), min_scene_frames=int(c["min_scene_frames"]),
                          max_clips_per_video=int(c["max_clips_per_video"]), min_source_side=int(c["min_source_side"]),
                          val_fraction=float(c["val_fraction"]))

    def section(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.raw[name])

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True).encode()).hexdigest()


def resolve(raw: dict[str, Any]) -> BuildConfig:
    config = _merge(DEFAULTS, raw, "")
    clips = config["clips"]
    if clips["preset"] is not None:
        if clips["preset"] not in CLIP_PRESETS:
            raise ConfigError(f"unknown clips.preset {clips['preset']!r}; presets: {', '.join(CLIP_PRESETS)}")
        frames, fps = CLIP_PRESETS[clips["preset"]]
        clips["frames"] = clips["frames"] or frames
        clips["fps"] = clips["fps"] or fps
    if not clips["frames"] or not clips["fps"]:
        raise ConfigError("clips.frames and clips.fps must be set (directly or through clips.preset)")
    clips["stride"] = clips["stride"] or clips["frames"]
    if int(clips["frames"]) < 1 or float(clips["fps"]) <= 0 or int(clips["stride"]) < 1:
        raise ConfigError("clips.frames, clips.fps and clips.stride must be positive")
    if config["video"]["crop"] not in ("center", "subject"):
        raise ConfigError(f"unknown video.crop {config['video']['crop']!r}; choose 'center' or 'subject'")
    if "face" in config["stages"] and ("pose" not in config["stages"]
                                       or config["stages"].index("face") < config["stages"].index("pose")):
        raise ConfigError("the face stage picks the subject's face by its keypoints: put 'pose' before 'face'")
    for later, earlier in (("body", "pose"), ("render", "body"), ("noise", "body")):
        if later in config["stages"] and (earlier not in config["stages"]
                                          or config["stages"].index(later) < config["stages"].index(earlier)):
            raise ConfigError(f"the {later} stage reads what the {earlier} stage makes: put '{earlier}' before "
                              f"'{later}'")
    for section in ("render", "noise"):  # they pose the body model the fit was made with
        config[section]["model_path"] = config[section]["model_path"] or config["body"]["model_path"]
    if config["stages"][:1] != ["decode"]:
        raise ConfigError("the first stage must be 'decode': every other stage reads its frames")
    return BuildConfig(config)


def load(path: str | Path | None, overrides: dict[str, Any] | None = None) -> BuildConfig:
    layers = _read_layers(Path(path)) if path else {}
    return resolve(_deep_update(layers, overrides or {}))
