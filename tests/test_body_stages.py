"""The render and noise stages on a body fit of the real Anny model with known parameters (the `body` field as
the body stage writes it): maps in the registry's encodings, noise at the latent grid, seeds derived per clip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from humanim.schemas.fields import FIELDS, decode_field, encode_field, resolve_shape
from humanim.schemas.keys import derive_seed
from humanim.stages.base import Clip, ClipSpec
from humanim.stages.fit import BodyFit
from humanim.stages.noise import ArticulatedNoise
from humanim.stages.render import PinholeCamera, Render, encode_maps, render_maps

HEIGHT = WIDTH = 128
FRAMES = 5


def spec(key: str = "0123456789abcdef_00003") -> ClipSpec:
    return ClipSpec(key=key, video_id=key[:16], clip_index=3, split="train", source="", source_sha256="",
                    source_frame_indices=tuple(range(FRAMES)), source_frame_pts=tuple(range(FRAMES)),
                    source_frame_times=(), frame_times=(), fps=16.0)


@pytest.fixture(scope="module")
def anny_fit() -> tuple[BodyFit, bytes]:
    """Anny turned to face the camera (180 degrees about x: y up becomes y down), 2.2 m away, its arms
    swinging: the arrays the body stage stores, and their npz bytes."""
    from humanim.stages.body_models import load_body_model

    model = load_body_model("anny")
    pose = np.zeros((FRAMES, len(model.pose_joints), 3), np.float32)
    for name in ("upperarm01.L", "upperarm01.R"):
        if name in model.pose_joints:
            pose[:, model.pose_joints.index(name), 2] = np.linspace(-0.6, 0.6, FRAMES)
    fit = BodyFit(model="anny", shape=np.full(len(model.shape_names), 0.5, np.float32), pose=pose,
                  global_orient=np.tile(np.array([np.pi, 0, 0], np.float32), (FRAMES, 1)),
                  transl=np.tile(np.array([0, 0, 2.2], np.float32), (FRAMES, 1)),
                  camera=np.array([110, 110, (WIDTH - 1) / 2, (HEIGHT - 1) / 2], np.float32),
                  focal_source="given", error_px=np.zeros(FRAMES, np.float32), iterations=0)
    return fit, fit.to_npz_bytes()


def clip_with(fit_bytes: bytes, key: str = "0123456789abcdef_00003") -> Clip:
    return Clip(spec=spec(key), frames=np.zeros((FRAMES, HEIGHT, WIDTH, 3), np.uint8), fields={"body": fit_bytes})


def test_render_stage_stores_the_renderers_maps_in_registry_encodings(anny_fit):
    fit, fit_bytes = anny_fit
    stage = Render({"model_path": None, "device": "cpu", "threads": 1, "method": "raster"})
    result = stage(clip_with(fit_bytes))
    from humanim.stages.body_models import load_body_model

    model = load_body_model("anny")
    with torch.no_grad():
        vertices = model(torch.as_tensor(fit.shape)[None], torch.as_tensor(fit.pose),
                         torch.as_tensor(fit.global_orient), torch.as_tensor(fit.transl)).vertices.numpy()
    maps = render_maps(vertices, model.faces, PinholeCamera(110, 110, 63.5, 63.5), HEIGHT, WIDTH,
                       face_part=model.face_part)
    expected = encode_maps(maps)
    meta = {"num_frames": FRAMES, "height": HEIGHT, "width": WIDTH}
    for name, value in result.fields.items():
        field = FIELDS[name]
        decoded = decode_field(field, encode_field(field, value))
        assert decoded.shape == resolve_shape(field, meta) and decoded.dtype == np.dtype(field.dtype), name
        np.testing.assert_array_equal(decoded, expected[name])
    body = maps["silhouette"]
    assert 0.05 < body.mean() < 0.6 and result.qa["body_pixel_share"] == pytest.approx(body.mean())
    np.testing.assert_array_equal(np.unpackbits(result.fields["body_mask"], axis=-1, count=WIDTH).astype(bool), body)
    depth = result.fields["depth"]
    assert np.all(depth[~body] == 0) and 1900 < np.median(depth[body]) < 2500  # millimetres, about 2.2 m away
    assert set(np.unique(result.fields["part"][body])) > {1, 16}  # pelvis, head (1 + SMPL part index)
    # The arms swing: the silhouette changes from frame to frame.
    assert (body[0] != body[-1]).mean() > 0.005
    # inspect's contact sheet colours the body by part, and only the body.
    from humanim.pipeline.contact_sheet import contact_sheet

    sample = {"frames": np.full((FRAMES, HEIGHT, WIDTH, 3), 200, np.uint8), "meta": {"frame_times": [0.0] * FRAMES}}
    plain = np.asarray(contact_sheet(sample, columns=FRAMES, tile_height=HEIGHT), np.int16)
    coloured = np.asarray(contact_sheet({**sample, "part": result.fields["part"]}, columns=FRAMES,
                                          tile_height=HEIGHT), np.int16)
    changed = np.abs(coloured - plain).sum(axis=-1) > 30
    assert changed.mean() == pytest.approx(body.mean() * HEIGHT / (HEIGHT + 18), abs=0.02)


def test_noise_stage_renders_its_latent_frames_and_derives_its_seed(anny_fit):
    _, fit_bytes = anny_fit
    stage = ArticulatedNoise({"preset": "wan", "texel_level": "auto", "model_path": None, "device": "cpu"},
                             build_seed=5)
    result = stage(clip_with(fit_bytes))
    meta = {"num_frames": FRAMES, "height": HEIGHT, "width": WIDTH, "stages": {"noise": result.meta}}
    assert result.meta["seed"] == derive_seed(5, "0123456789abcdef_00003", "noise")
    assert result.meta["latent_frames"] == 2  # frames 0 and 4 of 5 at temporal stride 4
    for name, value in result.fields.items():
        field = FIELDS[name]
        assert value.shape == resolve_shape(field, meta) and value.dtype == np.dtype(field.dtype), name
    noise = result.fields["noise"].astype(np.float32)
    assert noise.shape == (2, 16, 16, 16) and abs(noise.mean()) < 0.1 and 0.8 < noise.std() < 1.2
    assert result.fields["noise_visible"].sum() > 0 and 0 < result.qa["noise_visible_share"] < 1
    again = ArticulatedNoise({"preset": "wan", "model_path": None, "device": "cpu"}, build_seed=5)(clip_with(fit_bytes))
    assert again.fields["noise"].tobytes() == result.fields["noise"].tobytes()
    other = stage(clip_with(fit_bytes, key="0123456789abcdef_00004"))
    assert abs(np.corrcoef(noise.ravel(), other.fields["noise"].astype(np.float32).ravel())[0, 1]) < 0.05
    with pytest.raises(ValueError, match="put 'body' before 'noise'"):
        stage(Clip(spec=spec(), frames=np.zeros((FRAMES, HEIGHT, WIDTH, 3), np.uint8)))
