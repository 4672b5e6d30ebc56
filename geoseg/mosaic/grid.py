"""The common grid of a mosaic: a named CRS and a resolution, or one UTM zone per store.

``--grid`` / ``--mosaic`` take ``CRS:RESOLUTION``: ``EPSG:6933:10`` (equal-area,
10 m), ``EPSG:4326:0.0001`` (degrees), ``ESRI:54034:100``; or ``utm:RESOLUTION``
(``utm:10``): one store per UTM zone and hemisphere, each in its own
``EPSG:326zz`` / ``EPSG:327zz``. Extents are snapped to whole multiples of the
resolution from the CRS's origin, so mosaics on the same grid line up pixel for
pixel whatever scenes they hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from geoseg.errors import InputError

EXAMPLE = "e.g. EPSG:6933:10 (equal-area, metres), EPSG:4326:0.0001 (degrees) or utm:10 (a store per UTM zone)"


@dataclass(frozen=True)
class MosaicGrid:
    crs: str  # "EPSG:6933", a WKT, or "utm": one zone per store
    resolution: float  # in the CRS's units

    @property
    def per_zone(self) -> bool:
        return self.crs == "utm"

    def __str__(self) -> str:
        return f"{self.crs}:{self.resolution:g}"


def parse_grid(text: str) -> MosaicGrid:
    """``"EPSG:6933:10"`` -> ``MosaicGrid("EPSG:6933", 10.0)``; one line naming the value if wrong."""
    name, sep, res = str(text).strip().rpartition(":")
    try:
        resolution = float(res)
    except ValueError:
        resolution = float("nan")
    if not sep or not name or not math.isfinite(resolution) or resolution <= 0:
        raise InputError(f"--grid {text!r}: expected CRS:RESOLUTION with a positive resolution, {EXAMPLE}")
    if name.lower() == "utm":
        return MosaicGrid("utm", resolution)
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        crs = CRS.from_user_input(name)
    except CRSError:
        raise InputError(f"--grid {text!r}: {name!r} is not a CRS GDAL knows, {EXAMPLE}") from None
    if crs.is_geographic and resolution >= 1:
        raise InputError(f"--grid {text!r}: {name} is in degrees; a resolution of {resolution:g} degrees "
                         f"is not a map, {EXAMPLE}")
    return MosaicGrid(name.upper() if name.upper().startswith(("EPSG:", "ESRI:")) else crs.to_wkt(), resolution)


def utm_zone(crs: str | None, bounds_4326: tuple[float, float, float, float]) -> str:
    """The UTM zone of a scene, as its store's CRS (``EPSG:32632``): its own CRS where that is a
    UTM zone, else the zone of its centre."""
    from rasterio.crs import CRS

    epsg = CRS.from_user_input(crs).to_epsg() if crs else None
    if epsg and (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        return f"EPSG:{epsg}"
    w, s, e, n = bounds_4326
    lon, lat = (w + e) / 2, (s + n) / 2
    zone = min(60, max(1, int((lon + 180) // 6) + 1))
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"


def zone_name(crs: str) -> str:
    """``EPSG:32632`` -> ``utm32N``."""
    code = int(crs.split(":")[1])
    return f"utm{code % 100:02d}{'N' if code < 32700 else 'S'}"


def snap(bounds: tuple[float, float, float, float], res: float) -> tuple[tuple[float, ...], int, int]:
    """``(transform a..f, height, width)`` of the grid of step ``res`` covering ``bounds``
    (west, south, east, north), its corners on whole multiples of ``res``."""
    w, s, e, n = bounds
    x0, y1 = math.floor(w / res) * res, math.ceil(n / res) * res
    width = max(1, math.ceil(round((e - x0) / res, 6)))
    height = max(1, math.ceil(round((y1 - s) / res, 6)))
    return (res, 0.0, x0, 0.0, -res, y1), height, width
