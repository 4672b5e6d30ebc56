"""The stages of a mosaic, without Ray: chunks of the full resolution, overview levels, the record.

    mosaic_chunks   chunk numbers -> each chunk warped from the scenes that cover it, merged, written
    build_level     chunk numbers of an overview level -> 2x2 mode of the level below, written
    finish          consolidated metadata, the record (last) and the STAC Collection

Warping is nearest neighbour on exact PROJ transforms of every pixel centre
(:mod:`geoseg.mosaic.warp`: an affine map within one CRS; across CRSs exact transforms on a lattice
of the output grid, interpolated, and recomputed exactly wherever that could change the pixel), chunk by
chunk: only the window of a scene that a chunk covers is read, never a whole
scene, and a pixel is the same whichever chunk computes it. Overlaps are merged by a rule
(:mod:`geoseg.mosaic.merge`: by place, ``confidence`` and ``latest``; by time, ``mode``,
``mean-probability``, ``latest-clear`` and ``first-clear``), streaming over the scenes of a
chunk. Beside the classes, ``count`` holds each pixel's clear observations and, with
``--frequencies``, ``frequencies`` each class's share of them. Nodata where no scene covers.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import numpy as np

from geoseg.version import __version__
from geoseg.data import output, storage
from geoseg.data.classes import NODATA, ClassScheme
from geoseg.mosaic.merge import NEEDS_PROBABILITIES, RULES, Merge
from geoseg.mosaic.plan import MosaicPlan, MosaicScene, kind
from geoseg.data.tiling import Window
from geoseg.mosaic.warp import lookup

LOG_EVERY_S = 5.0  # a task logs the chunks it finished at least this often (one small object each time)


def _is_set(bitmap, i: int) -> bool:
    return bitmap is not None and bool((bitmap[i >> 3] >> (7 - (i & 7))) & 1)


def chunk_transform(plan: MosaicPlan, win: Window, level: int = 0):
    from affine import Affine

    a, b, c, d, e, f = plan.level_transform(level)
    return Affine(a, b, c + a * win.col_off, d, e, f + e * win.row_off)


def warp_scene(scene: MosaicScene, plan: MosaicPlan, win: Window, proba: bool, box=None
               ) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``(classes, probabilities (k, h, w) or None)`` of ``scene`` on the chunk ``win`` (nearest
    neighbour on exact transforms, :mod:`geoseg.mosaic.warp`), NODATA / 0 outside it; None where
    the scene does not reach the chunk. Only the window of the scene the chunk needs is read."""
    import rasterio

    found = lookup(scene, plan.crs, chunk_transform(plan, win), win.height, win.width, box,
                   (win.row_off, win.col_off))
    if found is None:
        return None
    with storage.gdal_env():
        with rasterio.open(scene.cog) as src:
            classes = src.read(1, window=found.window.to_rasterio())
    out = found.take(classes, NODATA)
    if not (out != NODATA).any():
        return None
    probs = None
    if proba:
        import zarr

        arr = zarr.open_array(storage.zarr_store(scene.zarr, read_only=True), path="probabilities", mode="r")
        rows, cols = found.window.slices
        probs = found.take(np.asarray(arr[:, rows, cols]), 0)
        probs[:, out == NODATA] = 0
    return out, probs


def mosaic_chunk(plan: MosaicPlan, i: int) -> Merge:
    """Chunk ``i`` of the full resolution: every scene that reaches it, warped and merged in order
    (:class:`~geoseg.mosaic.merge.Merge`: running sums, flat in the number of scenes)."""
    win = plan.window(i)
    t = chunk_transform(plan, win)
    west, north = t.c, t.f
    east, south = west + t.a * win.width, north + t.e * win.height
    b = plan.bounds
    hit = np.flatnonzero((b[:, 0] < east) & (b[:, 2] > west) & (b[:, 1] < north) & (b[:, 3] > south))
    proba = plan.rule in NEEDS_PROBABILITIES or (plan.rule == "mode" and all(s.probabilities for s in plan.scenes))
    merged = Merge(plan.rule, (win.height, win.width), plan.k, proba, plan.frequencies)
    for k in sorted(hit, key=lambda k: plan.scenes[k].order):
        warped = warp_scene(plan.scenes[k], plan, win, proba, b[k])
        if warped is not None:
            merged.add(*warped)
    return merged


