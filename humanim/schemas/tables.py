"""Schemas of the two tables a build writes beside its shards: manifest.parquet and failures.parquet."""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

MANIFEST_BASE = pa.schema([
    pa.field("key", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("clip_index", pa.int32(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("source_sha256", pa.string(), nullable=False),
    pa.field("frame_start", pa.int64(), nullable=False),  # first source frame used (decode order)
    pa.field("frame_end", pa.int64(), nullable=False),  # one past the last source frame used
    pa.field("t_start", pa.float64(), nullable=False),  # seconds in the source
    pa.field("t_end", pa.float64(), nullable=False),
    pa.field("fps", pa.float32(), nullable=False),
    pa.field("num_frames", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("shard", pa.string(), nullable=False),
    pa.field("offset", pa.int64(), nullable=False),  # byte offset of the sample's first tar header in the shard
    pa.field("size", pa.int64(), nullable=False),  # bytes of the sample's tar members, headers and padding included
    pa.field("shard_sha256", pa.string(), nullable=False),  # of the whole shard file
    pa.field("status", pa.string(), nullable=False),  # "ok" or "flagged"
    pa.field("flags", pa.string(), nullable=False),  # why a clip is flagged; "" when ok
])


@dataclass(frozen=True)
class QAColumn:
    name: str
    type: pa.DataType
    stage: str
    description: str


QA_COLUMNS: dict[str, QAColumn] = {}


def register_qa(column: QAColumn) -> QAColumn:
    if column.name in QA_COLUMNS or column.name in MANIFEST_BASE.names:
        raise ValueError(f"manifest column {column.name!r} registered twice")
    QA_COLUMNS[column.name] = column
    return column


register_qa(QAColumn("source_fps", pa.float32(), "decode", "average frame rate of the source stream"))
register_qa(QAColumn("repeated_frame_share", pa.float32(), "decode",
                     "share of clip frames that repeat the previous source frame (source fps below target)"))


for _part, _what in (("body", "body"), ("face", "face"), ("lhand", "left hand"), ("rhand", "right hand")):
    register_qa(QAColumn(f"pose_{_part}_rate", pa.float32(), "pose", f"share of frames where the {_what} was found"))
register_qa(QAColumn("people_seen", pa.float32(), "pose",
                     "most people detected in one frame (null for back-ends that follow one person only)"))
register_qa(QAColumn("subject_lost_share", pa.float32(), "pose", "share of frames where the subject was lost"))
register_qa(QAColumn("face_rate", pa.float32(), "face", "share of frames with the subject's face"))
for _part, _what in (("face", "face"), ("lhand", "left hand"), ("rhand", "right hand")):
    register_qa(QAColumn(f"mask_{_part}_rate", pa.float32(), "masks", f"share of frames with a {_what} mask"))
for _part, _what in (("lhand", "left hand"), ("rhand", "right hand")):
    register_qa(QAColumn(f"blur_{_part}_rate", pa.float32(), "blur",
                         f"share of frames with a {_what} sharpness score"))

register_qa(QAColumn("fit_error_px", pa.float32(), "body", "mean reprojection error of the body fit, pixels"))
register_qa(QAColumn("fit_bad_frame_share", pa.float32(), "body",
                     "share of frames whose reprojection error is above body.bad_frame_px"))
register_qa(QAColumn("body_pixel_share", pa.float32(), "render", "share of pixels on the rendered body"))
register_qa(QAColumn("noise_visible_share", pa.float32(), "noise",
                     "share of latent cells with a trusted surface correspondence"))


def manifest_schema(stages: list[str]) -> pa.Schema:
    """Base columns, then the QA columns of the stages this build ran, in registry order."""
    schema = MANIFEST_BASE
    for column in QA_COLUMNS.values():
        if column.stage in stages:
            schema = schema.append(pa.field(column.name, column.type, nullable=True))
    return schema


FAILURES = pa.schema([
    pa.field("source", pa.string(), nullable=False),
    pa.field("video_id", pa.string(), nullable=True),  # null when the input could not even be hashed or probed
    pa.field("key", pa.string(), nullable=True),  # null when the whole input failed before clips were planned
    pa.field("stage", pa.string(), nullable=False),
    pa.field("error_class", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
])
