"""Planning a job from a STAC-GeoParquet index against the same items as JSON files (not a test).

``--items`` Sentinel-2-L2A-like items (13 band assets with ``eo:bands`` / ``raster:bands``, a preview,
30 properties; tiles of 1° over Europe, a date every 5 days through 2024, in date order as archives
are written) are written twice: as one STAC-GeoParquet index (row groups of 10,000 items) and as one
JSON file per item, listed in a ``.txt`` (a static catalog's items). The job: one month, a 6° x 4° box,
``--max-cloud 30``. Timed: geoseg's planning of the job's inputs, ``expand_inputs`` as ``geoseg
predict`` calls it (the filters, then each kept item's band stack, deferred), each in a process of its
own with the page cache dropped first where this user may (root), with its peak RSS.

    python benchmarks/stac_index.py [--items 100000] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "SCL")
COMMON = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "B11": "swir16", "B12": "swir22"}
JOB = {"bbox": "5,45,11,49", "datetime": "2024-06-01/2024-06-30", "max_cloud": 30.0}


def item(i: int, tiles: int) -> dict:
    import datetime as dt

    tile, step = i % tiles, i // tiles
    x, y = -10.0 + (tile % 40), 36.0 + (tile // 40) % 30
    day = dt.date(2024, 1, 1) + dt.timedelta(days=5 * (step % 73))
    rng = (i * 2654435761) % 1000 / 10.0
    res = {b: 10 if b in ("B02", "B03", "B04", "B08") else 60 if b in ("B01", "B09") else 20 for b in BANDS}
    assets = {b: {"href": f"s3://sentinel-cogs/T{tile:04d}/{day}/{b}.tif", "type": "image/tiff; application=geotiff; "
                  "profile=cloud-optimized", "roles": ["data"], "gsd": res[b],
                  "proj:shape": [109800 // res[b]] * 2, "proj:transform": [res[b], 0, 399960, 0, -res[b], 5000040],
                  "eo:bands": [{"name": b, **({"common_name": COMMON[b]} if b in COMMON else {})}],
                  "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1}]}
              for b in BANDS}
    assets["preview"] = {"href": f"s3://sentinel-cogs/T{tile:04d}/{day}/preview.jpg", "type": "image/jpeg",
                         "roles": ["overview"]}
    props = {"datetime": f"{day}T10:{i % 60:02d}:00Z", "platform": "sentinel-2a", "constellation": "sentinel-2",
             "instruments": ["msi"], "eo:cloud_cover": rng, "proj:code": f"EPSG:326{31 + tile % 6}",
             "s2:mgrs_tile": f"{31 + tile % 6}T{tile:04d}", "s2:processing_baseline": "05.10",
             "s2:product_uri": f"S2A_MSIL2A_{day}_{i}.SAFE", "s2:degraded_msi_data_percentage": 0.0,
             "s2:nodata_pixel_percentage": rng / 3, "s2:saturated_defective_pixel_percentage": 0.0,
             "s2:dark_features_percentage": rng / 7, "s2:cloud_shadow_percentage": rng / 5,
             "s2:vegetation_percentage": 100 - rng, "s2:not_vegetated_percentage": rng / 2,
             "s2:water_percentage": 3.2, "s2:unclassified_percentage": 0.4, "s2:medium_proba_clouds_percentage": rng / 2,
             "s2:high_proba_clouds_percentage": rng / 2, "s2:thin_cirrus_percentage": 0.1,
             "s2:snow_ice_percentage": 0.0, "s2:mean_solar_zenith": 35.0, "s2:mean_solar_azimuth": 150.0,
             "view:sun_elevation": 55.0, "view:sun_azimuth": 150.0, "sat:relative_orbit": 108,
             "grid:code": f"MGRS-{tile}", "mgrs:utm_zone": 31 + tile % 6, "mgrs:latitude_band": "T",
             "mgrs:grid_square": "XY", "created": "2024-12-01T00:00:00Z", "updated": "2024-12-01T00:00:00Z"}
    return {"type": "Feature", "stac_version": "1.0.0", "id": f"S2A_{tile:04d}_{day}", "collection": "sentinel-2-l2a",
            "bbox": [x, y, x + 1, y + 1],
            "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + 1, y], [x + 1, y + 1], [x, y + 1], [x, y]]]},
            "properties": props, "assets": assets, "links": []}


def write(work: str, n: int) -> tuple[str, str]:
    from geoseg.data import stacindex

    tiles = -(-n // 73)
    items = sorted((item(i, tiles) for i in range(n)), key=lambda it: it["properties"]["datetime"])
    index = os.path.join(work, "items.parquet")
    t = time.perf_counter()
    stacindex.write_index(items, index, row_group_size=10_000)
    print(f"index: {n} items, {os.path.getsize(index) / 2**20:.0f} MiB, written in {time.perf_counter() - t:.0f} s")
    folder = os.path.join(work, "json")
    os.makedirs(folder, exist_ok=True)
    listing = os.path.join(work, "items.txt")
    with open(listing, "w") as lst:
        for it in items:
            path = os.path.join(folder, f"{it['id']}.json")
            with open(path, "w") as f:
                json.dump(it, f)
            lst.write(path + "\n")
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print(f"json:  {n} files, {size / 2**20:.0f} MiB")
    return index, listing


def plan(source: str, out: str) -> None:
    """One cold planning of the job's inputs (in a process of its own): seconds, items, peak RSS."""
    from geoseg.data.inputs import ItemSelection, expand_inputs
    from geoseg.data.stac import Search

    t = time.perf_counter()
    select = ItemSelection(("scl",), JOB["max_cloud"], Search.parse(None, bbox=JOB["bbox"], datetime=JOB["datetime"]))
    found = expand_inputs([source], None, None, ("blue", "green", "red", "nir"), out, True, select)
    dt = time.perf_counter() - t
    with open("/proc/self/status") as f:  # VmHWM: this process's own peak (ru_maxrss carries the parent's)
        rss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 1024
    print(json.dumps({"seconds": dt, "items": len(found), "ids": sorted(s.stem for s in found)[:3], "rss_mib": rss}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--work")
    ap.add_argument("--plan", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.plan:
        return plan(*a.plan)
    work = a.work or tempfile.mkdtemp(prefix="geoseg-index-")
    from geoseg.execution.tasks import machine_cpus
    from geoseg.models.predictor import cpu_flags

    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"})
    print(f"machine: {machine_cpus()} cores, {' '.join(flags) or 'no AVX2'}; job: {JOB}")
    index, listing = write(work, a.items)
    got = {}
    for name, source in (("index", index), ("json", listing)):
        subprocess.run(["sync"], check=False)
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            cache = "cold"
        except OSError:
            cache = "warm (the page cache could not be dropped)"
        res = subprocess.run([sys.executable, __file__, "--plan", source, os.path.join(work, f"plan-{name}")],
                             capture_output=True, text=True, check=True)
        got[name] = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{name:5s}: planned {got[name]['items']} items in {got[name]['seconds']:.2f} s, "
              f"peak RSS {got[name]['rss_mib']:.0f} MiB, {cache}")
    assert got["index"]["items"] == got["json"]["items"] and got["index"]["ids"] == got["json"]["ids"]
    print(f"planning from the index: {got['json']['seconds'] / got['index']['seconds']:.1f}x faster than from "
          f"{a.items} JSON files, the same {got['index']['items']} items")
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
