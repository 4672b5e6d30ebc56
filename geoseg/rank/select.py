"""Which chips to label (no Ray): candidates from a scene's cells, then a greedy choice.

``candidates``: every ``chip``-square window on the cell grid, at a stride of half a chip, with
at least ``MIN_VALID`` of its pixels classified; its scores are the valid-pixel-weighted means of
its cells' (summed-area tables: one pass per scene), its class the most frequent predicted one.

``choose``: by score, best first (``random``: a seeded shuffle), a chip is taken unless its centre
lies within ``min_distance`` metres (on the ellipsoid) of a chip taken already, or, with
``balance``, its class has its share (``ceil(top / classes)``) while chips of other classes are
still to be had; a second pass fills what balance left empty.
"""

from __future__ import annotations

import math

import numpy as np

from geoseg.data.uncertainty import CELL
from geoseg.rank.plan import MIN_VALID

FIELDS = ("entropy", "margin", "disagreement")


def _grid(tab, k: int):
    """The cells as arrays on their grid: valid (nr, nc), the three sums (3, nr, nc), classes (k, nr, nc)."""
    r = tab.column("row_off").to_numpy() // CELL
    c = tab.column("col_off").to_numpy() // CELL
    nr, nc = (int(r.max()) + 1, int(c.max()) + 1) if len(r) else (0, 0)
    valid = np.zeros((nr, nc))
    valid[r, c] = tab.column("valid").to_numpy()
    sums = np.zeros((3, nr, nc))
    for j, f in enumerate(FIELDS):
        v = np.nan_to_num(tab.column(f).to_numpy().astype(np.float64))
        sums[j, r, c] = v * valid[r, c]
    hist = np.zeros((k, nr, nc))
    for i in range(k):
        hist[i, r, c] = tab.column(f"class_{i}").to_numpy()
    return valid, sums, hist


def _window_sums(a: np.ndarray, m: int, stride: int) -> np.ndarray:
    """Sums of every ``m`` x ``m`` window of the last two axes, at ``stride``."""
    sat = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(1, 0), (1, 0)]).cumsum(-2).cumsum(-1)
    rows = np.arange(0, a.shape[-2] - m + 1, stride)
    cols = np.arange(0, a.shape[-1] - m + 1, stride)
    r0, c0 = np.meshgrid(rows, cols, indexing="ij")
    return (sat[..., r0 + m, c0 + m] - sat[..., r0, c0 + m] - sat[..., r0 + m, c0] + sat[..., r0, c0]), r0, c0


def candidates(tab, k: int, chip: int, transform, crs) -> dict:
    """A scene's candidate chips: ``row_off``, ``col_off``, ``valid`` (share), ``entropy``, ``margin``,
    ``disagreement``, ``cls``, ``hist`` (k per chip), ``lon``, ``lat`` (centres)."""
    m = chip // CELL
    valid, sums, hist = _grid(tab, k)
    empty = {n: np.zeros(0) for n in ("row_off", "col_off", "valid", *FIELDS, "cls", "lon", "lat")}
    if valid.shape[0] < m or valid.shape[1] < m:
        return {**empty, "hist": np.zeros((0, k))}
    v, r0, c0 = _window_sums(valid, m, max(1, m // 2))
    s, _, _ = _window_sums(sums, m, max(1, m // 2))
    h, _, _ = _window_sums(hist, m, max(1, m // 2))
    keep = v >= MIN_VALID * chip * chip
    with np.errstate(invalid="ignore", divide="ignore"):
        means = s[:, keep] / v[keep]
    if tab.num_rows and np.isnan(tab.column("disagreement").to_numpy()).all():
        means[2] = np.nan
    rows, cols = r0[keep] * CELL, c0[keep] * CELL
    a, b, c, d, e, f = transform[:6]
    x = c + a * (cols + chip / 2) + b * (rows + chip / 2)
    y = f + d * (cols + chip / 2) + e * (rows + chip / 2)
    if crs:
        from rasterio.warp import transform as warp

        x, y = (np.asarray(t) for t in warp(crs, "EPSG:4326", x, y))
    hist_k = h[:, keep].T
    return {"row_off": rows, "col_off": cols, "valid": v[keep] / (chip * chip), "entropy": means[0],
            "margin": means[1], "disagreement": means[2], "cls": hist_k.argmax(1) if len(hist_k) else np.zeros(0, int),
            "hist": hist_k, "lon": np.asarray(x, float), "lat": np.asarray(y, float)}


def without(cands: dict, chips: list[tuple[int, int, int]], chip: int) -> dict:
    """``cands`` less those overlapping ``chips`` (``(row_off, col_off, size)`` of earlier rounds)."""
    if not chips or not len(cands["lon"]):
        return cands
    r, c = np.asarray(cands["row_off"]), np.asarray(cands["col_off"])
    keep = np.ones(len(r), bool)
    for r0, c0, size in chips:
        keep &= ~((r < r0 + size) & (r0 < r + chip) & (c < c0 + size) & (c0 < c + chip))
    return {k: np.asarray(v)[keep] for k, v in cands.items()}


def scores(cands: dict, strategy: str, seed: int) -> np.ndarray:
    """Each candidate's score under ``strategy`` (higher: label it first)."""
    if strategy == "entropy":
        return np.nan_to_num(cands["entropy"], nan=-1)
    if strategy == "margin":
        return np.nan_to_num(1 - cands["margin"], nan=-1)
    if strategy == "disagreement":
        return np.nan_to_num(cands["disagreement"], nan=-1)
    return np.random.default_rng(seed).random(len(cands["lon"]))


def choose(cands: dict, score: np.ndarray, top: int, min_distance: float, balance: bool) -> list[int]:
    """Indices of the chosen candidates, in the order chosen (rank 1 first)."""
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    order = np.argsort(-score, kind="stable")
    classes = np.asarray(cands["cls"], int)
    present = np.unique(classes)
    share = math.ceil(top / max(1, len(present))) if balance else top
    chosen: list[int] = []
    taken = np.zeros(len(score), bool)
    lon, lat = np.asarray(cands["lon"]), np.asarray(cands["lat"])

    def far(i: int) -> bool:
        if not chosen or min_distance <= 0:
            return True
        _, _, dist = geod.inv(np.full(len(chosen), lon[i]), np.full(len(chosen), lat[i]), lon[chosen], lat[chosen])
        return bool((np.asarray(dist) >= min_distance).all())

    for quota in (share, top):  # balanced first; then whatever balance left empty
        counts = {int(c): int((classes[chosen] == c).sum()) for c in present}
        for i in order:
            if len(chosen) >= top:
                return chosen
            if taken[i] or counts[int(classes[i])] >= quota or not far(int(i)):
                continue
            chosen.append(int(i))
            taken[i] = True
            counts[int(classes[i])] += 1
    return chosen
