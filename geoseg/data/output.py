"""Prediction outputs of one scene: Zarr v3 class map, COG, progress log, run record.

Layout under ``PREFIX`` for an input ``<stem>.tif``::

    <stem>.zarr/        Zarr v3 group: classes (y, x) uint8, x, y, spatial_ref
                        [, probabilities (class, y, x) uint8]
    <stem>.tif          Cloud-Optimized GeoTIFF of the class map
    <stem>.json         run record, written last: an output without it is incomplete
    .geoseg/<stem>/     progress log: which tiles are finished (for resume), and
                        with ``--stitch hann`` the scratch ``softmax.zarr`` of every
                        tile's softmax; removed when the scene is finished

Chunks of the Zarr arrays are exactly the tile cores, so each tile is one
chunk and no two writers ever touch the same chunk (Zarr shards are not used:
two writers in one shard would lose data).
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata as md
import json
import platform
import uuid
import warnings
from dataclasses import dataclass

import numpy as np

from geoseg.version import __version__
from geoseg.data import storage
from geoseg.data.classes import MASKED, NODATA, ClassScheme
from geoseg.errors import GeosegError, OutputExistsError
from geoseg.data.cog import CogWriter
from geoseg.data.raster import RasterInfo
from geoseg.data.tiling import iter_windows
from geoseg.data.stac import item_of
from geoseg.data.tiling import TileGrid, Window


@dataclass(frozen=True)
class SceneOutput:
    prefix: str
    stem: str
    job: str = ""  # id of the job writing it: worker-side caches never outlive a job

    def __post_init__(self) -> None:  # a worker in another folder writes to the same place
        object.__setattr__(self, "prefix", storage.absolute(self.prefix))

    @property
    def zarr(self) -> str:
        return storage.join(self.prefix, f"{self.stem}.zarr")

    @property
    def cog(self) -> str:
        return storage.join(self.prefix, f"{self.stem}.tif")

    @property
    def record(self) -> str:
        return storage.join(self.prefix, f"{self.stem}.json")

    @property
    def progress(self) -> str:
        return storage.join(self.prefix, ".geoseg", self.stem)

    @property
    def scratch(self) -> str:
        """Zarr group of every tile's softmax (``--stitch hann`` only)."""
        return storage.join(self.progress, "softmax.zarr")


def create_zarr(
    out: SceneOutput,
    info: RasterInfo,
    grid: TileGrid,
    classes: ClassScheme,
    fingerprint: dict,
    probabilities: bool = False,
) -> None:
    """Create a scene's Zarr group and its metadata (no class data is written here)."""
    create_class_map(out.zarr, info, grid.core, classes, {"geoseg": fingerprint}, probabilities)


