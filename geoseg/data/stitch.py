"""From model output tiles to output chunks: crop the halo, mask nodata.

Default stitching is halo + centre crop: every output pixel comes from exactly
one tile, the one whose core holds it, and was predicted with at least ``halo``
pixels of real context on every side that is not the raster's edge. When the
halo covers the model's receptive field the stitched map equals whole-image
inference.
"""

from __future__ import annotations

import numpy as np

from geoseg.data.classes import NODATA
from geoseg.data.tiling import Tile, TileGrid

MASKED_SOFTMAX = -1.0  # a masked pixel in a stored softmax (--stitch hann); NaN is nodata


def crop_cores(pred: np.ndarray, crops: np.ndarray, core: int, fill=0) -> np.ndarray:
    """Each tile's core out of ``(N, [K,] T, T)`` tile model outputs, as ``(N, [K,] core, core)``.

    ``crops``: ``(N, 4)`` rows of ``(row, col, height, width)``, the core's place
    in its tile (:attr:`geoseg.data.tiling.Tile.crop`). Edge cores are clipped; the
    rest of their chunk-sized array is ``fill``.
    """
    out = np.full((*pred.shape[:-2], core, core), fill, dtype=pred.dtype)
    for i, (r, c, h, w) in enumerate(np.asarray(crops, dtype=np.int64)):
        out[i, ..., :h, :w] = pred[i, ..., r : r + h, c : c + w]
    return out


def finish(classes: np.ndarray, valid: np.ndarray, crops: np.ndarray, core: int) -> np.ndarray:
    """Core class tiles ``(N, core, core)`` uint8 with nodata where the input is nodata."""
    out = crop_cores(np.asarray(classes, dtype=np.uint8), crops, core, fill=NODATA)
    out[~valid] = NODATA
    return out


def to_uint8(proba: np.ndarray) -> np.ndarray:
    """Probabilities scaled to uint8 (0..255), as stored in the output."""
    return np.clip(np.rint(proba * 255.0), 0, 255).astype(np.uint8)


def to_uint8_proba(proba: np.ndarray, crops: np.ndarray, core: int) -> np.ndarray:
    """Core probabilities ``(N, K, core, core)`` scaled to uint8 (0..255)."""
    return to_uint8(crop_cores(proba, crops, core))


# --- weighted blending (``--stitch hann``) ------------------------------------
#
# Every tile's softmax over its whole input is kept (a scratch array, one chunk
# per tile); an output chunk is then the weighted mean of every tile softmax that
# covers it. Two neighbours' inputs overlap by ``2 * halo`` pixels around their
# seam. A tile's weight is 0 on its outer ``halo / 2`` pixels (they lack
# context), rises as a raised cosine over the next ``halo`` pixels and is 1
# inside, on each side that is not the raster's edge; on a regular grid the two
# tapers sum to exactly one, so the seam fades from one tile into the next.
# Every blended pixel is thus predicted with at least ``halo / 2`` pixels of
# context; nodata pixels are NaN in the scratch.


def taper(n: int, lo: bool, hi: bool, halo: int) -> np.ndarray:
    """1-D weights over ``n`` pixels of a tile's input: 0 for the outer ``halo // 2``
    pixels, a raised-cosine ramp over the next ``halo``, then 1; at the low
    and/or high end only."""
    w = np.ones(n, dtype=np.float64)
    if halo <= 0:
        return w.astype(np.float32)
    d = np.arange(n, dtype=np.float64)

    def ramp(x):
        x = x - halo // 2
        return np.where(x < 0, 0.0, np.where(x < halo, 0.5 - 0.5 * np.cos(np.pi * (x + 0.5) / halo), 1.0))

    if lo:
        w = np.minimum(w, ramp(d))
    if hi:
        w = np.minimum(w, ramp(n - 1 - d))
    return w.astype(np.float32)


def tile_weights(grid: TileGrid, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    """``(row weights, column weights)`` over the tile's read window."""
    r = tile.read
    wy = taper(r.height, r.row_off > 0, r.row_off + r.height < grid.height, grid.halo)
    wx = taper(r.width, r.col_off > 0, r.col_off + r.width < grid.width, grid.halo)
    return wy, wx


def blend_core(grid: TileGrid, tile: Tile, fetch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blended probabilities ``(K, h, w)`` of ``tile``'s core, its validity and what is masked ``(h, w)``.

    ``fetch(iy, ix)``: that tile's softmax ``(K, T, T)`` (NaN = nodata or
    never predicted, :data:`MASKED_SOFTMAX` = masked), or None. Pixels that are NaN in
    ``tile``'s own softmax are nodata, and masked where it says so; a neighbour's NaN or
    masked pixels simply do not count. A tile's own weight is
    at least 1/2 all over its core, so every valid pixel has a value.
    """
    core = tile.core
    acc = wsum = None
    ny, nx = grid.shape
    for iy in range(max(0, tile.iy - 1), min(ny, tile.iy + 2)):
        for ix in range(max(0, tile.ix - 1), min(nx, tile.ix + 2)):
            other = grid[iy, ix]
            rd = other.read
            r0, r1 = max(core.row_off, rd.row_off), min(core.row_off + core.height, rd.row_off + rd.height)
            c0, c1 = max(core.col_off, rd.col_off), min(core.col_off + core.width, rd.col_off + rd.width)
            if r0 >= r1 or c0 >= c1:
                continue
            probs = fetch(iy, ix)
            if probs is None:
                continue
            wy, wx = tile_weights(grid, other)
            ry, rx = r0 - rd.row_off, c0 - rd.col_off
            p = probs[:, ry : ry + r1 - r0, rx : rx + c1 - c0]
            w = wy[ry : ry + r1 - r0, None] * wx[None, rx : rx + c1 - c0]
            gone = np.isnan(p[0]) | (p[0] < 0)
            w = np.where(gone, 0.0, w).astype(np.float32)
            if acc is None:
                acc = np.zeros((probs.shape[0], core.height, core.width), np.float32)
                wsum = np.zeros((core.height, core.width), np.float32)
                own = np.zeros((core.height, core.width), bool)
                masked = np.zeros((core.height, core.width), bool)
            sl = (slice(r0 - core.row_off, r1 - core.row_off), slice(c0 - core.col_off, c1 - core.col_off))
            acc[(slice(None), *sl)] += w * np.where(gone, 0.0, p)
            wsum[sl] += w
            if (iy, ix) == (tile.iy, tile.ix):
                own[sl] = ~np.isnan(p[0])
                masked[sl] = p[0] < 0
    if acc is None:
        empty = np.zeros((core.height, core.width), bool)
        return np.zeros((0, core.height, core.width), np.float32), empty, empty
    return acc / np.maximum(wsum, 1e-12), own, masked


def mask_softmax(proba: np.ndarray, valid: np.ndarray, crops: np.ndarray, masked: np.ndarray | None = None
                 ) -> np.ndarray:
    """Softmax of whole tiles ``(N, K, T, T)`` float32 with NaN on each core's nodata pixels and
    :data:`MASKED_SOFTMAX` on its ``masked`` ones (in place when ``proba`` is already a writable
    float32 array)."""
    out = np.require(proba, np.float32, ["W"])
    for i, (r, c, h, w) in enumerate(np.asarray(crops, dtype=np.int64)):
        core = out[i, :, r : r + h, c : c + w]
        core[:, ~valid[i, :h, :w]] = np.nan
        if masked is not None:
            core[:, masked[i, :h, :w]] = MASKED_SOFTMAX
    return out
