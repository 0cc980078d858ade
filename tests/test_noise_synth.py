"""Articulated noise on a synthetic person (`humanim synth`: a moving Anny body rendered by the project's Warp
ray caster) rather than test_noise's sphere: over an ensemble of seeds the same clip's noise is N(0, 1) per
element on the body, its silhouette band and the background; the flow the stage reports follows the body's
surface, and the noise goes with it."""
from __future__ import annotations

import numpy as np
import pytest
from test_noise import body_pixels_per_cell, correlation_z, variance_rejected, z_bound

from humanim.stages.noise import PRESETS, articulated_noise
from humanim.stages.render import render_maps

SEEDS = 200
SIZE = 128  # 16 x 16 latent cells: a full-body person this small still covers whole cells
GRID = SIZE // 8
VIDEO_FRAMES = 9  # wan: latent frames at video frames 0, 4, 8


@pytest.fixture(scope="module")
def synthetic_ensemble():
    from humanim.stages.body_models import load_body_model
    from humanim.synth.generator import synth_clip

    model = load_body_model("anny")
    clip = synth_clip(VIDEO_FRAMES, 3.0, SIZE, SIZE, seed=18, model=model, threads=1)
    latent = PRESETS["wan"].latent_frame_indices(VIDEO_FRAMES)
    maps = render_maps(clip.vertices, model.faces, clip.camera, SIZE, SIZE)
    face_id, barycentric = maps["face_id"], maps["barycentric"]
    results = [articulated_noise(face_id, barycentric, PRESETS["wan"], seed) for seed in range(SEEDS)]
    body = body_pixels_per_cell(face_id[latent])
    classes = {"body": body == 64, "background": body == 0, "band": (body > 0) & (body < 64)}
    return np.stack([r.noise for r in results]).astype(np.float64), classes, results[0], clip, maps, model.faces


def test_every_element_is_standard_normal_on_the_body_its_band_and_the_background(synthetic_ensemble):
    noise, classes = synthetic_ensemble[:2]
    for name, cells in classes.items():
        assert cells.any(), f"the synthetic clip has no {name} cells"
        values = noise.transpose(0, 2, 1, 3, 4)[:, :, cells]  # [seeds, C, cells of that class]
        assert not variance_rejected(values).any(), name
        mean_z = values.mean(axis=0) * np.sqrt(SEEDS)
        assert np.abs(mean_z).max() < z_bound(mean_z.size), name


def test_flow_follows_the_body_surface_and_the_noise_goes_with_it(synthetic_ensemble):
    noise, _, first, clip, maps, faces = synthetic_ensemble
    checked = []
    for t in range(noise.shape[1] - 1):
        target_frame, source_frame = 4 * (t + 1), 4 * t
        for y, x in zip(*np.nonzero(first.visibility[t])):
            # Truth: where the surface points seen in this cell were, one latent frame before (mean position,
            # in latent cells), from the synthetic body's own vertices.
            window = np.s_[y * 8:(y + 1) * 8, x * 8:(x + 1) * 8]
            face, weights = maps["face_id"][target_frame][window].ravel(), maps["barycentric"][target_frame][window]
            on_body = face >= 0
            points = np.einsum("pk,pkc->pc", weights.reshape(-1, 3)[on_body],
                               clip.vertices[source_frame][faces[face[on_body]]])
            camera = clip.camera
            true_x = (points[:, 0] / points[:, 2] * camera.fx + camera.cx).mean() / 8 - 0.5
            true_y = (points[:, 1] / points[:, 2] * camera.fy + camera.cy).mean() / 8 - 0.5
            dx, dy = first.flow[t][:, y, x]
            source = (int(round(y + dy)), int(round(x + dx)))
            z = correlation_z(noise[:, t, :, source[0], source[1]], noise[:, t + 1, :, y, x]).mean() * 4
            checked.append((x + dx - true_x, y + dy - true_y, z))
    error_x, error_y, z = np.array(checked).T
    assert len(checked) >= 10, "too few trusted flow cells to test"
    # The flow is the surface's motion, to a fraction of a cell (surface points hidden in the source frame
    # move the true mean a little; the flow's texel centroids are what the noise follows).
    assert np.median(np.hypot(error_x, error_y)) < 0.25 and np.hypot(error_x, error_y).max() < 0.75
    # At the cell the flow points to, the noise is clearly correlated with the cell it flowed into (averaged
    # Fisher z over 16 channels, standard normal if they were independent).
    assert z.min() > z_bound(len(z))
