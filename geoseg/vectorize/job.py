"""The Ray layer of ``geoseg vectorize`` (and ``geoseg predict --vectors``).

    vectorize           a predict PREFIX (each finished scene) or one class map
      -> vectorize_map  one class map: Ray tasks level by level up the quad-tree of windows
                        (plan.py): polygonize each chunk, merge 2 x 2 windows' open polygons;
                        every task writes the polygons it closes as a GeoParquet part
      -> assemble       the parts streamed into one GeoParquet (bbox covering column) and one
                        FlatGeobuf, written whole (staged, then moved or put): a file that is
                        there is complete; the scene's run record and STAC item list them
"""

from __future__ import annotations

import json
import os
import time
import uuid

import numpy as np

from geoseg.data import storage
from geoseg.data.classmap import scene_maps
from geoseg.errors import InputError
from geoseg.vectorize import plan, stages
from geoseg.vectorize.plan import VectorizeOptions


def _reader(src: stages.Source):
    from geoseg.data.classmap import open_class_map

    cmap = open_class_map(src.url).__enter__()
    return cmap.read


def _prob_reader(src: stages.Source):
    if not src.probabilities:
        return None
    import zarr

    arr = zarr.open_group(storage.zarr_store(src.probabilities, read_only=True), mode="r")["probabilities"]
    return lambda w: arr[:, w.slices[0], w.slices[1]]


def _area(src: stages.Source):
    from geoseg.data.area import PixelArea

    return PixelArea.of(src.crs, src.transform)


def chunk_task(src: stages.Source, gy: int, gx: int, chunk: int, parts: str, tolerance: float) -> stages.Piece:
    """Level 0: one chunk polygonized; its closed polygons written as a part; its open ones returned."""
    win = src.tree(chunk).window(0, gy, gx)
    area = _area(src)
    closed, opened = stages.polygonize_chunk(src, win, _reader(src), _prob_reader(src), area)
    stages.finish_polygons(src, closed, storage.join(parts, f"0-{gy}-{gx}.parquet"), tolerance, area is not None)
    return opened


def merge_task(src: stages.Source, level: int, gy: int, gx: int, chunk: int, parts: str, tolerance: float,
               *below: stages.Piece) -> stages.Piece:
    """Level L: the open polygons of the four windows below merged; the closed ones written."""
    win = src.tree(chunk).window(level, gy, gx)
    closed, opened = stages.merge_group(src, win, list(below))
    stages.finish_polygons(src, closed, storage.join(parts, f"{level}-{gy}-{gx}.parquet"), tolerance,
                           _area(src) is not None)
    return opened


def vectorize_map(src: stages.Source, opts: VectorizeOptions, base: str, log=print) -> dict:
    """One class map to ``<base>.vectors.parquet`` / ``.fgb``; returns what its record says of them."""
    import ray

    t0 = time.perf_counter()
    parts = f"{base}.vectors.parts-{uuid.uuid4().hex[:8]}"
    tree = src.tree(opts.chunk)
    top = tree.levels
    chunk = ray.remote(num_cpus=1)(chunk_task)
    merge = ray.remote(num_cpus=1)(merge_task)
    refs = {g: chunk.remote(src, *g, opts.chunk, parts, opts.simplify)
            for g in tree.groups(0)}
    for level in range(1, top + 1):
        refs = {g: merge.remote(src, level, *g, opts.chunk, parts, opts.simplify,
                                *[refs[c] for c in tree.children(level, *g)])
                for g in tree.groups(level)}
    try:
        left = ray.get(list(refs.values()))
    except ray.exceptions.RayTaskError as exc:
        raise exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
    if any(len(p) for p in left):  # the top window has no inner edge: nothing stays open
        raise RuntimeError(f"{src.url}: {sum(len(p) for p in left)} polygons left open at the top window")
    try:
        files, counts = assemble(parts, plan.outputs(base, opts.formats), opts.min_area_ha, src.crs)
    finally:
        storage.remove(parts, recursive=True)
    rec = {"files": files, "polygons": counts["polygons"], "by_class": counts["by_class"],
           "classes": [src.names[k] if k < len(src.names) else f"class_{k}" for k in src.classes],
           "simplify": opts.simplify, "min_area_ha": opts.min_area_ha, "crs": src.crs,
           "seconds": round(time.perf_counter() - t0, 2)}
    log(f"{src.scene}: {counts['polygons']} polygons -> " + ", ".join(files.values()))
    return rec


