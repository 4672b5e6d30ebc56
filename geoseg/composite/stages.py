"""The stages of a composite, without Ray: one output tile at a time, then the catalogue.

    composite_tile   one output tile: per window, every observation that reaches it read onto the
                     tile (only the window of each band asset it covers), masked, reduced; a COG and a
                     STAC item per window, then the tile's stack (a VRT of every window's bands): done
    write_catalog    the STAC Collection of every tile's items, the list of stacks

Each band asset is read on its own grid and put on the tile by nearest neighbour on exact
transforms of the tile's pixel centres (:func:`geoseg.mosaic.lookup`, as ``geoseg mosaic`` does):
a pixel of the composite is one source pixel of each observation, never a blend of pixels (so a
median is a median of values that were observed), and bands of another resolution (a 20 m SCL or
SWIR band under 10 m bands) fall on the same grid. An observation's pixel is clear where every
band holds a value (not nodata, inside the asset) and the mask (``--mask``) does not mask it.

Memory is flat in the number of observations: each one is read onto the tile once; up to
``MEMORY`` bytes they are held in memory, beyond it they go to a scratch file (the operating
system's page cache, not the task's memory), and the statistic runs on strips of rows whose
observations fit in ``MEMORY``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from geoseg.data import storage
from geoseg.data.bands import COUNT, WINDOW_TAG
from geoseg.composite.plan import CompositePlan, Observation, TimeWindow
from geoseg.composite.stats import reduce

MEMORY = 64 << 20  # bytes of warped observations a task holds at once (beyond: a scratch file)
READERS = 4  # observations read at once by a task (reads wait on storage)
NODATA = 0.0  # the composite's nodata: no clear observation (count 0)


class ObservationStack:
    """Observations on a tile, ``(n, bands, h, w)`` float32 (NaN: not clear): in memory up to
    ``budget`` bytes, else in a scratch file; read back in strips of rows that fit ``budget``."""

    def __init__(self, n: int, bands: int, h: int, w: int, budget: int = MEMORY):
        self.shape, self.budget = (n, bands, h, w), budget
        self.plane = h * w * 4
        self.data, self.fd = None, None
        if n * bands * self.plane <= budget:
            self.data = _buffer(n * bands * h * w).reshape(n, bands, h, w)  # every slot read is written (put)
        else:
            fd, path = tempfile.mkstemp(prefix="geoseg-composite-", suffix=".f32")
            os.unlink(path)  # gone with the task, whatever ends it
            os.ftruncate(fd, n * bands * self.plane)
            self.fd = fd

    @property
    def rows(self) -> int:
        n, bands, h, w = self.shape
        return max(1, min(h, self.budget // max(1, 2 * n * bands * w * 4)))  # the strip and its sorted copy

    def put(self, k: int, obs: np.ndarray) -> None:
        if self.data is not None:
            self.data[k] = obs
            return
        for b in range(obs.shape[0]):
            os.pwrite(self.fd, np.ascontiguousarray(obs[b], np.float32).tobytes(), (k * obs.shape[0] + b) * self.plane)

    def strip(self, r0: int, r1: int) -> np.ndarray:
        n, bands, h, w = self.shape
        if self.data is not None:
            return self.data[:, :, r0:r1]
        out = np.empty((n, bands, r1 - r0, w), np.float32)
        size = (r1 - r0) * w * 4
        for k in range(n):
            for b in range(bands):
                buf = os.pread(self.fd, size, (k * bands + b) * self.plane + r0 * w * 4)
                out[k, b] = np.frombuffer(buf, np.float32).reshape(r1 - r0, w)
        return out

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.data = None


_BUFFER: list = []  # this process's stack memory, reused by its next tiles (its pages touched once)


def _buffer(size: int) -> np.ndarray:
    if not _BUFFER or _BUFFER[0].size < size:
        _BUFFER[:] = [np.empty(size, np.float32)]
    return _BUFFER[0][:size]


def _read(layer, found) -> tuple[np.ndarray, float | None]:
    import rasterio

    with rasterio.open(layer.href) as src:
        raw = src.read(layer.band, window=found.window.to_rasterio())
        return raw, (layer.nodata if layer.nodata is not None else src.nodata)


def warp_observation(plan: CompositePlan, obs: Observation, transform, side: int, offset) -> np.ndarray | None:
    """``obs`` on the tile: ``(bands, side, side)`` float32, NaN where it is not a clear look; None
    where it has no clear pixel there."""
    from affine import Affine

    from geoseg.mosaic import lookup

    dst = Affine(*transform)
    found: dict = {}

    def onto(layer):
        if layer.grid_key not in found:
            found[layer.grid_key] = lookup(layer, plan.crs, dst, side, side, obs.bounds, offset)
        return found[layer.grid_key]

    def values(layer) -> np.ndarray | None:
        where = onto(layer)
        if where is None:
            return None
        raw, nodata = _read(layer, where)
        v = raw.astype(np.float32)
        if nodata is not None:
            v[raw == nodata] = np.nan
        if layer.scale != 1.0 or layer.offset != 0.0:
            v = v * np.float32(layer.scale) + np.float32(layer.offset)
        return where.take(v, np.float32(np.nan))

    out = np.empty((len(obs.layers), side, side), np.float32)
    with storage.gdal_env():
        for b, layer in enumerate(obs.layers):
            v = values(layer)
            if v is None:
                return None
            out[b] = v
        bad = np.isnan(out).any(axis=0)
        if plan.mask.kind in ("values", "bits"):
            where = onto(obs.mask[0])
            if where is not None:
                raw, _ = _read(obs.mask[0], where)
                bad |= where.take(plan.mask.decode(raw), False)
        elif plan.mask.kind == "model":
            bad |= _cloudy(plan, obs, values)
    if bad.all():
        return None
    out[:, bad] = np.nan
    return out


_CLOUD = {}


def _cloudy(plan: CompositePlan, obs: Observation, values) -> np.ndarray:
    """Cloud and shadow of ``ukis-csmask``'s model on the observation's blue, green, red, nir."""
    from geoseg.models.cloud import CloudModel, factor_for

    if plan.mask.level not in _CLOUD:
        _CLOUD[plan.mask.level] = CloudModel(plan.mask.level, threads=1)
    bands = np.stack([np.nan_to_num(values(layer)) for layer in obs.mask])
    scaled = any(la.scale != 1.0 or la.offset != 0.0 for la in obs.mask)
    metres = plan.resolution if plan.crs != "EPSG:4326" else plan.resolution * 111_000
    return _CLOUD[plan.mask.level].masked(bands[None], 1.0 if scaled else 1e-4, factor_for(metres))[0]


def _overlapping(bounds: np.ndarray, box) -> np.ndarray:
    w, s, e, n = box
    return (bounds[:, 0] < e) & (bounds[:, 2] > w) & (bounds[:, 1] < n) & (bounds[:, 3] > s)


def composite_tile(plan: CompositePlan, i: int) -> dict:
    """Tile ``i``: every window's composite (a COG and its STAC item each), then the tile's stack,
    last. Returns ``{"tile", "pixels", "observations", "clear", "seconds"}``."""
    from geoseg.data.cog import CogWriter
    from geoseg.data.tiling import Window

    t0 = time.perf_counter()
    side, transform = plan.side, plan.tile_transform(i)
    col, row = plan.tiles[i]
    offset = (-(row + 1) * side, col * side)  # the tile's place on the grid: the warp's lattice is the grid's
    hits = _overlapping(plan.bounds, plan.tile_bounds(i))
    seen = clear = 0
    for w, window in enumerate(plan.windows):
        members = [k for k in plan.members[w] if hits[k]]
        stack = ObservationStack(len(members), len(plan.bands), side, side)
        try:
            with ThreadPoolExecutor(READERS) as pool:
                n = 0
                for obs in _in_order(pool, lambda k: warp_observation(plan, plan.observations[k], transform, side,
                                                                      offset), members, READERS + 1):
                    if obs is not None:
                        stack.put(n, obs)
                        n += 1
            stack.shape = (n, *stack.shape[1:])
            seen += n
            names = [f"{b}@{window.name}" for b in plan.bands] + [f"{COUNT}@{window.name}"]
            with CogWriter(plan.cog(i, window), height=side, width=side, count=len(names), dtype="float32",
                           crs=plan.crs, transform=transform, nodata=NODATA, descriptions=names,
                           tags=_tags(plan, window), resampling="AVERAGE",
                           scratch_compress="NONE") as cog:
                for r0 in range(0, side, stack.rows):
                    r1 = min(side, r0 + stack.rows)
                    values, count = reduce(stack.strip(r0, r1), plan.statistic)
                    clear += int(count.sum())
                    cog.write(Window(r0, 0, r1 - r0, side), np.concatenate([values, count[None].astype(np.float32)]))
        finally:
            stack.close()
        storage.write_text(plan.item(i, window), json.dumps(tile_item(plan, i, window, names, n), indent=1))
    storage.write_text(plan.stack(i), stack_vrt(plan, i))  # last: the tile is done
    return {"tile": plan.tile_id(i), "pixels": side * side * len(plan.windows), "observations": seen,
            "clear": clear, "seconds": time.perf_counter() - t0}


def _in_order(pool, fn, items, ahead: int):
    """``fn`` of each item on ``pool``, in order, at most ``ahead`` in flight or waiting (memory)."""
    from collections import deque

    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _tags(plan: CompositePlan, *windows: TimeWindow) -> dict:
    return {"GEOSEG_COMPOSITE": plan.statistic, "GEOSEG_FINGERPRINT": plan.fingerprint,
            **{f"{WINDOW_TAG}{w.name}": w.dates for w in (windows or plan.windows)}}


def _bbox_4326(plan: CompositePlan, i: int) -> list[float]:
    from rasterio.warp import transform_bounds

    return [round(v, 9) for v in transform_bounds(plan.crs, "EPSG:4326", *plan.tile_bounds(i), densify_pts=21)]


def tile_item(plan: CompositePlan, i: int, window: TimeWindow, names: list[str], observations: int) -> dict:
    """The STAC Item of one tile's composite over one window."""
    w, s, e, n = _bbox_4326(plan, i)
    props = {"datetime": None, "start_datetime": f"{window.start or '0001-01-01'}T00:00:00Z",
             "end_datetime": f"{window.end or '9999-12-31'}T23:59:59Z",
             "proj:code": plan.crs if plan.crs.startswith(("EPSG:", "ESRI:")) else None,
             "proj:shape": [plan.side, plan.side], "proj:transform": list(plan.tile_transform(i)),
             "geoseg:statistic": plan.statistic, "geoseg:window": window.name, "geoseg:observations": observations}
    if window.start is None and window.end is None:
        times = sorted(o.when for o in plan.observations if o.when)
        props["start_datetime"], props["end_datetime"] = (times[0], times[-1]) if times else (None, None)
        props["datetime"] = None if times else "1970-01-01T00:00:00Z"
    return {
        "type": "Feature", "stac_version": "1.1.0", "id": f"{plan.tile_id(i)}_{window.name}",
        "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "bbox": [w, s, e, n], "properties": {k: v for k, v in props.items() if v is not None or k == "datetime"},
        "assets": {"composite": {
            "href": plan.cog(i, window), "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"], "title": f"{plan.statistic} of the clear observations, {window.dates}",
            "bands": [{"name": n_, "data_type": "float32", "nodata": NODATA} for n_ in names]}},
        "links": [{"rel": "self", "href": plan.item(i, window), "type": "application/geo+json"}],
    }


