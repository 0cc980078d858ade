"""The sample registry: every field a shard sample can hold, how it is stored, and what it must look like.

The writer encodes through it, `humanim verify` and the training loader decode and check through it, and
docs/FORMAT.md is generated from it. Later stages add their fields here.
"""
from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Field:
    name: str
    ext: str  # WebDataset extension: the member name is f"{key}.{ext}"
    codec: str  # "mp4" | "json" | "npy" | "npy.gz" | "npz" | "png"
    dtype: str
    shape: tuple[str | int, ...]  # named axes resolve against the sample's meta (T, H, W)
    units: str
    frame: str  # coordinate frame the values live in
    stage: str  # the stage that produces it
    description: str
    value_range: tuple[float, float] | None = None
    optional: bool = False  # may be absent even when its stage ran (meta says why)


FIELDS: dict[str, Field] = {}


def register(field: Field) -> Field:
    if field.name in FIELDS:
        raise ValueError(f"field {field.name!r} registered twice")
    if any(f.ext == field.ext for f in FIELDS.values()):
        raise ValueError(f"extension {field.ext!r} already used")
    FIELDS[field.name] = field
    return field


register(Field(
    name="frames", ext="mp4", codec="mp4", dtype="uint8", shape=("T", "H", "W", 3),
    units="sRGB 8-bit, H.264 yuv420p", frame="clip pixels (after resample, resize, crop)", stage="decode",
    description="The clip's frames at the target fps and resolution; every annotation indexes exactly these frames.",
))
register(Field(
    name="meta", ext="meta.json", codec="json", dtype="json", shape=(),
    units="-", frame="-", stage="decode",
    description="Source, source sha256, frame timestamps, crop box, resolution, fps, stage names, versions and seeds.",
))

register(Field(
    name="kpts", ext="kpts.npy", codec="npy", dtype="float32", shape=("T", 133, 3),
    units="x, y in pixels; score in [0, 1] (0 = absent)", frame="clip pixels, pixel centres at integers",
    stage="pose",
    description="Whole-body keypoints of the clip's subject in the COCO-WholeBody 133 layout (docs/KEYPOINTS.md).",
))
register(Field(
    name="subject_box", ext="subject_box.npy", codec="npy", dtype="float32", shape=("T", 5),
    units="x0, y0, x1, y1 in pixels, score", frame="clip pixels, pixel centres at integers", stage="pose",
    description="The tracked subject's box per frame (detector box, or the box of its confident body points "
                "for back-ends without a detector); NaN rows where the subject is lost.",
))
register(Field(
    name="masks", ext="masks.npy.gz", codec="npy.gz", dtype="uint8", shape=("T", 3, "H", "W/8"),
    units="bits: np.packbits along W, big-endian", frame="clip pixels", stage="masks",
    description="Face, left-hand, right-hand masks (channels in that order), bit-packed; "
                "humanim.stages.masks.unpack_masks(masks, W) gives uint8 0/1 [T, 3, H, W].",
))
register(Field(
    name="hand_sharpness", ext="hand_sharpness.npy", codec="npy", dtype="float32", shape=("T", 2),
    units="variance of the Laplacian of the grey hand crop rescaled to a fixed side", frame="-", stage="blur",
    description="HIA hand sharpness per frame, [left, right] hand of the person; NaN where the hand is not seen.",
))
register(Field(
    name="hand_motion", ext="hand_motion.npy", codec="npy", dtype="float32", shape=("T", 2, 2),
    units="pixels per frame at the clip fps", frame="clip pixels", stage="blur",
    description="HIA hand movement vector (dx, dy) per frame and hand; NaN where the hand is not seen.",
))
register(Field(
    name="hand_valid", ext="hand_valid.npy", codec="npy", dtype="bool", shape=("T", 2), units="-", frame="-",
    stage="blur", description="Whether each hand was seen in each frame (hand_sharpness/hand_motion are finite).",
))

