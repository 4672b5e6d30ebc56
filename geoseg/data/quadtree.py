"""The quad-tree of windows over a raster (no I/O): :class:`QuadTree`.

Level 0 are ``chunk``-square windows; level L the windows of 2^L x 2^L chunks; the top level is
one window, the whole raster. ``geoseg vectorize`` polygonizes the chunks and merges the open
polygons of four windows into the one above them, level by level, so that each seam is merged
once and no task holds more than one window's open polygons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoseg.data.tiling import Window


@dataclass(frozen=True)
class QuadTree:
    """A raster's ``height`` x ``width`` cut into ``chunk``-square windows, and the windows above them."""

    height: int
    width: int
    chunk: int

    @property
    def levels(self) -> int:
        """Levels of the quad-tree above the chunks: until one window covers the raster."""
        n = max(-(-self.height // self.chunk), -(-self.width // self.chunk))
        return max(0, int(np.ceil(np.log2(n)))) if n > 1 else 0

    def window(self, level: int, gy: int, gx: int) -> Window:
        """Window ``(gy, gx)`` of ``level``, clipped at the raster's edge."""
        side = self.chunk << level
        r0, c0 = gy * side, gx * side
        return Window(r0, c0, min(self.height, r0 + side) - r0, min(self.width, c0 + side) - c0)

    def groups(self, level: int) -> list[tuple[int, int]]:
        """Every window ``(gy, gx)`` of ``level``."""
        side = self.chunk << level
        return [(gy, gx) for gy in range(-(-self.height // side)) for gx in range(-(-self.width // side))]

    def children(self, level: int, gy: int, gx: int) -> list[tuple[int, int]]:
        """The windows of ``level - 1`` that make up window ``(gy, gx)`` of ``level``."""
        below = set(self.groups(level - 1))
        return [(2 * gy + dy, 2 * gx + dx) for dy in (0, 1) for dx in (0, 1)
                if (2 * gy + dy, 2 * gx + dx) in below]
