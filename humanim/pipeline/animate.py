"""`humanim animate`: a reference image performs a driving motion, through a trained checkpoint.

1. The checkpoint's training config says which conditions it takes; what building them needs (stages, a face
   recogniser, a noise layout matching the VAE) is checked first, before any model is loaded.
2. The build's own stages, built from a build config, annotate the reference image as a one-frame clip (pose,
   face, body fit) and the driving video as a clip of all its frames (pose, hand blur, body fit): the same code
   as the shards the checkpoint was trained on, so the conditions cannot drift from training.
3. Shape alignment (Champ, eq. 3; stages/shape_align.py): the driving poses on the reference's body, framed
   like the reference, and the skeleton of that body; without body fits (a checkpoint that takes the skeleton
   only), the driving skeleton scaled and moved to stand where and as tall as the reference.
4. The render, mask and noise stages run on the aligned motion, and training/conditions.py draws the conditions
   from their output exactly as the loader does; training/inference.py samples and the VAE decodes.

The motion is a video file, a shard sample (`BUILD_OR_SHARD#KEY`, or a bare clip key of the checkpoint's
training shards), or a motion file written by `--save-motion` (keypoints, body fit and hand sharpness of a
driving video, to animate many references with it). docs/INFERENCE.md is the user's guide.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from humanim.pipeline.config import BuildConfig
from humanim.pipeline.runner import StageRunner
from humanim.schemas.keypoints import BODY, LEFT_HAND, RIGHT_HAND
from humanim.stages.base import Clip, ClipSpec
from humanim.training.config import TrainConfig

KPT_THRESHOLD = 0.3  # a keypoint below this score counts as unseen, as in the pose and mask stages
MIN_BODY_KEYPOINTS = 6  # confident body keypoints (of 17) an image needs to hold a person
DEFAULT_MAX_SIDE = 512  # the reference's longer side while animating, where the checkpoint names no resolution
ANNOTATION_SIDE = 512  # the reference's longer side at least while the stages annotate it (if the file is as big)
RENDER_CHUNK = 32  # frames the render stage draws at a time for the aligned motion
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif"}


class AnimateInputError(ValueError):
    """An input `humanim animate` cannot use, with the reason; raised before any model runs."""


# What the checkpoint needs -------------------------------------------------------------------------------------


def needed_stages(config: TrainConfig) -> list[str]:
    """Build stages whose output the checkpoint's conditions and noise are drawn from, in build order."""
    conditions = set(config.data.conditions)
    needs = {"pose"}
    if "hand_blur" in conditions:
        needs |= {"masks", "blur"}
    if "renders" in conditions:
        needs |= {"body", "render"}
    if "identity" in conditions:
        needs.add("face")
    if config.objectives.articulated_noise:
        needs |= {"body", "noise"}
    order = ["pose", "face", "masks", "blur", "body", "render", "noise"]
    return [name for name in order if name in needs]


def check_buildable(config: TrainConfig, build: BuildConfig, vae_layout: tuple[int, int, int]
                    ) -> tuple[list[str], list[dict]]:
    """The stages to run and the model files they load (name, sha256), or an AnimateInputError saying which
    condition cannot be built and why. vae_layout: the checkpoint VAE's (spatial stride, temporal stride, latent
    channels)."""
    from humanim.pipeline.build import STAGE_SECTIONS, stage_class
    from humanim.pipeline.record import models_record
    from humanim.stages.model_store import ModelStoreError
    from humanim.stages.face import BACKENDS
    from humanim.stages.noise import PRESETS
    from humanim.training.conditions import CONDITIONS

    unknown = sorted(set(config.data.conditions) - set(CONDITIONS))
    if unknown:
        raise AnimateInputError(f"the checkpoint was trained with condition(s) {unknown}, which this version "
                                f"cannot build; it builds {list(CONDITIONS)}")
    stages = needed_stages(config)
    if "identity" in config.data.conditions:
        face = build.section("face")
        if (face["recognizer"] or BACKENDS[face["backend"]].recognizer) is None:
            raise AnimateInputError(
                f"the checkpoint takes the identity condition (an ArcFace embedding of the reference face), but "
                f"face.backend {face['backend']!r} of the build config has no recognition model: use a build "
                f"config with face.backend: insightface, or set face.recognizer")
    if "noise" in stages:
        preset = build.section("noise")["preset"]
        layout = PRESETS[preset]
        noise_layout = (layout.spatial_stride, layout.temporal_stride, layout.channels)
        if noise_layout != tuple(vae_layout):
            raise AnimateInputError(
                f"the checkpoint was trained with articulated noise for a VAE of (spatial stride, temporal stride, "
                f"channels) {tuple(vae_layout)}, but noise.preset {preset!r} of the build config makes "
                f"{noise_layout}: choose the preset of the checkpoint's VAE")
    models = []
    for name in stages:
        cls, section = stage_class(name, build), build.section(STAGE_SECTIONS[name])
        try:
            cls.check_environment(section)
            models += models_record(cls.model_names(section))  # a missing file says where to fetch it
        except (ImportError, FileNotFoundError, ValueError, ModelStoreError) as error:
            raise AnimateInputError(f"the {name} stage, needed for the checkpoint's conditions, cannot run: "
                                    f"{error}") from error
    return stages, models


