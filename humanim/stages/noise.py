"""Articulated noise (HumANDiff): Gaussian noise that lives on the body surface and moves with it.

Every surface texel (a cell of a regular barycentric sub-grid of a mesh face) holds one canonical value
Z ~ N(0, I_C) per clip. In each latent frame a texel hit by n pixels gives each of them
Z / sqrt(n) + (e_j - mean e): the pixels are i.i.d. N(0, 1), and the texel's sum sqrt(n) Z is what ties
frames together. A latent value is the integral of that pixel noise over its s x s block, divided by s
(integral noise, Chang et al. 2024). The fast path never draws per-pixel noise: it samples the block sums of
each texel exactly, with one normal per (texel, latent cell) pair beyond the first (docs/NOISE.md).

The background is one texel per latent cell, fixed to the screen for the whole clip: right for a static
camera; with a moving camera the background noise does not follow the scene.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import warp as wp

from humanim.schemas.keys import derive_seed
from humanim.stages.base import Annotations, Clip, ClipRejected, Resources, Stage


@dataclass(frozen=True)
class LatentLayout:
    """The latent grid of a target VAE: spatial stride s, temporal stride k, channels C."""

    spatial_stride: int
    temporal_stride: int
    channels: int

    def latent_frame_indices(self, num_frames: int) -> np.ndarray:
        """Video frames that carry a latent frame: 0, k, 2k, ... so T' = (T - 1) // k + 1."""
        return np.arange(0, num_frames, self.temporal_stride)


PRESETS: dict[str, LatentLayout] = {
    "wan": LatentLayout(spatial_stride=8, temporal_stride=4, channels=16),
    "svd": LatentLayout(spatial_stride=8, temporal_stride=1, channels=4),
    "sd": LatentLayout(spatial_stride=8, temporal_stride=1, channels=4),
}

# Median pixels per texel in (0.5, 2]: coarser texels straddle cell borders and blur the transport, finer ones
# are missed between frames. On the test sphere, latent correlation at true correspondences reached 0.86-0.91
# of the pixel-overlap bound at 0.7-0.8 pixels per texel, 0.79-0.83 at 3, 0.54 at 0.2 (docs/NOISE.md).
MAX_PIXELS_PER_TEXEL = 2
# The canonical table holds (faces seen) x 4^level texels x C floats; this bounds it to 64 MiB at C = 16.
MAX_TEXELS = 1 << 20
# A flow cell is trusted when it is mostly body and most of its body pixels are seen in the source frame.
MIN_BODY_SHARE = 0.5
MIN_MATCHED_SHARE = 0.5

# torch says once per process that sparse CSR is beta; the one product used here (CSR @ dense) is stable.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

# The passes over (texel, cell) pairs that numpy cannot vectorise run as Warp kernels on the CPU. One CPU launch
# is one serial loop on one core, so each kernel is a single launch (dim=1) that loops itself; the kernels are
# written for the CPU (on CUDA such a launch would run on one thread).
# - Loops are `while` loops: Warp's `for i in range(n)` steps an iterator that allows any step sign, 5x slower per
#   iteration than a while loop, which compiles to a plain loop.
# - Float operations are not fused (a fused multiply-add rounds once where numpy and torch round twice), and each
#   sum adds its terms in the order of the numpy and torch passes these kernels replaced: the output is
#   bit-identical to theirs (docs/NOISE.md).
# - Per-pixel arithmetic stays in numpy: vectorised, it beats a serial loop (texel ids, keys: 0.6 ms per frame).
KERNEL_OPTIONS = {"fuse_fp": False, "enable_backward": False}
wp.set_module_options(KERNEL_OPTIONS)


