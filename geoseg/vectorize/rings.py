"""The polygons of one chunk of a class map, in bulk (no Ray): ``rasterio.features.shapes``' rings
as flat arrays, their shapely polygons made in one call, and exact per-polygon sums without
burning the polygons back.

In pixel space every vertex is a grid point and every edge is horizontal or vertical, so a sum over
a polygon's pixels is a sum over its vertical edges (Green's theorem on the pixel grid): with a
summed-area table ``S[y, x]`` (the sum of every pixel above row ``y`` and left of column ``x``), an
edge from ``(x, y0)`` to ``(x, y1)`` adds ``S[y1, x] - S[y0, x]``, signed by the ring's orientation
(an exterior adds, a hole takes away). ``S = x * y`` counts pixels (the shoelace area), ``S = x *
C[y]`` with ``C`` the cumulative area of the rows sums geographic pixel areas, and a summed-area
table of probabilities sums those. The sums are exact in integers (pixels, probabilities x 255).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Rings:
    """The polygons of a chunk: vertices of every ring (chunk pixel space, each ring closed),
    where each ring and each polygon starts, and each polygon's class."""

    xy: np.ndarray  # (vertices, 2) float64
    ring_offsets: np.ndarray  # (rings + 1,)
    poly_offsets: np.ndarray  # (polygons + 1,)
    values: np.ndarray  # (polygons,) int64

    @classmethod
    def of(cls, data: np.ndarray, mask: np.ndarray) -> "Rings":
        """The 4-connected polygons of ``data`` where ``mask`` (holes kept), from ``shapes``."""
        import gc
        import itertools

        import rasterio.features

        values, n_rings, sizes, flat = [], [], [], []
        chain = itertools.chain.from_iterable
        collecting = gc.isenabled()
        gc.disable()  # millions of short-lived, acyclic dicts, lists and tuples: nothing to collect
        try:
            for geom, value in rasterio.features.shapes(data, mask=mask, connectivity=4):
                rings = geom["coordinates"]
                values.append(value)
                n_rings.append(len(rings))
                sizes.extend(map(len, rings))
                flat.extend(chain(rings))
            xy = np.fromiter(chain(flat), np.float64, count=2 * len(flat)).reshape(-1, 2)
        finally:
            if collecting:
                gc.enable()
        return cls(xy, np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]),
                   np.concatenate([[0], np.cumsum(n_rings, dtype=np.int64)]), np.asarray(values, np.int64))

    @property
    def n(self) -> int:
        return len(self.values)

    def polygons(self, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
        """Shapely polygons, moved by ``(dx, dy)`` pixels (the chunk's offset in the map)."""
        import shapely

        return shapely.from_ragged_array(shapely.GeometryType.POLYGON, self.xy + (dx, dy),
                                         (self.ring_offsets, self.poly_offsets))

    def sums(self, rows: np.ndarray | None = None, table: np.ndarray | None = None) -> np.ndarray:
        """Per polygon: its pixel count; with ``rows`` (cumulative per-row values, ``len = h + 1``)
        the sum of its rows' values over its pixels; with ``table`` (a summed-area table ``(h + 1,
        w + 1)``) the sum of the table's pixel values."""
        x, y = self.xy[:, 0], self.xy[:, 1]
        i, ring_of = self._edges()
        yi, yj = y[i].astype(np.intp), y[i + 1].astype(np.intp)
        if table is not None:
            term = (table[yj, x[i].astype(np.intp)] - table[yi, x[i].astype(np.intp)]).astype(np.float64)
        elif rows is not None:
            term = x[i] * (rows[yj] - rows[yi])
        else:
            term = x[i] * (y[i + 1] - y[i])
        per_ring = np.bincount(ring_of, weights=term, minlength=len(self.ring_offsets) - 1)
        return np.bincount(self._poly_of_ring(), weights=per_ring * self._sign(), minlength=self.n)

    def _edges(self) -> tuple[np.ndarray, np.ndarray]:
        """The first vertex of every edge, and the ring it is on."""
        sizes = np.diff(self.ring_offsets)
        ring_of = np.repeat(np.arange(len(sizes)), sizes)
        last = np.zeros(len(self.xy), bool)
        last[self.ring_offsets[1:] - 1] = True  # a ring's closing vertex starts no edge
        i = np.flatnonzero(~last)
        return i, ring_of[i]

    def _poly_of_ring(self) -> np.ndarray:
        return np.repeat(np.arange(self.n), np.diff(self.poly_offsets))

    def _sign(self) -> np.ndarray:
        """Per ring: +1 / -1 that makes its exterior add and its holes take away, whatever their
        orientation."""
        x, y = self.xy[:, 0], self.xy[:, 1]
        i, ring_of = self._edges()
        shoelace = np.bincount(ring_of, weights=x[i] * (y[i + 1] - y[i]), minlength=len(self.ring_offsets) - 1)
        exterior = np.zeros(len(shoelace), bool)
        exterior[self.poly_offsets[:-1]] = True
        return np.sign(shoelace) * np.where(exterior, 1.0, -1.0)
