"""The driver loop of ``geoseg mosaic``, shared by its runners (no Ray).

    scene_records                    the job summary's complete scenes (one read), or a listing
      -> read_scenes (tasks)         each scene's grid, from its run record, in batches
      plan_mosaic                    the scenes of --from/--to; one store per grid or UTM zone; resume state
      -> mosaic_chunks (tasks)       ranges of chunk numbers: warp, merge (by place or time), write, log
      -> build_level (tasks)         each overview level from the one below (mode)
      -> finish                      records (last), STAC Collection

The runner is what ``start`` returns once the inputs are checked: its tasks
(:mod:`geoseg.execution.tasks`: Ray tasks in :mod:`geoseg.mosaic.job`, inline in
:mod:`geoseg.mosaic.local`) and the CPUs they spread over.
"""

from __future__ import annotations

import json
import time

import numpy as np

from geoseg.console import Progress
from geoseg.data import storage
from geoseg.data.classes import ClassScheme
from geoseg.data.tiling import tile_ranges
from geoseg.mosaic import stages
from geoseg.mosaic.grid import parse_grid
from geoseg.mosaic.plan import Period, destination, order_scenes, plan_mosaic, prepare, read_scenes, scene_records
from geoseg.execution.tasks import as_done

RECORDS_PER_TASK = 64
# the CPUs each kind of task asks for (on Ray)
CPUS = {read_scenes: 0.25, stages.mosaic_chunks: 1, stages.build_level: 0.5}


def _classes_of(record_url: str) -> ClassScheme:
    return ClassScheme.from_dict(json.loads(storage.read_text(record_url))["model"]["classes"])


def drive(prefix: str, grid: str, start, out: str | None = None, name: str = "mosaic", chunk: int = 1024,
          rule: str = "auto", overwrite: bool = False, log=print, frequencies: bool = False,
          period: Period = Period()) -> list[dict]:
    """Mosaic every finished scene under ``prefix`` onto ``grid`` (``--grid``), into ``out``
    (default: the prefix) as ``<name>.zarr``, or into the store ``out`` names (``m.zarr``) (or one ``<name>-utmNNX.zarr`` per UTM zone), on the
    runner ``start()`` gives (``(tasks, cpus)``, asked for once the inputs are checked); returns
    the stores' records. A store complete already is left as it is; a half-written one resumes at
    the chunk it stopped at."""
    t0 = time.perf_counter()
    mgrid = parse_grid(grid)
    prefix = storage.absolute(prefix)  # records and workers: the same place from any folder
    out, name = destination(prefix, out, name)
    urls, basis = scene_records(prefix)
    storage.check_writable(out)
    tasks, cpus = start()
    parts = [urls[i : i + RECORDS_PER_TASK] for i in range(0, len(urls), RECORDS_PER_TASK)]
    scenes = order_scenes([s for part in tasks.gather([tasks.submit(read_scenes, p) for p in parts]) for s in part])
    classes = _classes_of(urls[0])
    plans = plan_mosaic(scenes, mgrid, out, name, chunk, rule, basis, overwrite, len(classes), frequencies, period)
    if period.active:
        kept = sum(len(p.scenes) for p in plans)
        log(f"--from {period.since or '..'} --to {period.until or '..'}: {kept} of {len(scenes)} scenes")
    t_plan = time.perf_counter() - t0
    records = []
    for plan in plans:
        if plan.status == "done":
            log(f"{plan.url}: already complete ({plan.record}), skipped")
            records.append(json.loads(storage.read_text(plan.record)))
            continue
        prepare(plan, classes)
        t1 = time.perf_counter()
        ref = tasks.put(plan)  # once, for every task (its scenes' grids and bounds)
        total = sum(plan.n_chunks(lvl) for lvl in range(plan.levels + 1))
        found = {lvl: int(np.unpackbits(bits)[: plan.n_chunks(lvl)].sum()) for lvl, bits in plan.done.items()}
        if plan.status == "resume":
            log(f"{plan.url}: resuming, {found.get(0, 0)} of {plan.n_chunks(0)} chunks done already"
                + (f" and {sum(found.values()) - found.get(0, 0)} of {total - plan.n_chunks(0)} overview chunks"
                   if plan.levels else "") + "; those are kept")
        progress = Progress(total, f"chunks of {plan.name}")
        progress.update(sum(found.values()))
        ranges = tile_ranges(plan.n_chunks(0), 1, cpus)
        pixels = 0
        for res in as_done(tasks, [tasks.submit(stages.mosaic_chunks, ref, r["lo"], r["hi"]) for r in ranges]):
            pixels += res["pixels"]
            progress.update(res["chunks"], res["pixels"])
        t_level0 = time.perf_counter() - t1
        for lvl in range(1, plan.levels + 1):
            for res in as_done(tasks, [tasks.submit(stages.build_level, ref, lvl, r["lo"], r["hi"])
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
