"""geoseg sample: a synthetic agricultural scene to try everything on."""

from __future__ import annotations

from geoseg.cli.args import command, nonneg, positive
from geoseg.data.sample import write_sample


def add(sub) -> None:
    s = command(sub, "sample", "write a synthetic agricultural scene (scene.tif, labels.tif)",
            "geoseg sample data/ --size 2048 --stac --instances")
    s.add_argument("outdir")
    s.add_argument("--size", type=positive("--size"), default=2048, help="side in pixels (default 2048)")
    s.add_argument("--seed", type=nonneg("--seed"), default=0)
    s.add_argument("--instances", action="store_true",
                   help="also instances.tif: each field parcel's instance id (the field-delineation recipe)")
    s.add_argument("--stac", action="store_true", help="also a Sentinel-2-like STAC item (item.json): one COG per "
                                                       "band, B8A at 20 m, scale in raster:bands")
    s.set_defaults(run=run)


def run(a) -> None:
    urls = write_sample(a.outdir, size=a.size, seed=a.seed, stac=a.stac, instances=a.instances)
    print(f"scene:  {urls['scene']}\nlabels: {urls['labels']}" + (f"\nitem:   {urls['item']}" if a.stac else "")
          + (f"\ninstances: {urls['instances']}" if a.instances else ""))
