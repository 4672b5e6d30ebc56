"""Junctions (no Ray): the grid points of a labelled raster where regions meet, which both sides of a
shared edge must cut it at (simplification, field instances)."""

from __future__ import annotations

import numpy as np


def junction_keys(lab: np.ndarray, width: int, row_off: int, col_off: int) -> np.ndarray:
    """Keys ``y * (width + 1) + x`` of the grid points inside a labelled window ``lab`` (with a
    1-pixel apron: ``lab[1:-1, 1:-1]`` is the window) where three or more labels meet, or two
    diagonally (a checkerboard 2 x 2): the ends of the edges that regions share."""
    a, b = lab[:-1, :-1], lab[:-1, 1:]
    c, d = lab[1:, :-1], lab[1:, 1:]
    distinct = 1 + (b != a).astype(np.int8) + ((c != a) & (c != b)) + ((d != a) & (d != b) & (d != c))
    diagonal = (a == d) & (b == c) & (a != b)
    ys, xs = np.nonzero((distinct >= 3) | diagonal)
    # grid point (y, x) of the window: between apron rows/cols; lab[i, j] is pixel (row_off - 1 + i, col_off - 1 + j)
    return (ys + row_off).astype(np.int64) * (width + 1) + (xs + col_off)
