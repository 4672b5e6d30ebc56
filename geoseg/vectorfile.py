"""Vector files to read (Ray-free): GeoParquet through pyarrow (geopandas), every other format GDAL
reads (GeoJSON, FlatGeobuf, GeoPackage, Shapefile, ...) through pyogrio; read by bounding box, with a
stable feature id (the file's ``id`` column where it has one, else the feature's position)."""

from __future__ import annotations

import numpy as np

from geoseg import storage
from geoseg.errors import InputError


def _is_parquet(url: str) -> bool:
    return str(url).lower().endswith((".parquet", ".geoparquet"))


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

        meta = pyogrio.read_info(url)
        return meta.get("crs"), list(meta["fields"])
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line naming the file
        raise InputError(f"{url}: not a vector file geoseg can read ({str(exc).splitlines()[0][:160]})") from None


def read(url: str, bbox=None, columns: list[str] | None = None):
    """A GeoDataFrame of the features (within ``bbox``, in the file's CRS), indexed by feature id."""
    import geopandas as gpd

    if _is_parquet(url):
        _, names = info(url)
        wanted = None if columns is None else [*columns, "geometry", *(["id"] if "id" in names else [])]
        fs, path = storage.filesystem(url)
        kwargs = {"bbox": tuple(bbox)} if bbox is not None and "bbox" in _schema_names(url) else {}
        with fs.open(path, "rb") as f:  # with a bbox covering column: only the row groups in reach are read
            frame = gpd.read_parquet(f, columns=wanted, **kwargs)
        if "id" in frame.columns:
            frame = frame.set_index("id")
        if bbox is not None:
            frame = frame[frame.geometry.intersects(_box(bbox))]
        return frame
    import pyogrio

    frame = pyogrio.read_dataframe(url, bbox=bbox, columns=columns or [], fid_as_index=True)
    return frame


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

        column = pyogrio.read_dataframe(url, columns=[field], read_geometry=False)[field].to_numpy()
    import pandas as pd

    return pd.unique(pd.Series(column).dropna())
