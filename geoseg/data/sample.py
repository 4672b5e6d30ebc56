"""A deterministic synthetic agricultural scene, generated window by window.

Every pixel is a pure function of its global (row, col) position and the seed:
parcels on a rotated field grid, meandering rivers, lakes, a road network,
settlements with buildings, forests and scrub, haze and sensor noise, and a
nodata collar like a real swath edge. Because nothing depends on the window,
any window can be rendered on its own and the scene is the same whatever the
block size, so a 20000 x 20000 scene needs only a few blocks of memory.

Bands are Sentinel-2-like surface reflectance x 10000 (uint16; 0 = nodata):
blue, green, red, nir. Labels (uint8) follow :data:`geoseg.data.classes.LANDCOVER`,
255 = nodata.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import numpy as np
from affine import Affine

from geoseg.data import storage
from geoseg.data.classes import BARE, BUILT, LANDCOVER, NODATA, VEGETATION, WATER
from geoseg.errors import InputError
from geoseg.data.cog import CogWriter
from geoseg.data.tiling import iter_windows
from geoseg.data.tiling import Window

BAND_NAMES = ("blue", "green", "red", "nir")
PIXEL_SIZE = 10.0
CRS = "EPSG:32633"  # UTM zone 33N
INSTANCE_NODATA = -1  # instances.tif outside the swath (0 is "no parcel": background)
ORIGIN = (399960.0, 5900040.0)  # upper-left corner (x, y)

# Surface reflectance x 10000 for (blue, green, red, nir), and the label of each material.
_MATERIALS: list[tuple[str, tuple[int, int, int, int], int]] = [
    ("soil", (900, 1150, 1500, 2100), BARE),
    ("dark_soil", (620, 820, 1050, 1550), BARE),
    ("wheat", (280, 650, 330, 4300), VEGETATION),
    ("maize", (380, 760, 560, 3400), VEGETATION),
    ("stubble", (820, 1080, 1320, 2250), VEGETATION),  # harvested cropland: looks like soil
    ("grass", (420, 860, 620, 3000), VEGETATION),
    ("rapeseed", (520, 1250, 950, 3900), VEGETATION),
    ("forest", (230, 480, 280, 3000), VEGETATION),
    ("scrub", (650, 900, 1050, 2300), BARE),
    ("water_clear", (650, 560, 350, 160), WATER),
    ("water_turbid", (900, 1050, 950, 480), WATER),
    ("water_algae", (500, 900, 450, 1150), WATER),
    ("roof", (1250, 1300, 1400, 1650), BUILT),
    ("roof_red", (800, 950, 1750, 2000), BUILT),
    ("asphalt", (850, 900, 950, 1050), BUILT),
]
_M = {name: i for i, (name, _, _) in enumerate(_MATERIALS)}
_SPECTRA = np.array([s for _, s, _ in _MATERIALS], dtype=np.float32)
_LABEL_OF = np.array([lab for _, _, lab in _MATERIALS], dtype=np.uint8)
_CROPS = np.array([_M[m] for m in ("soil", "wheat", "maize", "stubble", "grass", "rapeseed")])
_CROP_P = np.cumsum([0.14, 0.26, 0.2, 0.14, 0.14, 0.12])

_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xBF58476D1CE4E5B9)
_K3 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * _K2
    x = x ^ (x >> np.uint64(27))
    x = x * _K3
    return x ^ (x >> np.uint64(31))


def _hash(seed: int, salt: int, *coords) -> np.ndarray:
    """Well-mixed uint64 hash of integer coordinates (broadcasting)."""
    with np.errstate(over="ignore"):
        h = _mix(np.asarray(np.uint64(seed) * _K1 + np.uint64(salt), dtype=np.uint64))
        for c in coords:
            c = np.asarray(c, dtype=np.int64).view(np.uint64)
            h = _mix(h ^ (c * _K1 + np.uint64(0x632BE59BD9B4E019)))
    return h


def _uniform(seed: int, salt: int, *coords) -> np.ndarray:
    return (_hash(seed, salt, *coords) >> np.uint64(11)).astype(np.float64) * (2.0**-53)


def _value_noise(r, c, scale: float, seed: int, salt: int) -> np.ndarray:
    """Smooth noise in [0, 1) with features of about ``scale`` pixels."""
    y, x = np.asarray(r, np.float64) / scale, np.asarray(c, np.float64) / scale
    y0, x0 = np.floor(y), np.floor(x)
    fy, fx = y - y0, x - x0
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    v00 = _uniform(seed, salt, y0, x0)
    v01 = _uniform(seed, salt, y0, x0 + 1)
    v10 = _uniform(seed, salt, y0 + 1, x0)
    v11 = _uniform(seed, salt, y0 + 1, x0 + 1)
    top = v00 + (v01 - v00) * fx
    bottom = v10 + (v11 - v10) * fx
    return top + (bottom - top) * fy


def _fbm(r, c, scale: float, seed: int, salt: int, octaves: int = 3) -> np.ndarray:
    total, norm, amp = 0.0, 0.0, 1.0
    for k in range(octaves):
        total = total + amp * _value_noise(r, c, scale / 2**k, seed, salt + 101 * k)
        norm += amp
        amp *= 0.5
    return total / norm


def _gauss(seed: int, salt: int, r, c) -> np.ndarray:
    """Approximately standard normal noise per pixel (sum of four 16-bit uniforms)."""
    h = _hash(seed, salt, r, c)
    s = np.zeros(np.broadcast_shapes(np.shape(r), np.shape(c)), dtype=np.float32)
    for k in range(4):
        s += ((h >> np.uint64(16 * k)) & np.uint64(0xFFFF)).astype(np.float32)
    return (s / 65535.0 - 2.0) * np.float32(math.sqrt(3.0))


@dataclass(frozen=True)
class SampleScene:
    """The synthetic scene of a given size and seed; :meth:`render` draws any window."""

    height: int
    width: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.height < 64 or self.width < 64:
            raise InputError(f"--size must be at least 64, got {min(self.height, self.width)}")
        if self.seed < 0:
            raise InputError(f"--seed must be >= 0, got {self.seed}")

    @property
    def transform(self):
        from affine import Affine

        return Affine(PIXEL_SIZE, 0.0, ORIGIN[0], 0.0, -PIXEL_SIZE, ORIGIN[1])

    def render(self, window: Window, instances: bool = False) -> tuple[np.ndarray, ...]:
        """``(image (4, h, w) uint16, labels (h, w) uint8)`` for one window; with ``instances`` also
        ``(h, w)`` int32 field-parcel instance ids (0: no parcel): each crop parcel on the field grid
        (margins, roads, water, towns and woods cut out), numbered by its place on that grid."""
        s = self.seed
        h, w = window.height, window.width
        R = np.arange(window.row_off, window.row_off + h, dtype=np.float64)[:, None]
        C = np.arange(window.col_off, window.col_off + w, dtype=np.float64)[None, :]
        Ri, Ci = R.astype(np.int64), C.astype(np.int64)
        shape = (h, w)

        # 1. agriculture: parcels on a rotated grid, rows of varying parcel widths.
        theta = 0.15 + 0.35 * float(_uniform(s, 1))
        u = C * math.cos(theta) + R * math.sin(theta)
        v = -C * math.sin(theta) + R * math.cos(theta)
        row_h = 56.0
        prow = np.floor(v / row_h).astype(np.int64)
        pw = 48.0 + 110.0 * _uniform(s, 2, prow)
        uo = u + _uniform(s, 3, prow) * pw
        pcol = np.floor(uo / pw).astype(np.int64)
        crop_draw = _uniform(s, 4, prow, pcol)
        material = _CROPS[np.searchsorted(_CROP_P, crop_draw * _CROP_P[-1])]
        # vigour: how much of the parcel is covered by the crop rather than soil
        vigour = (0.55 + 0.45 * _uniform(s, 5, prow, pcol)).astype(np.float32)
        margin = (np.mod(v, row_h) < 1.6) | (np.mod(uo, pw) < 1.6)
        material = np.where(margin, _M["grass"], material)
        vigour = np.where(margin, np.float32(0.7), vigour)

        # 2. land-use zones: forest and scrubland patches between the fields.
        zone = _fbm(R, C, 1400.0, s, 10)
        forest = zone < 0.32
        scrub = (zone >= 0.32) & (zone < 0.38)
        material = np.where(forest, _M["forest"], np.where(scrub, _M["scrub"], material))
        vigour = np.where(forest | scrub, np.float32(1.0), vigour)
        material = np.broadcast_to(material, shape).copy()
        vigour = np.broadcast_to(vigour, shape).astype(np.float32)

        # 3. roads along every 7th parcel row and across the grid every ~900 px.
        road = (np.mod(v, 7 * row_h) < 3.0) | (np.mod(u + 40.0 * np.sin(v / 310.0), 900.0) < 3.0)
        road = np.broadcast_to(road, shape)

        # 4. settlements: blobs of buildings, streets and gardens.
        settled = np.zeros(shape, dtype=bool)
        cell = 768
        for my, mx in _cells(window, cell, margin=180):
            if _uniform(s, 20, my, mx) > 0.5:
                continue
            cy = (my + _uniform(s, 21, my, mx)) * cell
            cx = (mx + _uniform(s, 22, my, mx)) * cell
            rad = 50.0 + 120.0 * _uniform(s, 23, my, mx)
            d = np.hypot(R - cy, C - cx) / rad
            settled |= d < 0.85 + 0.3 * _value_noise(R, C, 40.0, s, 24)
        bcell_r, bcell_c = Ri // 7, Ci // 7
        building = (_uniform(s, 25, bcell_r, bcell_c) < 0.6) & (Ri % 7 >= 1) & (Ri % 7 <= 5)
        building &= (Ci % 7 >= 1) & (Ci % 7 <= 5)
        street = (Ri % 28 < 2) | (Ci % 28 < 2)
        red_roof = _uniform(s, 26, bcell_r, bcell_c) < 0.4
        garden_grass = _uniform(s, 27, bcell_r, bcell_c) < 0.6
        town = np.where(
            street,
            _M["asphalt"],
            np.where(
                building,
                np.where(red_roof, _M["roof_red"], _M["roof"]),
                np.where(garden_grass, _M["grass"], _M["dark_soil"]),
            ),
        )
        material = np.where(settled, town, material)
        vigour = np.where(settled, np.float32(1.0), vigour)
        material = np.where(road, _M["asphalt"], material)
        vigour = np.where(road, np.float32(1.0), vigour)

        # 5. water: meandering rivers and lakes, with soft (mixed-pixel) shores.
        water_frac = np.zeros(shape, dtype=np.float32)
        water_mat = np.full(shape, _M["water_clear"], dtype=np.int64)
        phi = 0.6 + 0.8 * float(_uniform(s, 30))
        p = C * math.cos(phi) + R * math.sin(phi)
        q = -C * math.sin(phi) + R * math.cos(phi)
        spacing, amp = 1400.0, 240.0
        q_mid = -self.width / 2 * math.sin(phi) + self.height / 2 * math.cos(phi)
        qmin, qmax = float(q.min()) - q_mid, float(q.max()) - q_mid
        for k in range(int(math.floor((qmin - amp - 40) / spacing)), int(math.ceil((qmax + amp + 40) / spacing)) + 1):
            a = [float(x) for x in _uniform(s, 31, k, np.arange(6))]
            # river 0 passes close to the scene centre, so every scene has water
            centre = q_mid + (k + 0.3 * (a[0] - 0.5)) * spacing
            centre = centre + 160.0 * np.sin(p / (700 + 500 * a[1]) + 6.3 * a[2])
            centre = centre + 70.0 * np.sin(p / (180 + 150 * a[3]) + 6.3 * a[4])
            half = 3.0 + 9.0 * _value_noise(0.0, p, 900.0, s, 32 + k)
            frac = np.clip(half - np.abs(q - centre) + 0.5, 0.0, 1.0).astype(np.float32)
            kind = ("water_clear", "water_turbid", "water_algae")[int(a[5] * 3)]
            water_mat = np.where(frac > water_frac, _M[kind], water_mat)
            water_frac = np.maximum(water_frac, frac)
        lake_cell = 900
        for my, mx in _cells(window, lake_cell, margin=320):
            if _uniform(s, 40, my, mx) > 0.45:
                continue
            cy = (my + _uniform(s, 41, my, mx)) * lake_cell
            cx = (mx + _uniform(s, 42, my, mx)) * lake_cell
            ra = 40.0 + 200.0 * _uniform(s, 43, my, mx)
            rb = ra * (0.4 + 0.6 * _uniform(s, 44, my, mx))
            rho = np.sqrt(((R - cy) / ra) ** 2 + ((C - cx) / rb) ** 2)
            edge = 1.0 + 0.35 * (_value_noise(R, C, 50.0, s, 45) - 0.5)
            frac = np.clip((edge - rho) * ra + 0.5, 0.0, 1.0).astype(np.float32)
            kind = ("water_clear", "water_turbid", "water_algae")[int(_uniform(s, 46, my, mx) * 3)]
            water_mat = np.where(frac > water_frac, _M[kind], water_mat)
            water_frac = np.maximum(water_frac, frac)
        # bridges: roads stay on top of rivers
        water_frac = np.where(road, np.float32(0.0), water_frac)

        # 6. spectra: crop/soil mixture by vigour, water mixed at shores.
        soil = _SPECTRA[_M["soil"]] * (0.8 + 0.4 * _value_noise(R, C, 300.0, s, 50))[..., None]
        spec = _SPECTRA[material]
        img = vigour[..., None] * spec + (1 - vigour[..., None]) * soil.astype(np.float32)
        parcel_gain = 0.88 + 0.24 * _uniform(s, 51, prow, pcol)
        texture = 0.94 + 0.12 * _value_noise(R, C, 6.0, s, 52)
        img *= np.broadcast_to(parcel_gain * texture, shape)[..., None].astype(np.float32)
        img = water_frac[..., None] * _SPECTRA[water_mat] + (1 - water_frac[..., None]) * img
        haze = _fbm(R, C, 900.0, s, 60) ** 2
        img += (haze[..., None] * np.array([900, 650, 420, 160], np.float32)).astype(np.float32)
        for b in range(4):
            img[..., b] *= 1.0 + 0.035 * _gauss(s, 70 + b, Ri, Ci)
            img[..., b] += 18.0 * _gauss(s, 80 + b, Ri, Ci)

        labels = _LABEL_OF[material]
        labels = np.where(water_frac >= 0.5, WATER, labels).astype(np.uint8)

        # 7. nodata collar: a skewed, ragged swath edge.
        valid = self._footprint(R, C)
        image = np.clip(np.rint(img), 1, 10000).astype(np.uint16).transpose(2, 0, 1)
        image[:, ~valid] = 0
        labels[~valid] = NODATA
        if not instances:
            return image, labels
        field = ~(np.broadcast_to(margin, shape) | forest | scrub | settled | road | (water_frac >= 0.5) | ~valid)
        ids = np.broadcast_to((prow + (1 << 14)) * (1 << 15) + (pcol + (1 << 14)) + 1, shape).astype(np.int64)
        ids = np.where(field, ids % (2**31 - 1), 0).astype(np.int32)
        ids[~valid] = INSTANCE_NODATA  # 0 is background: a value of its own, never nodata
        return image, labels, ids

    def _footprint(self, R, C) -> np.ndarray:
        H, W, s = self.height, self.width, self.seed
        jag_r = 0.012 * W * (_fbm(0.0, R, 120.0, s, 90) - 0.5) * 2
        left = W * (0.01 + 0.05 * R / H) + jag_r
        right = W * (0.995 - 0.05 * (1 - R / H)) + jag_r
        jag_c = 0.01 * H * (_fbm(0.0, C, 150.0, s, 91) - 0.5) * 2
        top = H * (0.015 + 0.03 * C / W) + jag_c
        bottom = H * (0.99 - 0.02 * C / W) + jag_c
        return (C >= left) & (C < right) & (R >= top) & (R < bottom)


def _cells(window: Window, cell: int, margin: int):
    """Macro cells of size ``cell`` touching ``window`` grown by ``margin``."""
    r0 = (window.row_off - margin) // cell
    r1 = (window.row_off + window.height + margin) // cell
    c0 = (window.col_off - margin) // cell
    c1 = (window.col_off + window.width + margin) // cell
    for my in range(r0, r1 + 1):
        for mx in range(c0, c1 + 1):
            yield my, mx


def write_sample(outdir: str, size: int = 2048, seed: int = 0, block: int = 1024, stac: bool = False,
                 instances: bool = False) -> dict[str, str]:
    """Write ``scene.tif`` and ``labels.tif`` COGs into ``outdir``; return their URLs.

    ``instances``: also ``instances.tif``, the field parcels' instance ids (int32, 0: no parcel,
    ``INSTANCE_NODATA`` (-1) outside the swath),
    for the field-delineation recipe (``geoseg train --instances``); ``urls["instances"]``.

    ``stac``: also the scene as a Sentinel-2-like STAC item (``item.json``): one
    single-band COG per band (``B02``, ``B03``, ``B04``, ``B08`` at 10 m, ``B8A`` at
    20 m), scale and nodata in ``raster:bands``, common names in ``eo:bands`` and
    ``bands``, the projection extension; the URL of the item is ``urls["item"]``.
    """
    if size < 64:
        raise InputError(f"--size must be at least 64, got {size}")
    storage.check_writable(outdir)
    scene = SampleScene(size, size, seed)
    urls = {"scene": storage.join(outdir, "scene.tif"), "labels": storage.join(outdir, "labels.tif")}
    common = dict(height=size, width=size, crs=CRS, transform=scene.transform)
    tags = {"GEOSEG_SAMPLE": f"size={size} seed={seed}"}
    with CogWriter(
        urls["scene"],
        count=4,
        dtype="uint16",
        nodata=0,
        descriptions=list(BAND_NAMES),
        tags=tags,
        resampling="AVERAGE",
        **common,
    ) as img_out, CogWriter(
        urls["labels"],
        count=1,
        dtype="uint8",
        nodata=NODATA,
        colormap=LANDCOVER.colormap(),
        tags={**tags, **LANDCOVER.to_tags()},
        resampling="MODE",
        **common,
    ) as lab_out, contextlib.ExitStack() as stack:
        bands = {}
        if stac:
            for key, (name, factor) in STAC_BANDS.items():
                url = storage.join(outdir, f"{key}.tif")
                transform = scene.transform @ Affine.scale(factor)
                bands[key] = stack.enter_context(CogWriter(
                    url, height=size // factor, width=size // factor, count=1, dtype="uint16", nodata=0, crs=CRS,
                    transform=transform, descriptions=[name], resampling="AVERAGE"))
        inst_out = stack.enter_context(CogWriter(
            storage.join(outdir, "instances.tif"), count=1, dtype="int32", nodata=INSTANCE_NODATA, tags=tags,
            descriptions=["field parcel instance id"], resampling="NEAREST", **common)) if instances else None
        for window in iter_windows(size, size, block):
            image, labels, *ids = scene.render(window, instances)
            img_out.write(window, image)
            lab_out.write(window, labels)
            if inst_out is not None:
                inst_out.write(window, ids[0])
            for key, (name, factor) in STAC_BANDS.items() if stac else ():
                band = image[BAND_NAMES.index(name if factor == 1 else "nir")]
                if factor == 1:
                    bands[key].write(window, band)
                else:  # 20 m: the mean of each 2 x 2 block of valid 10 m pixels (block is even)
                    h, w = band.shape[0] // 2 * 2, band.shape[1] // 2 * 2
                    cells = band[:h, :w].reshape(h // 2, 2, w // 2, 2).astype(np.float64)
                    n = (cells > 0).sum(axis=(1, 3))
                    mean = np.where(n > 0, cells.sum(axis=(1, 3)) / np.maximum(n, 1), 0)
                    bands[key].write(Window(window.row_off // 2, window.col_off // 2, h // 2, w // 2),
                                     np.round(mean).astype(np.uint16))
    if stac:
        urls["item"] = _write_item(outdir, size, seed, scene.transform)
    if instances:
        urls["instances"] = storage.join(outdir, "instances.tif")
    return urls


# The sample as a Sentinel-2-like item: asset key -> (band name, pixel size in 10 m pixels)
STAC_BANDS = {"B02": ("blue", 1), "B03": ("green", 1), "B04": ("red", 1), "B08": ("nir", 1), "B8A": ("nir08", 2)}
STAC_SCALE = 0.0001  # reflectance = DN x 0.0001, as Sentinel-2 L2A before baseline 04.00


def _write_item(outdir: str, size: int, seed: int, transform) -> str:
    import json

    from rasterio.warp import transform_bounds

    base = outdir if storage.is_remote(outdir) else os.path.abspath(storage.local_path(outdir))
    west, south, east, north = transform_bounds(CRS, "EPSG:4326", transform.c, transform.f + transform.e * size,
                                                transform.c + transform.a * size, transform.f)
    assets = {}
    for key, (name, factor) in STAC_BANDS.items():
        band = {"name": key, "eo:common_name": name, "nodata": 0, "data_type": "uint16", "scale": STAC_SCALE,
                "offset": 0.0, "spatial_resolution": 10.0 * factor}
        t = transform @ Affine.scale(factor)
        assets[key] = {
            "href": storage.join(base, f"{key}.tif"), "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data", "reflectance"], "title": f"{name} ({10 * factor} m)",
            "proj:shape": [size // factor, size // factor], "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "eo:bands": [{"name": key, "common_name": name}],
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": STAC_SCALE, "offset": 0.0,
                              "spatial_resolution": 10.0 * factor}],
            "bands": [band],
        }
    assets["labels"] = {"href": storage.join(base, "labels.tif"), "type": "image/tiff; application=geotiff",
                        "roles": ["labels"], "title": "land-cover labels"}
    item = {
        "type": "Feature", "stac_version": "1.1.0", "id": f"geoseg-sample-{size}-{seed}",
        "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                            "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
                            "https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
        "bbox": [west, south, east, north],
        "geometry": {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north], [west, north],
                                                         [west, south]]]},
        "properties": {"datetime": "2025-06-15T10:00:00Z", "proj:code": CRS, "platform": "geoseg-sample"},
        "links": [], "assets": assets,
    }
    url = storage.join(base, "item.json")
    storage.write_text(url, json.dumps(item, indent=2))
    return url

