"""The last stages of ``geoseg vectorize``, without Ray: a class map's polygon parts into its files,
and the scene's record and STAC item listing them.

    assemble_task  a map's last task: its parts assembled (below), then removed
    assemble   the parts streamed into one GeoParquet (bbox covering column) and one FlatGeobuf,
               written whole (staged, then moved or put): a file that is there is complete;
               polygons outside --min-area/--max-area dropped; geoseg's columns or fiboa's
    fiboa      a table of geoseg's columns in the fiboa core schema (id, area, perimeter,
               determination_method), geoseg's own columns kept beside them
    record     the scene's run record and STAC item list the vector files
"""

from __future__ import annotations

import json

import numpy as np

from geoseg.data import storage


FIBOA_VERSION = "0.2.0"


def assemble_task(url: str, crs: str | None, parts: str, files: dict[str, str], areas: tuple, schema: str,
                  *left) -> tuple[dict, dict]:
    """The last task of a class map, once its top windows are done (``left``: their open polygons,
    none): its parts assembled into its files (:func:`assemble`), the parts removed."""
    if any(len(p) for p in left):  # the top window has no inner edge: nothing stays open
        raise RuntimeError(f"{url}: {sum(len(p) for p in left)} polygons left open at the top window")
    try:
        return assemble(parts, files, areas, crs, schema)
    finally:
        storage.remove(parts, recursive=True)


