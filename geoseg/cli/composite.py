"""geoseg composite: cloudy scenes of many dates into per-window composites (COG tiles + STAC)."""

from __future__ import annotations

from geoseg.cli.args import ADDRESS_HELP, add_search_flags, at_least, command, search_options
from geoseg.composite import DEFAULT_SIDE, STATISTICS


def add(sub) -> None:
    co = command(sub, "composite", "per-pixel statistics of the clear observations of many dates, per time window",
                 "geoseg composite items.json --out comp/ --grid EPSG:32632:10 --mask scl "
                 "--window planting=2025-03-01/2025-05-31 --window harvest=2025-08-01/2025-10-15")
    co.add_argument("inputs", nargs="*", help="STAC items (item or ItemCollection JSON, .txt lists) with one asset "
                                              "per band, or rasters with band descriptions and a TIFFTAG_DATETIME")
    co.add_argument("--out", required=True, help="output folder or s3:// URL: tiles/<tile>/<tile>_<window>.tif "
                                                 "and .json, stacks/<tile>.vrt, stacks.txt, collection.json, "
                                                 "composite.json")
    co.add_argument("--grid", required=True,
                    help="CRS:RESOLUTION, e.g. EPSG:6933:10 or EPSG:32632:10; or utm:RESOLUTION for tiles in each "
                         "item's UTM zone")
    co.add_argument("--window", action="append", metavar="[NAME=]START/END",
                    help="a time window (dates included), repeatable: its observations make one composite, whose "
                         "bands are BAND@NAME (NAME default: the start's month, e.g. red@2025-03); "
                         "default: one window 'all'")
    co.add_argument("--statistic", default="median", help=f"per pixel, of the clear observations: {STATISTICS}")
    co.add_argument("--bands", default="blue,green,red,nir",
                    help="bands to composite: asset keys or common names of the items (raster band descriptions)")
    co.add_argument("--mask", default="none", metavar="SOURCE",
                    help="what is not a clear look, as for predict: scl, qa_pixel, ASSET:VALUES, ASSET:bits=BITS, "
                         "model (ukis-csmask's cloud and shadow model), none (default; nodata is never clear)")
    co.add_argument("--tile-size", type=at_least("--tile-size", 64), default=DEFAULT_SIDE,
                    help=f"side of an output tile in pixels (default {DEFAULT_SIDE}: 20.48 km at 10 m); a task each")
    add_search_flags(co, "every item found is an observation", cloud=60,
                     bbox="W,S,E,N in degrees: the search's box, and the composite's (tiles that reach it)")
    co.add_argument("--overwrite", action="store_true", help="replace a composite of other items or settings")
    co.add_argument("--address", help=ADDRESS_HELP)
    co.set_defaults(run=run)


def options(a):
    from geoseg.composite import CompositeOptions, parse_statistic, parse_windows
    from geoseg.data.masks import parse_mask
    from geoseg.errors import InputError

    search = search_options(a)
    box = search.bbox if search else None
    if not a.inputs and not (search and search.url):
        raise InputError("give STAC items or rasters to composite, or --stac-api URL to search")
    bands = tuple(b.strip() for b in a.bands.split(",") if b.strip())
    return CompositeOptions(tuple(a.inputs), a.out, a.grid, parse_windows(a.window), parse_statistic(a.statistic),
                            bands, parse_mask(a.mask), a.tile_size, box, search, a.max_cloud, a.overwrite)


def run(a) -> None:
    from geoseg.composite import composite

    composite(options(a), address=a.address)
