"""Class maps to read: a single-band class raster (GeoTIFF / COG), the Zarr store of
``geoseg predict`` (its ``classes`` array, georeferenced by ``spatial_ref``) or a Zarr
store of one class array written by xarray / rioxarray.

Read window by window (:func:`open_class_map`) or decimated for pictures
(:func:`read_overview`), never whole at full resolution.
"""

from __future__ import annotations

import json

import numpy as np

from geoseg.data import storage
from geoseg.data.classes import NODATA, ClassScheme
from geoseg.errors import RasterError, StorageError
from geoseg.data.raster import RasterInfo, open_raster, read_decimated, read_info
from geoseg.data.tiling import iter_windows
from geoseg.data.tiling import Window


class RasterClassMap:
    """A single-band class raster read window by window.

    The dataset stays open between reads; each read runs in geoseg's GDAL settings
    (entered and left around it, so any number of class maps can be open at once and
    closed in any order)."""

    def __init__(self, info: RasterInfo):
        self.info = info
        self._src = None

    def __enter__(self):
        with storage.gdal_env():
            self._src = open_raster(self.info.url)
        return self

    def read(self, w: Window) -> np.ndarray:
        with storage.gdal_env():
            return self._src.read(1, window=w.to_rasterio())

    def __exit__(self, *exc) -> None:
        self._src.close()


class ZarrClassMap:
    """A class map in a Zarr store (v3 or v2): the ``classes`` array of ``geoseg predict``
    (refused while its run record is missing, i.e. unfinished), or the one 2-D integer array
    of a store written by xarray / rioxarray, georeferenced by its grid mapping variable
    (``spatial_ref``: ``crs_wkt`` / ``spatial_ref`` and ``GeoTransform``, else the pixel-centre
    ``x`` / ``y`` coordinates)."""

    def __init__(self, url: str):
        import zarr

        self.url = url
        try:
            root = zarr.open_group(storage.zarr_store(url, read_only=True), mode="r")
        except (FileNotFoundError, ValueError) as exc:
            raise RasterError(f"{url}: not a Zarr group ({exc})") from None
        self._array = root[_class_array(root, url)]
        attrs = dict(self._array.attrs)
        ref_name = attrs.get("grid_mapping") or "spatial_ref"
        ref = dict(root[ref_name].attrs) if ref_name in root else {}
        self.from_predict = "geoseg" in root.attrs
        if self.from_predict and not storage.exists(self.record):
            raise RasterError(f"{url}: incomplete (no run record {self.record}); "
                              "rerun the predict command to finish it")
        h, w = self._array.shape
        names = attrs.get("class_names") or []
        colors = attrs.get("class_colors") or [[128, 128, 128]] * len(names)
        tags = ClassScheme(tuple(names), tuple(tuple(x) for x in colors)).to_tags() if names else {}
        nodata = attrs.get("nodata", attrs.get("_FillValue", self._array.fill_value))
        self.info = RasterInfo(url=url, height=h, width=w, count=1, dtype=str(self._array.dtype),
                               crs=ref.get("crs_wkt") or ref.get("spatial_ref"),
                               transform=_zarr_transform(root, ref, url), descriptions=("classes",), tags=tags,
                               nodata=None if nodata is None else float(nodata))
        self.chunks = tuple(self._array.chunks)

    @property
    def record(self) -> str:
        """The run record beside the store (``<stem>.json``)."""
        return self.url.rstrip("/")[: -len(".zarr")] + ".json"

    @property
    def cog(self) -> str:
        """The COG that predict writes beside the store (``<stem>.tif``), with overviews."""
        return self.url.rstrip("/")[: -len(".zarr")] + ".tif"

    def __enter__(self):
        return self

    def read(self, w: Window) -> np.ndarray:
        rows, cols = w.slices
        return self._array[rows, cols]

    def __exit__(self, *exc) -> None:
        pass


def _class_array(root, url: str) -> str:
    """``classes``, else the group's one 2-D integer array."""
    if "classes" in root:
        return "classes"
    found = [name for name, arr in root.arrays() if arr.ndim == 2 and np.dtype(arr.dtype).kind in "iu"]
    if len(found) != 1:
        raise RasterError(f"{url}: not a class map (no 'classes' array, and {len(found)} 2-D integer arrays "
                          f"{sorted(found)} instead of one)")
    return found[0]


