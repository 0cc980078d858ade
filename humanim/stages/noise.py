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
    texel_pixels: np.ndarray | None = None  # [rows * 4^level] pixels per texel in this frame
    pair_cell: np.ndarray | None = None  # [R] the texel/cell pairs of this frame, sorted by cell then texel
    pair_texel: np.ndarray | None = None
    pair_count: np.ndarray | None = None  # [R] pixels of the pair's texel in the pair's cell
    cell_pixels: np.ndarray | None = None  # [h * w] body pixels per latent cell

    @classmethod
    def from_render(cls, face_id: np.ndarray, barycentric: np.ndarray, cell_of_pixel: np.ndarray) -> FrameSurface:
        flat_face = face_id.reshape(-1)
        pixels = np.flatnonzero(flat_face >= 0)
        weights = barycentric.reshape(-1, 3)  # two column gathers: contiguous b1, b2, faster than whole rows
        return cls(pixels, cell_of_pixel[pixels], flat_face[pixels], weights[:, 1][pixels], weights[:, 2][pixels])

    def assign_texels(self, level: int, face_row: np.ndarray, num_rows: int, num_cells: int) -> None:
        num_texels = num_rows * 4 ** level
        self.level = level
        texels = texel_local_index(self.b1, self.b2, level)
        texels += (face_row * np.int32(4 ** level))[self.faces]  # scale the small table, not every pixel
        self.texels = texels
        self.texel_pixels = np.bincount(texels, minlength=num_texels)
        # key = cell << bits | texel: sorts as cell * texels + texel, and splits back with a shift and a mask
        # instead of a division; 32-bit keys sort twice as fast
        bits = max(num_texels - 1, 0).bit_length()
        key_type = np.int32 if num_cells << bits <= 2 ** 31 else np.int64
        keys = self.cells.astype(key_type)
        keys <<= bits
        keys |= texels
        keys.sort()
        new_run = np.empty(keys.size, bool)
        new_run[:1] = True
        np.not_equal(keys[1:], keys[:-1], out=new_run[1:])
        run_start = np.flatnonzero(new_run)
        self.pair_count = np.diff(run_start, append=keys.size)
        # pair cells and texels as intp: bincount and fancy indexing convert anything else on every use
        pair_keys = keys[run_start].astype(np.intp)
        self.pair_texel = pair_keys & ((1 << bits) - 1)
        pair_keys >>= bits
        self.pair_cell = pair_keys
        self.cell_pixels = np.bincount(pair_keys, weights=self.pair_count, minlength=num_cells)


def weighted_row_sums(targets: np.ndarray, columns: np.ndarray, weights: np.ndarray, rows: np.ndarray,
                      num_targets: int) -> np.ndarray:
    """out[targets[i]] += weights[i] * rows[columns[i]] for sorted targets, as one sparse product: an order of
    magnitude faster than gathering the rows and scattering them."""
    row_start = np.searchsorted(targets, np.arange(num_targets + 1))  # targets are sorted: no pass over them
    columns = torch.from_numpy(columns.astype(np.int64, copy=False))
    matrix = torch.sparse_csr_tensor(torch.from_numpy(row_start), columns,
                                     torch.from_numpy(weights.astype(np.float32)), size=(num_targets, len(rows)),
                                     check_invariants=False)
    return (matrix @ torch.from_numpy(rows)).numpy()