def assemble(parts: str, files: dict[str, str], min_area_ha: float, crs: str | None) -> tuple[dict, dict]:
    """The parts streamed, one at a time, into each output file (numbered ``id``, polygons smaller
    than ``min_area_ha`` dropped): GeoParquet with its bbox covering column, FlatGeobuf with its
    spatial index."""
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
            if min_area_ha > 0:
                area = table.column("area_ha").to_numpy(zero_copy_only=False)
                table = table.filter(pa.array(~(area < min_area_ha)))
            if not table.num_rows:
                continue
            table = table.add_column(0, "id", pa.array(np.arange(next_id, next_id + table.num_rows, dtype=np.int64)))
            next_id += table.num_rows
            if count:
                counts["polygons"] += table.num_rows
                values, n = np.unique(table.column("class_name").to_numpy(zero_copy_only=False), return_counts=True)
                for v, k in zip(values, n):
                    counts["by_class"][str(v)] = counts["by_class"].get(str(v), 0) + int(k)
            yield table

    written = {}
    for i, (fmt, url) in enumerate(files.items()):
        (_write_parquet if fmt == "parquet" else _write_fgb)(batches(count=i == 0), url, crs)
        written[fmt] = url
    return written, counts


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

    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    b = shapely.bounds(geoms)
    bbox = pa.StructArray.from_arrays([pa.array(b[:, i]) for i in range(4)], names=["xmin", "ymin", "xmax", "ymax"])
    if "bbox" in table.column_names:
        table = table.drop_columns(["bbox"])
    return table.append_column("bbox", bbox)


def _write_parquet(tables, url: str, crs: str | None) -> None:
    import pyarrow.parquet as pq

    with storage.staging_path(url, ".parquet") as local:
        writer = None
        for table in tables:
            table = _with_bbox(table)
            table = table.replace_schema_metadata({b"geo": _geo_metadata(crs)})
            if writer is None:
                writer = pq.ParquetWriter(local, table.schema)
            writer.write_table(table.cast(writer.schema))
        if writer is None:  # no polygon at all: an empty file with the columns
            import geopandas as gpd

            gpd.GeoDataFrame({"id": [], "class": [], "class_name": [], "area_ha": [], "pixels": [],
                              "mean_probability": [], "scene": []}, geometry=[], crs=crs).to_parquet(
                local, write_covering_bbox=True)
        else:
            writer.close()
        storage.publish(local, url)


def _write_fgb(tables, url: str, crs: str | None) -> None:
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


def vectorize(target: str, opts: VectorizeOptions, out: str | None = None, log=print,
              missing_only: bool = False) -> list[dict]:
    """Vectorize a predict PREFIX (every finished scene, or with ``missing_only`` those whose record
    lists no vectors yet; each record and STAC item then lists its vector files) or one class map
    (``out``: the files' base name, default beside it)."""
    from geoseg.data.classmap import is_zarr
    from geoseg.runtime.cluster import init_ray

    if not is_zarr(target) and storage.isdir(target):
        maps = scene_maps(target)
        if missing_only:
            maps = [m for m in maps if not (m[2].get("outputs") or {}).get("vectors_parquet")]
            if not maps:
                return []
        if not maps:
            raise InputError(f"{target}: no finished scene to vectorize (no run record of a complete scene)")
        sources = [(plan.source_of(url, opts, stem), storage.join(target, stem), rec) for stem, url, rec in maps]
    else:
        src = plan.source_of(target, opts)
        stripped = target.rstrip("/")
        base = out or (stripped[: -len(".zarr")] if is_zarr(target) else os.path.splitext(stripped)[0])
        sources = [(src, base, None)]
    init_ray(opts.address)
    results = []
    for src, base, rec in sources:
        result = vectorize_map(src, opts, base, log)
        if rec is not None:
            _record(base, rec, result)
        results.append({"scene": src.scene, **result})
    return results


def _record(base: str, rec: dict, result: dict) -> None:
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
                "href": os.path.basename(v) if not storage.is_remote(v) else v, "type": types[k],
                "title": f"polygons of the class map ({'GeoParquet' if k == 'parquet' else 'FlatGeobuf'})",
                "roles": ["data"]}
        storage.write_text(item_url, json.dumps(item, indent=2))
