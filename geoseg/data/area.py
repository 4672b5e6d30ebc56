"""Ground area of pixels, in square metres, for projected and geographic CRSs.

A projected CRS gives every pixel the same area: ``|det(transform)|`` in the
CRS's linear unit squared, converted to metres. (That is the map area; a
projection that is not equal-area, UTM far from its central meridian say,
differs from the ground area by its scale factor squared, well under 0.1% within
a UTM zone.) A geographic CRS gives each pixel row its own area: the exact area
of a band of the ellipsoid between the row's two latitudes (through the
authalic latitude), times the row's share of the full circle of longitude.

Class areas are then a dot product of class counts per row with the rows' areas,
so a chunk's areas cost one ``bincount``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

M2_PER_HA = 10_000.0


@dataclass(frozen=True)
class PixelArea:
    """Pixel area of one raster grid: constant (projected) or per row (geographic)."""

    constant_m2: float | None  # projected: every pixel's area
    # geographic: the ellipsoid (semi-major axis in m, e²) and the grid (pixel width in
    # radians of longitude, latitude of the top edge and pixel height in degrees)
    semi_major_m: float = 0.0
    e2: float = 0.0
    dlon_rad: float = 0.0
    lat0_deg: float = 0.0
    dlat_deg: float = 0.0

    @classmethod
    def of(cls, crs_wkt: str | None, transform: tuple[float, ...]) -> "PixelArea | None":
        """``None`` where the CRS is unknown (no areas can be given)."""
        if not crs_wkt:
            return None
        from pyproj import CRS

        crs = CRS.from_user_input(crs_wkt)
        a, b, c, d, e, f = (float(v) for v in transform[:6])
        if crs.is_geographic:
            if b != 0 or d != 0:
                return None  # a rotated geographic grid: rows are not parallels
            ell = crs.ellipsoid
            semi_major = ell.semi_major_metre
            inv_f = ell.inverse_flattening
            flat = 1.0 / inv_f if inv_f and np.isfinite(inv_f) else 0.0
            e2 = flat * (2 - flat)
            unit = _angular_factor(crs)  # CRS units -> degrees
            return cls(None, semi_major, e2, abs(np.radians(a * unit)), f * unit, e * unit)
        factor = _linear_factor(crs)
        return cls(abs(a * e - b * d) * factor * factor)

    def rows_m2(self, row_off: int, height: int) -> np.ndarray:
        """Area of one pixel in each of rows ``row_off .. row_off + height - 1`` (float64, m²)."""
        if self.constant_m2 is not None:
            return np.full(height, self.constant_m2)
        edges = self.lat0_deg + self.dlat_deg * np.arange(row_off, row_off + height + 1, dtype=np.float64)
        q = _authalic_q(np.radians(np.clip(edges, -90.0, 90.0)), self.e2)
        return np.abs(np.diff(q)) * self.semi_major_m**2 * (1 - self.e2) / 2.0 * self.dlon_rad

    def class_areas_m2(self, classes: np.ndarray, row_off: int, k: int) -> np.ndarray:
        """Area (m²) of each class ``0..k-1`` in a window of class numbers starting at ``row_off``
        (values outside ``[0, k)`` - nodata - do not count)."""
        classes = np.asarray(classes)
        h = classes.shape[0]
        keep = classes < k
        if self.constant_m2 is not None:
            return np.bincount(classes[keep].ravel(), minlength=k)[:k] * self.constant_m2
        rows = np.broadcast_to(np.arange(h)[:, None], classes.shape)
        per_row = np.bincount(rows[keep] * k + classes[keep].astype(np.int64), minlength=h * k).reshape(h, k)
        return self.rows_m2(row_off, h) @ per_row


def _authalic_q(phi: np.ndarray, e2: float) -> np.ndarray:
    """``q(φ)`` of the authalic latitude: the area between the equator and latitude φ of a
    lune of Δλ radians is ``a² (1 - e²) q(φ) Δλ / 2``."""
    s = np.sin(phi)
    if e2 == 0:
        return 2 * s
    e = np.sqrt(e2)
    return s / (1 - e2 * s * s) - np.log((1 - e * s) / (1 + e * s)) / (2 * e)


def _linear_factor(crs) -> float:
    """Metres per unit of a projected CRS's first axis."""
    for axis in crs.axis_info:
        if axis.unit_conversion_factor:
            return float(axis.unit_conversion_factor)
    return 1.0


def _angular_factor(crs) -> float:
    """Degrees per unit of a geographic CRS (degrees: 1; radians, grads otherwise)."""
    for axis in crs.axis_info:
        if axis.unit_conversion_factor:  # radians per unit
            return float(np.degrees(axis.unit_conversion_factor))
    return 1.0


def hectares(m2) -> float:
    return float(m2) / M2_PER_HA
