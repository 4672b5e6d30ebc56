"""The Ray layer of ``geoseg mosaic``: run records read and chunks written as Ray tasks.

    scene_records (driver, no Ray)   the job summary's complete scenes (one read), or a listing
      -> read_scene (Ray tasks)      each scene's grid, from its run record, in batches
      plan_mosaic (driver, no Ray)   one store per grid or UTM zone; resume state
      -> mosaic_chunks (Ray tasks)   ranges of chunk numbers: warp, merge, write, log
      -> build_level (Ray tasks)     each overview level from the one below (mode)
      -> finish (driver)             records (last), STAC Collection
"""

from __future__ import annotations

import json
import time

from geoseg.data import storage
from geoseg.data.classes import ClassScheme
from geoseg.console import Progress
from geoseg.mosaic import stages
from geoseg.mosaic.grid import parse_grid
from geoseg.mosaic.plan import MosaicScene, order_scenes, plan_mosaic, prepare, read_scene, scene_records
from geoseg.data.tiling import tile_ranges
from geoseg.runtime.cluster import check_address, cluster_cpus, init_ray

RECORDS_PER_TASK = 64


def _read_scenes(urls: list[str]) -> list[MosaicScene]:
    return [read_scene(u) for u in urls]


def _classes_of(record_url: str) -> ClassScheme:
    return ClassScheme.from_dict(json.loads(storage.read_text(record_url))["model"]["classes"])


def mosaic(prefix: str, grid: str, out: str | None = None, name: str = "mosaic", chunk: int = 1024,
           rule: str = "auto", overwrite: bool = False, address: str | None = None, log=print) -> list[dict]:
    """Mosaic every finished scene under ``prefix`` onto ``grid`` (``--grid``), into
    ``out`` (default: the prefix) as ``<name>.zarr`` (or one ``<name>-utmNNX.zarr`` per UTM
    zone); returns the stores' records. A store complete already is left as it is; a
    half-written one resumes at the chunk it stopped at."""
    import ray

    t0 = time.perf_counter()
    mgrid = parse_grid(grid)
    out = out or prefix
    check_address(address)
    urls, basis = scene_records(prefix)
    storage.check_writable(out)
    init_ray(address)
    cpus = cluster_cpus()
    read = ray.remote(num_cpus=0.25)(_read_scenes)
    parts = [urls[i : i + RECORDS_PER_TASK] for i in range(0, len(urls), RECORDS_PER_TASK)]
    scenes = order_scenes([s for part in ray.get([read.remote(p) for p in parts]) for s in part])
    classes = _classes_of(urls[0])
    plans = plan_mosaic(scenes, mgrid, out, name, chunk, rule, basis, overwrite)
    t_plan = time.perf_counter() - t0
    records = []
    write = ray.remote(num_cpus=0.5)(stages.mosaic_chunks)
    level = ray.remote(num_cpus=0.5)(stages.build_level)
    for plan in plans:
        if plan.status == "done":
            log(f"{plan.url}: already complete ({plan.record}), skipped")
            records.append(json.loads(storage.read_text(plan.record)))
            continue
        prepare(plan, classes)
        t1 = time.perf_counter()
        ref = ray.put(plan)  # once, for every task (its scenes' grids and bounds)
        total = sum(plan.n_chunks(lvl) for lvl in range(plan.levels + 1))
        progress = Progress(total, f"chunks of {plan.name}")
        ranges = tile_ranges(plan.n_chunks(0), 1, cpus)
        pixels = 0
        for res in _as_done([write.remote(ref, r["lo"], r["hi"]) for r in ranges]):
            pixels += res["pixels"]
            progress.update(res["chunks"], res["pixels"])
        t_level0 = time.perf_counter() - t1
        for lvl in range(1, plan.levels + 1):
            for res in _as_done([level.remote(ref, lvl, r["lo"], r["hi"])
                                 for r in tile_ranges(plan.n_chunks(lvl), 1, cpus)]):
                progress.update(res["chunks"])
        progress.close(complete=True)
        timings = {"plan": t_plan, "chunks": t_level0, "overviews": time.perf_counter() - t1 - t_level0,
                   "total": time.perf_counter() - t0}
        rec = stages.finish(plan, classes, timings, {"mpix_per_s": round(pixels / 1e6 / max(t_level0, 1e-9), 3)})
        log(f"mosaic {plan.url}: {len(plan.scenes)} scenes, {plan.height}x{plan.width} px on {plan.crs}, "
            f"{plan.levels} overview levels, {plan.rule} merge, in {timings['total']:.1f}s")
        records.append(rec)
    collection = stages.write_collection(out, name, records, classes)
    log(f"  collection: {collection}")
    return records


def _as_done(refs: list):
    """The results of Ray tasks in the order they finish."""
    import ray

    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        yield ray.get(ready[0])
