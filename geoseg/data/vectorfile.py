"""Vector files to read (Ray-free): GeoParquet through pyarrow (geopandas), every other format GDAL
reads (GeoJSON, FlatGeobuf, GeoPackage, Shapefile, ...) through pyogrio; read by bounding box, with a
stable feature id (the file's ``id`` column where it has one, else the feature's position), window by
window on a raster grid (:class:`Features`: rasterized labels, reference instances)."""

from __future__ import annotations

import numpy as np

from geoseg.data import storage
from geoseg.errors import InputError


def _is_parquet(url: str) -> bool:
    return str(url).lower().endswith((".parquet", ".geoparquet"))


LABELS_LAYER = "labels"  # of a file with several layers (geoseg rank's GeoPackages): the one read


def layer_of(url: str) -> str | None:
    """The layer of a file with several that holds the labels (``labels``), else None (the first)."""
    import pyogrio

    try:
        names = [str(n) for n, _ in pyogrio.list_layers(url)]
    except Exception:  # noqa: BLE001 - read_info says what is wrong, in one line
        return None
    return LABELS_LAYER if len(names) > 1 and LABELS_LAYER in names else None


def info(url: str) -> tuple[str | None, list[str]]:
    """``(CRS as WKT or None, field names)``; one line naming the file where it cannot be read."""
    if not storage.exists(url):
        raise InputError(f"{url}: not found")
    try:
        if _is_parquet(url):
            import json

            import pyarrow.parquet as pq

            fs, path = storage.filesystem(url)
            with fs.open(path, "rb") as f:
                schema = pq.read_schema(f)
            geo = json.loads((schema.metadata or {}).get(b"geo", b"{}"))
            col = (geo.get("columns") or {}).get(geo.get("primary_column", "geometry"), {})
            crs = col.get("crs", "OGC:CRS84") if geo else None
            if isinstance(crs, dict):
                from pyproj import CRS

                crs = CRS.from_json_dict(crs).to_wkt()
            return crs, [n for n in schema.names if n not in (geo.get("primary_column", "geometry"), "bbox")]
        import pyogrio

        meta = pyogrio.read_info(url, layer=layer_of(url))
        return meta.get("crs"), list(meta["fields"])
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line naming the file
        raise InputError(f"{url}: not a vector file geoseg can read ({str(exc).splitlines()[0][:160]})") from None


class Features:
    """A vector file read window by window on a raster grid: its CRS and schema looked up once, each
    window's features read by bounding box (only the GeoParquet row groups in reach where it has a
    bbox covering column) and reprojected to the grid's CRS (taken as the same where either has none)."""

    def __init__(self, url: str, grid_crs=None):
        from pyproj import CRS

        self.url = url
        crs_wkt, self.fields = info(url)
        self.crs = CRS.from_user_input(crs_wkt) if crs_wkt else None
        self.grid_crs = CRS.from_user_input(grid_crs) if grid_crs else None
        self._reproject = self.crs is not None and self.grid_crs is not None and self.crs != self.grid_crs
        self._covering = _is_parquet(url) and "bbox" in _schema_names(url)

    def read(self, bbox=None, columns: list[str] | None = None):
        """A GeoDataFrame of the features (within ``bbox``, in the file's CRS), indexed by feature id."""
        import geopandas as gpd

        if not _is_parquet(self.url):
            import pyogrio

            return pyogrio.read_dataframe(self.url, layer=layer_of(self.url), bbox=bbox, columns=columns or [],
                                          fid_as_index=True)
        wanted = None if columns is None else [*columns, "geometry", *(["id"] if "id" in self.fields else [])]
        fs, path = storage.filesystem(self.url)
        kwargs = {"bbox": tuple(bbox)} if bbox is not None and self._covering else {}
        with fs.open(path, "rb") as f:
            frame = gpd.read_parquet(f, columns=wanted, **kwargs)
        if "id" in frame.columns:
            frame = frame.set_index("id")
        if bbox is not None:
            frame = frame[frame.geometry.intersects(_box(bbox))]
        return frame

    def count(self) -> int:
        """How many features the file holds (from its metadata: nothing is read)."""
        if _is_parquet(self.url):
            import pyarrow.parquet as pq

            fs, path = storage.filesystem(self.url)
            with fs.open(path, "rb") as f:
                return int(pq.read_metadata(f).num_rows)
        import pyogrio

        return int(pyogrio.read_info(self.url, layer=layer_of(self.url), force_feature_count=True)["features"])

    def in_window(self, affine, win, columns: list[str] | None = None):
        """The features over pixel window ``win`` of the grid of ``affine``, in the grid's CRS."""
        from rasterio.warp import transform_bounds

        x0, y0 = affine * (win.col_off, win.row_off)
        x1, y1 = affine * (win.col_off + win.width, win.row_off + win.height)
        bbox = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        if self._reproject:
            bbox = transform_bounds(self.grid_crs, self.crs, *bbox, densify_pts=21)
        frame = self.read(bbox, columns)
        return frame.to_crs(self.grid_crs) if self._reproject and len(frame) else frame

    @staticmethod
    def burn(shapes: list, affine, win, fill: int, dtype: str) -> np.ndarray:
        """``(geometry, value)`` pairs rasterized onto pixel window ``win`` of the grid of ``affine``."""
        import rasterio.features

        shape = (win.height, win.width)
        if not shapes:
            return np.full(shape, fill, dtype)
        return rasterio.features.rasterize(shapes, out_shape=shape, fill=fill, dtype=dtype,
                                           transform=affine * affine.translation(win.col_off, win.row_off))


def _schema_names(url: str) -> list[str]:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        return list(pq.read_schema(f).names)


def _box(bbox):
    import shapely

    return shapely.box(*bbox)


def values(url: str, field: str) -> np.ndarray:
    """The distinct values of one field."""
    if _is_parquet(url):
        import pyarrow.parquet as pq

        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as f:
            column = pq.read_table(f, columns=[field]).column(field).to_numpy(zero_copy_only=False)
    else:
        import pyogrio

        column = pyogrio.read_dataframe(url, layer=layer_of(url), columns=[field], read_geometry=False)[field].to_numpy()
    import pandas as pd

    return pd.unique(pd.Series(column).dropna())