def recorded_build_config(shards: list[str]) -> tuple[BuildConfig | None, Path | None]:
    """The build config recorded (build.json) with the shards a checkpoint was trained on, if they are local."""
    for spec in shards:
        path = Path(spec)
        for folder in (path, path.parent, path.parent.parent):
            record = folder / "build.json"
            if record.is_file():
                return BuildConfig(json.loads(record.read_text())["config"]), record
    return None, None


# Running the build's stages in-process -------------------------------------------------------------------------


class StageSet:
    """The build's stages, each built once from the build config and run through the build's StageRunner."""

    def __init__(self, build: BuildConfig, seed: int):
        self.build, self.seed = build, seed
        self._runners: dict[str, StageRunner] = {}

    def stage(self, name: str):
        from humanim.pipeline.build import make_stage

        if name not in self._runners:
            self._runners[name] = StageRunner(make_stage(name, self.build))
        return self._runners[name].stage

    def run(self, clip: Clip, names: list[str], what: str) -> Clip:
        for name in names:
            self.stage(name)
            self._runners[name]({"clip": clip})
            if clip.failure is not None:
                raise AnimateInputError(f"{what}: the {clip.failure['stage']} stage failed: {clip.failure['reason']}")
        return clip


def single_clip(key: str, source: str, frames: np.ndarray, fps: float) -> Clip:
    count = len(frames)
    times = tuple(i / fps for i in range(count))
    spec = ClipSpec(key=key, video_id=key, clip_index=0, split="inference", source=source, source_sha256="",
                    source_frame_indices=tuple(range(count)), source_frame_pts=tuple(range(count)),
                    source_frame_times=times, frame_times=times, fps=fps)
    return Clip(spec=spec, frames=frames)


def require_person(kpts: np.ndarray, what: str) -> None:
    """Some frame of `kpts` [T, 133, 3] must hold enough confident body keypoints (else AnimateInputError); the
    pose stage itself rejects a clip whose subject is lost in too many frames."""
    confident = (np.nan_to_num(kpts[:, BODY, 2]) >= KPT_THRESHOLD).sum(axis=1)
    if not (confident >= MIN_BODY_KEYPOINTS).any():
        raise AnimateInputError(f"{what}: no person found (fewer than {MIN_BODY_KEYPOINTS} confident body "
                                f"keypoints in every frame)")


# The reference -------------------------------------------------------------------------------------------------


