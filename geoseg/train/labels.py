"""Label rasters checked whole, once, before training (Ray-free).

A label raster is cut into chunks (:func:`label_chunks`, ``CHUNK``² windows: flat
memory whatever its size); each chunk is scanned at full resolution
(:func:`scan_chunk`: the count of every value, and where a value outside the
declared classes occurs); :func:`merge_scans` adds a raster's chunks up into its
class histogram and refuses, in one line naming the file, the value and a window
where it occurs, a value outside the classes, or a raster with no labelled pixel.
The Ray layer (:mod:`geoseg.train.job`) runs the chunks as tasks; :func:`scan_labels`
runs them here, one after the other (tests, a machine without Ray).

The histogram feeds the class frequencies (the balanced sampler's weights) and the
run record; decimated reads missed small patches (a 50×50 patch of a stray value in
a 900×1100 label trained silently).
"""

from __future__ import annotations

import numpy as np

from geoseg.data import storage
from geoseg.data.classes import NODATA
from geoseg.errors import RasterError
from geoseg.data.raster import RasterInfo, open_raster

CHUNK = 2048  # px a side of one scan window: 4 MPix, a few MiB per task


def label_chunks(info: RasterInfo, chunk: int = CHUNK) -> list[tuple[int, int, int, int]]:
    """``(row_off, col_off, height, width)`` of each scan window of a label raster."""
    return [(r, c, min(chunk, info.height - r), min(chunk, info.width - c))
            for r in range(0, info.height, chunk) for c in range(0, info.width, chunk)]


def scan_chunk(url: str, window: tuple[int, int, int, int], k: int | None) -> dict:
    """One window of a label raster at full resolution: ``{"values", "counts"}`` of every
    value in it and, for values outside ``0..k-1`` (``k``: the declared classes; None:
    outside the class numbers 0..254), the bounding window of where each occurs in it
    (``"outside"``)."""
    from rasterio.windows import Window

    r0, c0, h, w = window
    with storage.gdal_env(), open_raster(url) as src:
        data = src.read(1, window=Window(c0, r0, w, h))
    values, counts = np.unique(data, return_counts=True)
    outside, limit = {}, NODATA if k is None else k
    for v in values:
        if (v < 0 or v >= limit) and v != NODATA:
            rows, cols = np.nonzero(data == v)
            outside[int(v)] = (r0 + int(rows.min()), c0 + int(cols.min()),
                               int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1)
    return {"values": values.astype(np.int64).tolist(), "counts": counts.astype(np.int64).tolist(),
            "outside": outside}


def merge_scans(info: RasterInfo, scans: list[dict], k: int | None, source: str = "") -> np.ndarray:
    """A label raster's class histogram (``NODATA`` bins: counts of values 0..254) from its
    chunks' scans, after refusing what cannot train: a value outside ``0..k-1`` (named,
    with a window where it occurs; ``source`` says where ``k`` comes from) and a raster
    whose every pixel is the ignore value or its nodata."""
    hist = np.zeros(NODATA, np.int64)
    ignored = {NODATA} | ({int(info.nodata)} if info.nodata is not None else set())
    outside: dict[int, tuple] = {}
    for scan in scans:
        for v, n in zip(scan["values"], scan["counts"]):
            if v in ignored:
                continue
            if 0 <= v < NODATA:
                hist[v] += n
        for v, win in scan["outside"].items():
            outside.setdefault(int(v), tuple(win))
    outside = {v: w for v, w in outside.items() if v not in ignored}
    if outside:
        v = min(outside)
        r, c, h, w = outside[v]
        bad = sorted(outside)
        shown = ", ".join(str(x) for x in bad[:10]) + (", ..." if len(bad) > 10 else "")
        what = f"label value {v} is" if len(bad) == 1 else f"label values {shown} are"
        where = f"{v} e.g. in window rows {r}:{r + h}, cols {c}:{c + w}"
        if k is None or max(outside) >= NODATA or min(outside) < 0:
            raise RasterError(f"{info.url}: {what} not {'a class number' if len(bad) == 1 else 'class numbers'} "
                              f"(0..{NODATA - 1}; {NODATA} is ignored), "
                              f"{where}")
        raise RasterError(f"{info.url}: {what} outside {source or f'{k} classes'} (0..{k - 1}), {where}; "
                          f"pass --num-classes {max(outside) + 1} to train on {'it' if len(bad) == 1 else 'them'}")
    if not hist.any():
        raise RasterError(f"{info.url}: no labelled pixel (every pixel is the ignore value {NODATA}"
                          + (f" or the raster's nodata {info.nodata:g}" if info.nodata is not None else "")
                          + "); nothing to train on")
    return hist


def scan_labels(infos: list[RasterInfo], k: int | None, source: str = "", chunk: int = CHUNK) -> list[np.ndarray]:
    """Every label raster scanned whole here, chunk after chunk: the class histogram of each."""
    return [merge_scans(info, [scan_chunk(info.url, w, k) for w in label_chunks(info, chunk)], k, source)
            for info in infos]