@storage.translating(lambda url, *a, **k: url, "creating the Zarr store")
def create_class_map(
    url: str,
    info: RasterInfo,
    chunk: int,
    classes: ClassScheme,
    attrs: dict,
    probabilities: bool = False,
) -> None:
    """Create a Zarr v3 group of a class map ``info.height`` x ``info.width`` in ``chunk``-square
    chunks, with its georeferencing (no class data is written here).

    Georeferencing follows the CF / GDAL conventions that rioxarray reads:
    a ``spatial_ref`` variable with ``crs_wkt`` and ``GeoTransform``, pixel-centre
    ``x`` / ``y`` coordinates and ``grid_mapping`` on each data variable.
    """
    import zarr

    store = storage.zarr_store(url)
    root = zarr.open_group(store, mode="w", zarr_format=3)
    root.attrs.update(attrs)
    grid = TileGrid(info.height, info.width, chunk, 0)
    a, b, c, d, e, f = info.transform
    data_attrs = {
        "grid_mapping": "spatial_ref",
        "coordinates": "spatial_ref",
        "long_name": "class",
        "flag_values": list(range(len(classes))),
        "flag_meanings": " ".join(classes.names),
        "class_names": list(classes.names),
        "class_colors": [list(x) for x in classes.colors],
        "nodata": NODATA,
    }
    root.create_array(
        "classes",
        shape=grid_shape(grid),
        chunks=(grid.core, grid.core),
        dtype="uint8",
        fill_value=NODATA,
        dimension_names=("y", "x"),
        attributes=data_attrs,
    )
    if probabilities:
        root.create_array(
            "probabilities",
            shape=(len(classes), *grid_shape(grid)),
            chunks=(len(classes), grid.core, grid.core),
            dtype="uint8",
            fill_value=0,
            dimension_names=("class", "y", "x"),
            attributes={"grid_mapping": "spatial_ref", "coordinates": "spatial_ref", "scale_factor": 1 / 255,
                        "long_name": "class probability"},
        )
        cls = root.create_array("class", shape=(len(classes),), dtype="int32", dimension_names=("class",))
        cls[:] = np.arange(len(classes), dtype=np.int32)
    # Pixel-centre coordinates (north-up grids; rotated grids keep GeoTransform only).
    x = root.create_array(
        "x", shape=(grid.width,), chunks=(min(grid.width, 1 << 20),), dtype="float64",
        dimension_names=("x",), attributes={"standard_name": "projection_x_coordinate", "axis": "X"},
    )
    y = root.create_array(
        "y", shape=(grid.height,), chunks=(min(grid.height, 1 << 20),), dtype="float64",
        dimension_names=("y",), attributes={"standard_name": "projection_y_coordinate", "axis": "Y"},
    )
    for start in range(0, grid.width, 1 << 20):
        n = min(1 << 20, grid.width - start)
        x[start : start + n] = c + a * (np.arange(start, start + n) + 0.5)
    for start in range(0, grid.height, 1 << 20):
        n = min(1 << 20, grid.height - start)
        y[start : start + n] = f + e * (np.arange(start, start + n) + 0.5)
    ref_attrs = {"GeoTransform": f"{c!r} {a!r} {b!r} {f!r} {d!r} {e!r}"}
    if info.crs:
        ref_attrs.update({"crs_wkt": info.crs, "spatial_ref": info.crs})
    ref = root.create_array("spatial_ref", shape=(), dtype="int64", attributes=ref_attrs)
    ref[()] = 0


def check_alignment(out: SceneOutput, grid: TileGrid) -> None:
    """Refuse a plan in which two write tasks could touch the same chunk or shard.

    Each write task writes one tile core, ``grid.core`` square on a ``grid.core``
    lattice; that is safe only if every array's chunks (and shards, when the array
    has them) along ``y`` and ``x`` are exactly that square. Checked at planning
    time, against the metadata actually stored (also when resuming).
    """
    import zarr

    root = zarr.open_group(storage.zarr_store(out.zarr, read_only=True), mode="r")
    for name in ("classes", "probabilities"):
        if name not in root:
            continue
        arr = root[name]
        for what, shape in (("chunks", arr.chunks), ("shards", arr.shards)):
            if shape is None:
                continue
            if tuple(shape[-2:]) != (grid.core, grid.core):
                raise GeosegError(
                    f"{out.zarr}/{name}: {what} {tuple(shape[-2:])} do not match the {grid.core}x{grid.core} tiles; "
                    "two write tasks would share a chunk"
                )
            if len(shape) == 3 and shape[0] != arr.shape[0]:
                raise GeosegError(f"{out.zarr}/{name}: {what} split the class axis; one tile must be one chunk")


def grid_shape(grid: TileGrid) -> tuple[int, int]:
    return (grid.height, grid.width)


def read_fingerprint(out: SceneOutput) -> dict | None:
    """The fingerprint stored in an existing Zarr output, or None."""
    import zarr

    if not storage.exists(storage.join(out.zarr, "zarr.json")):
        return None
    root = zarr.open_group(storage.zarr_store(out.zarr, read_only=True), mode="r")
    return dict(root.attrs).get("geoseg")


