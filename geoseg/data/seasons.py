"""A synthetic season of cloudy Sentinel-2-like items, and fields whose classes differ only in time.

``write_series`` writes one STAC item per date over one place: blue, green, red, nir COGs at 10 m
(uint16, scale 0.0001, nodata 0) and an SCL COG at 20 m, clouds (SCL 8/9, bright) and their
shadows (SCL 3, dark) drawn anew each date, and ``labels.tif``: three classes of fields,

* ``background``: grass, the same all season;
* ``crop_a`` and ``crop_b``: the *same* spectra until mid-season (both green up alike), then
  ``crop_a`` stays green and ``crop_b`` is harvested (bare soil).

A model that sees one spring composite cannot tell the two crops apart; one that sees a spring
and a late-summer composite can (``benchmarks/composite.py``, tests of ``geoseg composite``).
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np

from geoseg.data import storage

CLASSES = ("background", "crop_a", "crop_b")
BANDS = ("blue", "green", "red", "nir")
SCALE = 0.0001
HARVEST_DOY = 190  # crop_b is bare from this day of the year on
_GRASS = (0.05, 0.08, 0.07, 0.28)
_CROP = (0.04, 0.07, 0.05, 0.40)  # both crops, and crop_a all season
_BARE = (0.09, 0.12, 0.15, 0.21)  # crop_b after its harvest


def spectrum(cls: int, day: dt.date) -> tuple[float, ...]:
    """Reflectance of blue, green, red, nir of a class on a day."""
    if cls == 0:
        return _GRASS
    if cls == 2 and day.timetuple().tm_yday >= HARVEST_DOY:
        return _BARE
    return _CROP


def _blobs(rng: np.random.Generator, h: int, w: int, share: float, scale: int = 16) -> np.ndarray:
    """Smooth random blobs covering about ``share`` of the pixels."""
    if share <= 0:
        return np.zeros((h, w), bool)
    coarse = rng.random((h // scale + 2, w // scale + 2))
    rows = np.linspace(0, coarse.shape[0] - 1.001, h)
    cols = np.linspace(0, coarse.shape[1] - 1.001, w)
    r0, c0 = rows.astype(int), cols.astype(int)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    a = coarse[r0][:, c0] * (1 - fc) + coarse[r0][:, c0 + 1] * fc
    b = coarse[r0 + 1][:, c0] * (1 - fc) + coarse[r0 + 1][:, c0 + 1] * fc
    field = a * (1 - fr) + b * fr
    return field > np.quantile(field, 1 - share)


def fields(size: int, seed: int, cell: int = 24) -> np.ndarray:
    """Class of each pixel: rectangular fields of ``cell`` px, each of a random class."""
    rng = np.random.default_rng(seed)
    n = -(-size // cell)
    grid = rng.integers(0, len(CLASSES), (n, n))
    return np.kron(grid, np.ones((cell, cell), np.uint8))[:size, :size].astype(np.uint8)


def write_series(outdir: str, dates: list[str], size: int = 256, seed: int = 0, crs: str = "EPSG:32632",
                 origin: tuple[float, float] = (500_000.0, 5_000_000.0), cloud: float = 0.3,
                 stem: str = "s2") -> dict:
    """Items of ``dates`` (YYYY-MM-DD) over ``size`` x ``size`` px at 10 m from ``origin`` (west,
    north) in ``crs``, into ``outdir``: ``{"items": FeatureCollection URL, "labels": URL,
    "ids": [...]}``. ``cloud``: each date's share of cloud (and as much again of shadow, beside)."""
    from affine import Affine
    from rasterio.warp import transform_bounds

    storage.check_writable(outdir)
    base = outdir if storage.is_remote(outdir) else storage.absolute(outdir)
    transform = Affine(10.0, 0, origin[0], 0, -10.0, origin[1])
    classes = fields(size, seed)
    labels = storage.join(base, "labels.tif")
    _write(labels, classes[None], transform, crs, "uint8", 255, ["class"])
    west, south, east, north = transform_bounds(crs, "EPSG:4326", origin[0], origin[1] - 10 * size,
                                                origin[0] + 10 * size, origin[1])
    features = []
    for k, date in enumerate(dates):
        day = dt.date.fromisoformat(date)
        rng = np.random.default_rng([seed, k])
        refl = np.zeros((4, size, size), np.float32)
        for c in range(len(CLASSES)):
            refl[:, classes == c] = np.asarray(spectrum(c, day), np.float32)[:, None]
        refl *= 1 + 0.05 * rng.standard_normal((1, size, size)).astype(np.float32)  # texture, per date
        clouds = _blobs(rng, size, size, cloud)
        shadow = np.roll(_blobs(rng, size, size, cloud / 2), (size // 16, size // 16), axis=(0, 1)) & ~clouds
        refl[:, clouds] = 0.55
        refl[:, shadow] *= 0.35
        scl = np.where(clouds, 9, np.where(shadow, 3, np.where(classes == 0, 4, 5))).astype(np.uint8)
        dn = np.clip(np.round(refl / SCALE), 1, 10000).astype(np.uint16)
        ident = f"{stem}_{date}"
        assets = {}
        for b, name in enumerate(BANDS):
            url = storage.join(base, ident, f"{name}.tif")
            _write(url, dn[b : b + 1], transform, crs, "uint16", 0, [name])
            assets[name] = _asset(url, name, size, transform, {"scale": SCALE, "offset": 0.0, "nodata": 0,
                                                               "data_type": "uint16"})
        url = storage.join(base, ident, "scl.tif")
        _write(url, scl[None, ::2, ::2], transform @ Affine.scale(2), crs, "uint8", 0, ["scl"])
        assets["scl"] = _asset(url, None, size // 2, transform @ Affine.scale(2), {"nodata": 0, "data_type": "uint8"})
        features.append({
            "type": "Feature", "stac_version": "1.1.0", "id": ident,
            "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
            "bbox": [west, south, east, north],
            "geometry": {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north],
                                                             [west, north], [west, south]]]},
            "properties": {"datetime": f"{date}T10:30:00Z", "proj:code": crs,
                           "eo:cloud_cover": round(float(clouds.mean() * 100), 2)},
            "links": [], "assets": assets})
    items = storage.join(base, "items.json")
    storage.write_text(items, json.dumps({"type": "FeatureCollection", "features": features}))
    return {"items": items, "labels": labels, "ids": [f["id"] for f in features]}


def _asset(url: str, name: str | None, side: int, t, band: dict) -> dict:
    return {"href": url, "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"],
            "proj:shape": [side, side], "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "bands": [{**band, **({"eo:common_name": name} if name else {})}],
            **({"eo:bands": [{"name": name, "common_name": name}]} if name else {})}


def _write(url: str, data: np.ndarray, transform, crs: str, dtype: str, nodata, names: list[str]) -> None:
    from geoseg.data.cog import CogWriter
    from geoseg.data.tiling import Window

    _, h, w = data.shape
    with CogWriter(url, height=h, width=w, count=data.shape[0], dtype=dtype, crs=crs, transform=transform,
                   nodata=nodata, descriptions=names, blocksize=256) as out:
        out.write(Window(0, 0, h, w), data)