def split_texel_sums(cell: np.ndarray, texel: np.ndarray, count: np.ndarray, texel_pixels: np.ndarray,
                     num_cells: int, channels: int, generator: torch.Generator) -> np.ndarray:
    """[h * w, C] cell sums of W_i = E_i - m_i mean(e) over pairs (sorted by cell) of texels split over K >= 2
    cells; E_i is the fresh noise summed over the texel's m_i pixels in cell i.

    W has covariance diag(m) - m m^T / n = D^1/2 (I - u u^T) D^1/2 with u = sqrt(m / n) a unit vector. The
    Householder reflection H = I - v v^T / (1 + u_K), v = u + e_K, maps u to -e_K, so its first K - 1 columns
    are an orthonormal basis of u's complement and W = D^1/2 H[:, :K-1] h with K - 1 normals h (docs/NOISE.md).
    """
    order = stable_argsort(texel)  # the pairs grouped by texel; the last of each group is its pivot
    num_pairs = texel.size
    grouped = texel[order]
    new_group = np.empty(num_pairs, bool)
    new_group[:1] = True
    np.not_equal(grouped[1:], grouped[:-1], out=new_group[1:])
    start = np.flatnonzero(new_group)
    size = np.diff(start, append=num_pairs)
    u_pair = np.sqrt(count / texel_pixels)  # in cell order; elementwise, so the same values as in texel order
    u = u_pair[order]
    pivot_u = u[start + size - 1]
    h = torch.randn(num_pairs - start.size, channels, generator=generator).numpy()
    # Back in cell order: pair i of group g, at rank r in it, takes K - 1 entries, one per free column j < K.
    position = np.empty(num_pairs, np.intp)
    position[order] = np.arange(num_pairs)
    group_of_sorted = np.cumsum(new_group)
    group_of_sorted -= 1
    group = group_of_sorted[position]
    group_start = start[group]
    rank = position - group_start
    if size.size and size.min() == size.max() == 2:  # every texel in two cells (common): one entry per pair
        u_j = u[group_start]
        pivot_row = rank == 1
        householder = rank == 0
        householder = householder - u_pair * u_j / (1.0 + pivot_u[group])
        householder = np.where(pivot_row, -u_j, householder)
        h_row = group_start - group
        return weighted_row_sums(cell, h_row, np.sqrt(count) * householder, h, num_cells)
    free = size[group] - 1
    pair = np.repeat(np.arange(num_pairs), free)
    column = np.arange(pair.size) - np.repeat(np.cumsum(free) - free, free)
    entry_group = group[pair]
    entry_start = group_start[pair]
    entry_rank = rank[pair]
    u_j = u[entry_start + column]
    householder = entry_rank == column
    householder = householder - u_pair[pair] * u_j / (1.0 + pivot_u[entry_group])
    householder = np.where(entry_rank == free[pair], -u_j, householder)  # the pivot's row of H is -u_j
    # every earlier group has one pivot, so group g's free columns start at row start[g] - g of h
    h_row = entry_start - entry_group + column
    return weighted_row_sums(cell[pair], h_row, np.sqrt(count[pair]) * householder, h, num_cells)


def stable_argsort(values: np.ndarray) -> np.ndarray:
    """np.argsort(values, kind="stable") of non-negative integers, as one value sort of value << b | position
    (b bits hold any position): equal values keep their order, and numpy sorts plain int64 values faster than
    it argsorts (merge sort) wider than 16-bit keys."""
    bits = values.size.bit_length()
    if values.size == 0 or int(values.max()) >= 1 << (63 - bits):
        return np.argsort(values, kind="stable")
    keys = values.astype(np.int64) << bits
    keys |= np.arange(values.size)
    keys.sort()
    keys &= (1 << bits) - 1
    return keys


