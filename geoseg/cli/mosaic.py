"""geoseg mosaic: a finished job's scenes into one Zarr on a common grid."""

from __future__ import annotations

from geoseg.cli.args import at_least, command
from geoseg.mosaic import RULES


def add(sub) -> None:
    mo = command(sub, "mosaic", "mosaic a finished predict job's scenes into one Zarr on a common grid",
             "geoseg mosaic out/ --grid EPSG:6933:10")
    mo.add_argument("prefix", help="the predict job's output prefix (folder or s3:// URL)")
    mo.add_argument("--grid", required=True,
                    help="CRS:RESOLUTION, e.g. EPSG:6933:10 (equal-area, metres), EPSG:4326:0.0001 (degrees); "
                         "or utm:RESOLUTION for one store per UTM zone")
    mo.add_argument("--out", help="a folder for the store(s) NAME.zarr (default: the prefix), or the store itself: "
                                  "--out maps/m.zarr writes the store maps/m.zarr (its record maps/m.json)")
    mo.add_argument("--name", default="mosaic", help="store name: NAME.zarr, NAME.json, NAME.collection.json")
    mo.add_argument("--chunk", type=at_least("--chunk", 64), default=1024, help="chunk side in pixels (default 1024)")
    mo.add_argument("--merge", choices=list(RULES), default="auto",
                    help="overlapping scenes, by place: confidence (the most confident prediction, needs "
                         "--probabilities), latest (the latest scene's valid pixel); by time, over the clear "
                         "(unmasked, predict --mask) observations: mode (the most frequent class; ties: the "
                         "higher mean probability where stored, then the latest), mean-probability (argmax of "
                         "the mean probabilities, needs --probabilities), latest-clear, first-clear; auto "
                         "(confidence where every scene has probabilities, else latest; default)")
    mo.add_argument("--from", dest="since", metavar="DATE", help="only scenes acquired on or after DATE (ISO 8601)")
    mo.add_argument("--to", dest="until", metavar="DATE", help="only scenes acquired on or before DATE (ISO 8601)")
    mo.add_argument("--frequencies", action="store_true",
                    help="also each class's share of the clear observations of each pixel (a 'frequencies' "
                         "array, one layer per class)")
    mo.add_argument("--overwrite", action="store_true", help="replace a mosaic made with other settings or scenes")
    mo.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    mo.set_defaults(run=run)


def run(a) -> None:
    from geoseg.mosaic import Period, mosaic

    mosaic(a.prefix, a.grid, out=a.out, name=a.name, chunk=a.chunk, rule=a.merge, overwrite=a.overwrite,
           address=a.address, frequencies=a.frequencies, period=Period(a.since, a.until))