def assemble(parts: str, files: dict[str, str], areas: tuple, crs: str | None,
             schema: str = "geoseg") -> tuple[dict, dict]:
    """The parts streamed, one at a time, into each output file (numbered ``id``, polygons outside
    ``areas``, ``(min_ha, max_ha or None)``, dropped; ``schema`` geoseg's columns or fiboa's, :func:`fiboa`):
    GeoParquet with its bbox covering column, FlatGeobuf with its spatial index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = sorted(n for n in storage.listdir(parts) if n.endswith(".parquet"))
    counts: dict = {"polygons": 0, "by_class": {}}

    def batches(count: bool):
        next_id = 0
        for name in names:
            fs, path = storage.filesystem(storage.join(parts, name))
            with fs.open(path, "rb") as f:
                table = pq.read_table(f)
            least, most = areas
            if least > 0 or most is not None:
                area = table.column("area_ha").to_numpy(zero_copy_only=False)
                keep = ~(area < least) if least > 0 else np.ones(len(area), bool)
                table = table.filter(pa.array(keep & ~(area > most) if most is not None else keep))
            if not table.num_rows:
                continue
            table = table.add_column(0, "id", pa.array(np.arange(next_id, next_id + table.num_rows, dtype=np.int64)))
            next_id += table.num_rows
            if count:
                counts["polygons"] += table.num_rows
                values, n = np.unique(table.column("class_name").to_numpy(zero_copy_only=False), return_counts=True)
                for v, k in zip(values, n):
                    counts["by_class"][str(v)] = counts["by_class"].get(str(v), 0) + int(k)
            yield fiboa(table, crs) if schema == "fiboa" else table

    written = {}
    for i, (fmt, url) in enumerate(files.items()):
        (_write_parquet if fmt == "parquet" else _write_fgb)(batches(count=i == 0), url, crs, schema)
        written[fmt] = url
    return written, counts


def fiboa(table, crs: str | None):
    """geoseg's columns in fiboa's core schema: ``id`` (text), ``area`` (ha), ``perimeter`` (m; on the
    ellipsoid for a geographic CRS), ``determination_method`` (``auto-imagery``), then geoseg's own
    (``class``, ``class_name``, ``mean_probability``, ``pixels``, ``scene``)."""
    import pyarrow as pa
    import shapely

    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    perimeter = _perimeters(geoms, crs)
    n = table.num_rows
    out = table.drop_columns(["id", "area_ha"])
    out = out.add_column(0, "determination_method", pa.array(["auto-imagery"] * n, pa.string()))
    out = out.add_column(0, "perimeter", pa.array(perimeter, pa.float64()))
    out = out.add_column(0, "area", table.column("area_ha").cast(pa.float64()))
    return out.add_column(0, "id", table.column("id").cast(pa.string()))


def _perimeters(geoms, crs: str | None) -> np.ndarray:
    """Each polygon's perimeter in metres: planar in a projected CRS (in its units, metres for UTM and
    equal-area grids), on the WGS84 ellipsoid in a geographic one."""
    import shapely

    if crs:
        from pyproj import CRS, Geod

        c = CRS.from_user_input(crs)
        if c.is_geographic:  # every ring's segments on the ellipsoid at once, summed per polygon
            rings, owner = shapely.get_rings(geoms, return_index=True)
            xy, ring = shapely.get_coordinates(rings, return_index=True)
            same = ring[1:] == ring[:-1]  # a segment joins two points of one ring
            _, _, dist = Geod(ellps="WGS84").inv(xy[:-1, 0][same], xy[:-1, 1][same], xy[1:, 0][same], xy[1:, 1][same])
            per_ring = np.bincount(ring[:-1][same], weights=dist, minlength=len(rings))
            return np.bincount(owner, weights=per_ring, minlength=len(geoms)).astype(np.float64)
        factor = c.axis_info[0].unit_conversion_factor if c.axis_info else 1.0
        return shapely.length(geoms) * factor
    return shapely.length(geoms)


def _geo_metadata(crs: str | None) -> bytes:
    """GeoParquet 1.1 metadata of the ``geometry`` column (WKB polygons, CRS as PROJJSON, and its
    ``bbox`` covering column)."""
    projjson = None
    if crs:
        from pyproj import CRS

        projjson = CRS.from_user_input(crs).to_json_dict()
    col = {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": projjson,
           "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}}
    return json.dumps({"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": col}}).encode()


def _with_bbox(table):
    import pyarrow as pa
    import shapely

    if "bbox" in table.column_names and table.column("bbox").type.num_fields == 4:
        return table  # the part's own (stages.finish_polygons)

    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    b = shapely.bounds(geoms)
    bbox = pa.StructArray.from_arrays([pa.array(b[:, i]) for i in range(4)], names=["xmin", "ymin", "xmax", "ymax"])
    if "bbox" in table.column_names:
        table = table.drop_columns(["bbox"])
    return table.append_column("bbox", bbox)


def _write_parquet(tables, url: str, crs: str | None, schema: str = "geoseg") -> None:
    import pyarrow.parquet as pq

    meta = {b"geo": _geo_metadata(crs)}
    if schema == "fiboa":  # fiboa's collection metadata: the version its columns follow
        meta[b"fiboa"] = json.dumps({"fiboa_version": FIBOA_VERSION, "fiboa_extensions": []}).encode()

    with storage.staging_path(url, ".parquet") as local:
        writer = None
        for table in tables:
            table = _with_bbox(table)
            table = table.replace_schema_metadata(meta)
            if writer is None:
                writer = pq.ParquetWriter(local, table.schema)
            writer.write_table(table.cast(writer.schema))
        if writer is None:  # no polygon at all: an empty file with the columns
            import geopandas as gpd

            columns = {"id": [], "class": [], "class_name": [], "area_ha": [], "pixels": [], "mean_probability": [],
                       "scene": []}
            if schema == "fiboa":
                columns = {"id": [], "area": [], "perimeter": [], "determination_method": [],
                           **{k: v for k, v in columns.items() if k not in ("id", "area_ha")}}
            gpd.GeoDataFrame(columns, geometry=[], crs=crs).to_parquet(local, write_covering_bbox=True)
        else:
            writer.close()
        storage.publish(local, url)


def _write_fgb(tables, url: str, crs: str | None, schema: str = "geoseg") -> None:
    import geopandas as gpd
    import pyogrio
    import shapely

    with storage.staging_path(url, ".fgb") as local:
        first = True
        for table in tables:
            frame = gpd.GeoDataFrame(table.drop_columns([c for c in ("bbox",) if c in table.column_names])
                                     .drop_columns(["geometry"]).to_pandas(),
                                     geometry=shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False)),
                                     crs=crs)
            pyogrio.write_dataframe(frame, local, driver="FlatGeobuf", append=not first, layer="polygons",
                                    SPATIAL_INDEX="NO" if not first else "YES")
            first = False
        if first:
            gpd.GeoDataFrame({"id": []}, geometry=[], crs=crs).to_file(local, driver="FlatGeobuf", engine="pyogrio")
        storage.publish(local, url)


def record(base: str, rec: dict, result: dict) -> None:
    """The scene's run record and STAC item list its vector files."""
    rec.setdefault("outputs", {}).update({f"vectors_{k}": v for k, v in result["files"].items()})
    rec["vectors"] = {k: v for k, v in result.items() if k != "files"}
    storage.write_text(f"{base}.json", json.dumps(rec, indent=2, default=str))
    item_url = f"{base}.item.json"
    if storage.exists(item_url):
        item = json.loads(storage.read_text(item_url))
        types = {"parquet": "application/vnd.apache.parquet", "fgb": "application/vnd.flatgeobuf"}
        for k, v in result["files"].items():
            item.setdefault("assets", {})[f"vectors-{k}"] = {
                "href": storage.absolute(v), "type": types[k],
                "title": f"polygons of the class map ({'GeoParquet' if k == 'parquet' else 'FlatGeobuf'})",
                "roles": ["data"]}
        storage.write_text(item_url, json.dumps(item, indent=2))