def check_existing(out: SceneOutput, fingerprint: dict, overwrite: bool) -> str:
    """Decide what to do with an existing output: ``"new"``, ``"resume"`` or ``"done"``
    (only reads: with ``overwrite``, :func:`remove_outputs` deletes it later).

    Raises :class:`OutputExistsError` when the output was made by another model or
    with other parameters and ``overwrite`` is false.
    """
    existing = read_fingerprint(out)
    if existing is None or overwrite:
        return "new"
    if existing != fingerprint:
        diff = sorted(k for k in set(existing) | set(fingerprint) if existing.get(k) != fingerprint.get(k))
        raise OutputExistsError(
            f"{out.zarr}: exists from a run with different {', '.join(diff)}; "
            "use another --out or pass --overwrite"
        )
    return "done" if storage.exists(out.record) else "resume"


def remove_outputs(out: SceneOutput) -> None:
    """Delete a scene's outputs (``--overwrite``): run record first, so that nothing left
    looks complete, then the COG, the Zarr and the progress log."""
    for url in (out.record, out.cog):
        storage.remove(url)
    storage.remove(out.zarr, recursive=True)
    storage.remove(out.progress, recursive=True)


# --- progress log ---------------------------------------------------------


def log_done(out: SceneOutput, tiles: np.ndarray, kind: str = "done") -> None:
    """Durably record finished tile numbers (one small object per batch)."""
    if len(tiles) == 0:
        return
    name = f"{kind}-{uuid.uuid4().hex}.json"
    storage.write_text(storage.join(out.progress, name), json.dumps(sorted(int(t) for t in tiles)))


# a tile's output chunk is final ("bad": unreadable input, left nodata; "masked": every valid pixel masked)
FINISHED = ("done", "nodata", "bad", "masked")


def _logged(out: SceneOutput, kinds: tuple[str, ...]):
    """``(kind, tile numbers)`` of each progress record of one of ``kinds``."""
    for name in storage.listdir(out.progress):
        if not name.endswith(".json") or "-" not in name:
            continue
        kind = name.split("-", 1)[0]
        if kind not in kinds:
            continue
        try:
            tiles = json.loads(storage.read_text(storage.join(out.progress, name)))
        except (json.JSONDecodeError, OSError):
            continue  # a record torn by a crash: its tiles are simply redone
        yield kind, tiles


def read_done(out: SceneOutput, n_tiles: int, kinds: tuple[str, ...] = FINISHED) -> tuple[np.ndarray, dict[str, int]]:
    """``(bitmap of tiles logged as one of kinds (packed bits), counts by kind)``.

    ``"done"`` / ``"nodata"`` / ``"bad"``: the tile's output chunk is final.
    ``"softmax"``: its softmax is in the scratch array (``--stitch hann``).
    """
    done = np.zeros(n_tiles, dtype=bool)
    counts: dict[str, int] = {}
    for kind, tiles in _logged(out, kinds):
        tiles = np.asarray([t for t in tiles if 0 <= t < n_tiles], dtype=np.int64)
        new = tiles[~done[tiles]]
        done[new] = True
        counts[kind] = counts.get(kind, 0) + len(new)
    return np.packbits(done), counts


def logged_tiles(out: SceneOutput, kind: str) -> list[int]:
    """Sorted tile numbers logged as ``kind`` (the ``"bad"`` tiles of a scene, say)."""
    return sorted({int(t) for _, tiles in _logged(out, (kind,)) for t in tiles})


# --- chunk writes ---------------------------------------------------------

_ARRAYS: dict[tuple[str, str, str], object] = {}


def _array(zarr_url: str, name: str, job: str):
    import zarr

    key = (zarr_url, name, job)
    if key not in _ARRAYS:
        if len(_ARRAYS) > 32:
            _ARRAYS.clear()
        _ARRAYS[key] = zarr.open_array(storage.zarr_store(zarr_url), path=name, mode="r+")
    return _ARRAYS[key]


