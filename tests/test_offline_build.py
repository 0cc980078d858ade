"""The offline preset end to end on real videos: keypoints, masks and blur scores land in verified shards."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import asset, run_build, write_config

from humanim.pipeline.contact_sheet import contact_sheet, read_sample
from humanim.pipeline.verify import verify_build
from humanim.stages.masks import unpack_masks


@pytest.fixture(scope="module")
def offline_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline")
    videos = root / "videos"
    videos.mkdir()
    for name in ("moore_talkinghead_3.mp4", "animatex_dance_1.mp4"):
        (videos / name).symlink_to(asset(f"videos/{name}"))
    # The offline stages plus YuNet faces from the model store (the file is in the shared assets), on one
    # CPU: the two actor pools (pose, face) must leave room for the task stages.
    config = write_config(root / "config.yaml", {"stages": ["decode", "pose", "face", "masks", "blur"],
                                                 "face": {"backend": "yunet"},
                                                 "clips": {"max_clips_per_video": 1},
                                                 "video": {"width": 256, "height": 256}})
    models = asset("models/face_detection_yunet_2026may.onnx").parent
    run_build(videos, root / "out", config, num_cpus=1, env={"HUMANIM_MODELS": str(models)})
    return root / "out"


def test_offline_stages_fill_every_sample(offline_build):
    assert verify_build(offline_build) == []
    manifest = pq.read_table(offline_build / "manifest.parquet").to_pylist()
    assert len(manifest) == 2
    by_source = {row["source"].rsplit("/", 1)[-1]: row for row in manifest}
    talking, dancer = by_source["moore_talkinghead_3.mp4"], by_source["animatex_dance_1.mp4"]
    assert talking["pose_face_rate"] == 1.0 and talking["mask_face_rate"] == 1.0 and talking["face_rate"] == 1.0
    face = read_sample(offline_build, talking["key"])
    assert np.isfinite(face["face_box"]).all() and "face_embedding" not in face  # YuNet detects, never embeds
    assert "no recognition model" in face["meta"]["stages"]["face"]["embedding_unavailable"]
    assert dancer["pose_body_rate"] == 1.0
    sample = read_sample(offline_build, dancer["key"])
    kpts, masks = sample["kpts"], unpack_masks(sample["masks"], 256)
    assert kpts.shape == (8, 133, 3) and masks.shape == (8, 3, 256, 256)
    body = kpts[:, :17]
    confident = body[body[..., 2] > 0.5]
    inside = ((confident[:, :2] >= -0.5) & (confident[:, :2] <= 255.5)).all(axis=1)
    # MediaPipe also places confident points past the crop edge (feet cut off by the square crop).
    assert len(confident) > 8 * 10 and inside.mean() > 0.8
    assert np.array_equal(np.isfinite(sample["hand_sharpness"]), sample["hand_valid"])
    # The reference frame: the same dancer, from a source frame that is not one of the clip's.
    reference = sample["meta"]["stages"]["decode"]["reference"]
    assert reference["same_scene"] and reference["source_frame_index"] not in sample["meta"]["source_frame_indices"]
    assert sample["ref_frame"].shape == (256, 256, 3) and sample["ref_kpts"].shape == (133, 3)
    assert min(np.abs(sample["ref_frame"].astype(int) - frame).mean() for frame in sample["frames"]) > 5
    ref_body = sample["ref_kpts"][:17]
    assert (ref_body[:, 2] > 0.5).sum() >= 10
    record = json.loads((offline_build / "build.json").read_text())
    assert set(record["stage_seconds"]) == {"decode", "pose", "face", "masks", "blur"}
    assert [(m["name"], m["sha256"][:16]) for m in record["models"]] == [
        ("face_detection_yunet_2026may.onnx", "ebafce4e3c118d65")]
    assert record["qa_means"]["pose_body_rate"] > 0.9


def test_contact_sheet_draws_the_annotations(offline_build):
    key = pq.read_table(offline_build / "manifest.parquet").column("key")[0].as_py()
    sample = read_sample(offline_build, key)
    plain = contact_sheet({k: v for k, v in sample.items() if k not in ("kpts", "masks")})
    annotated = contact_sheet(sample)
    difference = np.abs(np.asarray(annotated, np.int16) - np.asarray(plain, np.int16)).sum(axis=-1)
    assert (difference > 30).mean() > 0.01  # skeleton and masks visibly drawn over the frames