def latent_frame_noise(surface: FrameSurface, canonical: CanonicalNoise, stride: int,
                       generator: torch.Generator) -> np.ndarray:
    """[h * w, C] latent noise of one frame, drawn exactly without per-pixel noise.

    A texel of n pixels with m_i of them in cell i adds m_i Z / sqrt(n) + W_i to cell i, W_i being the fresh
    pixel noise minus its texel mean, summed over those pixels: zero for a texel inside one cell, K - 1
    normals for a texel split over K cells.
    """
    num_cells, channels = canonical.background.shape
    table = canonical.texels[surface.level]
    cell, texel, count = surface.pair_cell, surface.pair_texel, surface.pair_count
    texel_pixels = surface.texel_pixels[texel]
    sums = weighted_row_sums(cell, texel, count / np.sqrt(texel_pixels), table, num_cells)
    split = np.flatnonzero(texel_pixels > count)  # the texel has pixels in another cell too
    if split.size:
        sums += split_texel_sums(cell[split], texel[split], count[split], texel_pixels[split], num_cells,
                                 channels, generator)
    sums += np.sqrt(stride * stride - surface.cell_pixels).astype(np.float32)[:, None] * canonical.background
    return sums / np.float32(stride)


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
def latent_flow(source: FrameSurface, target: FrameSurface, num_rows: int, width: int, grid: tuple[int, int],
                stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Backward flow from latent frame t+1 (target) to t (source), in latent cells: [h * w, 2] (dx, dy), and
    whether each cell's flow is trusted [h * w].

    A target pixel's source position is the centroid, in the source frame, of its texel's pixels (texels
    matched at the coarser of the two frames' levels); a cell's flow is the mean over its matched pixels.
    """
    num_cells = grid[0] * grid[1]
    level = min(source.level, target.level)
    num_texels = num_rows * 4 ** level
    source_texels = coarsen(source.texels, source.level, level)
    seen = source.texel_pixels if level == source.level else np.bincount(source_texels, minlength=num_texels)
    texel = coarsen(target.pair_texel, target.level, level)
    # Both coordinate sums in one pass: texel sums of x + y 2^b are exact integers in float64 while they stay
    # below 2^53, and split back exactly into the sums of x and y (the same values as two bincounts).
    most = int(seen.max()) if seen.size else 0
    shift = (most * width).bit_length()
    if most * (width + (grid[0] * stride) << shift) < 1 << 53:
        packed = packed_coordinates(grid[0] * stride, width, shift)[source.pixels]
        sums = np.bincount(source_texels, weights=packed, minlength=num_texels)[texel]
        texel_sum_y = np.floor(sums * (1.0 / (1 << shift)))
        texel_sum_x = sums - texel_sum_y * (1 << shift)
    else:
        y = source.pixels // width
        texel_sum_x = np.bincount(source_texels, weights=source.pixels - width * y, minlength=num_texels)[texel]
        texel_sum_y = np.bincount(source_texels, weights=y, minlength=num_texels)[texel]
    seen_pixels = seen[texel]
    matched = np.where(seen_pixels > 0, target.pair_count, 0)
    share = matched / np.maximum(seen_pixels, 1)  # each target pixel takes its texel's mean source position
    matched_pixels = np.bincount(target.pair_cell, weights=matched, minlength=num_cells)
    per_cell = np.maximum(matched_pixels, 1)
    # + 0.5: pixel centres; / stride and - (cell + 0.5): pixels to latent cells with centres on integers
    mean_x = (np.bincount(target.pair_cell, weights=share * texel_sum_x, minlength=num_cells) / per_cell + 0.5)
    mean_y = (np.bincount(target.pair_cell, weights=share * texel_sum_y, minlength=num_cells) / per_cell + 0.5)
    cell_y, cell_x = np.divmod(np.arange(num_cells), grid[1])
    flow = np.stack([mean_x / stride - (cell_x + 0.5), mean_y / stride - (cell_y + 0.5)], axis=1)
    flow[matched_pixels == 0] = 0.0
    body_pixels = target.cell_pixels
    valid = (body_pixels >= MIN_BODY_SHARE * stride * stride) & (matched_pixels >= MIN_MATCHED_SHARE * body_pixels)
    return flow.astype(np.float32), valid


@lru_cache(maxsize=8)
def packed_coordinates(height: int, width: int, shift: int) -> np.ndarray:
    """[H * W] x + y 2^shift of every pixel: one gather per frame instead of a division and two passes."""
    pixel = np.arange(height * width, dtype=np.int64)
    return pixel + pixel // width * ((1 << shift) - width)


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
