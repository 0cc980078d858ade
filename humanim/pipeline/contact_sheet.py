"""`humanim inspect`: a sample's fields as a table, and a contact sheet of its frames as a PNG.

Stages with something to show on the frames (keypoints, masks, renders) register an overlay in OVERLAYS;
the sheet draws every overlay whose field the sample has.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from humanim.pipeline.shards import read_members
from humanim.schemas.fields import decode_field, field_for_member
from humanim.stages.masks import unpack_masks
from humanim.stages.skeleton import draw_skeleton

MASK_TINTS = np.array([(255, 60, 60), (60, 220, 60), (60, 120, 255)], dtype=np.float32)  # face, left, right hand


def _masks_overlay(image: np.ndarray, sample: dict, index: int) -> np.ndarray:
    masks = unpack_masks(sample["masks"][index:index + 1], image.shape[1])[0].astype(bool)
    out = image.astype(np.float32)
    for mask, tint in zip(masks, MASK_TINTS):
        out[mask] = 0.55 * out[mask] + 0.45 * tint
    return out.astype(np.uint8)


def _skeleton_overlay(image: np.ndarray, sample: dict, index: int) -> np.ndarray:
    drawing = draw_skeleton(sample["kpts"][index], image.shape[0], image.shape[1])
    drawn = drawing.any(axis=-1)
    out = image.copy()
    out[drawn] = drawing[drawn]
    return out


@lru_cache(maxsize=1)
def part_colours() -> np.ndarray:
    """RGB uint8 [25, 3] for the part map's labels: black off the body, then Champ's semantic colours
    (matplotlib's viridis at label / 24 for the 24 SMPL regions)."""
    from matplotlib import colormaps

    colours = (colormaps["viridis"](np.arange(24) / 23)[:, :3] * 255).round().astype(np.uint8)
    return np.concatenate([np.zeros((1, 3), np.uint8), colours])


def _part_overlay(image: np.ndarray, sample: dict, index: int) -> np.ndarray:
    labels = sample["part"][index]
    body = labels > 0
    out = image.astype(np.float32)
    out[body] = 0.4 * out[body] + 0.6 * part_colours()[labels[body]]
    return out.astype(np.uint8)


# field name -> function(frame RGB uint8 [H,W,3], the decoded sample, frame index) -> frame RGB uint8,
# drawn in this order
OVERLAYS: dict[str, Callable[[np.ndarray, dict, int], np.ndarray]] = {
    "part": _part_overlay,
    "masks": _masks_overlay,
    "kpts": _skeleton_overlay,
}


def _caption(sample: dict, index: int) -> str:
    caption = f"frame {index}  t={sample['meta']['frame_times'][index]:.2f}s"
    if "hand_sharpness" in sample:
        left, right = (f"{v:.0f}" if np.isfinite(v) else "-" for v in sample["hand_sharpness"][index])
        caption += f"  hand sharpness L {left} R {right}"
    return caption


def read_sample(out: Path, key: str) -> dict:
    """Every field of one sample, decoded through the registry, read straight from its byte range."""
    rows = pq.read_table(out / "manifest.parquet", filters=[("key", "=", key)]).to_pylist()
    if not rows:
        raise KeyError(f"{key} is not in {out}/manifest.parquet")
    row = rows[0]
    with open(out / "shards" / row["shard"], "rb") as handle:
        handle.seek(row["offset"])
        data = handle.read(row["size"])
    sample = {"__key__": key, "__sizes__": {}}
    for name, payload in read_members(data):
        ext = name.partition(".")[2]
        field = field_for_member(ext)
        if field is None:
            raise ValueError(f"{key}: member .{ext} is not in the sample registry")
        sample[field.name] = decode_field(field, payload)
        sample["__sizes__"][field.name] = len(payload)
    return sample


def contact_sheet(sample: dict, columns: int = 4, max_frames: int = 8, tile_height: int = 256) -> Image.Image:
    frames = sample["frames"]
    picks = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
    scale = tile_height / frames.shape[1]
    tile_w, tile_h = max(1, round(frames.shape[2] * scale)), tile_height
    rows = -(-len(picks) // columns)
    sheet = Image.new("RGB", (tile_w * min(columns, len(picks)), (tile_h + 18) * rows), "white")
    draw = ImageDraw.Draw(sheet)
    for slot, index in enumerate(picks):
        image = frames[index]
        for name, overlay in OVERLAYS.items():
            if name in sample:
                image = overlay(image, sample, int(index))
        x, y = (slot % columns) * tile_w, (slot // columns) * (tile_h + 18)
        sheet.paste(Image.fromarray(image).resize((tile_w, tile_h), Image.BILINEAR), (x, y + 18))
        draw.text((x + 4, y + 3), _caption(sample, int(index)), fill="black")
    return sheet


def inspect_sample(out: Path, key: str, png: Path) -> Path:
    sample = read_sample(out, key)
    table = Table(title=f"{key} ({sample['meta']['source']})")
    for column in ("field", "dtype", "shape", "bytes"):
        table.add_column(column)
    for name, value in sample.items():
        if name.startswith("__"):
            continue
        if isinstance(value, np.ndarray):
            table.add_row(name, str(value.dtype), str(tuple(value.shape)), str(sample["__sizes__"][name]))
        else:
            kind = "npz" if name == "body" else "json"
            table.add_row(name, kind, f"{len(value)} keys", str(sample["__sizes__"][name]))
    console = Console()
    console.print(table)
    meta = {k: v for k, v in sample["meta"].items() if k not in ("frame_times", "source_frame_times",
                                                                  "source_frame_indices")}
    console.print_json(json.dumps(meta))
    png.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(sample).save(png)
    console.print(f"contact sheet: {png}")
    return png
