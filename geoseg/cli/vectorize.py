"""geoseg vectorize: polygons of class maps, merged exactly across chunks."""

from __future__ import annotations

import argparse

from geoseg.cli.args import at_least, command


def add(sub) -> None:
    v = command(sub, "vectorize", "polygons of class maps (GeoParquet, FlatGeobuf), merged exactly across "
                                         "chunks",
            "geoseg vectorize out/ --classes water --simplify 5 --min-area 0.5")
    v.add_argument("target", help="a predict job's prefix (every finished scene) or one class map (COG, GeoTIFF, "
                                  "predict's Zarr, a mosaic store)")
    v.add_argument("--classes", help="class names or numbers to keep, comma-separated (default: every class)")
    v.add_argument("--simplify", type=float, default=0.0, metavar="M",
                   help="simplification tolerance in the map's CRS units, edges shared by two polygons simplified "
                        "alike (default 0: exact pixel outlines)")
    v.add_argument("--min-area", type=float, default=0.0, metavar="HA", help="drop polygons smaller than this (ha)")
    v.add_argument("--max-area", type=float, metavar="HA", help="drop polygons larger than this (ha), e.g. a "
                                                              "forest or a lake that is no field")
    v.add_argument("--schema", choices=["geoseg", "fiboa"], default="geoseg",
                   help="the files' columns: geoseg's (id, class, class_name, area_ha, pixels, mean_probability, "
                        "scene) or fiboa's core fields for field boundaries (id, area, perimeter, "
                        "determination_method; geoseg's kept beside them)")
    v.add_argument("--instances", action=argparse.BooleanOptionalAction, default=None,
                   help="one polygon per field instance (a connected interior grown over its boundary) of a "
                        "background/field/boundary map (default: on for such maps)")
    v.add_argument("--format", nargs="+", choices=["parquet", "fgb"],
                   help="files to write (default: both; the one --out names, where it names a file)")
    v.add_argument("--out", help="for one class map: the file to write (map.parquet, map.fgb), or a base name "
                                 "(default beside the map: <stem>.vectors.parquet / .fgb)")
    v.add_argument("--chunk", type=at_least("--chunk", 16), default=2048, help="chunk side in pixels (default 2048)")
    v.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    v.set_defaults(run=run)


def run(a) -> None:
    from geoseg.vectorize import VectorizeOptions, named_format, vectorize

    named = named_format(a.out)
    formats = tuple(a.format) if a.format else (named,) if named else ("parquet", "fgb")

    opts = VectorizeOptions(classes=tuple(c.strip() for c in a.classes.split(",")) if a.classes else None,
                            instances=a.instances,
                            simplify=a.simplify, min_area_ha=a.min_area, max_area_ha=a.max_area,
                            schema=a.schema, chunk=a.chunk, formats=formats,
                            address=a.address)
    vectorize(a.target, opts, out=a.out)