def working_size(height: int, width: int, stride: int, max_side: int | None) -> tuple[int, int]:
    """The size the reference is animated at: at most max_side on its longer side, in whole latent cells."""
    scale = min(1.0, max_side / max(height, width)) if max_side else 1.0
    return (max(stride, round(height * scale / stride) * stride), max(stride, round(width * scale / stride) * stride))


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise AnimateInputError(f"cannot read the reference image {path} (missing, or not an image OpenCV reads)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass
class Reference:
    image: np.ndarray  # [H, W, 3] uint8 at the working size
    original_size: tuple[int, int]  # (H, W) of the file: the output's size
    annotated_size: tuple[int, int]  # (H, W) the stages saw it at
    kpts: np.ndarray  # [133, 3] at the working size
    fit: Any | None  # stages.fit.BodyFit of one frame, in the working size's camera
    face_embedding: np.ndarray | None


def to_working_size(kpts: np.ndarray, fit, source: tuple[int, int], target: tuple[int, int]):
    """Keypoints [..., 3] and a BodyFit from an image of size `source` (H, W) to the same image resized to `target`:
    pixel centres sit at integers, so x -> (x + 0.5) sx - 0.5; the camera's focal lengths and principal point move
    the same way, and the body does not move."""
    scale = np.array([target[1] / source[1], target[0] / source[0]], np.float32)
    kpts = np.array(kpts, dtype=np.float32, copy=True)
    kpts[..., :2] = (kpts[..., :2] + 0.5) * scale - 0.5
    if fit is not None:
        fx, fy, cx, cy = (float(v) for v in fit.camera)
        camera = np.array([fx * scale[0], fy * scale[1], (cx + 0.5) * scale[0] - 0.5, (cy + 0.5) * scale[1] - 0.5],
                          np.float32)
        fit = dataclasses.replace(fit, camera=camera)
    return kpts, fit


def annotate_reference(path: Path, original: np.ndarray, stages: StageSet, names: list[str],
                       size: tuple[int, int]) -> Reference:
    """The stages on the reference at the larger of the working size and ANNOTATION_SIDE (never above the file's
    own size): a pose model finds a person in a 64 px image, but places joints better at 512. Keypoints and fit
    then move to the working size."""
    annotated = working_size(*original.shape[:2], 1, max(max(size), ANNOTATION_SIDE))
    image = cv2.resize(original, (annotated[1], annotated[0]), interpolation=cv2.INTER_AREA)
    clip = single_clip("reference", str(path), image[None], 1.0)
    what = f"reference image {path}"
    stages.run(clip, ["pose"], what)
    require_person(clip.fields["kpts"], what)
    stages.run(clip, [n for n in names if n in ("face", "body")], what)
    kpts, fit = to_working_size(clip.fields["kpts"][0], body_fit(clip), annotated, size)
    return Reference(image=cv2.resize(original, (size[1], size[0]), interpolation=cv2.INTER_AREA),
                     original_size=original.shape[:2], annotated_size=annotated, kpts=kpts, fit=fit,
                     face_embedding=clip.fields.get("face_embedding"))


def body_fit(clip: Clip):
    from humanim.stages.fit import BodyFit

    return BodyFit.from_npz_bytes(clip.fields["body"]) if "body" in clip.fields else None


# The driving motion --------------------------------------------------------------------------------------------


@dataclass
class DrivingMotion:
    kpts: np.ndarray  # [T, 133, 3] pixels of the driving frames
    height: int
    width: int
    fps: float
    fit: Any | None = None  # BodyFit over the T frames
    hand_sharpness: np.ndarray | None = None  # [T, 2] variance of the Laplacian (stages/blur.py)
    hand_valid: np.ndarray | None = None  # [T, 2]
    frames: np.ndarray | None = None  # [T, H, W, 3], for the side-by-side; not saved in motion files
    source: str = ""

    def save(self, path: Path) -> Path:
        """An .npz that loads with allow_pickle=False."""
        arrays = {"kpts": self.kpts, "size": np.array([self.height, self.width]), "fps": np.array(self.fps),
                  "source": np.array(self.source)}
        if self.fit is not None:
            arrays["body"] = np.frombuffer(self.fit.to_npz_bytes(), dtype=np.uint8)
        if self.hand_sharpness is not None:
            arrays.update(hand_sharpness=self.hand_sharpness, hand_valid=self.hand_valid)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
        return path

    @classmethod
    def load(cls, path: Path) -> "DrivingMotion":
        from humanim.stages.fit import BodyFit

        with np.load(path, allow_pickle=False) as archive:
            if "kpts" not in archive or "size" not in archive:
                raise AnimateInputError(f"{path} is not a motion file written by `humanim animate --save-motion`")
            return cls(kpts=archive["kpts"], height=int(archive["size"][0]), width=int(archive["size"][1]),
                       fps=float(archive["fps"]), source=str(archive["source"]),
                       fit=BodyFit.from_npz_bytes(archive["body"].tobytes()) if "body" in archive else None,
                       hand_sharpness=archive["hand_sharpness"] if "hand_sharpness" in archive else None,
                       hand_valid=archive["hand_valid"] if "hand_valid" in archive else None)

    def missing(self, names: list[str]) -> list[str]:
        """What of the driving stages `names` this motion lacks."""
        lacking = []
        if "body" in names and self.fit is None:
            lacking.append("a body fit")
        if "blur" in names and self.hand_sharpness is None:
            lacking.append("hand sharpness")
        return lacking


def driving_frames(path: Path, fps: float | None, max_frames: int | None, max_side: int, stages: StageSet
                   ) -> tuple[Clip, float]:
    """The driving video decoded by the build's decode stage: every frame (or frames at `fps`), its longer side
    at most max_side."""
    from humanim.stages.base import ClipRejected
    from humanim.stages.decode import Decode
    from humanim.stages.probe import probe

    try:
        info = probe(str(path))
    except (ClipRejected, OSError, ValueError) as error:
        raise AnimateInputError(f"driving video {path}: {error}") from error
    times = info.frame_times - info.frame_times[0]
    rate = float(fps or info.average_fps)
    if fps:  # the nearest source frame at each target time
        targets = np.arange(0, info.duration - 1e-9, 1 / rate)
        picked = np.abs(times[None, :] - targets[:, None]).argmin(axis=1)
    else:
        picked = np.arange(len(times))
    picked = picked[:max_frames] if max_frames else picked
    scale = min(1.0, max_side / max(info.width, info.height))
    width, height = (max(2, int(round(side * scale / 2)) * 2) for side in (info.width, info.height))
    frame_times = tuple(float(i / rate) for i in range(len(picked)))
    spec = ClipSpec(key="driving", video_id=info.video_id, clip_index=0, split="inference", source=str(path),
                    source_sha256=info.sha256, source_frame_indices=tuple(int(i) for i in picked),
                    source_frame_pts=tuple(int(info.frame_pts[i]) for i in picked),
                    source_frame_times=tuple(float(times[i]) for i in picked), frame_times=frame_times, fps=rate)
    clip = Clip(spec=spec, meta={"source_info": {"width": info.width, "height": info.height,
                                                 "rotation": info.rotation, "average_fps": info.average_fps}})
    video = {**stages.build.section("video"), "width": width, "height": height}
    runner = StageRunner(Decode(video, stages.seed))
    runner({"clip": clip})
    if clip.failure is not None:
        raise AnimateInputError(f"driving video {path}: {clip.failure['reason']}")
    return clip, rate


def annotate_driving_video(path: Path, stages: StageSet, names: list[str], fps: float | None,
                           max_frames: int | None, max_side: int) -> DrivingMotion:
    clip, rate = driving_frames(path, fps, max_frames, max_side, stages)
    what = f"driving video {path}"
    stages.run(clip, ["pose"], what)
    require_person(clip.fields["kpts"], what)
    stages.run(clip, [n for n in names if n in ("blur", "body")], what)
    return DrivingMotion(kpts=clip.fields["kpts"], height=clip.frames.shape[1], width=clip.frames.shape[2],
                         fps=rate, fit=body_fit(clip), hand_sharpness=clip.fields.get("hand_sharpness"),
                         hand_valid=clip.fields.get("hand_valid"), frames=clip.frames, source=str(path))


def motion_of_sample(sample: dict, source: str) -> DrivingMotion:
    """The motion fields of a decoded shard sample."""
    from humanim.stages.fit import BodyFit

    meta = sample["meta"]
    return DrivingMotion(kpts=sample["kpts"], height=int(meta["height"]), width=int(meta["width"]),
                         fps=float(meta["fps"]), fit=BodyFit.from_arrays(sample["body"]) if "body" in sample else None,
                         hand_sharpness=sample.get("hand_sharpness"), hand_valid=sample.get("hand_valid"),
                         frames=sample.get("frames"), source=source)


def shard_sample(location: str, key: str) -> DrivingMotion | None:
    """Sample `key` of a build folder (found through its manifest) or of shards named as the loader names them
    (a .tar, a glob, a URL: read until the key turns up); None where it is not there."""
    from humanim.pipeline.contact_sheet import read_sample

    folder = Path(location)
    if (folder / "manifest.parquet").is_file():
        try:
            return motion_of_sample(read_sample(folder, key), f"{location}#{key}")
        except KeyError:
            return None
    from webdataset.tariterators import group_by_keys, tar_file_expander

    from humanim.schemas.fields import FIELDS
    from humanim.training.data import decode_sample, open_shard, shard_urls

    for url in shard_urls(location):
        for raw in group_by_keys(tar_file_expander([{"url": url, "stream": open_shard(url)}])):
            if raw["__key__"] == key:
                names = [n for n in ("kpts", "body", "hand_sharpness", "hand_valid", "frames", "meta")
                         if FIELDS[n].ext in raw]
                return motion_of_sample(decode_sample(raw, names), f"{location}#{key}")
    return None


def load_motion(spec: str, stages: StageSet, names: list[str], fps: float | None, max_frames: int | None,
                max_side: int, shards: list[str] = ()) -> DrivingMotion:
    """--motion: a motion file, `BUILD_OR_SHARD#KEY`, a bare clip key (looked up in `shards`, the checkpoint's
    training shards), or a video."""
    from humanim.schemas.keys import KEY_PATTERN

    path = Path(spec)
    if path.suffix == ".npz" and path.is_file():
        motion = DrivingMotion.load(path)
    elif not path.exists() and ("#" in spec or KEY_PATTERN.match(spec)):
        locations, key = ([spec.rsplit("#", 1)[0]], spec.rsplit("#", 1)[1]) if "#" in spec else (list(shards), spec)
        motion = next((m for m in (shard_sample(location, key) for location in locations) if m is not None), None)
        if motion is None:
            raise AnimateInputError(f"--motion {spec}: no sample {key!r} in {', '.join(locations) or 'no shards'}"
                                    + ("" if "#" in spec else " (the checkpoint's training shards)"))
    elif path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise AnimateInputError(f"--motion {spec}: not a video ({', '.join(sorted(VIDEO_SUFFIXES))}), a motion "
                                    f"file (.npz) or a shard sample (BUILD#KEY, or a clip key of the checkpoint's "
                                    f"shards)")
        return annotate_driving_video(path, stages, names, fps, max_frames, max_side)
    else:
        raise AnimateInputError(f"--motion {spec}: no such file (a video, a motion .npz, BUILD#KEY or a clip key)")
    require_person(motion.kpts, f"motion {spec}")
    lacking = motion.missing([n for n in names if n in ("blur", "body")])
    if lacking:
        raise AnimateInputError(f"motion {spec} lacks {' and '.join(lacking)}, which the checkpoint's conditions "
                                f"need: animate from the driving video itself")
    if max_frames:
        motion = trim_motion(motion, max_frames)
    return motion


def trim_motion(motion: DrivingMotion, count: int) -> DrivingMotion:
    cut = slice(0, count)
    return DrivingMotion(motion.kpts[cut], motion.height, motion.width, motion.fps,
                         None if motion.fit is None else motion.fit.take(cut),
                         None if motion.hand_sharpness is None else motion.hand_sharpness[cut],
                         None if motion.hand_valid is None else motion.hand_valid[cut],
                         None if motion.frames is None else motion.frames[cut], motion.source)


# Conditions ----------------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """Everything sampling needs, built from the inputs; no diffusion model has run yet."""

    conditions: dict[str, np.ndarray]  # float16, as training.conditions draws them; per-frame maps over whole latents
    noise: np.ndarray | None  # [T', C, h, w] articulated noise, or None
    reference: np.ndarray  # [H, W, 3] uint8 working size
    reference_kpts: np.ndarray  # [133, 3] at the working size
    original_size: tuple[int, int]
    annotated_size: tuple[int, int]  # what the stages saw the reference at
    frames: int  # the driving length: frames in the output
    fps: float
    kpts: np.ndarray  # [T, 133, 3] aligned skeleton at the working size
    driving: DrivingMotion
    stages: list[str]
    models: list[dict]  # the stages' model files, with sha256


def pad_motion(kpts: np.ndarray, fit, count: int):
    """Repeat the last frame up to `count` frames, so the motion fills whole latent frames."""
    if count <= len(kpts):
        return kpts, fit
    frames = np.minimum(np.arange(count), len(kpts) - 1)
    return kpts[frames], None if fit is None else fit.take(frames)


def motion_sample(reference: Reference, driving: DrivingMotion, kpts: np.ndarray, fit, stages: StageSet,
                  names: list[str], pixel_frames: int) -> tuple[dict[str, Any], np.ndarray | None]:
    """The annotations of the aligned motion at the reference's size, by the build's stages, as a loader sample."""
    from humanim.stages.blur import hand_motion
    from humanim.stages.masks import unpack_masks

    height, width = reference.image.shape[:2]
    kpts, fit = pad_motion(kpts, fit, pixel_frames)
    # The render, mask and noise stages read the frames' shape only: the aligned motion has no pixels yet.
    shape_only = np.broadcast_to(np.zeros(3, np.uint8), (pixel_frames, height, width, 3))
    clip = single_clip("animate", driving.source, shape_only, driving.fps)
    clip.fields["kpts"] = kpts
    if fit is not None:
        clip.fields["body"] = fit.to_npz_bytes()
    stages.run(clip, [n for n in names if n in ("masks", "noise")], "aligned motion")
    sample: dict[str, Any] = {"frames": clip.frames, "kpts": kpts, "ref_frame": reference.image,
                              "ref_kpts": reference.kpts}
    if "render" in names:
        sample.update(render_in_chunks(clip, fit, stages))
    if "masks" in clip.fields:
        sample["masks"] = unpack_masks(clip.fields["masks"], width)
    if "blur" in names:
        threshold = float(stages.build.section("blur")["threshold"])
        motion = np.stack([hand_motion(kpts[:, part], threshold) for part in (LEFT_HAND, RIGHT_HAND)], 1)
        sharpness, valid = pad_motion(driving.hand_sharpness, None, pixel_frames)[0], \
            pad_motion(driving.hand_valid, None, pixel_frames)[0]
        sample.update(hand_motion=np.where(valid[..., None], motion, np.nan), hand_sharpness=sharpness,
                      hand_valid=valid)
    if reference.face_embedding is not None:
        sample["ref_face_embedding"] = reference.face_embedding
    return sample, clip.fields.get("noise")


def render_in_chunks(clip: Clip, fit, stages: StageSet) -> dict[str, np.ndarray]:
    """The render stage's depth, normal and part maps of the aligned motion, RENDER_CHUNK frames at a time: the
    renderer's float maps of a whole long video would not fit in memory (8.5 MB a frame at 512 x 512)."""
    maps: dict[str, list[np.ndarray]] = {"depth": [], "normal": [], "part": []}
    for start in range(0, len(clip.frames), RENDER_CHUNK):
        cut = slice(start, start + RENDER_CHUNK)
        chunk = single_clip("animate", clip.spec.source, clip.frames[cut], clip.spec.fps)
        chunk.fields["body"] = fit.take(cut).to_npz_bytes()
        stages.run(chunk, ["render"], "aligned motion")
        for name in maps:
            maps[name].append(chunk.fields[name])
    return {name: np.concatenate(arrays) for name, arrays in maps.items()}


def prepare(reference_path: Path, motion_spec: str, config: TrainConfig, build: BuildConfig,
            vae_layout: tuple[int, int, int], seed: int = 0, max_side: int | None = 512,
            fps: float | None = None, max_frames: int | None = None, driving_side: int = 512, align: bool = True,
            log: Callable[[str], None] = lambda message: None) -> Prepared:
    """Checks, stages, alignment and conditions: all of it before the checkpoint's models are loaded.

    align False keeps the driving motion as it is, carried from the driving frame to the reference's size: for
    self-reenactment, where the reference is a frame of the driving video (the reconstruction protocol of
    Champ's and HIA's evaluations), and shape alignment would only add the error of a second fit."""
    from humanim.stages.shape_align import align_keypoints_2d, align_shape, aligned_keypoints
    from humanim.training.conditions import build_conditions
    from humanim.training.inference import latent_frame_count

    names, models = check_buildable(config, build, vae_layout)
    spatial, temporal, _ = vae_layout
    stages = StageSet(build, seed)
    image = read_image(reference_path)
    size = working_size(*image.shape[:2], spatial, max_side)
    # Without alignment the reference's body is not needed: the driving fit is drawn as it is.
    reference = annotate_reference(reference_path, image, stages, [n for n in names if align or n != "body"], size)
    log(f"reference: {' '.join(n for n in names if n in ('pose', 'face', 'body'))} at "
        f"{reference.annotated_size[1]}x{reference.annotated_size[0]}, animated at {size[1]}x{size[0]}")
    log(f"motion: {' '.join(n for n in names if n in ('pose', 'blur', 'body'))}")
    driving = load_motion(motion_spec, stages, names, fps, max_frames, driving_side, config.data.shards)
    if not align:
        kpts, fit = to_working_size(driving.kpts, driving.fit, (driving.height, driving.width), size)
    elif reference.fit is not None and driving.fit is not None:
        model = stages.stage("body").model
        fit = align_shape(reference.fit, driving.fit, model, *size)
        kpts = aligned_keypoints(model, driving.fit, fit, driving.kpts)
    else:
        fit, kpts = None, align_keypoints_2d(reference.kpts, driving.kpts, KPT_THRESHOLD, MIN_BODY_KEYPOINTS)
    pixel_frames = (latent_frame_count(len(kpts), temporal) - 1) * temporal + 1
    log(f"conditions: {', '.join(config.data.conditions) or 'none'} over {len(kpts)} frames")
    sample, noise = motion_sample(reference, driving, kpts, fit, stages, names, pixel_frames)
    if "identity" in config.data.conditions and "ref_face_embedding" not in sample:
        raise AnimateInputError(f"reference image {reference_path}: the subject's face was not found, and the "
                                f"checkpoint's identity condition needs its embedding")
    # One condition at a time, kept as float16 (the loader's batch type): the float32 maps of a long video are
    # large (11 MB a frame at 512 x 512 for pose, hand blur and renders together).
    conditions = {name: value.astype(np.float16) for condition in config.data.conditions
                  for name, value in build_conditions(sample, [condition]).items()}
    return Prepared(conditions=conditions, noise=noise, reference=reference.image, reference_kpts=reference.kpts,
                    original_size=reference.original_size, annotated_size=reference.annotated_size,
                    frames=len(driving.kpts), fps=driving.fps, kpts=kpts,
                    driving=driving, stages=names, models=models)


# Output --------------------------------------------------------------------------------------------------------


def write_video(path: Path, frames: np.ndarray, fps: float) -> Path:
    """H.264 mp4 through the decode stage's encoder (frames padded to even sizes, as yuv420p needs)."""
    from humanim.stages.decode import encode_h264, rgb_video_frames

    height, width = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_h264(rgb_video_frames(frames), fps, crf=18, preset="veryfast", threads=1))
    return path