@storage.translating(lambda out, *a, **k: out.zarr, "writing a tile's chunk")
def write_tile(out: SceneOutput, core: Window, classes: np.ndarray, proba: np.ndarray | None = None) -> None:
    """Write one tile core (exactly one chunk) of classes (and probabilities)."""
    rows, cols = core.slices
    _array(out.zarr, "classes", out.job)[rows, cols] = classes[: core.height, : core.width]
    if proba is not None:
        _array(out.zarr, "probabilities", out.job)[:, rows, cols] = proba[:, : core.height, : core.width]


# --- scratch softmax (``--stitch hann``) --------------------------------------


@storage.translating(lambda out, *a, **k: out.scratch, "creating the scratch store")
def create_scratch(out: SceneOutput, grid: TileGrid, n_classes: int) -> None:
    """The scratch array of every tile's softmax, ``(tiles, class, T, T)`` float32
    (``T`` = the grid's input size), one chunk per tile, NaN where nothing was
    written (kept if it exists: a rerun resumes)."""
    import zarr

    if storage.exists(storage.join(out.scratch, "softmax", "zarr.json")):
        return
    root = zarr.open_group(storage.zarr_store(out.scratch), mode="a", zarr_format=3)
    t = grid.input_size
    root.create_array("softmax", shape=(len(grid), n_classes, t, t), chunks=(1, n_classes, t, t),
                      dtype="float32", fill_value=float("nan"))


@storage.translating(lambda out, *a, **k: out.scratch, "writing a tile's softmax")
def write_softmax(out: SceneOutput, tile: int, probs: np.ndarray) -> None:
    _array(out.scratch, "softmax", out.job)[tile] = probs


@storage.translating(lambda out, *a, **k: out.scratch, "reading a tile's softmax")
def read_softmax(out: SceneOutput, tile: int) -> np.ndarray | None:
    """A tile's softmax, or None if it was never written."""
    p = _array(out.scratch, "softmax", out.job)[tile]
    return None if np.isnan(p[0]).all() else p


# --- finishing ------------------------------------------------------------


@storage.translating(lambda out, *a, **k: out.cog, "writing the COG")
def zarr_to_cog(out: SceneOutput, info: RasterInfo, classes: ClassScheme, block: int = 512) -> dict:
    """Copy the Zarr class map into a COG chunk by chunk (flat memory); returns what the
    copy counted on the way: ``{"pixels": per class, "areas_m2": per class or None}``
    (areas from the CRS, see :mod:`geoseg.data.area`)."""
    import zarr

    from geoseg.data.area import PixelArea

    root = zarr.open_group(storage.zarr_store(out.zarr, read_only=True), mode="r")
    arr = root["classes"]
    height, width = arr.shape
    with CogWriter(
        out.cog,
        height=height,
        width=width,
        count=1,
        dtype="uint8",
        crs=info.crs,
        transform=info.affine,
        nodata=NODATA,
        colormap=classes.colormap(),
        tags=classes.to_tags(),
        resampling="MODE",
        blocksize=block,
    ) as cog:
        k = len(classes)
        area = PixelArea.of(info.crs, info.transform)
        pixels, m2, masked = np.zeros(k, np.int64), np.zeros(k), 0
        for win in iter_windows(height, width, block):
            data = np.asarray(arr[win.slices])
            cog.write(win, data)
            pixels += np.bincount(data[data < k].ravel(), minlength=k)[:k]
            masked += int(np.count_nonzero(data == MASKED))
            if area is not None:
                m2 += area.class_areas_m2(data, win.row_off, k)
    return {"pixels": pixels.tolist(), "areas_m2": m2.tolist() if area is not None else None, "masked": masked}


