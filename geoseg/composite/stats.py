"""A composite's per-pixel statistics over the clear observations (no Ray).

``reduce(stack, statistic)``: ``stack`` is ``(observations, bands, h, w)`` float32 with NaN wherever
an observation is not a clear look; returns the statistic ``(bands, h, w)`` and the number of
clear observations ``(h, w)``. The results are numpy's: ``median`` is ``np.nanmedian`` (the mean
of the two middle values where their number is even), ``pNN`` is ``np.nanpercentile`` with its
default linear interpolation, ``mean`` is ``np.nanmean``; 0 (the composite's nodata) where no
observation is clear. Medians and percentiles come from one sort per band of each pixel's
values, laid out pixel by pixel so the sort runs over contiguous memory.
"""

from __future__ import annotations

import numpy as np


def quantile_of(statistic: str) -> float | None:
    """``median`` -> 50, ``p10`` -> 10, ``mean`` -> None."""
    if statistic == "median":
        return 50.0
    return float(statistic[1:]) if statistic.startswith("p") else None


def reduce(stack: np.ndarray, statistic: str) -> tuple[np.ndarray, np.ndarray]:
    n, bands, h, w = stack.shape
    clear = ~np.isnan(stack[:, 0]) if n else np.zeros((0, h, w), bool)
    count = clear.sum(axis=0, dtype=np.int32)
    out = np.zeros((bands, h, w), np.float32)
    if n == 0:
        return out, count
    has = count > 0
    q = quantile_of(statistic)
    if q is None:
        total = np.where(clear[:, None], stack, 0).sum(axis=0, dtype=np.float64)
        out[:, has] = (total[:, has] / count[has]).astype(np.float32)
        return out, count
    c = count.reshape(-1)
    pos = q / 100.0 * np.maximum(c - 1, 0)  # numpy's linear interpolation between order statistics
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, np.maximum(c - 1, 0))
    frac = (pos - lo).astype(np.float32)
    for b in range(bands):
        values = np.ascontiguousarray(stack[:, b].reshape(n, -1).T)  # (pixels, observations)
        values.sort(axis=1)  # NaN (not clear) last
        a = np.take_along_axis(values, lo[:, None], axis=1)[:, 0]
        z = np.take_along_axis(values, hi[:, None], axis=1)[:, 0]
        v = a + (z - a) * frac
        out[b] = np.where(c > 0, v, 0).reshape(h, w)
    return out, count