def _zarr_transform(root, ref: dict, url: str) -> tuple[float, ...]:
    """The affine ``(a, b, c, d, e, f)`` of a Zarr class map: GDAL's ``GeoTransform`` text, or
    the spacing of its pixel-centre coordinates."""
    if "GeoTransform" in ref:
        c, a, b, f, d, e = (float(v) for v in str(ref["GeoTransform"]).split())
        return (a, b, c, d, e, f)
    if "x" in root and "y" in root and root["x"].shape[0] > 1 and root["y"].shape[0] > 1:
        x0, x1 = (float(v) for v in root["x"][:2])
        y0, y1 = (float(v) for v in root["y"][:2])
        return (x1 - x0, 0.0, x0 - (x1 - x0) / 2, 0.0, y1 - y0, y0 - (y1 - y0) / 2)
    raise RasterError(f"{url}: no georeferencing (no spatial_ref GeoTransform, no x / y coordinates)")


def is_zarr(url: str) -> bool:
    return str(url).rstrip("/").endswith(".zarr")


def open_class_map(url: str) -> RasterClassMap | ZarrClassMap:
    """A class map to read: a Zarr store of ``geoseg predict`` or a single-band raster."""
    if is_zarr(url):
        if not (storage.exists(storage.join(url, "zarr.json")) or storage.exists(storage.join(url, ".zgroup"))):
            raise StorageError(f"{url}: not found (no zarr.json)")
        return ZarrClassMap(url)
    return RasterClassMap(read_info(url))


def scheme_of(info: RasterInfo) -> ClassScheme | None:
    """Class names and colours from a class map's tags (``CLASS_NAMES`` / ``CLASS_COLORS``)."""
    return ClassScheme.from_tags(info.tags)


def read_overview(url: str, max_side: int = 1024) -> tuple[np.ndarray, float]:
    """``(classes (h, w), scale)``: a class map at most ``max_side`` pixels a side, by
    nearest sampling (a COG's overviews, made with MODE, when it has them); ``scale`` is
    full-resolution pixels per returned pixel. A Zarr store of ``geoseg predict`` is read
    through the COG beside it, or else chunk by chunk, keeping every ``scale``-th pixel."""
    if is_zarr(url):
        cmap = open_class_map(url)
        if cmap.from_predict and storage.exists(cmap.cog):
            return read_overview(cmap.cog, max_side)
        return _strided(cmap, max_side)
    data, scale, _ = read_decimated(url, [1], max_side, "nearest")
    return data[0], scale


def _strided(cmap: ZarrClassMap, max_side: int) -> tuple[np.ndarray, float]:
    info = cmap.info
    step = max(1, int(np.ceil(max(info.height, info.width) / max_side)))
    out = np.full((-(-info.height // step), -(-info.width // step)), NODATA, dtype=np.uint8)
    block = max(cmap.chunks[0], 512)
    with cmap:
        for w in iter_windows(info.height, info.width, block):  # one chunk row at a time: flat memory
            r0, c0 = -w.row_off % step, -w.col_off % step
            part = cmap.read(w)[r0::step, c0::step]
            out[(w.row_off + r0) // step:(w.row_off + r0) // step + part.shape[0],
                (w.col_off + c0) // step:(w.col_off + c0) // step + part.shape[1]] = part
    return out, float(step)


def scene_maps(prefix: str) -> list[tuple[str, str, dict]]:
    """``(stem, class map URL, record)`` of each finished scene under a predict PREFIX (its Zarr,
    which holds the probabilities where they were written)."""
    out = []
    for name in storage.listdir(prefix):
        if not name.endswith(".json") or name.startswith("_") or name.endswith(".item.json") or name in (
                "catalog.json",):
            continue
        try:
            rec = json.loads(storage.read_text(storage.join(prefix, name)))
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("status") == "complete" and (rec.get("outputs") or {}).get("zarr"):
            out.append((name[: -len(".json")], rec["outputs"]["zarr"], rec))
    return sorted(out)