# ---------------------------------------------------------------- texels: the surface partition
def texel_local_index(b1: np.ndarray, b2: np.ndarray, level: int) -> np.ndarray:
    """Texel of each barycentric point within its face at subdivision level `level` (n = 2^level, n^2 texels).

    The face is cut by the lines b1 = i/n, b2 = j/n and b1 + b2 = 1 - m/n. Grid square (i, j) holds an upward
    triangle and, off the hypotenuse, a downward one; row i starts at i (2n - i) and interleaves the two, so
    the index is i (2n - i) + 2j + down, with down = floor(n b1 + n b2) - i - j.
    """
    n = 1 << level
    if n == 1:
        return np.zeros(np.shape(b1), np.int32)
    u = np.asarray(b1, np.float32) * np.float32(n)
    v = np.asarray(b2, np.float32) * np.float32(n)
    # truncation sends the renderer's tiny negative weights to 0; the minimums catch sums a rounding above 1
    i = u.astype(np.int32)
    np.minimum(i, n - 1, out=i)
    j = v.astype(np.int32)
    np.add(u, v, out=u)
    k = u.astype(np.int32)
    np.minimum(k, n - 1, out=k)
    index = np.subtract(n - 1, i, dtype=np.int32)  # n - 1 - i, then 2n - 1 - i: in place, fewer temporaries
    np.minimum(j, index, out=j)
    index += n
    index *= i
    index += j
    index += k
    return index


@lru_cache(maxsize=None)
def texel_centroids(level: int) -> tuple[np.ndarray, np.ndarray]:
    """(b1, b2) of every texel's centroid, in local index order."""
    n = 1 << level
    b1 = np.empty(n * n)
    b2 = np.empty(n * n)
    for i in range(n):
        start = i * (2 * n - i)
        j_up = np.arange(n - i)
        b1[start + 2 * j_up], b2[start + 2 * j_up] = (i + 1 / 3) / n, (j_up + 1 / 3) / n
        j_down = np.arange(n - 1 - i)
        b1[start + 2 * j_down + 1], b2[start + 2 * j_down + 1] = (i + 2 / 3) / n, (j_down + 2 / 3) / n
    return b1, b2


@lru_cache(maxsize=None)
def ancestor_table(level: int, coarser_level: int) -> np.ndarray:
    """Local index at `coarser_level` of the texel holding each texel of `level`: a texel lies inside exactly
    one coarser texel, so the texel of its centroid is its ancestor."""
    b1, b2 = texel_centroids(level)
    return texel_local_index(b1, b2, coarser_level)


@lru_cache(maxsize=None)
def children_table(level: int) -> np.ndarray:
    """[4^level, 4]: the four texels of level + 1 that tile each texel of `level`."""
    return np.argsort(ancestor_table(level + 1, level), kind="stable").reshape(-1, 4)


def coarsen(texels: np.ndarray, level: int, coarser_level: int) -> np.ndarray:
    """Texel ids (row * 4^level + local) mapped to their ancestors at `coarser_level`."""
    if coarser_level == level:
        return texels
    rows, local = np.divmod(texels, 4 ** level)
    return rows * 4 ** coarser_level + ancestor_table(level, coarser_level)[local]


def auto_level(pixels_per_face: float) -> int:
    """Coarsest level whose texels hold at most MAX_PIXELS_PER_TEXEL pixels (each level divides by 4)."""
    level = 0
    while pixels_per_face / 4 ** level > MAX_PIXELS_PER_TEXEL:
        level += 1
    return level


# ---------------------------------------------------------------- canonical noise: drawn once per clip
@dataclass
class CanonicalNoise:
    """The clip's fixed noise: per texel at every level up to the finest used, and per background cell."""

    face_row: np.ndarray  # [num_faces] int32 row of each face in the texel tables; -1 for faces never seen
    texels: list[np.ndarray]  # texels[level]: [rows * 4^level, C] float32, indexed by row * 4^level + local
    background: np.ndarray  # [h * w, C] float32


def draw_canonical(seen_faces: np.ndarray, num_faces: int, finest_level: int, channels: int, num_cells: int,
                   generator: torch.Generator) -> CanonicalNoise:
    """Draw the finest level and build each coarser one as sum(children) / 2: every level is N(0, I) and a
    coarse texel is exactly the aggregate of its children, so a frame may change level and keep its noise."""
    background = torch.randn(num_cells, channels, generator=generator).numpy()
    finest = torch.randn(len(seen_faces), 4 ** finest_level, channels, generator=generator).numpy()
    levels = [finest]
    for level in range(finest_level - 1, -1, -1):
        levels.append(levels[-1][:, children_table(level)].sum(axis=2) * np.float32(0.5))
    face_row = np.full(num_faces, -1, np.int32)
    face_row[seen_faces] = np.arange(len(seen_faces))
    return CanonicalNoise(face_row, [z.reshape(-1, channels) for z in reversed(levels)], background)


