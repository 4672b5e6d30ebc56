"""Pixel and class areas: projected grids by the transform, geographic grids on the ellipsoid."""

import numpy as np
import pytest
from pyproj import CRS, Geod

from geoseg.data.area import PixelArea


def test_projected_area_is_the_pixel_size_in_metres():
    area = PixelArea.of(CRS.from_epsg(32633).to_wkt(), (10, 0, 500000, 0, -10, 6e6))
    assert area.rows_m2(0, 3).tolist() == [100.0, 100.0, 100.0]
    # a CRS in US survey feet: 10 ft pixels are 10 * 0.3048006 m a side
    feet = PixelArea.of(CRS.from_epsg(2272).to_wkt(), (10, 0, 0, 0, -10, 0))
    assert feet.rows_m2(0, 1)[0] == pytest.approx((10 * 1200 / 3937) ** 2, rel=1e-9)


@pytest.mark.parametrize("lat0", [0.5, 47.3, -62.0, 89.9])
def test_geographic_rows_match_geodesic_polygons(lat0):
    """Each row's pixel area equals the geodesic area of that pixel on WGS84 (pyproj.Geod)."""
    dlon, dlat = 0.0009, 0.0011  # not square: a swap of the axes would fail
    area = PixelArea.of(CRS.from_epsg(4326).to_wkt(), (dlon, 0, 12.0, 0, -dlat, lat0))
    rows = area.rows_m2(5, 4)
    geod = Geod(ellps="WGS84")
    for i, got in enumerate(rows):
        top = lat0 - dlat * (5 + i)
        lons, lats = [12.0, 12.0 + dlon, 12.0 + dlon, 12.0], [top, top, top - dlat, top - dlat]
        want = abs(geod.polygon_area_perimeter(lons, lats)[0])
        assert got == pytest.approx(want, rel=1e-7)
    if abs(lat0) > 1:  # rows further south are larger in the north, smaller in the south
        assert (rows[1:] > rows[:-1]).all() == (lat0 > 0)


def test_class_areas_weigh_each_row():
    area = PixelArea.of(CRS.from_epsg(4326).to_wkt(), (1.0, 0, 0, 0, -1.0, 60.0))
    classes = np.array([[0, 1, 255], [1, 1, 0]], np.uint8)  # 255: nodata, not counted
    rows = area.rows_m2(0, 2)
    got = area.class_areas_m2(classes, 0, 2)
    np.testing.assert_allclose(got, [rows[0] + rows[1], rows[0] + 2 * rows[1]])


def test_no_crs_no_area():
    assert PixelArea.of(None, (1, 0, 0, 0, -1, 0)) is None
