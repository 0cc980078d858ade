"""The noise stage's Warp kernels against the numpy and torch computations they replaced (sparse products over
the (texel, cell) pairs, bincounts for the flow): equal to the bit on random surfaces, with texels split over many
cells, frames without a body, and flow between frames at different texel levels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from humanim.stages.noise import (
    FrameSurface, cell_index_map, coarsen, draw_canonical, latent_flow, latent_frame_noise, weighted_row_sums,
)

STRIDE = 8
HEIGHT, WIDTH = 40, 64
GRID = (HEIGHT // STRIDE, WIDTH // STRIDE)
CHANNELS = 4


def random_frame(rng: np.random.Generator, num_faces: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """face_id constant on block x block squares (about a tenth of the pixels off the body), random barycentrics:
    a texel's pixels scatter over many cells."""
    blocks = rng.integers(0, num_faces, (HEIGHT // block + 1, WIDTH // block + 1))
    face_id = blocks.repeat(block, 0).repeat(block, 1)[:HEIGHT, :WIDTH].astype(np.int32)
    face_id[rng.random(face_id.shape) < 0.1] = -1
    return face_id, rng.dirichlet(np.ones(3), (HEIGHT, WIDTH)).astype(np.float32)


def surface_at(face_id: np.ndarray, barycentric: np.ndarray, level: int, num_faces: int) -> FrameSurface:
    """The frame's surface with every face given a row (as if the clip saw them all)."""
    surface = FrameSurface.from_render(face_id, barycentric, cell_index_map(HEIGHT, WIDTH, STRIDE))
    surface.assign_texels(level, np.arange(num_faces, dtype=np.int32), num_faces, GRID[0] * GRID[1])
    return surface


def sparse_product_noise(surface: FrameSurface, table: np.ndarray, background: np.ndarray,
                         fresh: np.ndarray) -> np.ndarray:
    """The noise as two sparse products (torch CSR, rows summed in column order): m Z / sqrt(n) per pair, and
    sqrt(m) H[rank, column] per entry of each split texel's residual, fresh rows taken texel by texel."""
    counts = np.split(surface.pair_count, surface.texel_start[1:-1])
    pixels = np.repeat([m.sum() for m in counts], [len(m) for m in counts])
    cells, fresh_rows, weights, rows_taken = [], [], [], 0
    for first, m in zip(surface.texel_start[:-1], counts):
        u, pivot = np.sqrt(m / m.sum()), len(m) - 1
        for rank in range(len(m)):
            for column in range(pivot):
                householder = -u[column] if rank == pivot else (rank == column) - u[rank] * u[column] / (1.0 + u[pivot])
                cells.append(surface.pair_cell[first + rank])
                fresh_rows.append(rows_taken + column)
                weights.append(np.sqrt(m[rank]) * householder)
        rows_taken += pivot
    assert rows_taken == len(fresh)
    num_cells = len(background)
    sums = weighted_row_sums(surface.pair_cell, surface.pair_texel, surface.pair_count / np.sqrt(pixels), table,
                             num_cells)
    sums += weighted_row_sums(np.array(cells, np.int64), np.array(fresh_rows, np.int64), np.array(weights), fresh,
                              num_cells)
    cell_pixels = np.bincount(surface.cells, minlength=num_cells)
    sums += np.sqrt(STRIDE * STRIDE - cell_pixels).astype(np.float32)[:, None] * background
    return sums / np.float32(STRIDE)


@pytest.mark.parametrize("level, num_faces, block", [(0, 6, 16), (0, 60, 4), (1, 40, 4), (2, 200, 2)])
def test_noise_kernel_equals_the_sparse_products(level, num_faces, block):
    rng = np.random.default_rng(level + num_faces)
    surface = surface_at(*random_frame(rng, num_faces, block), level, num_faces)
    cells_per_texel = np.diff(surface.texel_start)
    assert cells_per_texel.max() >= 3, "texels split over several cells to test"
    canonical = draw_canonical(np.arange(num_faces), num_faces, level, CHANNELS, GRID[0] * GRID[1],
                               torch.Generator().manual_seed(1))
    noise = latent_frame_noise(surface, canonical, STRIDE, torch.Generator().manual_seed(2))
    fresh = torch.randn(int((cells_per_texel - 1).sum()), CHANNELS, generator=torch.Generator().manual_seed(2))
    expected = sparse_product_noise(surface, canonical.texels[level], canonical.background, fresh.numpy())
    assert noise.tobytes() == expected.tobytes()


def test_noise_kernel_of_a_frame_without_a_body_is_the_background():
    face_id, barycentric = np.full((HEIGHT, WIDTH), -1, np.int32), np.zeros((HEIGHT, WIDTH, 3), np.float32)
    surface = surface_at(face_id, barycentric, 1, 3)
    canonical = draw_canonical(np.arange(3), 3, 1, CHANNELS, GRID[0] * GRID[1], torch.Generator().manual_seed(0))
    noise = latent_frame_noise(surface, canonical, STRIDE, torch.Generator().manual_seed(0))
    assert noise.tobytes() == canonical.background.tobytes()


def bincount_flow(source: FrameSurface, target: FrameSurface, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """latent_flow with numpy: the source's texel centroids by bincount, each target cell's mean by bincount over
    its pairs (in pair order, as the kernel adds them)."""
    level = min(source.level, target.level)
    num_texels, num_cells = num_rows * 4 ** level, GRID[0] * GRID[1]
    source_texels = coarsen(source.texels, source.level, level)
    y, x = np.divmod(source.pixels, WIDTH)
    texel = coarsen(target.pair_texel, target.level, level)
    seen = np.bincount(source_texels, minlength=num_texels)[texel]
    sum_x = np.bincount(source_texels, weights=x, minlength=num_texels)[texel]
    sum_y = np.bincount(source_texels, weights=y, minlength=num_texels)[texel]
    matched = np.where(seen > 0, target.pair_count, 0)
    share = matched / np.maximum(seen, 1)
    matched_pixels = np.bincount(target.pair_cell, weights=matched, minlength=num_cells)
    per_cell = np.maximum(matched_pixels, 1)
    mean_x = np.bincount(target.pair_cell, weights=share * sum_x, minlength=num_cells) / per_cell + 0.5
    mean_y = np.bincount(target.pair_cell, weights=share * sum_y, minlength=num_cells) / per_cell + 0.5
    cell_y, cell_x = np.divmod(np.arange(num_cells), GRID[1])
    flow = np.stack([mean_x / STRIDE - (cell_x + 0.5), mean_y / STRIDE - (cell_y + 0.5)], axis=1)
    flow[matched_pixels == 0] = 0.0
    body_pixels = np.bincount(target.cells, minlength=num_cells)
    valid = (body_pixels >= 0.5 * STRIDE * STRIDE) & (matched_pixels >= 0.5 * body_pixels)
    return flow.astype(np.float32), valid


@pytest.mark.parametrize("source_level, target_level", [(2, 2), (1, 2), (2, 0)])
def test_flow_kernel_equals_the_bincounts(source_level, target_level):
    rng = np.random.default_rng(10 + source_level + target_level)
    face_id, barycentric = random_frame(rng, 30, 4)
    source = surface_at(face_id, barycentric, source_level, 40)
    # the target: the same surface moved by a few pixels, its top rows off the body and its left columns on faces
    # the source does not see
    face_id, barycentric = np.roll(face_id, (3, 5), axis=(0, 1)), np.roll(barycentric, (3, 5), axis=(0, 1))
    face_id[:12] = -1
    face_id[:, :20] = np.where(face_id[:, :20] >= 0, face_id[:, :20] % 10 + 30, -1)
    target = surface_at(face_id, barycentric, target_level, 40)
    flow, valid = latent_flow(source, target, 40, WIDTH, GRID, STRIDE)
    expected_flow, expected_valid = bincount_flow(source, target, 40)
    assert valid.any() and not valid.all() and np.abs(flow).max() > 0
    assert flow.tobytes() == expected_flow.tobytes() and np.array_equal(valid, expected_valid)


def test_pairs_are_runs_of_texels_with_their_cells_in_order():
    rng = np.random.default_rng(3)
    surface = surface_at(*random_frame(rng, 40, 4), 1, 40)
    texel, cell, count, start = surface.pair_texel, surface.pair_cell, surface.pair_count, surface.texel_start
    assert np.array_equal(np.flatnonzero(np.diff(texel)) + 1, start[1:-1]) and start[-1] == len(texel)
    assert (np.diff(texel) >= 0).all() and ((np.diff(cell) > 0) | (np.diff(texel) > 0)).all()
    pixels_per_pair = np.zeros((surface.num_texels, GRID[0] * GRID[1]), np.int64)
    np.add.at(pixels_per_pair, (surface.texels, surface.cells), 1)
    assert np.array_equal(pixels_per_pair[texel, cell], count) and count.sum() == len(surface.pixels)
    assert np.array_equal(surface.texel_pixels, pixels_per_pair.sum(axis=1))