def _array(url: str, level: int, mode: str = "r+", path: str = "classes"):
    import zarr

    where = url if level == 0 else storage.join(url, "overviews", str(level))
    arr = zarr.open_array(storage.zarr_store(where, read_only=mode == "r"), path=path, mode=mode)
    # every chunk written holds data (those no scene reaches are never written): zarr's test for
    # chunks of the fill value alone took 3/4 of each write
    return arr if mode == "r" else arr.with_config({"write_empty_chunks": True})


def mosaic_chunks(plan: MosaicPlan, lo: int, hi: int) -> dict:
    """Write chunks ``lo`` to ``hi`` of the full resolution (those not logged done), each once, then
    log them done. Returns ``{"chunks", "pixels", "seconds"}``."""
    t0 = time.perf_counter()
    arr = _array(plan.url, 0)
    counts = _array(plan.url, 0, path="count")
    frequencies = _array(plan.url, 0, path="frequencies") if plan.frequencies else None
    done, pixels, todo, logged, last = plan.done.get(0), 0, [], 0, time.perf_counter()
    for i in range(lo, hi):
        if _is_set(done, i):
            continue
        if time.perf_counter() - last >= LOG_EVERY_S:  # a kill redoes at most this much of the task's work
            output.log_done(plan.log, np.asarray(todo[logged:], np.int64), kind=kind(0))
            logged, last = len(todo), time.perf_counter()
        win = plan.window(i)
        merged = mosaic_chunk(plan, i)
        block = merged.result()
        if (block != NODATA).any():  # a chunk no scene reaches stays the fill value (nodata)
            arr[win.slices] = block
            counts[win.slices] = merged.count
            if frequencies is not None:
                frequencies[(slice(None), *win.slices)] = merged.frequencies()
        pixels += win.size
        todo.append(i)
    output.log_done(plan.log, np.asarray(todo[logged:], np.int64), kind=kind(0))
    return {"chunks": len(todo), "pixels": pixels, "seconds": time.perf_counter() - t0}


def mode2x2(block: np.ndarray) -> np.ndarray:
    """Halve a class map: each output pixel the most frequent class of its 2x2 input pixels
    (nodata ignored; ties: the smaller class number; nodata where all four are)."""
    h, w = block.shape
    padded = np.full((h + h % 2, w + w % 2), NODATA, np.uint8)
    padded[:h, :w] = block
    quads = (padded[0::2, 0::2], padded[0::2, 1::2], padded[1::2, 0::2], padded[1::2, 1::2])
    out = np.full(quads[0].shape, NODATA, np.uint8)
    best = np.zeros(quads[0].shape, np.uint8)
    for c in np.flatnonzero(np.bincount(padded.ravel(), minlength=256)):
        if c == NODATA:
            continue
        n = (quads[0] == c).view(np.uint8) + (quads[1] == c).view(np.uint8)  # a sum of planes: several
        n += (quads[2] == c).view(np.uint8)  # times a sum over a strided axis
        n += (quads[3] == c).view(np.uint8)
        more = n > best
        out[more], best[more] = c, n[more]
    return out


def build_level(plan: MosaicPlan, level: int, lo: int, hi: int) -> dict:
    """Write chunks ``lo`` to ``hi`` of overview ``level`` from the level below (2x2 mode)."""
    t0 = time.perf_counter()
    below, arr = _array(plan.url, level - 1, "r"), _array(plan.url, level)
    h, w = plan.shape(level - 1)
    done, todo, logged, last = plan.done.get(level), [], 0, time.perf_counter()
    for i in range(lo, hi):
        if _is_set(done, i):
            continue
        if time.perf_counter() - last >= LOG_EVERY_S:
            output.log_done(plan.log, np.asarray(todo[logged:], np.int64), kind=kind(level))
            logged, last = len(todo), time.perf_counter()
        win = plan.window(i, level)
        r0, c0 = 2 * win.row_off, 2 * win.col_off
        src = np.asarray(below[r0 : min(h, r0 + 2 * win.height), c0 : min(w, c0 + 2 * win.width)])
        block = mode2x2(src)[: win.height, : win.width]
        if (block != NODATA).any():
            arr[win.slices] = block
        todo.append(i)
    output.log_done(plan.log, np.asarray(todo[logged:], np.int64), kind=kind(level))
    return {"chunks": len(todo), "seconds": time.perf_counter() - t0}


