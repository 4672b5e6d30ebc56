"""Where each pixel of a mosaic chunk comes from in a scene: nearest neighbour on the exact
transform of every output pixel centre, at close to the speed of GDAL's warp (no Ray).

    lookup      a chunk of the output grid and a scene -> the scene window to read, and for every
                chunk pixel an index into that window (0: no source pixel)
    Lookup.take the window's classes or probabilities -> the chunk's

The pixel is the one the exact PROJ transform of the pixel centre falls in, through the scene's
own geotransform, whichever chunk asks. How it is found costs far less than a transform per pixel:

* a scene in the output grid's CRS is an affine map: north-up, one row and one column lookup
  (no PROJ call, no per-pixel work at all);
* across CRSs the exact transform runs on a lattice fixed to the *output grid* (every
  ``LATTICE`` px, so every chunk sees the same lattice), and on the lattice cells' centres and
  edge midpoints, where a smooth map's bilinear error peaks; positions in between are
  interpolated; every pixel whose interpolated position lies within twice the largest measured
  error (+ ``SLACK``) of a source pixel edge is transformed exactly, so its floor is the exact one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoseg.data.tiling import Window

LATTICE = 32  # px of the output grid between the exact transforms that positions are interpolated from
SLACK = 1e-6  # source px: interpolation error allowed beyond twice the largest measured


@dataclass(frozen=True)
class Lookup:
    """A chunk's source pixels in one scene: ``window`` of the scene to read, and per chunk pixel an
    index into that window padded with one row and column on every side (an index on the padding:
    no source pixel; 0 is one). Separable (a north-up scene in the grid's CRS): ``rows`` (h,) and
    ``cols`` (w,); otherwise ``flat`` (h, w) indices into the padded window's pixels."""

    window: Window
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    flat: np.ndarray | None = None

    def take(self, data: np.ndarray, fill) -> np.ndarray:
        """``data`` (..., window height, window width) -> (..., h, w); ``fill`` where no source pixel."""
        lead = data.shape[:-2]
        padded = np.full((*lead, data.shape[-2] + 2, data.shape[-1] + 2), fill, data.dtype)
        padded[..., 1:-1, 1:-1] = data
        if self.flat is None:
            return padded[..., self.rows[:, None], self.cols[None, :]]
        return padded.reshape(*lead, -1)[..., self.flat]

    def pixels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(row, col, ok)`` in the scene for every chunk pixel (tests)."""
        w = self.window
        if self.flat is None:
            r, c = np.meshgrid(self.rows, self.cols, indexing="ij")
        else:
            r, c = np.divmod(self.flat, w.width + 2)
        ok = (r >= 1) & (r <= w.height) & (c >= 1) & (c <= w.width)
        return np.where(ok, r - 1 + w.row_off, -1), np.where(ok, c - 1 + w.col_off, -1), ok


def lookup(scene, crs: str, dst_t, height: int, width: int, box=None, offset=(0, 0)) -> Lookup | None:
    """The source pixels of ``scene`` (a :class:`geoseg.mosaic.plan.MosaicScene`) for the chunk of
    ``height`` x ``width`` px with north-up transform ``dst_t`` in ``crs``, at ``offset`` = (row,
    col) of the output grid; ``box``: the scene's bounds in ``crs`` (only centres inside it are
    looked up). None where no centre falls in the scene."""
    from affine import Affine

    if dst_t.b or dst_t.d:
        raise ValueError("a mosaic's grid is north-up")
    inv = ~Affine(*scene.transform)
    xs = dst_t.c + dst_t.a * (np.arange(width) + 0.5)  # the centres of the columns and rows
    ys = dst_t.f + dst_t.e * (np.arange(height) + 0.5)
    in_x = np.ones(width, bool) if box is None else (xs >= box[0]) & (xs <= box[2])
    in_y = np.ones(height, bool) if box is None else (ys >= box[1]) & (ys <= box[3])
    if not (in_x.any() and in_y.any()):
        return None
    if scene.crs == crs and inv.b == inv.d == 0:  # one CRS, north-up: per column and per row
        c, r = np.floor(inv.c + inv.a * xs), np.floor(inv.f + inv.e * ys)
        ok_c, ok_r = in_x & (c >= 0) & (c < scene.width), in_y & (r >= 0) & (r < scene.height)
        if not (ok_c.any() and ok_r.any()):
            return None
        c0, c1, r0, r1 = int(c[ok_c].min()), int(c[ok_c].max()) + 1, int(r[ok_r].min()), int(r[ok_r].max()) + 1
        return Lookup(Window(r0, c0, r1 - r0, c1 - c0), rows=np.where(ok_r, r - r0 + 1, 0).astype(np.intp),
                      cols=np.where(ok_c, c - c0 + 1, 0).astype(np.intp))
    fc, fr, lattice = positions(scene, crs, dst_t, xs, ys, offset, inv)  # floors of the positions
    span = _span(fc, fr, lattice, scene)
    if span is None:
        return None
    r0, r1, c0, c1 = span
    fr -= r0 - 1  # rows and columns of the padded window: outside it, clipped onto its padding
    np.clip(fr, 0, r1 - r0 + 1, out=fr)
    fr *= c1 - c0 + 2
    fr[~in_y] = 0  # centres outside the box: padding
    fc -= c0 - 1
    np.clip(fc, 0, c1 - c0 + 1, out=fc)
    fc[:, ~in_x] = 0
    fr += fc
    return Lookup(Window(r0, c0, r1 - r0, c1 - c0), flat=fr.astype(np.intp))


def positions(scene, crs: str, dst_t, xs: np.ndarray, ys: np.ndarray, offset, inv):
    """``(cols, rows, lattice)``: the floor of every chunk pixel's position in the scene's pixel
    space (float, ``(h, w)``; -1 where PROJ fails), interpolated on the output grid's lattice and
    exact wherever the floor could differ; ``lattice``: the exact positions at the lattice points
    (None where a transform failed near the chunk and every position is exact)."""

    def exact(x, y):
        if scene.crs != crs:
            from rasterio.warp import transform

            x, y = (np.asarray(v) for v in transform(crs, scene.crs, x, y))
        return inv.c + inv.a * x + inv.b * y, inv.f + inv.d * x + inv.e * y

    height, width = len(ys), len(xs)
    lc, lr = _lattice(height, width, offset)
    lattice = _exact_at(exact, dst_t, lc, lr)
    bound = _bound(exact, dst_t, lc, lr, lattice)
    floors = []
    near = np.ones((height, width), bool)  # a transform failed near the chunk: every pixel exactly
    for i, v in enumerate(_interpolated(lattice, height, width, offset)):
        low = np.floor(v)
        floors.append(low)
        if np.isfinite(bound):  # (so is every position: the bound's checks reached every lattice point)
            v -= low  # |fraction - 0.5| >= 0.5 - bound: within the bound of an edge
            v -= 0.5
            np.abs(v, out=v)
            if i == 0:
                np.greater_equal(v, 0.5 - bound, out=near)
            else:
                near |= v >= 0.5 - bound
    fc, fr = floors
    idx = np.flatnonzero(near)
    if len(idx):
        rows, cols = np.divmod(idx, width)
        ec, er = (np.floor(v) for v in exact(xs[cols], ys[rows]))
        fc.flat[idx], fr.flat[idx] = (np.where(np.isnan(v), -1.0, v) for v in (ec, er))  # NaN: no pixel
    return fc, fr, lattice if np.isfinite(bound) else None


def _interpolated(lattice, height: int, width: int, offset) -> list[np.ndarray]:
    """Every chunk pixel's position, bilinear between the lattice's exact ones (separable: along
    each lattice row first, then between rows, band by band)."""
    gr, gc = offset[0] + np.arange(height), offset[1] + np.arange(width)
    kx, tx = gc // LATTICE - offset[1] // LATTICE, (gc % LATTICE) / LATTICE
    ky, ty = gr // LATTICE - offset[0] // LATTICE, (gr % LATTICE) / LATTICE
    starts = np.flatnonzero(np.r_[True, ky[1:] != ky[:-1]])
    out = []
    for g in lattice:
        along = (1 - tx) * g[:, kx] + tx * g[:, kx + 1]
        full = np.empty((height, width))
        step = along[1:] - along[:-1]
        for i0, i1 in zip(starts, [*starts[1:], height]):
            k = ky[i0]
            np.multiply(ty[i0:i1, None], step[k], out=full[i0:i1])
            full[i0:i1] += along[k]
        out.append(full)
    return out


def _span(fc, fr, lattice, scene) -> tuple[int, int, int, int] | None:
    """The scene rows ``r0:r1`` and columns ``c0:c1`` the chunk's positions can fall in: the
    lattice's range (interpolation stays within it) and a pixel more, clipped to the scene."""
    if lattice is not None:  # (finite: the interpolation's bound is)
        lat_c, lat_r = lattice
        lo_c, hi_c, lo_r, hi_r = lat_c.min() - 1, lat_c.max() + 1, lat_r.min() - 1, lat_r.max() + 1
    else:  # PROJ failed near the chunk, and every position is exact: from the positions themselves
        good = np.isfinite(fc) & np.isfinite(fr)
        if not good.any():
            return None
        lo_c, hi_c, lo_r, hi_r = fc[good].min(), fc[good].max(), fr[good].min(), fr[good].max()
    r0, r1 = max(0, int(np.floor(lo_r))), min(scene.height, int(np.floor(hi_r)) + 1)
    c0, c1 = max(0, int(np.floor(lo_c))), min(scene.width, int(np.floor(hi_c)) + 1)
    return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def _lattice(height: int, width: int, offset) -> tuple[np.ndarray, np.ndarray]:
    """Chunk-local centre coordinates (cols, rows) of the output grid's lattice points around the chunk."""
    r0, c0 = offset
    lr = np.arange(r0 // LATTICE, (r0 + height - 1) // LATTICE + 2) * LATTICE - r0 + 0.5
    lc = np.arange(c0 // LATTICE, (c0 + width - 1) // LATTICE + 2) * LATTICE - c0 + 0.5
    return lc, lr


def _exact_at(exact, dst_t, lc: np.ndarray, lr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact positions at the chunk-local centres ``lc`` x ``lr`` (the arithmetic of :func:`lookup`'s
    centres, so that a lattice point's position is that pixel's exact one)."""
    cols, rows = np.meshgrid(dst_t.c + dst_t.a * lc, dst_t.f + dst_t.e * lr)
    fc, fr = exact(cols.ravel(), rows.ravel())
    return fc.reshape(cols.shape), fr.reshape(cols.shape)


def _bound(exact, dst_t, lc: np.ndarray, lr: np.ndarray, grid) -> float:
    """Twice the largest difference (source px) between interpolated and exact positions at the
    lattice cells' centres and edge midpoints, + SLACK (inf where a transform failed)."""
    half = LATTICE / 2
    worst = 0.0
    for cols, rows, mean in ((lc[:-1] + half, lr[:-1] + half,
                              lambda g: (g[:-1, :-1] + g[:-1, 1:] + g[1:, :-1] + g[1:, 1:]) / 4),
                             (lc[:-1] + half, lr, lambda g: (g[:, :-1] + g[:, 1:]) / 2),
                             (lc, lr[:-1] + half, lambda g: (g[:-1] + g[1:]) / 2)):
        for want, g in zip(_exact_at(exact, dst_t, cols, rows), grid):
            err = np.abs(want - mean(g))
            if not np.isfinite(err).all():
                return np.inf
            worst = max(worst, float(err.max(initial=0.0)))
    return 2 * worst + SLACK
