"""geoseg's outputs and models as lazy, dask-backed xarray, for Pangeo users (no Ray needed).

* :func:`open_map`: a class map geoseg wrote (a scene's Zarr, a mosaic store, a predict
  PREFIX) as an ``xarray.Dataset`` backed by dask (chunks: the store's own), its CRS through
  rioxarray (``ds.rio.crs``), the class names and colours in its attributes, and the
  probabilities where they were written.
* :func:`segment`: a model run lazily over a dask-backed ``DataArray`` of imagery, ``(band, y,
  x)`` or ``(y, x, band)`` (odc-stac, stackstac, rioxarray), cut into the same tiles as
  ``geoseg predict`` (each chunk one tile core, read with its halo slid inside the raster at its
  edges, as predict reads it): the class map equals predict's on the same pixels.
* :func:`scheduler`: the scheduler to compute them with, per call: Ray's (the blocks as Ray
  tasks) when this process has started or joined Ray, else dask's threads. Nothing here changes
  dask's configuration; Ray is reached only through :mod:`geoseg.execution.runtime`.
"""

from __future__ import annotations

import numpy as np

from geoseg.data import storage
from geoseg.data.classes import NODATA
from geoseg.errors import InputError


def open_map(url: str, scene: str | None = None):
    """A class map as a lazy ``xarray.Dataset``: ``classes (y, x)`` (and ``probabilities (class, y, x)``,
    scaled to 0..1, where written), georeferenced (``ds.rio.crs``), with ``class_names`` and
    ``class_colors`` attributes. ``url``: a scene's or a mosaic's Zarr store, or a predict PREFIX
    (its mosaic store if it has one, else its one scene, or the scene named ``scene``)."""
    import rioxarray  # noqa: F401 - registers ds.rio
    import xarray as xr

    from geoseg.data.classmap import is_zarr

    store = url if is_zarr(url) else _store_of(url, scene)
    ds = xr.open_zarr(storage.zarr_store(store, read_only=True), chunks={}, consolidated=None,
                      decode_coords="all", mask_and_scale=False)
    if "classes" not in ds:
        raise InputError(f"{store}: not a geoseg class map (no 'classes' array)")
    attrs = dict(ds["classes"].attrs)
    ds.attrs.update({"class_names": list(attrs.get("class_names") or []),
                     "class_colors": [list(c) for c in attrs.get("class_colors") or []],
                     "nodata": attrs.get("nodata", NODATA), "source": store})
    if "probabilities" in ds:
        ds["probabilities"] = ds["probabilities"] / np.float32(255.0)
    ref = ds["spatial_ref"].attrs if "spatial_ref" in ds else {}
    crs = ref.get("crs_wkt") or ref.get("spatial_ref")
    if crs:
        ds = ds.rio.write_crs(crs)
    return ds


def _store_of(prefix: str, scene: str | None) -> str:
    names = storage.listdir(prefix)
    if scene:
        if f"{scene}.zarr" not in names:
            raise InputError(f"{prefix}: no scene {scene!r} (no {scene}.zarr)")
        return storage.join(prefix, f"{scene}.zarr")
    mosaics = sorted(n for n in names if n.startswith("mosaic") and n.endswith(".zarr"))
    if mosaics:
        return storage.join(prefix, mosaics[0])
    scenes = sorted(n for n in names if n.endswith(".zarr"))
    if len(scenes) == 1:
        return storage.join(prefix, scenes[0])
    if not scenes:
        raise InputError(f"{prefix}: no class map in it (no .zarr store)")
    raise InputError(f"{prefix}: {len(scenes)} scenes ({', '.join(s[:-5] for s in scenes[:5])}"
                     f"{', ...' if len(scenes) > 5 else ''}): give scene=STEM, or open their mosaic")


_PREDICTORS: dict = {}


def _predictor(checkpoint: str):
    """One predictor per process and checkpoint (dask workers, Ray workers), single-threaded: the
    scheduler runs one block per core."""
    pred = _PREDICTORS.get(checkpoint)
    if pred is None:
        from geoseg.models.predictor import load_predictor

        pred = _PREDICTORS[checkpoint] = load_predictor(checkpoint, device="cpu", threads=1)
    return pred


