"""Pack: a finished clip becomes its sample (tar members in registry order) and its manifest row."""
from __future__ import annotations

from humanim.pipeline.shards import tar_members
from humanim.schemas.fields import FIELDS, encode_field
from humanim.schemas.keys import derive_seed
from humanim.schemas.tables import QA_COLUMNS
from humanim.stages.base import Clip


def clip_meta(clip: Clip, build_seed: int, stage_names: list[str]) -> dict:
    spec, info = clip.spec, clip.meta["source_info"]
    height, width = clip.frames.shape[1:3]
    return {
        "key": spec.key, "video_id": spec.video_id, "clip_index": spec.clip_index, "split": spec.split,
        "source": spec.source, "source_sha256": spec.source_sha256,
        "fps": spec.fps, "num_frames": len(spec.frame_times), "width": int(width), "height": int(height),
        "frame_times": [round(t, 6) for t in spec.frame_times],
        "source_frame_indices": list(spec.source_frame_indices),
        "source_frame_times": [round(t, 6) for t in spec.source_frame_times],
        "crop_box": clip.meta["stages"]["decode"]["crop_box"],
        "source_resolution": [info["width"], info["height"]], "rotation": info["rotation"],
        "stages": clip.meta["stages"],
        "seeds": {"build": build_seed, **{name: derive_seed(build_seed, spec.key, name) for name in stage_names}},
    }


def pack_clip(clip: Clip, build_seed: int, stage_names: list[str]) -> tuple[bytes, dict]:
    """The sample's tar members and its manifest row (shard, offset and size are filled in by the packer)."""
    meta = clip_meta(clip, build_seed, stage_names)
    values = {**clip.fields, "meta": meta}
    # The reference frame goes in once the pose stage has found the subject in it (ref_kpts).
    if clip.reference is not None and "ref_kpts" in clip.fields:
        values["ref_frame"] = clip.reference
    members = [(field.ext, encode_field(field, values[name])) for name, field in FIELDS.items() if name in values]
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise KeyError(f"stages produced fields missing from the sample registry: {unknown}")
    spec = clip.spec
    row = {
        "key": spec.key, "split": spec.split, "video_id": spec.video_id, "clip_index": spec.clip_index,
        "source": spec.source, "source_sha256": spec.source_sha256,
        "frame_start": min(spec.source_frame_indices), "frame_end": max(spec.source_frame_indices) + 1,
        "t_start": spec.source_frame_times[0], "t_end": spec.frame_times[-1] + 1.0 / spec.fps,
        "fps": spec.fps, "num_frames": meta["num_frames"], "width": meta["width"], "height": meta["height"],
        "status": "flagged" if clip.meta.get("flags") else "ok", "flags": "; ".join(clip.meta.get("flags", [])),
        **{name: clip.qa.get(name) for name, column in QA_COLUMNS.items() if column.stage in stage_names},
    }
    return tar_members(spec.key, members), row
