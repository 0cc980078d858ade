"""Articulated noise: its distribution, its correspondences and its determinism, proved on ensembles.

The geometry is fixed (MovingSphere, the stand-in for the renderer) and only the seed varies. Every statistical
threshold is a two-sided bound at family-wise level ALPHA for the ensemble size, Bonferroni-corrected for the
number of quantities tested together, so a correct implementation fails one with probability below ALPHA.
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
import torch

from humanim.stages.noise import (
    PRESETS, FrameSurface, ancestor_table, articulated_noise, cell_index_map, children_table,
    draw_canonical, generator_for, latent_frame_noise, latent_frame_noise_reference, texel_centroids,
    texel_local_index, weighted_row_sums,
)

ALPHA = 1e-3
SEEDS = 1000
STRIDE = 8
SIZE = 64  # 64 x 64 video -> 8 x 8 latents
VIDEO_FRAMES = 9  # wan: latent frames at video frames 0, 4, 8


def z_bound(num_tests: int) -> float:
    """|z| bound for num_tests standard normal statistics at family-wise level ALPHA (Bonferroni)."""
    return NormalDist().inv_cdf(1 - ALPHA / (2 * num_tests))


def chi2_quantile(p: float, dof: int) -> float:
    """Wilson-Hilferty: accurate to a fraction of a percent for hundreds of degrees of freedom."""
    z = NormalDist().inv_cdf(p)
    return dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3


def variance_rejected(samples: np.ndarray) -> np.ndarray:
    """Per-element chi-square test of variance 1 (known mean 0) over axis 0, Bonferroni over the elements."""
    count, tests = samples.shape[0], samples[0].size
    ratio = (samples ** 2).sum(axis=0)
    return (ratio < chi2_quantile(ALPHA / (2 * tests), count)) | (ratio > chi2_quantile(1 - ALPHA / (2 * tests), count))


class MovingSphere:
    """Test fixture standing in for the renderer: a sphere triangulated on an equal-area (longitude, height)
    grid, moving sideways and spinning in front of a pinhole camera, ray cast analytically at pixel centres.

    face_id and barycentric mean what the renderer's do; the barycentrics are affine in the grid's (longitude,
    height) parameters (curved triangles), which keeps every surface correspondence exact.
    """

    def __init__(self, height: int, width: int, radius_px: float, longitudes: int, bands: int, velocity_px: float,
                 spin: float, start_x: float, tilt: float = 0.6):
        self.height, self.width, self.longitudes, self.bands = height, width, longitudes, bands
        self.focal, self.depth = float(width), 10.0
        self.radius = self.depth * radius_px / np.hypot(self.focal, radius_px)
        self.pixel_to_world = self.depth / self.focal
        self.start_x, self.velocity, self.spin, self.tilt = start_x - width / 2, velocity_px, spin, tilt
        ys, xs = np.mgrid[0:height, 0:width] + 0.5
        rays = np.stack([(xs - width / 2) / self.focal, (ys - height / 2) / self.focal, np.ones_like(xs)], -1)
        self.rays = rays / np.linalg.norm(rays, axis=-1, keepdims=True)

    def pose(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Centre in the camera frame, and rotation body -> camera."""
        centre = np.array([(self.start_x + self.velocity * frame) * self.pixel_to_world, 0.0, self.depth])
        a, b = self.spin * frame, self.tilt
        spin = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        tilt = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        return centre, spin @ tilt

    def surface(self, frame: int) -> np.ndarray:
        """[H, W, 3] body-frame unit vector of the surface point seen at each pixel; NaN off the sphere."""
        centre, rotation = self.pose(frame)
        along = self.rays @ centre
        discriminant = along ** 2 - centre @ centre + self.radius ** 2
        hit = discriminant >= 0
        distance = along - np.sqrt(np.where(hit, discriminant, 0.0))
        directions = ((self.rays * distance[..., None] - centre) / self.radius) @ rotation
        directions[~hit] = np.nan
        return directions

    def render(self, frames) -> tuple[np.ndarray, np.ndarray]:
        face_id = np.full((len(frames), self.height, self.width), -1, np.int32)
        barycentric = np.zeros((len(frames), self.height, self.width, 3), np.float32)
        for t, frame in enumerate(frames):
            d = np.nan_to_num(self.surface(frame), nan=2.0)
            hit = d[..., 0] < 2.0
            a = (np.arctan2(d[..., 1], d[..., 0]) % (2 * np.pi)) / (2 * np.pi) * self.longitudes
            b = (np.clip(d[..., 2], -1, 1) + 1) / 2 * self.bands
            i = np.minimum(np.floor(a), self.longitudes - 1).astype(np.int64)
            j = np.minimum(np.floor(b), self.bands - 1).astype(np.int64)
            fa, fb = a - i, b - j
            upper = fa + fb > 1  # each grid quad is cut along its anti-diagonal into two faces
            face_id[t] = np.where(hit, 2 * (j * self.longitudes + i) + upper, -1)
            weights = np.where(upper[..., None], np.stack([fa + fb - 1, 1 - fa, 1 - fb], -1),
                               np.stack([1 - fa - fb, fa, fb], -1))
            barycentric[t] = np.where(hit[..., None], weights, 0.0)
        return face_id, barycentric

    def project(self, directions: np.ndarray, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixel position (x, y) in `frame` of body-frame surface directions [..., 3], and whether it is seen."""
        centre, rotation = self.pose(frame)
        normals = directions @ rotation.T
        points = centre + self.radius * normals
        xy = points[..., :2] / points[..., 2:] * self.focal + np.array([self.width / 2, self.height / 2])
        return xy, np.einsum("...i,...i->...", normals, points) < 0


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The products here are tiny: on a busy 2-core machine a second OpenMP thread only waits, 5-10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def body_pixels_per_cell(face_id: np.ndarray) -> np.ndarray:
    """[..., h, w] body pixels in each latent cell."""
    shape = face_id.shape[:-2] + (face_id.shape[-2] // STRIDE, STRIDE, face_id.shape[-1] // STRIDE, STRIDE)
    return (face_id >= 0).reshape(shape).sum(axis=(-3, -1))


@pytest.fixture(scope="module")
def sphere_clip():
    """A body 10 px (1.25 latent cells) further right and spun 0.12 rad each latent frame, about 37% of the frame."""
    sphere = MovingSphere(SIZE, SIZE, radius_px=22, longitudes=16, bands=8, velocity_px=2.5, spin=0.03, start_x=22)
    face_id, barycentric = sphere.render(range(VIDEO_FRAMES))
    return sphere, face_id, barycentric


@pytest.fixture(scope="module")
def ensemble(sphere_clip):
    """[SEEDS, T', C, h, w] noise of the same clip under SEEDS seeds, and the per-latent-frame cell classes."""
    _, face_id, barycentric = sphere_clip
    noise = np.stack([articulated_noise(face_id, barycentric, PRESETS["wan"], seed).noise for seed in range(SEEDS)])
    body = body_pixels_per_cell(face_id[PRESETS["wan"].latent_frame_indices(VIDEO_FRAMES)])
    classes = {"body": body == STRIDE ** 2, "background": body == 0, "band": (body > 0) & (body < STRIDE ** 2)}
    return noise.astype(np.float64), classes


def test_texels_partition_each_face_into_equal_areas():
    rng = np.random.default_rng(0)
    points = rng.dirichlet(np.ones(3), size=200_000).astype(np.float32)
    for level in range(4):
        texels = 4 ** level
        b1, b2 = texel_centroids(level)
        assert np.array_equal(texel_local_index(b1, b2, level), np.arange(texels))
        counts = np.bincount(texel_local_index(points[:, 1], points[:, 2], level), minlength=texels)
        expected = len(points) / texels  # a uniform point falls in each of the n^2 congruent texels alike
        assert np.abs(counts - expected).max() < z_bound(texels) * np.sqrt(expected)
        if level:
            parents = ancestor_table(level, level - 1)
            assert np.array_equal(np.bincount(parents), np.full(4 ** (level - 1), 4))
            assert np.array_equal(np.sort(children_table(level - 1).ravel()), np.arange(texels))


def test_coarse_texels_are_normalised_sums_of_their_children():
    canonical = draw_canonical(np.array([0, 3, 5]), 6, 3, 4, 10, torch.Generator().manual_seed(0))
    assert np.array_equal(canonical.face_row, [0, -1, -1, 1, -1, 2])
    for level in range(3):
        fine = canonical.texels[level + 1].reshape(3, 4 ** (level + 1), 4)
        coarse = canonical.texels[level].reshape(3, 4 ** level, 4)
        assert np.allclose(coarse, fine[:, children_table(level)].sum(axis=2) / 2, atol=1e-6)


def test_mean_and_variance_per_element_on_body_band_and_background(ensemble):
    noise, classes = ensemble
    tests = noise[0].size
    mean_rejected = np.abs(noise.mean(axis=0)) * np.sqrt(SEEDS) > z_bound(tests)
    variance_bad = variance_rejected(noise)
    for name, cells in classes.items():
        assert cells.sum() >= 8, f"the geometry must give {name} cells to test"
        where = np.broadcast_to(cells[:, None], mean_rejected.shape)
        assert not mean_rejected[where].any(), f"{name}: {mean_rejected[where].sum()} means off 0"
        assert not variance_bad[where].any(), f"{name}: {variance_bad[where].sum()} variances off 1"


def test_naive_duplication_fails_the_variance_test(sphere_clip, ensemble):
    """Giving all n pixels of a texel its Z (no 1/sqrt(n), no re-Gaussianisation) must be caught."""
    _, face_id, barycentric = sphere_clip
    _, classes = ensemble
    cell_of_pixel = cell_index_map(SIZE, SIZE, STRIDE)
    naive = []
    for seed in range(SEEDS):
        surface = FrameSurface.from_render(face_id[0], barycentric[0], cell_of_pixel)
        seen = np.unique(surface.faces)
        canonical = draw_canonical(seen, int(seen.max()) + 1, 2, 16, 64, generator_for(seed, 0))
        surface.assign_texels(2, canonical.face_row, len(seen), 64)
        body = weighted_row_sums(surface.pair_cell, surface.pair_texel, surface.pair_count.astype(float),
                                 canonical.texels[2], 64)
        background = STRIDE ** 2 - np.bincount(surface.pair_cell, weights=surface.pair_count, minlength=64)
        naive.append((body + np.sqrt(background)[:, None] * canonical.background) / STRIDE)
    rejected = variance_rejected(np.stack(naive)).T.reshape(16, 8, 8)
    body_cells = np.broadcast_to(classes["body"][0], rejected.shape)
    assert rejected[body_cells].mean() > 0.9


def test_pooled_values_are_standard_normal(ensemble):
    noise, _ = ensemble
    for frame in range(noise.shape[1]):
        values = noise[:, frame].ravel()  # cells and channels of one frame are independent: pool them
        n = values.size
        bound = z_bound(3 * noise.shape[1])  # skewness, kurtosis and KS for each frame
        assert abs(np.mean(values ** 3)) < bound * np.sqrt(6 / n)
        assert abs(np.mean(values ** 4) - 3) < bound * np.sqrt(96 / n)  # Var(x^4) = 105 - 9 for a known mean
        ordered = torch.from_numpy(np.sort(values))
        cdf = torch.special.ndtr(ordered).numpy()
        ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
        # Kolmogorov's tail P(sqrt(n) D > x) ~ 2 exp(-2 x^2) gives the critical value
        assert ks < np.sqrt(-np.log(ALPHA / (2 * 3 * noise.shape[1])) / 2) / np.sqrt(n)


def correlation_z(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fisher z of the ensemble (axis 0) correlation of a and b, ~ N(0, 1) when they are independent."""
    a = (a - a.mean(axis=0)) / a.std(axis=0)
    b = (b - b.mean(axis=0)) / b.std(axis=0)
    return np.arctanh(np.clip((a * b).mean(axis=0), -0.999999, 0.999999)) * np.sqrt(a.shape[0] - 3)


def test_no_correlation_between_neighbours_channels_or_across_the_silhouette(ensemble):
    noise, classes = ensemble
    band = classes["band"][None, :, None]
    groups = {
        "right neighbours": (noise[..., :, :-1], noise[..., :, 1:], band[..., :, :-1] | band[..., :, 1:]),
        "lower neighbours": (noise[..., :-1, :], noise[..., 1:, :], band[..., :-1, :] | band[..., 1:, :]),
        "next channel": (noise[:, :, :-1], noise[:, :, 1:], band),
    }
    for name, (a, b, silhouette) in groups.items():
        z = correlation_z(a, b)
        silhouette = np.broadcast_to(silhouette[0], z.shape)
        for subset, chosen in ((name, np.ones_like(silhouette)), (f"{name} across the silhouette", silhouette)):
            values = z[chosen]
            assert values.size >= 50
            assert np.abs(values).max() < z_bound(values.size), f"{subset}: max |z| {np.abs(values).max():.2f}"
            # a systematic correlation too small for any one pair still moves the mean of them all
            assert abs(values.mean()) * np.sqrt(values.size) < z_bound(1), f"{subset}: mean z {values.mean():.3f}"


def test_power_spectrum_is_flat(ensemble):
    noise, _ = ensemble
    power = np.abs(np.fft.rfft2(noise)) ** 2 / (SIZE // STRIDE) ** 2  # E = 1 at every frequency for white noise
    ky = np.fft.fftfreq(SIZE // STRIDE) * (SIZE // STRIDE)
    kx = np.fft.rfftfreq(SIZE // STRIDE) * (SIZE // STRIDE)
    radius = np.rint(np.hypot(ky[:, None], kx[None, :])).astype(int)
    for frame in range(noise.shape[1]):
        per_seed = np.stack([power[:, frame][..., radius == r].mean(axis=(1, 2)) for r in range(radius.max() + 1)],
                            axis=1)  # [SEEDS, rings]: mean power of each ring, over channels and frequencies
        z = (per_seed.mean(axis=0) - 1) / (per_seed.std(axis=0) / np.sqrt(SEEDS))
        assert np.abs(z).max() < z_bound(per_seed.shape[1] * noise.shape[1]), f"frame {frame}: ring z {z.round(2)}"


def texel_ids(face_id: np.ndarray, barycentric: np.ndarray, level: int) -> np.ndarray:
    local = texel_local_index(barycentric[..., 1], barycentric[..., 2], level)
    return np.where(face_id >= 0, face_id.astype(np.int64) * 4 ** level + local, -1).ravel()


def test_correspondences_carry_the_noise_and_fixed_pixels_do_not(sphere_clip, ensemble):
    sphere, face_id, barycentric = sphere_clip
    noise, _ = ensemble
    level = articulated_noise(face_id, barycentric, PRESETS["wan"], 0).levels
    assert len(set(level)) == 1, "the exact covariance below assumes one texel level"
    cell_of_pixel = cell_index_map(SIZE, SIZE, STRIDE)
    checked = []
    for t in range(noise.shape[1] - 1):
        source_frame, target_frame = 4 * t, 4 * (t + 1)
        source_xy, seen = sphere.project(sphere.surface(target_frame), source_frame)
        source_texels = texel_ids(face_id[source_frame], barycentric[source_frame], level[0])
        target_texels = texel_ids(face_id[target_frame], barycentric[target_frame], level[0])
        source_n = np.bincount(source_texels[source_texels >= 0], minlength=target_texels.max() + 1)
        target_n = np.bincount(target_texels[target_texels >= 0], minlength=source_n.size)
        for cell in range(64):
            pixels = np.flatnonzero(cell_of_pixel == cell)
            xy = source_xy.reshape(-1, 2)[pixels]
            if (target_texels[pixels] < 0).any() or not seen.reshape(-1)[pixels].all() or (xy < 0).any() or (
                    xy >= SIZE).any():
                continue
            overlap = np.bincount(cell_of_pixel.reshape(SIZE, SIZE)[xy[:, 1].astype(int), xy[:, 0].astype(int)],
                                  minlength=64) / STRIDE ** 2
            source = overlap.argmax()
            # exact covariance of the two cells: sum over shared texels of m_a m_b / sqrt(n_a n_b), over s^2
            in_source = source_texels[cell_of_pixel == source]
            m_a = np.bincount(in_source[in_source >= 0], minlength=source_n.size)
            m_b = np.bincount(target_texels[pixels], minlength=source_n.size)
            shared = np.flatnonzero((m_a > 0) & (m_b > 0))
            exact = np.sum(m_a[shared] * m_b[shared] / np.sqrt(source_n[shared] * target_n[shared])) / STRIDE ** 2
            a = noise[:, t, :, source // 8, source % 8]
            b = noise[:, t + 1, :, cell // 8, cell % 8]
            fixed = noise[:, t, :, cell // 8, cell % 8]
            checked.append((overlap[source], overlap[cell], exact, correlation_z(a, b).mean(),
                            correlation_z(fixed, b).mean()))
    overlap, fixed_overlap, exact, z_moving, z_fixed = np.array(checked).T
    assert len(checked) >= 20 and (fixed_overlap == 0).all(), "the body must move more than a cell"
    # z's are per-channel Fisher z's averaged over the 16 independent channels: standard error 1 / 4
    assert np.abs(z_moving - np.arctanh(exact) * np.sqrt(SEEDS - 3)).max() * 4 < z_bound(len(checked))
    assert np.abs(z_fixed).max() * 4 < z_bound(len(checked))
    assert np.tanh(z_moving / np.sqrt(SEEDS - 3)).mean() > 0.5
    # Integral noise with infinitely fine texels would reach the overlap itself; texels of about a pixel keep
    # most of it (the discretisation loss is geometry, not chance).
    assert (exact / overlap).mean() > 0.8


def test_fast_path_has_the_distribution_of_the_per_pixel_definition():
    """Same canonical noise, fresh draws only: both paths must have the exact conditional mean and covariance.

    Level 0 on a coarse mesh gives texels of ~20 pixels split over up to 4+ cells, the general Householder case.
    """
    sphere = MovingSphere(SIZE, SIZE, radius_px=24, longitudes=8, bands=4, velocity_px=0, spin=0, start_x=30)
    face_id, barycentric = sphere.render([0])
    cell_of_pixel = cell_index_map(SIZE, SIZE, STRIDE)
    surface = FrameSurface.from_render(face_id[0], barycentric[0], cell_of_pixel)
    seen = np.unique(surface.faces)
    canonical = draw_canonical(seen, int(seen.max()) + 1, 0, 16, 64, generator_for(11, 0))
    surface.assign_texels(0, canonical.face_row, len(seen), 64)
    cells_per_texel = np.bincount(surface.pair_texel)
    assert cells_per_texel.max() >= 4 and (cells_per_texel >= 3).sum() >= 5

    # Analytic conditional law given Z: mean (sum m Z / sqrt(n) + sqrt(n_bg) Z_bg) / s,
    # covariance (diag(m) - m m^T / n) / s^2 summed over texels, the same for every channel.
    weights = np.zeros((64, len(seen)))
    weights[surface.pair_cell, surface.pair_texel] = surface.pair_count
    background = STRIDE ** 2 - weights.sum(axis=1)
    mean = (weights / np.sqrt(np.maximum(surface.texel_pixels, 1))) @ canonical.texels[0]
    mean = (mean + np.sqrt(background)[:, None] * canonical.background) / STRIDE
    covariance = (np.diag(weights.sum(axis=1)) - (weights / np.maximum(surface.texel_pixels, 1)) @ weights.T) / 64

    variable = np.diag(covariance) > 1e-9
    pairs = np.triu(np.outer(variable, variable))
    for name, draw in (("fast", lambda g: latent_frame_noise(surface, canonical, STRIDE, g)),
                       ("reference", lambda g: latent_frame_noise_reference(surface, canonical, cell_of_pixel,
                                                                            STRIDE, g))):
        samples = np.stack([draw(torch.Generator().manual_seed(1000 + i)) for i in range(SEEDS)]).astype(np.float64)
        deviation = samples - mean  # [SEEDS, cells, C]
        assert np.abs(deviation[:, ~variable]).max() < 1e-4, f"{name}: cells without split texels must equal Z"
        z_mean = deviation[:, variable].mean(axis=0) / np.sqrt(np.diag(covariance)[variable] / SEEDS)[:, None]
        assert np.abs(z_mean).max() < z_bound(z_mean.size), name
        flat = deviation.transpose(0, 2, 1).reshape(-1, 64)  # channels are independent draws of the same law
        empirical = flat.T @ flat / len(flat)
        standard_error = np.sqrt((np.outer(np.diag(covariance), np.diag(covariance)) + covariance ** 2) / len(flat))
        z_cov = (empirical - covariance)[pairs] / standard_error[pairs]
        assert np.abs(z_cov).max() < z_bound(z_cov.size), f"{name}: covariance z {np.abs(z_cov).max():.2f}"


def test_flow_points_at_the_true_source_and_marks_visible_cells(sphere_clip):
    sphere, face_id, barycentric = sphere_clip
    result = articulated_noise(face_id, barycentric, PRESETS["wan"], 0)
    cells = body_pixels_per_cell(face_id)
    errors = []
    for t in range(result.flow.shape[0]):
        source_xy, seen = sphere.project(sphere.surface(4 * (t + 1)), 4 * t)
        source_cells = source_xy.reshape(SIZE // STRIDE, STRIDE, SIZE // STRIDE, STRIDE, 2).mean(axis=(1, 3))
        true_flow = source_cells / STRIDE - 0.5 - np.stack(np.meshgrid(np.arange(8), np.arange(8)), -1)
        visible = result.visibility[t].astype(bool)
        assert not visible[cells[4 * (t + 1)] == 0].any(), "a background cell has no flow"
        fully_seen = (cells[4 * (t + 1)] == 64) & seen.reshape(8, 8, 8, 8).transpose(0, 2, 1, 3).all(axis=(2, 3))
        assert visible[fully_seen].all()
        errors.append(np.abs(result.flow[t].transpose(1, 2, 0) - true_flow)[fully_seen])
    # texel centroids stand for the true points: each off by under a texel (~1 px), averaged over 64 pixels
    assert np.concatenate(errors).max() < 1 / STRIDE


def test_same_seed_is_bit_identical_and_other_seeds_are_independent(sphere_clip, ensemble):
    _, face_id, barycentric = sphere_clip
    noise, _ = ensemble
    first = articulated_noise(face_id, barycentric, PRESETS["wan"], 7)
    again = articulated_noise(face_id, barycentric, PRESETS["wan"], 7)
    assert first.noise.tobytes() == again.noise.tobytes() and first.flow.tobytes() == again.flow.tobytes()
    # Seeds s and s + 1 across the ensemble: elements of one latent frame are independent, so the correlation
    # of two noises over them is ~ N(0, 1 / elements) when the seeds give independent noise.
    a, b = noise[:-1, 0].reshape(SEEDS - 1, -1), noise[1:, 0].reshape(SEEDS - 1, -1)
    r = ((a - a.mean(1, keepdims=True)) * (b - b.mean(1, keepdims=True))).mean(1) / a.std(1) / b.std(1)
    z = np.arctanh(r) * np.sqrt(a.shape[1] - 3)
    assert np.abs(z).max() < z_bound(len(z))
    assert abs(z.mean()) * np.sqrt(len(z)) < z_bound(1)


def test_background_is_fixed_for_the_clip(sphere_clip, ensemble):
    _, face_id, _ = sphere_clip
    noise, _ = ensemble
    always_background = (body_pixels_per_cell(face_id[[0, 4, 8]]) == 0).all(axis=0)
    assert always_background.sum() >= 10
    frames = noise[:, :, :, always_background]
    assert (frames == frames[:, :1]).all()


def test_frames_without_a_body_keep_the_background_field():
    face_id = np.full((5, 16, 24), -1, np.int32)
    barycentric = np.zeros((5, 16, 24, 3), np.float32)
    empty = articulated_noise(face_id, barycentric, PRESETS["svd"], 3)
    assert empty.noise.shape == (5, 4, 2, 3) and not empty.visibility.any()
    assert (empty.noise == empty.noise[:1]).all()
    face_id[3:, 0:8, 8:16] = 7  # the body fills one cell from frame 3 on
    barycentric[3:, ..., 0] = 1
    late = articulated_noise(face_id, barycentric, PRESETS["svd"], 3)
    assert (late.noise[:3] == empty.noise[:3]).all() and (late.noise[3:, :, 0, 1] != empty.noise[3:, :, 0, 1]).all()
    assert late.visibility[3, 0, 1] == 1 and late.visibility.sum() == 1
