"""`humanim build`: the Ray Data DAG from source videos to shards, manifest, failures and build record.

Two streaming passes. The first probes and plans every source (one task per video), so the full ordered
list of clips is known; the second runs the clip stages and returns each finished sample to the driver,
which writes it under OUT/_work and packs shards in plan order as soon as an ordered prefix is done.
Everything on disk is written atomically, so a rerun of the same command resumes where a killed one stopped.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from humanim.pipeline.config import BuildConfig
from humanim.pipeline.pack import pack_clip
from humanim.pipeline.progress import BuildProgress, print_summary
from humanim.pipeline.record import build_record, models_record
from humanim.pipeline.runner import StageRunner, failure_record
from humanim.pipeline.shards import ShardPacker
from humanim.pipeline.sources import expand_sources
from humanim.pipeline.workdir import WorkDir, atomic_write, dump_json, source_id
from humanim.schemas.tables import FAILURES, manifest_schema
from humanim.stages.base import Clip, ClipSpec, Stage
from humanim.stages.blur import HandBlur
from humanim.stages.body import Body
from humanim.stages.decode import Decode
from humanim.stages.subject_crop import SubjectCropDecode
from humanim.stages.face import Face
from humanim.stages.masks import Masks
from humanim.stages.noise import ArticulatedNoise
from humanim.stages.pose_mediapipe import MediaPipePose
from humanim.stages.pose_rtmlib import RtmlibPose
from humanim.stages.plan import detect_scene_starts, plan_clips
from humanim.stages.probe import probe
from humanim.stages.render import Render

# Stage name -> its class, or its classes by back-end (the `backend` key of its config section).
STAGE_CLASSES: dict[str, type[Stage] | dict[str, type[Stage]]] = {
    "decode": {"center": Decode, "subject": SubjectCropDecode},  # by video.crop
    "pose": {"dwpose": RtmlibPose, "rtmw": RtmlibPose, "mediapipe": MediaPipePose},
    "face": Face,  # picks its back-end itself
    "masks": Masks,
    "blur": HandBlur,
    "body": Body,
    "render": Render,
    "noise": ArticulatedNoise,
}
# The config section each stage is built from.
STAGE_SECTIONS = {"decode": "video", "pose": "pose", "face": "face", "masks": "masks", "blur": "blur",
                  "body": "body", "render": "render", "noise": "noise"}


@dataclass
class BuildResult:
    out: Path
    videos: int = 0
    clips_ok: int = 0
    failures: int = 0
    shards: list[str] = field(default_factory=list)
    resumed: bool = False


def stage_class(name: str, config: BuildConfig) -> type[Stage]:
    if name not in STAGE_CLASSES:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGE_CLASSES)}")
    entry = STAGE_CLASSES[name]
    if isinstance(entry, dict):
        choice = "crop" if name == "decode" else "backend"
        backend = config.raw[STAGE_SECTIONS[name]][choice]
        if backend not in entry:
            raise ValueError(f"unknown {STAGE_SECTIONS[name]}.{choice} {backend!r}; choose from {', '.join(entry)}")
        return entry[backend]
    return entry


def make_stage(name: str, config: BuildConfig) -> Stage:
    return stage_class(name, config)(config.section(STAGE_SECTIONS[name]), config.seed)


# ---- work done inside Ray workers -------------------------------------------------------------------

def plan_source(row: dict, plan_config) -> dict:
    source, info, stage = row["source"], None, "probe"
    try:
        info = probe(source)
        stage = "plan"
        try:
            starts, scene_error = detect_scene_starts(source, plan_config, len(info.frame_pts)), None
        except Exception as error:  # noqa: BLE001 - a failed cut detector leaves one scene, recorded
            starts, scene_error = [0], f"{type(error).__name__}: {error}"
        specs = plan_clips(info, starts, plan_config)
    except Exception as error:  # noqa: BLE001 - an unusable input becomes one failures row
        failure = {"source": source, "video_id": info.video_id if info else None, "key": None,
                   **failure_record(stage, error)}
        return {"source": source, "plan": json.dumps({"source": source, "failure": failure})}
    small_info = {"width": info.width, "height": info.height, "rotation": info.rotation,
                  "average_fps": info.average_fps, "variable_frame_rate": info.variable_frame_rate,
                  "codec": info.codec, "container": info.container}
    plan = {"source": source, "info": small_info, "scene_starts": starts, "scene_error": scene_error,
            "clips": [asdict(s) for s in specs]}
    return {"source": source, "plan": json.dumps(plan)}


_RUNNERS: dict[str, StageRunner] = {}


def run_task_stage(row: dict, name: str, config_raw: dict) -> dict:
    """Stateless stages run as Ray tasks; each worker process builds the stage once and keeps it."""
    if name not in _RUNNERS:
        _RUNNERS[name] = StageRunner(make_stage(name, BuildConfig(config_raw)))
    return _RUNNERS[name](row)


class ActorStage:
    """Stages that hold models run in a pool of Ray actors, each loading the models once."""

    def __init__(self, name: str, config_raw: dict):
        self.runner = StageRunner(make_stage(name, BuildConfig(config_raw)))

    def __call__(self, row: dict) -> dict:
        return self.runner(row)


def pack_row(row: dict, config_raw: dict) -> dict:
    clip: Clip = row["clip"]
    config = BuildConfig(config_raw)
    blob, manifest_row = b"", ""
    if clip.failure is None:
        try:
            blob, manifest = pack_clip(clip, config.seed, config.stages)
            manifest_row = json.dumps(manifest)
        except Exception as error:  # noqa: BLE001
            clip.failure = failure_record("pack", error)
    failure = "" if clip.failure is None else json.dumps(
        {"source": clip.spec.source, "video_id": clip.spec.video_id, "key": clip.key, **clip.failure})
    return {"key": clip.key, "blob": blob, "row": manifest_row, "failure": failure,
            "seconds": json.dumps(clip.seconds)}


# ---- the driver ------------------------------------------------------------------------------------

def _init_ray(address: str | None, num_cpus: int | None) -> None:
    import logging

    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        # Worker output (model libraries' C++ logging, per-frame warnings) stays in Ray's session logs
        # (/tmp/ray/session_latest/logs) instead of burying the progress bar: every clip's outcome, errors
        # included, comes back to the driver as a value.
        if address:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    # The build shows one bar of its own; Ray Data's per-operator bars (and its notice that they are off)
    # would bury it.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # Clips travel between operators as Python objects (frames plus annotations), by design.
    context.enable_fallback_to_arrow_object_ext_type = True


def _clip_dataset(specs: list[ClipSpec], plans: dict[str, dict], config: BuildConfig):
    import ray

    items = [{"clip": Clip(spec=s, meta={"source_info": plans[s.source]["info"], "stages": {}})} for s in specs]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 10_000)))
    cluster = ray.cluster_resources()
    has_gpu, total_cpus = cluster.get("GPU", 0) > 0, cluster.get("CPU", 1)
    classes = [stage_class(name, config) for name in config.stages]
    # Every actor pool keeps at least one actor (and its CPUs) for the whole build; on a small machine they
    # must leave room for the task stages, or the pipeline would wait forever for a free CPU.
    pools = sum(1 for cls in classes if cls.resources.stateful)
    cpu_cap = total_cpus / (pools + 1)  # one pool actor each, and one task of any task stage, fit at once
    for name, cls in zip(config.stages, classes):
        resources = cls.resources
        gpus = resources.gpus if has_gpu else 0  # a GPU stage runs on CPU actors where no GPU exists
        remote = {"num_cpus": min(resources.cpus, cpu_cap), "num_gpus": gpus or None}
        if resources.memory_bytes:
            remote["memory"] = resources.memory_bytes
        if resources.stateful:
            most = max(1, int(total_cpus // max(remote["num_cpus"], 1e-3)))
            dataset = dataset.map(ActorStage, fn_constructor_kwargs={"name": name, "config_raw": config.raw},
                                  compute=ray.data.ActorPoolStrategy(min_size=1, max_size=most), **remote)
        else:
            dataset = dataset.map(run_task_stage, fn_kwargs={"name": name, "config_raw": config.raw}, **remote)
    return dataset.map(pack_row, fn_kwargs={"config_raw": config.raw}, num_cpus=0.25)


def build(src: str, out: str | Path, config: BuildConfig, address: str | None = None,
          num_cpus: int | None = None) -> BuildResult:
    import ray

    out = Path(out)
    sources = expand_sources(src)
    work = WorkDir(out)
    resumed = work.claim(config.digest(), sources)
    result = BuildResult(out=out, videos=len(sources), resumed=resumed)
    if (out / "build.json").exists():
        record = json.loads((out / "build.json").read_text())
        result.clips_ok, result.failures = record["counts"]["clips_ok"], record["counts"]["failures"]
        result.shards = [s["name"] for s in record["shards"]]
        print(f"{out} is already complete ({result.clips_ok} clips in {len(result.shards)} shards); nothing to do")
        return result

    model_names = []
    for name in config.stages:  # a config, install or model-file problem surfaces here, before any worker starts
        cls, section = stage_class(name, config), config.section(STAGE_SECTIONS[name])
        cls.check_environment(section)
        model_names += cls.model_names(section)
    models = models_record(model_names)
    started = time.time()
    _init_ray(address, num_cpus)
    with BuildProgress(len(sources)) as progress:
        # pass 1: probe and plan every source not planned by an earlier run
        todo = [s for s in sources if work.read_plan(s) is None]
        progress.videos_done(len(sources) - len(todo))
        if todo:
            plan_ds = ray.data.from_items([{"source": s} for s in todo], override_num_blocks=len(todo))
            plan_ds = plan_ds.map(plan_source, fn_kwargs={"plan_config": config.plan}, num_cpus=1)
            for row in plan_ds.iter_rows():
                plan = json.loads(row["plan"])
                if "failure" in plan:
                    work.write_failure(f"source-{source_id(row['source'])}", plan["failure"])
                work.write_plan(row["source"], plan)
                progress.videos_done(1, failed="failure" in plan)
        plans = {s: work.read_plan(s) for s in sources}
        specs = [ClipSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})
                 for s in sources for c in plans[s].get("clips", [])]
        splits = sorted({s.split for s in specs})
        packers = [ShardPacker(work, out / "shards", split, [s.key for s in specs if s.split == split],
                               config.raw["shards"]["max_samples"], config.raw["shards"]["max_bytes"])
                   for split in splits]
        for packer in packers:
            packer.advance()
        done = {k for p in packers for k in p.packed} | {s.key for s in specs if work.has_sample(s.key)}
        todo_clips = [s for s in specs if s.key not in done and not work.has_failure(s.key)]
        progress.add_clips(len(specs), len(specs) - len(todo_clips))

        # pass 2: the clip stages, streaming
        if todo_clips:
            for row in _clip_dataset(todo_clips, plans, config).iter_rows():
                if row["failure"]:
                    work.write_failure(row["key"], json.loads(row["failure"]))
                else:
                    manifest_row = json.loads(row["row"])
                    manifest_row["seconds"] = json.loads(row["seconds"])
                    work.write_sample(row["key"], row["blob"], manifest_row)
                for packer in packers:
                    packer.advance()
                progress.clip_done(failed=bool(row["failure"]))
        for packer in packers:
            packer.finish()

    records = work.packed_records()
    schema = manifest_schema(config.stages)
    rows = [{**{k: v for k, v in r.items() if k in schema.names}, "shard_sha256": rec["sha256"]}
            for rec in records for r in rec["rows"]]
    _write_parquet(out / "manifest.parquet", pa.Table.from_pylist(rows, schema=schema))
    failures = sorted(work.all_failures(), key=lambda f: (f["source"], f.get("key") or "", f["stage"]))
    _write_parquet(out / "failures.parquet",
                   pa.Table.from_pylist([{k: f.get(k) for k in FAILURES.names} for f in failures], schema=FAILURES))
    stage_seconds = {}
    for rec in records:
        for r in rec["rows"]:
            for stage, spent in r.get("seconds", {}).items():
                stage_seconds[stage] = stage_seconds.get(stage, 0.0) + spent
    record = build_record(out, config, sources, records, failures, stage_seconds, time.time() - started, resumed,
                          models=models)
    atomic_write(out / "build.json", dump_json(record))
    result.clips_ok, result.failures = len(rows), len(failures)
    result.shards = [r["shard"] for r in records]
    print_summary(record)
    return result


def _write_parquet(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    # Fixed writer options and no pandas metadata, so the same rows give the same bytes.
    pq.write_table(table, tmp, compression="zstd", write_statistics=False, store_schema=False)
    tmp.replace(path)