def stack_vrt(plan: CompositePlan, i: int) -> str:
    """A VRT of every window's bands of tile ``i`` (``red@planting``, ..., ``count@harvest``), one grid."""
    import html

    from rasterio.crs import CRS

    from geoseg.data.stac import gdal_path

    a, b, c, d, e, f = plan.tile_transform(i)
    side = plan.side
    parts = [f'<VRTDataset rasterXSize="{side}" rasterYSize="{side}">',
             f"  <SRS>{html.escape(CRS.from_user_input(plan.crs).to_wkt())}</SRS>",
             f"  <GeoTransform>{c!r}, {a!r}, {b!r}, {f!r}, {d!r}, {e!r}</GeoTransform>", "  <Metadata>"]
    parts += [f'    <MDI key="{html.escape(k)}">{html.escape(v)}</MDI>' for k, v in _tags(plan).items()]
    parts.append("  </Metadata>")
    k = 0
    for window in plan.windows:
        for j, name in enumerate([*plan.bands, COUNT], start=1):
            k += 1
            parts += [f'  <VRTRasterBand dataType="Float32" band="{k}" blockXSize="512" blockYSize="512">',
                      f"    <Description>{html.escape(f'{name}@{window.name}')}</Description>",
                      f"    <NoDataValue>{NODATA!r}</NoDataValue>", "    <SimpleSource>",
                      f'      <SourceFilename relativeToVRT="0">{html.escape(gdal_path(plan.cog(i, window)))}'
                      "</SourceFilename>",
                      f"      <SourceBand>{j}</SourceBand>",
                      f'      <SrcRect xOff="0" yOff="0" xSize="{side}" ySize="{side}"/>',
                      f'      <DstRect xOff="0" yOff="0" xSize="{side}" ySize="{side}"/>',
                      "    </SimpleSource>", "  </VRTRasterBand>"]
    parts.append("</VRTDataset>")
    return "\n".join(parts) + "\n"


