"""The stages of a mosaic, without Ray: chunks of the full resolution, overview levels, the record.

    mosaic_chunks   chunk numbers -> each chunk warped from the scenes that cover it, merged, written
    build_level     chunk numbers of an overview level -> 2x2 mode of the level below, written
    finish          consolidated metadata, the record (last) and the STAC Collection

Warping is nearest neighbour on exact PROJ transforms of every pixel centre
(:func:`source_pixels`: an affine map within one CRS; across CRSs exact transforms on a lattice
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

LOG_EVERY_S = 5.0  # a task logs the chunks it finished at least this often (one small object each time)


def _is_set(bitmap, i: int) -> bool:
    return bitmap is not None and bool((bitmap[i >> 3] >> (7 - (i & 7))) & 1)


def chunk_transform(plan: MosaicPlan, win: Window, level: int = 0):
    from affine import Affine

    a, b, c, d, e, f = plan.level_transform(level)
    return Affine(a, b, c + a * win.col_off, d, e, f + e * win.row_off)


LATTICE = 32  # px of the output grid between the exact transforms that positions are interpolated from
SLACK = 1e-6  # source px: interpolation error allowed beyond twice the largest measured


def source_pixels(scene: MosaicScene, crs: str, dst_t, height: int, width: int, box=None, offset=(0, 0)
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest-neighbour warp: for each pixel centre of a ``height`` x ``width`` chunk with
    transform ``dst_t`` in ``crs`` (at ``offset`` = (row, col) of the output grid), the ``(row, col)``
    of the ``scene`` pixel that holds it (the exact PROJ transform of the centre, the scene's own
    geotransform: the same pixel whichever chunk asks) and whether it is inside the scene. ``box``:
    the scene's bounds in ``crs``; only centres inside it are looked up.

    The same CRS needs no PROJ call at all. Otherwise positions are interpolated (bilinear) between
    exact transforms on a lattice of the *output grid* (every ``LATTICE`` px), and every pixel whose
    interpolated position lies within twice the interpolation's measured error (+ ``SLACK``) of a
    source pixel's edge is transformed exactly: the result is the exact transform's."""
    from affine import Affine

    inv = ~Affine(*scene.transform)
    if scene.crs == crs and dst_t.b == dst_t.d == 0 and inv.b == inv.d == 0:  # north-up, one CRS: per row
        xs = dst_t.c + dst_t.a * (np.arange(width) + 0.5)  # and column, as below (0 * x adds nothing)
        ys = dst_t.f + dst_t.e * (np.arange(height) + 0.5)
        fc, fr = np.floor(inv.c + inv.a * xs).astype(np.int64), np.floor(inv.f + inv.e * ys).astype(np.int64)
        if box is not None:
            fc[(xs < box[0]) | (xs > box[2])], fr[(ys < box[1]) | (ys > box[3])] = -1, -1
        okc, okr = (fc >= 0) & (fc < scene.width), (fr >= 0) & (fr < scene.height)
        return (np.broadcast_to(np.where(okr, fr, -1)[:, None], (height, width)),
                np.broadcast_to(np.where(okc, fc, -1)[None, :], (height, width)), okr[:, None] & okc[None, :])
    if scene.crs != crs and dst_t.b == dst_t.d == 0:  # north-up: centres per column and row, as below
        xs, ys = dst_t.c + dst_t.a * (np.arange(width) + 0.5), dst_t.f + dst_t.e * (np.arange(height) + 0.5)
        if box is None or (xs.min() >= box[0] and xs.max() <= box[2] and ys.min() >= box[1] and ys.max() <= box[3]):
            return _interpolated_pixels(scene, crs, dst_t, height, width, offset, inv, xs, ys)  # all inside
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    xs, ys = dst_t.c + dst_t.a * cols + dst_t.b * rows, dst_t.f + dst_t.d * cols + dst_t.e * rows
    inside = np.ones((height, width), bool) if box is None else (
        (xs >= box[0]) & (xs <= box[2]) & (ys >= box[1]) & (ys <= box[3]))
    r = np.full((height, width), -1, np.int64)
    c = np.full((height, width), -1, np.int64)
    if inside.any():

        def exact(x, y):
            if scene.crs != crs:
                from rasterio.warp import transform

                x, y = (np.asarray(v) for v in transform(crs, scene.crs, x, y))
            return inv.c + inv.a * x + inv.b * y, inv.f + inv.d * x + inv.e * y

        if scene.crs == crs:  # an affine map: no PROJ call
            fc, fr = exact(xs[inside], ys[inside])
        else:
            fc, fr = _interpolated(exact, dst_t, height, width, offset)
            fc, fr = fc[inside], fr[inside]
            near = ~_clear_of_edges(fc, fr, _bound(exact, dst_t, height, width, offset))
            if near.any():
                fc[near], fr[near] = exact(xs[inside][near], ys[inside][near])
        c[inside], r[inside] = np.floor(fc).astype(np.int64), np.floor(fr).astype(np.int64)
    ok = (r >= 0) & (r < scene.height) & (c >= 0) & (c < scene.width)
    return r, c, ok


def _interpolated_pixels(scene, crs, dst_t, height, width, offset, inv, xs, ys):
    """:func:`source_pixels` of a north-up chunk inside the scene's box, in another CRS (``xs``, ``ys``:
    the centres of its columns and rows)."""
    from rasterio.warp import transform

    def exact(x, y):
        x, y = (np.asarray(v) for v in transform(crs, scene.crs, x, y))
        return inv.c + inv.a * x + inv.b * y, inv.f + inv.d * x + inv.e * y

    fc, fr = _interpolated(exact, dst_t, height, width, offset)
    near = ~_clear_of_edges(fc, fr, _bound(exact, dst_t, height, width, offset))
    if near.any():
        rr, cc = np.nonzero(near)
        fc[near], fr[near] = exact(xs[cc], ys[rr])
    c, r = np.floor(fc).astype(np.int64), np.floor(fr).astype(np.int64)
    return r, c, (r >= 0) & (r < scene.height) & (c >= 0) & (c < scene.width)