def _bands_first(data, meta):
    """``data`` as ``(band, y, x)`` in the model's band order: by name where the band coordinate
    names the model's bands (``blue``, ``nir``, ...), else as given."""
    dims = data.dims
    band = next((d for d in dims if d not in ("y", "x", "latitude", "longitude", "lat", "lon")), None)
    if data.ndim != 3 or band is None:
        raise InputError(f"segment: imagery must be 3-D (band, y, x) or (y, x, band), got dims {dims}")
    ydim, xdim = [d for d in dims if d != band]
    data = data.transpose(band, ydim, xdim)
    names = [str(v).lower() for v in data[band].values] if band in data.coords else []
    roles = [r.lower() for r in (meta.band_roles or [])]
    if roles and names and set(roles) <= set(names):
        data = data.isel({band: [names.index(r) for r in roles]})
    if data.shape[0] != meta.model.in_channels:
        raise InputError(f"segment: the model reads {meta.model.in_channels} bands ({', '.join(roles) or 'by number'}), "
                         f"the array has {data.shape[0]} ({', '.join(names) or 'unnamed'})")
    return data, ydim, xdim


def segment(data, checkpoint: str, tile_size: int = 512, halo: int = 32, scale: float | None = None,
            offset: float = 0.0):
    """The class map of ``data`` (a dask-backed or in-memory ``xarray.DataArray`` of imagery) by the
    model of ``checkpoint`` (a run folder, checkpoint or model file): a lazy ``DataArray`` (y, x) of
    uint8 class numbers, nodata 255 where no band has data, georeferenced like ``data``.

    ``scale`` / ``offset``: applied to the pixels first (``raw * scale + offset``), for digital
    numbers loaded raw (odc-stac, stackstac) into a model trained on scaled values (a Sentinel-2
    item's ``raster:bands`` scale 0.0001, say)."""
    import dask
    import dask.array as da
    import xarray as xr

    from geoseg.data.tiling import TileGrid
    from geoseg.models import reference

    meta = reference.describe(checkpoint)
    data, ydim, xdim = _bands_first(data, meta)
    if tile_size + 2 * halo > 0 and (tile_size + 2 * halo) % meta.model.size_multiple:
        raise InputError(f"segment: tile_size + 2 x halo = {tile_size + 2 * halo} px, but {meta.model.arch} needs a "
                         f"multiple of {meta.model.size_multiple}")
    arr = data.data if isinstance(data.data, da.Array) else da.from_array(np.asarray(data.data))
    H, W = arr.shape[1:]
    grid = TileGrid(H, W, tile_size, halo)
    nodata = data.attrs.get("nodata", data.attrs.get("_FillValue"))
    # one task per tile of predict's grid: its read window (the core and halo, slid inside the raster)
    # sliced from the source lazily, the core of the model's output kept
    rows = []
    for iy in range(grid.shape[0]):
        row = []
        for ix in range(grid.shape[1]):
            tile = grid[iy, ix]
            window = arr[:, tile.read.slices[0], tile.read.slices[1]]
            part = dask.delayed(_tile_classes)(window, tile, checkpoint, nodata, scale, offset)
            row.append(da.from_delayed(part, shape=(tile.core.height, tile.core.width), dtype=np.uint8))
        rows.append(row)
    classes = da.block(rows)
    out = xr.DataArray(classes, dims=(ydim, xdim), coords={k: v for k, v in data.coords.items()
                                                          if set(v.dims) <= {ydim, xdim}},
                       name="classes", attrs={"class_names": list(meta.classes.names),
                                              "class_colors": [list(c) for c in meta.classes.colors],
                                              "nodata": NODATA})
    return out


def _tile_classes(window: np.ndarray, tile, checkpoint: str, nodata, scale, offset) -> np.ndarray:
    """One tile: its read window through the model, the core's class numbers (nodata where no band
    has data)."""
    from geoseg.data.tiling import pad_tile

    window = np.asarray(window)
    image = window if scale is None else window.astype(np.float32) * np.float32(scale) + np.float32(offset)
    classes = _predictor(checkpoint).predict(pad_tile(image, tile)[None])[0]
    c = tile.crop
    out = classes[c.row_off : c.row_off + c.height, c.col_off : c.col_off + c.width].astype(np.uint8)
    if nodata is not None:
        core = window[:, c.row_off : c.row_off + c.height, c.col_off : c.col_off + c.width]
        out[np.all(core == nodata, axis=0)] = NODATA
    return out


def scheduler():
    """The dask scheduler to compute geoseg's lazy arrays with, per call (``classes.compute(scheduler=
    geoseg.scheduler())``): Ray's (the blocks as Ray tasks across the cluster) when this process has
    started or joined Ray, else dask's threads. Dask's own configuration is left as the caller set it."""
    from geoseg.execution.runtime import dask_scheduler

    return dask_scheduler() or "threads"