def finish(plan: MosaicPlan, classes: ClassScheme, timings: dict, extra: dict | None = None) -> dict:
    """Consolidate the store's metadata, drop its progress log, write its record (last: a store
    without it is incomplete). Returns the record."""
    import warnings

    import zarr

    from rasterio.warp import transform_bounds

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(storage.zarr_store(plan.url))
    storage.remove(plan.log.progress, recursive=True)
    a, _, c, _, e, f = plan.transform
    west, east = sorted((c, c + a * plan.width))
    south, north = sorted((f, f + e * plan.height))
    times = sorted(s.acquired for s in plan.scenes if s.acquired)
    record = {
        "status": "complete",
        "zarr": plan.url,
        "crs": plan.crs,
        "transform": list(plan.transform),
        "shape": [plan.height, plan.width],
        "chunk": plan.chunk,
        "levels": [{"level": lvl, "shape": list(plan.shape(lvl)),
                    "path": "." if lvl == 0 else f"overviews/{lvl}"} for lvl in range(plan.levels + 1)],
        "merge": {"rule": plan.rule, "meaning": RULES[plan.rule], "from": plan.since, "to": plan.until},
        "layers": {"classes": "the merged class", "count": "clear observations (uint16)",
                   **({"frequencies": "share of the clear observations in each class (uint8, 255 = all)"}
                      if plan.frequencies else {})},
        "scenes": [{"stem": s.stem, "cog": s.cog, "order": s.order, "acquired": s.acquired} for s in plan.scenes],
        "bbox_4326": list(transform_bounds(plan.crs, "EPSG:4326", west, south, east, north, densify_pts=21)),
        "interval": [times[0], times[-1]] if times else None,
        "fingerprint": plan.fingerprint,
        "classes": classes.to_dict(),
        "timings_s": {k: round(float(v), 3) for k, v in timings.items()},
        **(extra or {}),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
        "versions": {"geoseg": __version__},
    }
    storage.write_text(plan.record, json.dumps(record, indent=1))
    return record


def write_collection(prefix: str, name: str, records: list[dict], classes: ClassScheme) -> str:
    """``PREFIX/<name>.collection.json``: a STAC Collection of the mosaic, one Zarr asset per store."""
    from geoseg.data.catalog import _classes

    boxes = np.asarray([r["bbox_4326"] for r in records])
    from geoseg.data.catalog import utc_time

    times = sorted(utc_time(t) for r in records if r["interval"] for t in r["interval"] if utc_time(t))
    assets = {}
    for r in records:
        key = storage.stem(r["zarr"])
        assets[key] = {"href": storage.absolute(r["zarr"]), "type": "application/vnd+zarr", "roles": ["data"],
                       "title": f"class map on {r['crs']} ({r['merge']['rule']} merge)",
                       "proj:code": r["crs"] if r["crs"].startswith(("EPSG:", "ESRI:")) else None,
                       "proj:shape": r["shape"], "proj:transform": r["transform"][:6],
                       "classification:classes": _classes(classes)}
        assets[f"{key}-record"] = {"href": storage.absolute(storage.join(prefix, f"{key}.json")), "type": "application/json",
                                   "roles": ["metadata"]}
    url = storage.join(prefix, f"{name}.collection.json")
    doc = {
        "type": "Collection", "stac_version": "1.1.0", "id": name,
        "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                            "https://stac-extensions.github.io/classification/v2.0.0/schema.json"],
        "description": f"geoseg mosaic of {sum(len(r['scenes']) for r in records)} scenes",
        "license": "other",
        "extent": {"spatial": {"bbox": [[float(boxes[:, 0].min()), float(boxes[:, 1].min()),
                                         float(boxes[:, 2].max()), float(boxes[:, 3].max())]]},
                   "temporal": {"interval": [[times[0], times[-1]] if times else [None, None]]}},
        "summaries": {"classification:classes": _classes(classes)},
        "assets": assets,
        "links": [{"rel": "self", "href": storage.absolute(url), "type": "application/json"},
                  *[{"rel": "derived_from", "href": storage.absolute(storage.join(prefix, f"{s['stem']}.item.json")),
                     "type": "application/geo+json"} for r in records for s in r["scenes"][:1000]]],
    }
    storage.write_text(url, json.dumps(doc, indent=1))
    return url