def class_areas(classes: ClassScheme, counted: dict) -> dict:
    """The run record's ``classes`` section: pixels and hectares of each class, by name."""
    from geoseg.data.area import hectares

    areas = counted.get("areas_m2")
    return {name: {"pixels": int(counted["pixels"][i]),
                   "area_ha": round(hectares(areas[i]), 4) if areas is not None else None}
            for i, name in enumerate(classes.names)}


@storage.translating(lambda out, *a, **k: out.zarr, "consolidating its metadata")
def consolidate(out: SceneOutput) -> None:
    """Consolidated metadata, so xarray opens the group in one read (a zarr-python
    extension to v3, which it warns about once per call; the warning is noise here)."""
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(storage.zarr_store(out.zarr))


# --- run record -------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _versions() -> tuple:
    out = {"geoseg": __version__, "python": platform.python_version()}
    for pkg in ("ray", "torch", "rasterio", "zarr", "numpy", "segmentation-models-pytorch"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        import rasterio

        out["gdal"] = rasterio.__gdal_version__
    except ImportError:
        pass
    return tuple(out.items())


def versions() -> dict:
    """Versions of geoseg and of the libraries that shape its outputs (looked up once per process)."""
    return dict(_versions())


def scene_record(
    out: SceneOutput,
    *,
    url: str,
    info: RasterInfo,
    model: dict,
    parameters: dict,
    tiles: dict,
    timings: dict,
    started: dt.datetime,
    classes: dict | None = None,
    quicklooks: dict | None = None,
) -> dict:
    """The run record of one finished scene: what was read, made, how and how fast."""
    return {
        "status": "complete",
        "input": storage.absolute(url),
        **({"stac_item": item_of(info.tags)} if item_of(info.tags) else {}),  # the item a stacked VRT came from
        "acquired": acquired(info),  # when the scene was taken, where known (a mosaic's "latest")
        "outputs": {"zarr": out.zarr, "cog": out.cog, "record": out.record, **(quicklooks or {})},
        "model": model,
        "parameters": parameters,
        "raster": {
            "height": info.height,
            "width": info.width,
            "crs": info.crs,
            "transform": list(info.transform),
            "nodata": info.nodata,
        },
        "tiles": tiles,
        # each class's pixels and area in hectares (None without a CRS)
        "classes": classes or {},
        "timings_s": {k: round(float(v), 3) for k, v in timings.items()},
        "started": started.isoformat(),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
        "versions": versions(),
    }


def acquired(info: RasterInfo) -> str | None:
    """The scene's acquisition time (RFC 3339, UTC): its STAC item's datetime, else the raster's
    ``TIFFTAG_DATETIME`` (taken as UTC), else None."""
    from geoseg.data.catalog import utc_time

    item = item_of(info.tags) or {}
    if item.get("datetime"):
        return utc_time(item["datetime"])
    stamp = info.tags.get("TIFFTAG_DATETIME")
    try:
        return utc_time(dt.datetime.strptime(stamp.strip(), "%Y:%m:%d %H:%M:%S").isoformat()) if stamp else None
    except ValueError:
        return None


def write_record(out: SceneOutput, record: dict) -> None:
    """Written last: an output without its record is incomplete."""
    storage.write_text(out.record, json.dumps(record, indent=2, default=str))


JOB_SUMMARY = "_job.json"


def write_job_summary(prefix: str, summary: dict) -> None:
    """``PREFIX/_job.json``: every scene of the job with its status (``complete``: finished by this
    run, ``done``: complete before, ``failed``: with its error), the job's fingerprint (a rerun
    trusts the scenes it lists complete without opening them), counts and timings."""
    storage.write_text(storage.join(prefix, JOB_SUMMARY), json.dumps(summary, indent=1, default=str))


def read_job_summary(prefix: str) -> dict | None:
    """The prefix's job summary, or None (none yet, or torn)."""
    url = storage.join(prefix, JOB_SUMMARY)
    try:
        return json.loads(storage.read_text(url)) if storage.exists(url) else None
    except (json.JSONDecodeError, OSError):
        return None