register(Field(
    name="face_box", ext="face_box.npy", codec="npy", dtype="float32", shape=("T", 5),
    units="x0, y0, x1, y1 in pixels, detector score", frame="clip pixels, pixel centres at integers", stage="face",
    description="The subject's face box per frame; NaN rows where the face is not visible.",
))
register(Field(
    name="face_landmarks", ext="face_landmarks.npy", codec="npy", dtype="float32", shape=("T", 5, 2),
    units="pixels", frame="clip pixels", stage="face",
    description="5 face points per frame (eye on image left, eye on image right, nose, mouth left, mouth right); "
                "NaN where the face is not visible.",
))
register(Field(
    name="face_embedding", ext="face_embedding.npy", codec="npy", dtype="float32", shape=(512,),
    units="unit L2 norm", frame="ArcFace identity space", stage="face", optional=True,
    description="ArcFace identity of the subject from the sharpest, most frontal face; absent when the back-end "
                "has no recognition model or no face was found (meta.stages.face says which).",
))

register(Field(
    name="ref_frame", ext="ref_frame.png", codec="png", dtype="uint8", shape=("H", "W", 3),
    units="sRGB", frame="clip pixels (the clip's crop of the reference's source frame)", stage="pack",
    optional=True,
    description="A reference frame of the clip's subject from elsewhere in the same video, never one of the "
                "clip's frames (meta.stages.decode.reference says which source frame and whether it is from "
                "the clip's scene); absent when the video has no frame outside the clip or the subject is not "
                "found in it (meta.stages.pose says why).",
))
register(Field(
    name="ref_kpts", ext="ref_kpts.npy", codec="npy", dtype="float32", shape=(133, 3),
    units="x, y in pixels; score in [0, 1]", frame="reference frame pixels, pixel centres at integers",
    stage="pose", optional=True,
    description="Whole-body keypoints of the subject in the reference frame (COCO-WholeBody order, as kpts).",
))
register(Field(
    name="ref_face_embedding", ext="ref_face_embedding.npy", codec="npy", dtype="float32", shape=(512,),
    units="unit L2 norm", frame="ArcFace identity space", stage="face", optional=True,
    description="ArcFace identity of the subject's face in the reference frame; absent without a recognition "
                "model or a visible face there.",
))

register(Field(
    name="body", ext="body.npz", codec="npz", dtype="mixed", shape=(),
    units="metres, radians (axis-angle), pixels", frame="OpenCV camera frame (x right, y down, z forward)",
    stage="body",
    description="The clip's body-model fit (stages/fit.py): model, shape, per-frame pose, global_orient and "
                "transl in the camera frame, camera (fx, fy, cx, cy), per-frame reprojection error in pixels.",
))
register(Field(
    name="depth", ext="depth.npy.gz", codec="npy.gz", dtype="uint16", shape=("T", "H", "W"),
    units="millimetres (z-depth); 0 off the body", frame="camera", stage="render",
    description="Rendered z-depth of the fitted body (Champ's depth condition), lossless at 1 mm.",
))
register(Field(
    name="normal", ext="normal.npy.gz", codec="npy.gz", dtype="uint8", shape=("T", "H", "W", 3),
    units="round((n + 1) * 127.5) per axis; 0 off the body", frame="camera (x right, y down, z forward)",
    stage="render", description="Rendered surface normal of the fitted body (Champ's normal condition).",
))
register(Field(
    name="part", ext="part.npy.gz", codec="npy.gz", dtype="uint8", shape=("T", "H", "W"),
    units="1 + index into body_models.SMPL_PARTS; 0 off the body", frame="clip pixels", stage="render",
    description="Semantic body-part map: each pixel's SMPL region; inspect colours label l with viridis at "
                "(l - 1) / 23, as Champ colours its semantic maps.",
))
register(Field(
    name="body_mask", ext="body_mask.npy.gz", codec="npy.gz", dtype="uint8", shape=("T", "H", "W/8"),
    units="bits: np.packbits along W, big-endian", frame="clip pixels", stage="render",
    description="Silhouette of the fitted body (the masks stage's body mask), bit-packed along W as masks are.",
))
register(Field(
    name="face_id", ext="face_id.npy.gz", codec="npy.gz", dtype="int32", shape=("T", "H", "W"),
    units="index of the body-model mesh face seen; -1 off the body", frame="clip pixels", stage="render",
    description="Per-pixel surface id: with the fit, it places every pixel on the body surface.",
))
register(Field(
    name="noise", ext="noise.npy", codec="npy", dtype="float16", shape=("T'", "C", "H/s", "W/s"),
    units="N(0, 1) per element", frame="latent grid of the target VAE", stage="noise",
    description="HumANDiff articulated noise: carried by the body surface from latent frame to latent frame "
                "(docs/NOISE.md); meta.stages.noise holds the seed and the latent layout.",
))
register(Field(
    name="noise_flow", ext="noise_flow.npy.gz", codec="npy.gz", dtype="float32", shape=("T'-1", 2, "H/s", "W/s"),
    units="latent cells (dx, dy)", frame="latent grid", stage="noise",
    description="Where each latent cell of frame t+1 was in latent frame t, through the body surface.",
))
register(Field(
    name="noise_visible", ext="noise_visible.npy.gz", codec="npy.gz", dtype="uint8", shape=("T'-1", "H/s", "W/s"),
    units="1 where noise_flow is trusted", frame="latent grid", stage="noise",
    description="Cells on the body, seen in both latent frames: where the motion losses apply.",
))