# ---------------------------------------------------------------- one latent frame
def cell_index_map(height: int, width: int, stride: int) -> np.ndarray:
    """[H * W] latent cell of every pixel."""
    rows = np.arange(height, dtype=np.int32) // stride
    cols = np.arange(width, dtype=np.int32) // stride
    return (rows[:, None] * (width // stride) + cols[None, :]).reshape(-1)


@dataclass
class FrameSurface:
    """One latent frame's body pixels, their texels, and how each texel's pixels split over latent cells."""

    pixels: np.ndarray  # [P] flat pixel index y * W + x
    cells: np.ndarray  # [P] flat latent cell index
    faces: np.ndarray  # [P] face id
    b1: np.ndarray  # [P] barycentric weights of the face's vertices 1 and 2
    b2: np.ndarray
    # set by assign_texels, once the clip's texel rows are known:
    level: int = 0
    texels: np.ndarray | None = None  # [P] texel id at `level`
    num_texels: int = 0  # rows * 4^level
    # The (texel, cell) pairs, sorted by texel then cell. Texel-major, so that a texel's pairs, all of which its
    # residual needs, are one run (pairs texel_start[g] to texel_start[g + 1] for the g-th texel seen) and the
    # canonical table is read in order; each cell still receives its terms in increasing texel order.
    pair_texel: np.ndarray | None = None  # [R] int32
    pair_cell: np.ndarray | None = None  # [R] int32
    pair_count: np.ndarray | None = None  # [R] int32 m: pixels of the pair's texel in the pair's cell
    texel_start: np.ndarray | None = None  # [texels seen + 1] int32

    @property
    def texel_pixels(self) -> np.ndarray:
        """[rows * 4^level] pixels per texel, for readers: the kernels count them from the pairs."""
        return np.bincount(self.texels, minlength=self.num_texels)

    @classmethod
    def from_render(cls, face_id: np.ndarray, barycentric: np.ndarray, cell_of_pixel: np.ndarray) -> FrameSurface:
        flat_face = face_id.reshape(-1)
        pixels = np.flatnonzero(flat_face >= 0)
        weights = barycentric.reshape(-1, 3)  # two column gathers: contiguous b1, b2, faster than whole rows
        return cls(pixels, cell_of_pixel[pixels], flat_face[pixels], weights[:, 1][pixels], weights[:, 2][pixels])

    def assign_texels(self, level: int, face_row: np.ndarray, num_rows: int, num_cells: int) -> None:
        """Texels at `level` of the pixels, and the pairs; face_row holds the row of every face of the frame."""
        num_texels = num_rows * 4 ** level
        self.level = level
        texels = texel_local_index(self.b1, self.b2, level)
        texels += (face_row * np.int32(4 ** level))[self.faces]  # scale the small table, not every pixel
        self.texels = texels
        self.num_texels = num_texels
        # key = texel << bits | cell sorts by texel, then cell, and splits back with a shift and a mask; 32-bit keys
        # sort 5x faster than 64-bit ones (numpy's vectorised sort)
        bits = max(num_cells - 1, 0).bit_length()
        key_type = np.int32 if num_texels << bits <= 2 ** 31 else np.int64
        keys = texels.astype(key_type)
        keys <<= bits
        keys |= self.cells
        keys.sort()
        run_start = run_starts(keys)  # a run of equal keys is one pair
        self.pair_count = np.diff(run_start, append=keys.size).astype(np.int32)
        pair_keys = keys[run_start]
        self.pair_cell = (pair_keys & ((1 << bits) - 1)).astype(np.int32, copy=False)
        pair_keys >>= bits
        self.pair_texel = pair_keys.astype(np.int32, copy=False)
        self.texel_start = np.append(run_starts(self.pair_texel), len(self.pair_texel)).astype(np.int32)


def run_starts(sorted_values: np.ndarray) -> np.ndarray:
    """Where each run of equal values starts."""
    new_run = np.empty(sorted_values.size, bool)
    new_run[:1] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=new_run[1:])
    return np.flatnonzero(new_run)


def weighted_row_sums(targets: np.ndarray, columns: np.ndarray, weights: np.ndarray, rows: np.ndarray,
                      num_targets: int) -> np.ndarray:
    """out[targets[i]] += weights[i] * rows[columns[i]], as one sparse product: the tests build with it noise that
    the stage does not."""
    order = np.argsort(targets, kind="stable")  # CSR: the entries row by row
    targets, columns, weights = targets[order], columns[order], weights[order]
    row_start = np.searchsorted(targets, np.arange(num_targets + 1))
    columns = torch.from_numpy(columns.astype(np.int64, copy=False))
    matrix = torch.sparse_csr_tensor(torch.from_numpy(row_start), columns,
                                     torch.from_numpy(weights.astype(np.float32)), size=(num_targets, len(rows)),
                                     check_invariants=False)
    return (matrix @ torch.from_numpy(rows)).numpy()


@wp.func
def _add_canonical_terms(first: wp.int32, end: wp.int32, pair_texel: wp.array(dtype=wp.int32),
                         pair_cell: wp.array(dtype=wp.int32), pair_count: wp.array(dtype=wp.int32),
                         canonical: wp.array(dtype=Any), canonical_sum: wp.array(dtype=Any),
                         cell_pixels: wp.array(dtype=wp.int32)) -> wp.float64:
    """The pairs first to end of one texel: m Z / sqrt(n) into each pair's cell's sum, m into its body pixels;
    returns n, the texel's pixels."""
    pixels = wp.int32(0)
    pair = first
    while pair < end:
        pixels += pair_count[pair]
        pair += 1
    n = wp.float64(pixels)
    root_n = wp.sqrt(n)
    z = canonical[pair_texel[first]]
    pair = first
    while pair < end:
        cell = pair_cell[pair]
        canonical_sum[cell] = canonical_sum[cell] + wp.float32(wp.float64(pair_count[pair]) / root_n) * z
        cell_pixels[cell] += pair_count[pair]
        pair += 1
    return n


@wp.func
def _add_residual_terms(first: wp.int32, end: wp.int32, n: wp.float64, fresh_row: wp.int32,
                        pair_cell: wp.array(dtype=wp.int32), pair_count: wp.array(dtype=wp.int32),
                        fresh: wp.array(dtype=Any), residual_sum: wp.array(dtype=Any),
                        pair_u: wp.array(dtype=wp.float64)):
    """One texel split over K = end - first > 1 cells, with normals h from fresh[fresh_row:][:K - 1]: sqrt(m)
    H[rank, column] h_column into each pair's cell, H[rank, column] = delta - u_rank u_column / (1 + u_pivot) and
    -u_column on the pivot's row (the last cell), u = sqrt(m / n). pair_u holds the texel's u meanwhile."""
    pair = first
    while pair < end:
        pair_u[pair] = wp.sqrt(wp.float64(pair_count[pair]) / n)
        pair += 1
    pivot = end - 1 - first
    scale = wp.float64(1.0) + pair_u[end - 1]
    pair = first
    while pair < end:
        cell = pair_cell[pair]
        root_m = wp.sqrt(wp.float64(pair_count[pair]))
        rank = pair - first
        column = wp.int32(0)
        while column < pivot:
            delta = wp.float64(0.0)
            if rank == column:
                delta = wp.float64(1.0)
            householder = delta - pair_u[pair] * pair_u[first + column] / scale
            if rank == pivot:
                householder = -pair_u[first + column]
            residual_sum[cell] = residual_sum[cell] + wp.float32(root_m * householder) * fresh[fresh_row + column]
            column += 1
        pair += 1


@lru_cache(maxsize=None)
def texel_noise_kernel(channels: int) -> wp.Kernel:
    """The noise kernel for C channels, compiled once per C: a C-vector keeps a row in registers, 6x faster than a
    loop over the channels through memory."""
    row = wp.types.vector(length=channels, dtype=wp.float32)

    @wp.kernel(module="unique", module_options=KERNEL_OPTIONS)
    def texel_noise(texel_start: wp.array(dtype=wp.int32), pair_texel: wp.array(dtype=wp.int32),
                    pair_cell: wp.array(dtype=wp.int32), pair_count: wp.array(dtype=wp.int32),
                    canonical: wp.array(dtype=row), fresh: wp.array(dtype=row), background: wp.array(dtype=row),
                    stride: wp.int32, canonical_sum: wp.array(dtype=row), residual_sum: wp.array(dtype=row),
                    cell_pixels: wp.array(dtype=wp.int32), pair_u: wp.array(dtype=wp.float64),
                    noise: wp.array(dtype=row)):
        # Texel by texel, its canonical terms and, if it is split, its residual terms go to their cells' sums
        # (scratch, like cell_pixels and pair_u). Each cell receives its terms in increasing texel order, the order
        # of the two sparse products this replaced (rows sorted by texel), so the sums are theirs to the bit.
        cell = wp.int32(0)
        while cell < noise.shape[0]:
            canonical_sum[cell] = row()
            residual_sum[cell] = row()
            cell_pixels[cell] = 0
            cell += 1
        fresh_row = wp.int32(0)
        texel = wp.int32(0)
        while texel < texel_start.shape[0] - 1:
            first = texel_start[texel]
            end = texel_start[texel + 1]
            n = _add_canonical_terms(first, end, pair_texel, pair_cell, pair_count, canonical, canonical_sum,
                                     cell_pixels)
            if end - first > 1:
                _add_residual_terms(first, end, n, fresh_row, pair_cell, pair_count, fresh, residual_sum, pair_u)
                fresh_row += end - first - 1
            texel += 1
        cell = wp.int32(0)
        while cell < noise.shape[0]:
            background_weight = wp.float32(wp.sqrt(wp.float64(stride * stride - cell_pixels[cell])))
            noise[cell] = (canonical_sum[cell] + residual_sum[cell] + background_weight * background[cell]) / (
                wp.float32(stride))
            cell += 1

    return texel_noise


def latent_frame_noise(surface: FrameSurface, canonical: CanonicalNoise, stride: int,
                       generator: torch.Generator) -> np.ndarray:
    """[h * w, C] latent noise of one frame, drawn exactly without per-pixel noise.

    A texel of n pixels with m_i of them in cell i adds m_i Z / sqrt(n) + W_i to cell i, W_i being the fresh
    pixel noise minus its texel mean, summed over those pixels: zero for a texel inside one cell, K - 1
    normals for a texel split over K cells. W = D^1/2 H[:, :K-1] h with D = diag(m), h ~ N(0, I_{K-1}) and
    the Householder reflection H = I - v v^T / (1 + u_K), v = u + e_K, u = sqrt(m / n): its first K - 1
    columns are an orthonormal basis of u's complement, the space of W's covariance (docs/NOISE.md).
    """
    num_cells, channels = canonical.background.shape
    texels_seen = len(surface.texel_start) - 1
    # K - 1 rows of normals for each texel over K cells, texel by texel
    fresh = torch.randn(len(surface.pair_texel) - texels_seen, channels, generator=generator).numpy()
    noise = np.empty((num_cells, channels), np.float32)
    wp.launch(texel_noise_kernel(channels), dim=1, device="cpu", inputs=[
        surface.texel_start, surface.pair_texel, surface.pair_cell, surface.pair_count,
        canonical.texels[surface.level], fresh, canonical.background, stride, np.empty_like(noise),
        np.empty_like(noise), np.empty(num_cells, np.int32), np.empty(len(surface.pair_count)), noise])
    return noise


def latent_frame_noise_reference(surface: FrameSurface, canonical: CanonicalNoise, cell_of_pixel: np.ndarray,
                                 stride: int, generator: torch.Generator) -> np.ndarray:
    """The per-pixel definition, kept for tests: each pixel gets Z / sqrt(n) + e_j - mean(e) over its texel,
    background pixels over their cell's screen-fixed texel; then each cell sums its pixels, divided by s."""
    num_cells, channels = canonical.background.shape
    body_texels = canonical.texels[surface.level]
    texel = len(body_texels) + cell_of_pixel.astype(np.int64)  # the background texel of every pixel ...
    texel[surface.pixels] = surface.texels  # ... unless the body covers it
    z = torch.from_numpy(np.concatenate([body_texels, canonical.background]))
    n = torch.from_numpy(np.bincount(texel, minlength=len(z)))
    index = torch.from_numpy(texel)
    e = torch.randn(texel.size, channels, generator=generator)
    e_mean = torch.zeros(len(z), channels).index_add_(0, index, e) / n.clamp(min=1)[:, None]
    pixel_noise = z[index] / n[index].sqrt()[:, None] + e - e_mean[index]
    sums = torch.zeros(num_cells, channels).index_add_(0, torch.from_numpy(cell_of_pixel.astype(np.int64)),
                                                       pixel_noise)
    return (sums / stride).numpy()


# ---------------------------------------------------------------- correspondences for the training losses
@wp.func
def _source_positions(pixels: wp.array(dtype=wp.int64), texels: wp.array(dtype=wp.int32), width: wp.float64,
                      positions: wp.array(dtype=wp.vec3d)):
    """positions[texel] += (1, x, y) over the source frame's pixels: one row per texel, one cache line per pixel.
    The sums are exact integers in float64. floor(pixel / width) in float64 is the row: the quotient stays at least
    1 / width below the next integer, far more than its rounding error, and a float division is cheaper than an
    integer one."""
    p = wp.int32(0)
    while p < texels.shape[0]:
        pixel = wp.float64(pixels[p])
        y = wp.floor(pixel / width)
        texel = texels[p]
        positions[texel] = positions[texel] + wp.vec3d(wp.float64(1.0), pixel - y * width, y)
        p += 1


@wp.func
def _match_target_pairs(pair_texel: wp.array(dtype=wp.int32), pair_cell: wp.array(dtype=wp.int32),
                        pair_count: wp.array(dtype=wp.int32), positions: wp.array(dtype=wp.vec3d),
                        cell_sums: wp.array2d(dtype=wp.float64)):
    """cell_sums[cell] += (body pixels, matched pixels, x and y sums of their source positions): each pixel of a
    target pair whose texel the source frame sees takes the texel's mean source position. The pairs come texel by
    texel, so each cell adds its terms in increasing texel order, as the bincounts this replaced did."""
    pair = wp.int32(0)
    while pair < pair_texel.shape[0]:
        source = positions[pair_texel[pair]]
        cell = pair_cell[pair]
        count = wp.float64(pair_count[pair])
        cell_sums[cell, 0] = cell_sums[cell, 0] + count
        if source[0] > wp.float64(0.0):
            share = count / source[0]
            cell_sums[cell, 1] = cell_sums[cell, 1] + count
            cell_sums[cell, 2] = cell_sums[cell, 2] + share * source[1]
            cell_sums[cell, 3] = cell_sums[cell, 3] + share * source[2]
        pair += 1


@wp.kernel
def _latent_flow(source_pixels: wp.array(dtype=wp.int64), source_texels: wp.array(dtype=wp.int32),
                 width: wp.float64, pair_texel: wp.array(dtype=wp.int32), pair_cell: wp.array(dtype=wp.int32),
                 pair_count: wp.array(dtype=wp.int32), grid_width: wp.int32, stride: wp.int32,
                 min_body_pixels: wp.float64, min_matched_share: wp.float64, positions: wp.array(dtype=wp.vec3d),
                 cell_sums: wp.array2d(dtype=wp.float64), flow: wp.array2d(dtype=wp.float32),
                 valid: wp.array(dtype=wp.uint8)):
    # positions and cell_sums (scratch), flow and valid come zeroed: a cell without matched pixels keeps (0, 0)
    _source_positions(source_pixels, source_texels, width, positions)
    _match_target_pairs(pair_texel, pair_cell, pair_count, positions, cell_sums)
    cell = wp.int32(0)
    while cell < flow.shape[0]:
        body = cell_sums[cell, 0]
        matched = cell_sums[cell, 1]
        if matched > wp.float64(0.0):
            # + 0.5: pixel centres; / stride and - (cell + 0.5): pixels to latent cells with centres on integers
            mean_x = cell_sums[cell, 2] / matched + wp.float64(0.5)
            mean_y = cell_sums[cell, 3] / matched + wp.float64(0.5)
            flow[cell, 0] = wp.float32(mean_x / wp.float64(stride) - (wp.float64(cell % grid_width) + wp.float64(0.5)))
            flow[cell, 1] = wp.float32(mean_y / wp.float64(stride) - (wp.float64(cell // grid_width) + wp.float64(0.5)))
        if body >= min_body_pixels and matched >= min_matched_share * body:
            valid[cell] = wp.uint8(1)
        cell += 1


def latent_flow(source: FrameSurface, target: FrameSurface, num_rows: int, width: int, grid: tuple[int, int],
                stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Backward flow from latent frame t+1 (target) to t (source), in latent cells: [h * w, 2] (dx, dy), and
    whether each cell's flow is trusted [h * w].

    A target pixel's source position is the centroid, in the source frame, of its texel's pixels (texels
    matched at the coarser of the two frames' levels); a cell's flow is the mean over its matched pixels.
    """
    num_cells = grid[0] * grid[1]
    level = min(source.level, target.level)
    flow, valid = np.zeros((num_cells, 2), np.float32), np.zeros(num_cells, np.uint8)
    wp.launch(_latent_flow, dim=1, device="cpu", inputs=[
        source.pixels, coarsen(source.texels, source.level, level).astype(np.int32, copy=False), float(width),
        coarsen(target.pair_texel, target.level, level).astype(np.int32, copy=False), target.pair_cell,
        target.pair_count, grid[1], stride, MIN_BODY_SHARE * stride * stride, MIN_MATCHED_SHARE,
        np.zeros((num_rows * 4 ** level, 3)), np.zeros((num_cells, 4)), flow, valid])
    return flow, valid.view(bool)


# ---------------------------------------------------------------- one clip
def generator_for(seed: int, stream: int) -> torch.Generator:
    """An independent generator per stream (0: the clip's canonical noise, t + 1: latent frame t), so a frame's
    noise never depends on how many frames came before it or in which order they were drawn."""
    state = np.random.SeedSequence(seed, spawn_key=(stream,)).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@dataclass
class ArticulatedNoiseResult:
    noise: np.ndarray  # [T', C, h, w] float16
    flow: np.ndarray  # [T' - 1, 2, h, w] float32: latent frame t+1 -> t, in latent cells (dx, dy)
    visibility: np.ndarray  # [T' - 1, h, w] uint8: 1 where the flow is trusted
    levels: list[int]  # texel level of each latent frame
    pixels_per_face: list[float]  # median over the faces seen in each latent frame: what picks the level


def articulated_noise(face_id: np.ndarray, barycentric: np.ndarray, layout: LatentLayout, seed: int,
                      texel_level: int | str = "auto") -> ArticulatedNoiseResult:
    """Noise and correspondences of one clip from its rendered surface ids: face_id [T, H, W] int (-1 off the
    body) and barycentric [T, H, W, 3] (weights of the face's three vertices)."""
    num_frames, height, width = face_id.shape
    stride = layout.spatial_stride
    if height % stride or width % stride:
        raise ClipRejected(f"frame size {width}x{height} is not a multiple of the latent stride {stride}")
    grid = (height // stride, width // stride)
    num_cells = grid[0] * grid[1]
    cell_of_pixel = cell_index_map(height, width, stride)
    surfaces = [FrameSurface.from_render(face_id[t], barycentric[t], cell_of_pixel)
                for t in layout.latent_frame_indices(num_frames)]

    num_faces = int(max((s.faces.max() + 1 for s in surfaces if s.faces.size), default=0))
    face_pixels = [np.bincount(s.faces, minlength=num_faces) for s in surfaces]
    seen_faces = np.flatnonzero(np.sum(face_pixels, axis=0)) if num_faces else np.zeros(0, np.int64)
    pixels_per_face = [float(np.median(c[c > 0])) if c.any() else 0.0 for c in face_pixels]
    finest_allowed = 0
    while max(len(seen_faces), 1) * 4 ** (finest_allowed + 1) <= MAX_TEXELS:
        finest_allowed += 1
    if texel_level == "auto":
        levels = [min(auto_level(p), finest_allowed) for p in pixels_per_face]
    elif int(texel_level) > finest_allowed:
        raise ValueError(f"texel_level {texel_level} needs {len(seen_faces) * 4 ** int(texel_level)} texels here; "
                         f"at most {MAX_TEXELS} are allowed (level {finest_allowed})")
    else:
        levels = [int(texel_level)] * len(surfaces)

    canonical = draw_canonical(seen_faces, num_faces, max(levels), layout.channels, num_cells,
                               generator_for(seed, 0))
    noise = np.empty((len(surfaces), layout.channels, *grid), np.float16)
    flow = np.zeros((max(len(surfaces) - 1, 0), 2, *grid), np.float32)
    visibility = np.zeros((max(len(surfaces) - 1, 0), *grid), np.uint8)
    for t, (surface, level) in enumerate(zip(surfaces, levels)):
        surface.assign_texels(level, canonical.face_row, len(seen_faces), num_cells)
        frame_noise = latent_frame_noise(surface, canonical, stride, generator_for(seed, t + 1))
        # [h * w, C] float32 -> [C, h, w] float16: torch's transposing cast is 3x numpy's, with the same rounding
        torch.from_numpy(noise[t]).copy_(torch.from_numpy(frame_noise).t().reshape(layout.channels, *grid))
        if t:  # while the previous frame is still in cache
            cell_flow, valid = latent_flow(surfaces[t - 1], surface, len(seen_faces), width, grid, stride)
            flow[t - 1], visibility[t - 1] = cell_flow.T.reshape(2, *grid), valid.reshape(grid)
    return ArticulatedNoiseResult(noise, flow, visibility, levels, pixels_per_face)


class ArticulatedNoise(Stage):
    """HumANDiff's articulated noise at the latent grid of the target VAE, from the clip's body fit.

    It renders the surface ids and barycentrics of the latent frames itself (stages/render.py's FitRenderer):
    those float maps are needed only here, and storing them would cost more than rendering a quarter of the
    frames again. Config keys: preset ("wan", "svd" or "sd"), texel_level ("auto" or a subdivision level:
    4^level texels per face), model_path and device (as the render stage's). The seed is derived from
    (build seed, clip key, "noise").
    """

    name = "noise"
    version = "2"
    resources = Resources(cpus=1, stateful=True)  # keeps the body model loaded

    def __init__(self, config: dict[str, Any], build_seed: int = 0):
        super().__init__(config, build_seed)
        preset = config.get("preset", "wan")
        if preset not in PRESETS:
            raise ValueError(f"noise.preset must be one of {sorted(PRESETS)}, got {preset!r}")
        self.preset, self.layout = preset, PRESETS[preset]
        self.texel_level = config.get("texel_level", "auto")
        if self.texel_level != "auto" and not (isinstance(self.texel_level, int) and self.texel_level >= 0):
            raise ValueError(f"noise.texel_level must be 'auto' or an int >= 0, got {self.texel_level!r}")
        from humanim.stages.render import FitRenderer

        self._renderer = FitRenderer(config.get("model_path"), str(config.get("device", "cpu")))

    def __call__(self, clip: Clip) -> Annotations:
        if "body" not in clip.fields:
            raise ValueError("the noise stage lives on the body fit: put 'body' before 'noise' in `stages`")
        from humanim.stages.fit import BodyFit

        fit = BodyFit.from_npz_bytes(clip.fields["body"])
        height, width = clip.frames.shape[1:3]
        latent_frames = self.layout.latent_frame_indices(len(clip.frames))
        maps = self._renderer.render(fit, height, width, frames=latent_frames)
        seed = derive_seed(self.build_seed, clip.key, self.name)
        # The maps hold the latent frames only, so they are taken one by one (temporal stride 1).
        per_frame = LatentLayout(self.layout.spatial_stride, 1, self.layout.channels)
        result = articulated_noise(maps["face_id"], maps["barycentric"], per_frame, seed, self.texel_level)
        return Annotations(
            fields={"noise": result.noise, "noise_flow": result.flow, "noise_visible": result.visibility},
            meta={"seed": seed, "preset": self.preset, "spatial_stride": self.layout.spatial_stride,
                  "temporal_stride": self.layout.temporal_stride, "channels": self.layout.channels,
                  "latent_frames": len(latent_frames), "texel_level": self.texel_level, "levels": result.levels,
                  "pixels_per_face": [round(p, 2) for p in result.pixels_per_face]},
            qa={"noise_visible_share": float(result.visibility.mean()) if result.visibility.size else 0.0},
        )