def side_by_side(prepared: Prepared, result: np.ndarray) -> np.ndarray:
    """[T, H, 4 W, 3]: reference | driving video (or its skeleton) | aligned conditions | result, one height."""
    from humanim.stages.skeleton import draw_skeleton

    height, width = result.shape[1:3]

    def fit_to(image: np.ndarray) -> np.ndarray:
        scale = height / image.shape[0]
        resized = cv2.resize(image, (max(1, round(image.shape[1] * scale)), height), interpolation=cv2.INTER_AREA)
        canvas = np.zeros((height, width, 3), np.uint8)
        shown = resized[:, :width]
        left = (width - shown.shape[1]) // 2
        canvas[:, left:left + shown.shape[1]] = shown
        return canvas

    reference = fit_to(prepared.reference)  # the working size: the result's
    driving = prepared.driving
    panels = []
    renders = prepared.conditions.get("renders")
    for t in range(len(result)):
        if driving.frames is not None:
            source = driving.frames[t]
        else:
            source = draw_skeleton(driving.kpts[t], driving.height, driving.width)
        condition = draw_skeleton(prepared.kpts[t], *prepared.reference.shape[:2])
        if renders is not None:  # the aligned body's normals under its skeleton
            normal = (renders[1:4, t].transpose(1, 2, 0) * 255).astype(np.uint8)
            condition = np.where(condition.any(-1, keepdims=True), condition, normal)
        condition = cv2.resize(condition, (width, height), interpolation=cv2.INTER_AREA)
        panels.append(np.concatenate([reference, fit_to(source), condition, result[t]], axis=1))
    return np.stack(panels)