# Keys every meta.json holds; stages add their own records under meta["stages"][name].
META_KEYS = (
    "key", "video_id", "clip_index", "split", "source", "source_sha256", "fps", "num_frames", "width", "height",
    "frame_times", "source_frame_indices", "source_frame_times", "crop_box", "source_resolution", "rotation",
    "stages", "seeds",
)


def encode_field(field: Field, value) -> bytes:
    if field.codec == "mp4":
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"{field.name}: the decode stage must hand over encoded mp4 bytes")
        return bytes(value)
    if field.codec == "json":
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    if field.codec in ("npy", "npy.gz"):
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(value, dtype=np.dtype(field.dtype)), allow_pickle=False)
        if field.codec == "npy":
            return buffer.getvalue()
        # mtime 0: the same array gives the same bytes (WebDataset's decoders unzip .gz members themselves).
        return gzip.compress(buffer.getvalue(), compresslevel=6, mtime=0)
    if field.codec == "npz":
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"{field.name}: the stage must hand over encoded npz bytes")
        return bytes(value)
    if field.codec == "png":
        import cv2

        # Lossless, and the same bytes for the same pixels (fixed compression level, no timestamp chunk).
        ok, data = cv2.imencode(".png", np.ascontiguousarray(np.asarray(value, np.uint8)[..., ::-1]),
                                [cv2.IMWRITE_PNG_COMPRESSION, 6])
        if not ok:
            raise ValueError(f"{field.name}: PNG encoding failed")
        return data.tobytes()
    raise ValueError(f"unknown codec {field.codec!r}")


def decode_field(field: Field, data: bytes):
    """Bytes of one member back to a value; never unpickles."""
    if field.codec == "mp4":
        return decode_mp4(data)
    if field.codec == "json":
        return json.loads(data)
    if field.codec == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if field.codec == "npy.gz":
        return np.load(io.BytesIO(gzip.decompress(data)), allow_pickle=False)
    if field.codec == "npz":
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    if field.codec == "png":
        import cv2

        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{field.name}: not a decodable PNG")
        return np.ascontiguousarray(image[..., ::-1])
    raise ValueError(f"unknown codec {field.codec!r}")


def decode_mp4(data: bytes) -> np.ndarray:
    import av  # only readers of video need PyAV

    with av.open(io.BytesIO(data), format="mp4") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if not frames:
        raise ValueError("mp4 holds no decodable frame")
    return np.stack(frames)


def field_for_member(ext: str) -> Field | None:
    for field in FIELDS.values():
        if field.ext == ext:
            return field
    return None


def resolve_shape(field: Field, meta: dict) -> tuple[int, ...]:
    axes = {"T": meta["num_frames"], "H": meta["height"], "W": meta["width"], "W/8": -(-meta["width"] // 8)}
    noise = meta.get("stages", {}).get("noise")
    if noise:  # the latent layout of the noise stage
        stride = noise["spatial_stride"]
        axes.update({"T'": noise["latent_frames"], "T'-1": max(noise["latent_frames"] - 1, 0), "C": noise["channels"],
                     "H/s": meta["height"] // stride, "W/s": meta["width"] // stride})
    return tuple(axes[a] if isinstance(a, str) else a for a in field.shape)
