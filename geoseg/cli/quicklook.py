"""geoseg quicklook: a small PNG of a raster geoseg wrote."""

from __future__ import annotations

from geoseg.cli.args import command, positive


def add(sub) -> None:
    q = command(sub, "quicklook", "a small PNG of a raster geoseg wrote (class map, image, run record)",
            "geoseg quicklook out/scene.tif --out scene.png")
    q.add_argument("raster", help="a class map (COG / Zarr), an image, a predict run record or output item")
    q.add_argument("--out", help="PNG path or URL (default: beside the raster, <stem>.quicklook.png)")
    q.add_argument("--max-side", type=positive("--max-side"), default=1024,
                   help="largest side of each picture, in pixels (default 1024)")
    q.set_defaults(run=run)


def run(a) -> None:
    from geoseg.data.quicklook import quicklook

    print(quicklook(a.raster, a.out, a.max_side))