def animate(reference_path: Path, motion_spec: str, checkpoint: Path, out: Path, build: BuildConfig | None,
            sampler, device: str = "auto", max_side: int | None = None, fps: float | None = None,
            max_frames: int | None = None, side_by_side_path: Path | None = None, save_motion: Path | None = None,
            align: bool = True, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole command; returns a summary (also written beside the video as OUT.json). `build` None takes the
    build config recorded with the checkpoint's shards; `max_side` None the longer side of the checkpoint's
    training resolution (data.resolution), else DEFAULT_MAX_SIDE."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from humanim.training.inference import checkpoint_config, generate, latent_frame_count, load_model
    from humanim.training.models import build_vae

    sampler.check()
    try:
        config = checkpoint_config(checkpoint)
    except (FileNotFoundError, ValueError) as error:
        raise AnimateInputError(str(error)) from error
    if build is None:
        build, record = recorded_build_config(config.data.shards)
        if build is None:
            raise AnimateInputError("the checkpoint's shards have no local build.json: give the build config they "
                                    "were built with (--config)")
        log(f"build config: {record}")
    vae = build_vae(config.model.vae)  # its strides and channels decide the checks; sampling reuses it
    layout = (vae.spatial_stride, vae.temporal_stride, vae.latent_channels)
    if max_side is None:  # the scale the model was trained at, where the checkpoint says
        max_side = max(config.data.resolution) if config.data.resolution else DEFAULT_MAX_SIDE
    prepared = prepare(reference_path, motion_spec, config, build, layout, sampler.seed, max_side, fps, max_frames,
                       align=align, log=log)
    if save_motion is not None:
        prepared.driving.save(save_motion)
        log(f"motion saved to {save_motion}")
    model = load_model(checkpoint, device, vae)
    bar = Progress(TextColumn("[bold]denoise"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   disable=not progress)
    with bar:
        task = bar.add_task("denoise", total=sampler.steps)
        working = generate(model, prepared.conditions, prepared.reference, prepared.frames, sampler, prepared.noise,
                           progress=lambda done, total: bar.update(task, completed=done))
    height, width = prepared.reference.shape[:2]
    original_height, original_width = prepared.original_size
    frames = working
    if (original_height, original_width) != (height, width):
        frames = np.stack([cv2.resize(f, (original_width, original_height), interpolation=cv2.INTER_CUBIC)
                           for f in working])
    write_video(out, frames, prepared.fps)
    latent_frames = latent_frame_count(prepared.frames, layout[1])
    summary = {"out": str(out), "frames": int(len(frames)), "fps": prepared.fps,
               "size": [int(original_height), int(original_width)], "working_size": [height, width],
               "annotated_size": list(prepared.annotated_size), "aligned": align,
               "latent_frames": latent_frames, "stages": prepared.stages, "models": prepared.models,
               "weights": model.weights,
               "conditions": list(config.data.conditions), "articulated_noise": prepared.noise is not None,
               "sampler": dict(sampler.__dict__), "checkpoint": str(checkpoint), "reference": str(reference_path),
               "motion": motion_spec}
    if side_by_side_path is not None:
        write_video(side_by_side_path, side_by_side(prepared, working), prepared.fps)
        summary["side_by_side"] = str(side_by_side_path)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return {**summary, "video": frames}


__all__ = ["animate", "prepare", "check_buildable", "needed_stages", "DrivingMotion", "AnimateInputError"]
