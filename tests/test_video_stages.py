"""probe, plan and decode on videos with known content: timestamps, cuts, rotation, crops, determinism."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import asset
from videos import coded_frame, read_code, write_video

from humanim.schemas.fields import decode_mp4
from humanim.stages.base import Clip, ClipRejected
from humanim.stages.decode import Decode, cover_crop
from humanim.stages.plan import PlanConfig, detect_scene_starts, plan_clips
from humanim.stages.probe import probe

DECODE = {"width": 64, "height": 48, "crf": 18, "preset": "veryfast", "threads": 1}


def _decode(info, spec, config=DECODE):
    clip = Clip(spec=spec, meta={"source_info": {"width": info.width, "height": info.height,
                                                 "rotation": info.rotation, "average_fps": info.average_fps}})
    return Decode(config)(clip)


def test_probe_reads_real_videos():
    info = probe(str(asset("videos/musepose_dance.mp4")))
    assert (info.width, info.height, len(info.frame_pts)) == (1080, 1920, 288)
    assert info.average_fps == pytest.approx(24.0, abs=0.01) and not info.variable_frame_rate
    assert info.has_audio and info.codec == "h264" and info.video_id == info.sha256[:16]


def test_variable_frame_rate_is_resampled_by_timestamp(tmp_path):
    # 20 frames with irregular gaps (40 ms and 120 ms): frame index and time disagree.
    gaps = [40 if i % 3 else 120 for i in range(20)]
    pts_ms = np.concatenate([[0], np.cumsum(gaps[:-1])]).tolist()
    path = write_video(tmp_path / "vfr.mp4", [coded_frame(i) for i in range(20)], pts_ms=pts_ms)
    info = probe(str(path))
    assert info.variable_frame_rate and np.allclose(info.frame_times * 1000, pts_ms)
    specs = plan_clips(info, [0], PlanConfig(frames=10, fps=10, stride=10))
    annotations = _decode(info, specs[0])
    # The frame on screen at t = j / 10 s is the last one whose timestamp is <= t.
    expected = [int(np.searchsorted(np.array(pts_ms), 100 * j, side="right") - 1) for j in range(10)]
    assert list(specs[0].source_frame_indices) == expected
    assert [read_code(f) for f in annotations.frames] == [i % 10 for i in expected]
    assert [read_code(f) for f in decode_mp4(annotations.fields["frames"])] == [i % 10 for i in expected]


def test_clips_never_cross_a_scene_cut(tmp_path):
    rng = np.random.default_rng(0)
    shots = [rng.integers(0, 255, (1, 1, 3)) * np.ones((96, 128, 3)) for _ in range(2)]
    frames = [np.clip(shots[i >= 30] + rng.normal(0, 2, (96, 128, 3)), 0, 255).astype(np.uint8) for i in range(60)]
    path = write_video(tmp_path / "cut.mp4", frames)
    info = probe(str(path))
    config = PlanConfig(frames=8, fps=25, stride=4)
    starts = detect_scene_starts(str(path), config, len(info.frame_pts))
    assert starts == [0, 30]
    specs = plan_clips(info, starts, config)
    assert specs and all(max(s.source_frame_indices) < 30 or min(s.source_frame_indices) >= 30 for s in specs)
    assert [s.clip_index for s in specs] == list(range(len(specs)))
    assert len({s.key for s in specs}) == len(specs)


def test_rotated_phone_video_comes_out_upright(tmp_path):
    # Stored landscape with a bright block at the top-left; the display matrix turns it 90 degrees
    # counter-clockwise, so upright the block sits at the bottom-left of a portrait frame.
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:16, :16] = 255
    path = write_video(tmp_path / "rotated.mp4", [frame] * 10, rotation=90)
    info = probe(str(path))
    assert (info.width, info.height, info.rotation) == (48, 64, 90)
    specs = plan_clips(info, [0], PlanConfig(frames=4, fps=25, stride=4, min_source_side=16))
    upright = _decode(info, specs[0], {**DECODE, "width": 48, "height": 64}).frames[0].mean(axis=2)
    assert upright[-8:, :8].mean() > 200 and upright[:8, :8].mean() < 50 and upright[-8:, -8:].mean() < 50


def test_cover_crop_is_centred_and_covers():
    crop = cover_crop(1080, 1920, 512, 512)
    assert (crop.scaled_w, crop.scaled_h, crop.x0, crop.y0) == (512, 910, 0, 198)  # 199 rounded to even
    assert crop.box[0] == 0 and crop.box[2] == pytest.approx(1080)
    assert crop.box[1] == pytest.approx(1920 - crop.box[3], abs=8)


def test_decode_is_byte_identical_and_short_videos_are_rejected(tmp_path):
    info = probe(str(asset("videos/animatex_dance_1.mp4")))
    spec = plan_clips(info, [0], PlanConfig(frames=8, fps=8, stride=8))[3]
    first, second = _decode(info, spec), _decode(info, spec)
    assert first.fields["frames"] == second.fields["frames"]
    assert first.frames.shape == (8, 48, 64, 3) and first.frames.std() > 10
    with pytest.raises(ClipRejected, match="no scene is long enough"):
        plan_clips(info, [0], PlanConfig(frames=400, fps=24, stride=400))


def test_reference_frame_is_the_scene_frame_furthest_from_the_clip_and_never_one_of_its_frames(tmp_path):
    # 60 coded frames at 25 fps with a cut at 30 (two flat shots plus the code), so each frame says who it is.
    path = write_video(tmp_path / "coded.mp4", [coded_frame(i) for i in range(60)])
    info = probe(str(path))
    specs = plan_clips(info, [0, 30], PlanConfig(frames=8, fps=25, stride=8))
    for spec in specs:
        scene = (0, 30) if spec.source_frame_indices[0] < 30 else (30, 60)
        window = (spec.source_frame_indices[0], spec.source_frame_indices[-1])
        assert spec.reference_frame_index not in spec.source_frame_indices and spec.reference_same_scene
        assert scene[0] <= spec.reference_frame_index < scene[1]
        # The scene's end furthest from the window.
        furthest = scene[0] if window[0] - scene[0] >= scene[1] - 1 - window[1] else scene[1] - 1
        assert spec.reference_frame_index == furthest
    annotations = _decode(info, specs[1])
    assert specs[1].reference_frame_index == 29 and read_code(annotations.reference) == 29 % 10  # codes are i % 10
    assert annotations.reference.shape == annotations.frames.shape[1:]
    assert annotations.meta["reference"] == {"source_frame_index": 29, "source_frame_time": pytest.approx(1.16),
                                             "same_scene": True}


def test_a_clip_filling_its_scene_takes_its_reference_from_the_next_scene_or_has_none():
    from humanim.stages.plan import reference_frame

    assert reference_frame((10, 19), (10, 20), 40) == (9, False)  # the frame just before, in the previous scene
    assert reference_frame((0, 9), (0, 10), 40) == (10, False)
    assert reference_frame((0, 39), (0, 40), 40) is None  # the clip is the whole video
    assert reference_frame((12, 15), (10, 20), 40) == (19, True)