def _lattice(dst_t, height: int, width: int, offset) -> tuple[np.ndarray, np.ndarray]:
    """Chunk-local centre coordinates (cols, rows) of the output grid's lattice points around the chunk."""
    r0, c0 = offset
    lr = np.arange(r0 // LATTICE, (r0 + height - 1) // LATTICE + 2) * LATTICE - r0 + 0.5
    lc = np.arange(c0 // LATTICE, (c0 + width - 1) // LATTICE + 2) * LATTICE - c0 + 0.5
    return lc, lr


def _exact_at(exact, dst_t, lc: np.ndarray, lr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = np.meshgrid(lc, lr)
    fc, fr = exact((dst_t.c + dst_t.a * cols + dst_t.b * rows).ravel(),
                   (dst_t.f + dst_t.d * cols + dst_t.e * rows).ravel())
    return fc.reshape(cols.shape), fr.reshape(cols.shape)


def _interpolated(exact, dst_t, height: int, width: int, offset) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel's source position, bilinear between the lattice's exact ones."""
    lc, lr = _lattice(dst_t, height, width, offset)
    grid = _exact_at(exact, dst_t, lc, lr)
    gr, gc = offset[0] + np.arange(height), offset[1] + np.arange(width)
    ky, kx = gr // LATTICE - offset[0] // LATTICE, gc // LATTICE - offset[1] // LATTICE
    ty, tx = ((gr % LATTICE) / LATTICE)[:, None], (gc % LATTICE) / LATTICE
    out = []
    for g in grid:  # separable: along each lattice row first, then between the rows
        along = (1 - tx) * g[:, kx] + tx * g[:, kx + 1]
        out.append((1 - ty) * along[ky] + ty * along[ky + 1])
    return out[0], out[1]


def _bound(exact, dst_t, height: int, width: int, offset) -> float:
    """Twice the largest difference (source px) between interpolated and exact positions at the
    lattice cells' centres and edge midpoints (where a smooth map's bilinear error peaks), + SLACK."""
    lc, lr = _lattice(dst_t, height, width, offset)
    half = LATTICE / 2
    grid = _exact_at(exact, dst_t, lc, lr)
    worst = 0.0
    for cols, rows, mean in ((lc[:-1] + half, lr[:-1] + half, lambda g: (g[:-1, :-1] + g[:-1, 1:] + g[1:, :-1]
                                                                         + g[1:, 1:]) / 4),
                             (lc[:-1] + half, lr, lambda g: (g[:, :-1] + g[:, 1:]) / 2),
                             (lc, lr[:-1] + half, lambda g: (g[:-1] + g[1:]) / 2)):
        for want, g in zip(_exact_at(exact, dst_t, cols, rows), grid):
            err = np.abs(want - mean(g))
            if not np.isfinite(err).all():
                return np.inf
            worst = max(worst, float(err.max(initial=0.0)))
    return 2 * worst + SLACK


def _clear_of_edges(fc: np.ndarray, fr: np.ndarray, bound: float) -> np.ndarray:
    """Positions farther than ``bound`` from every pixel edge (finite): their floor is certain."""
    with np.errstate(invalid="ignore"):
        return ((np.abs(fc - np.rint(fc)) > bound) & (np.abs(fr - np.rint(fr)) > bound)
                & np.isfinite(fc) & np.isfinite(fr))


def warp_scene(scene: MosaicScene, plan: MosaicPlan, win: Window, proba: bool, box=None
               ) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``(classes, probabilities (k, h, w) or None)`` of ``scene`` on the chunk ``win`` (nearest
    neighbour, :func:`source_pixels`), NODATA / 0 outside it; None where the scene does not
    reach the chunk. Only the window of the scene the chunk needs is read."""
    import rasterio

    r, c, ok = source_pixels(scene, plan.crs, chunk_transform(plan, win), win.height, win.width, box,
                             (win.row_off, win.col_off))
    if not ok.any():
        return None
    r0, r1, c0, c1 = r[ok].min(), r[ok].max() + 1, c[ok].min(), c[ok].max() + 1
    src_win = Window(int(r0), int(c0), int(r1 - r0), int(c1 - c0))
    with storage.gdal_env():
        with rasterio.open(scene.cog) as src:
            classes = src.read(1, window=src_win.to_rasterio())
    out = np.full((win.height, win.width), NODATA, np.uint8)
    rr, cc = r[ok] - r0, c[ok] - c0
    out[ok] = classes[rr, cc]
    probs = None
    if proba:
        import zarr

        arr = zarr.open_array(storage.zarr_store(scene.zarr, read_only=True), path="probabilities", mode="r")
        rows, cols = src_win.slices
        stored = np.asarray(arr[:, rows, cols])
        probs = np.zeros((stored.shape[0], win.height, win.width), np.uint8)
        probs[:, ok] = stored[:, rr, cc]
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
    return zarr.open_array(storage.zarr_store(where, read_only=mode == "r"), path=path, mode=mode)


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
    quads = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).transpose(0, 2, 1, 3).reshape(
        padded.shape[0] // 2, padded.shape[1] // 2, 4)
    out = np.full(quads.shape[:2], NODATA, np.uint8)
    best = np.zeros(quads.shape[:2], np.uint8)
    for c in np.unique(quads):
        if c == NODATA:
            continue
        n = (quads == c).sum(axis=-1, dtype=np.uint8)
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
