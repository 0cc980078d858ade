"""`video.crop: subject`: clips cut around the tracked main subject, with the real YOLOX-nano file of the shared
assets on a real two-person video."""
from __future__ import annotations

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import asset, run_build, write_config

from humanim.pipeline.contact_sheet import read_sample
from humanim.pipeline.verify import verify_build
from humanim.stages.decode import cover_crop
from humanim.stages.media import av
from humanim.stages.pose_rtmlib import PersonDetector
from humanim.stages.subject_crop import whole_frame
from humanim.stages.track import track_subject

YOLOX_NANO = "models/yolox_nano_8xb8-300e_humanart-40f6f0d0.onnx"
WIDTH, HEIGHT = 256, 384


@pytest.fixture(scope="module")
def subject_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("subject_crop")
    video = asset("videos/mmhuman3d_multi_person_demo.mp4")
    # The detector named by its path, as a user's own file is.
    config = write_config(root / "config.yaml", {
        "video": {"width": WIDTH, "height": HEIGHT, "crop": "subject", "subject_detector": str(asset(YOLOX_NANO))},
        "clips": {"max_clips_per_video": 1}})
    run_build(video, root / "out", config, num_cpus=1)
    key = pq.read_table(root / "out" / "manifest.parquet").column("key")[0].as_py()
    return root / "out", read_sample(root / "out", key), video


def source_frames(video, indices: list[int]) -> np.ndarray:
    wanted, frames = set(indices), {}
    with av.open(str(video)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                frames[index] = frame.to_ndarray(format="rgb24")
    return np.stack([frames[i] for i in indices])


def test_the_clip_is_cut_around_the_main_subject_with_one_box(subject_build):
    out, sample, video = subject_build
    assert verify_build(out) == []
    meta = sample["meta"]
    record = meta["stages"]["decode"]["subject_crop"]
    assert record["people_seen"] == 2 and record["detector"] == asset(YOLOX_NANO).name
    width, height = meta["source_resolution"]
    x0, y0, x1, y1 = meta["crop_box"]
    assert (x1 - x0) / (y1 - y0) == pytest.approx(WIDTH / HEIGHT, rel=0.01)
    # The subject, detected here on the full-resolution source frames, lies inside the one crop box in every
    # frame (with a few pixels of detector disagreement between the two resolutions)...
    frames = source_frames(video, meta["source_frame_indices"])
    subject = track_subject(PersonDetector(asset(YOLOX_NANO))(frames), (width, height)).boxes
    slack = 0.03 * (y1 - y0)
    assert np.all(subject[:, 0] >= x0 - slack) and np.all(subject[:, 2] <= x1 + slack)
    assert np.all(subject[:, 1] >= y0 - slack) and np.all(subject[:, 3] <= y1 + slack)
    # ...which is zoomed in on the subject: narrower than the centre crop, which keeps the frame's full width.
    centre = cover_crop(width, height, WIDTH, HEIGHT).box
    assert (x1 - x0) < 0.9 * (centre[2] - centre[0])
    # The stored frames are that box of the source, scaled: compare with a plain resize of the same cut.
    decoded = sample["frames"]
    assert decoded.shape == (8, HEIGHT, WIDTH, 3)
    expected = np.stack([cv2.resize(f[round(y0):round(y1), round(x0):round(x1)], (WIDTH, HEIGHT),
                                    interpolation=cv2.INTER_AREA) for f in frames])
    assert np.abs(decoded.astype(np.int16) - expected).mean() < 6  # H.264 at crf 18 and chroma resampling


def test_preview_frames_keep_the_whole_frame_at_even_sizes():
    crop, width, height = whole_frame(1080, 1920, 416)
    assert (width, height) == (234, 416) and crop.box == (0.0, 0.0, 1080.0, 1920.0)
    assert whole_frame(721, 405, 416)[1:] == (416, 234)