def write_catalog(out: str, plans: list[CompositePlan], description: str) -> tuple[str, str]:
    """``OUT/collection.json`` (a STAC Collection linking every tile's items) and ``OUT/stacks.txt``
    (every tile's stack, for ``geoseg predict`` / ``train``). Returns their URLs."""
    from geoseg.composite.plan import STACKS

    boxes = np.asarray([_bbox_4326(p, i) for p in plans for i in range(len(p.tiles))])
    times = sorted(t for p in plans for w in p.windows for t in (w.start, w.end) if t)
    links = [{"rel": "item", "href": p.item(i, w), "type": "application/geo+json"}
             for p in plans for i in range(len(p.tiles)) for w in p.windows]
    first = plans[0]
    doc = {
        "type": "Collection", "stac_version": "1.1.0", "id": storage.stem(out.rstrip("/")) or "composite",
        "description": description, "license": "other",
        "extent": {"spatial": {"bbox": [[float(boxes[:, 0].min()), float(boxes[:, 1].min()),
                                         float(boxes[:, 2].max()), float(boxes[:, 3].max())]]},
                   "temporal": {"interval": [[f"{times[0]}T00:00:00Z", f"{times[-1]}T23:59:59Z"] if times
                                             else [None, None]]}},
        "summaries": {"geoseg:statistic": [first.statistic], "geoseg:window": [w.name for w in first.windows],
                      "bands": [f"{b}@{w.name}" for w in first.windows for b in (*first.bands, COUNT)]},
        "links": [{"rel": "self", "href": storage.join(out, "collection.json"), "type": "application/json"}, *links],
    }
    storage.write_text(storage.join(out, "collection.json"), json.dumps(doc, indent=1))
    listed = storage.join(out, f"{STACKS}.txt")
    storage.write_text(listed, "".join(f"{p.stack(i)}\n" for p in plans for i in range(len(p.tiles))))
    return storage.join(out, "collection.json"), listed
