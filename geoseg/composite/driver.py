"""The driver loop of ``geoseg composite``, shared by its runners (no Ray).

    data.inputs.sources              the inputs as given: rasters, STAC items (files, lists, a search)
      -> describe (tasks)            each one's band assets, grids, time, bounds on the grid, in batches
      plan_composite                 the windows' observations, the output tiles, the tiles done already
      -> composite_tile (tasks)      one task per output tile: every window's COG and item, then its stack
      -> write_catalog, record       the STAC Collection, OUT/stacks.txt, OUT/composite.json (last)

The runner is what ``start`` returns once the inputs are checked: its tasks
(:mod:`geoseg.execution.tasks`: Ray tasks in :mod:`geoseg.composite.job`, inline in
:mod:`geoseg.composite.local`).
"""

from __future__ import annotations

import datetime as dt
import json
import time

from geoseg.console import Progress
from geoseg.data import storage
from geoseg.data.inputs import ItemSelection, sources
from geoseg.composite import stages
from geoseg.composite.plan import RECORD, STACKS, STATE, CompositeOptions, describe, plan_composite
from geoseg.composite.plan import fingerprint as fingerprint_of
from geoseg.errors import InputError
from geoseg.execution.tasks import as_done
from geoseg.mosaic import parse_grid
from geoseg.version import __version__

SOURCES_PER_TASK = 32
# the CPUs each kind of task asks for (on Ray): describing waits on storage
CPUS = {describe: 0.25, stages.composite_tile: 1}


def _state(opts: CompositeOptions, fingerprint: str) -> set[str]:
    """The tiles done already (their stacks), after checking that ``OUT`` holds this composite."""
    url = storage.join(opts.out, STATE)
    if storage.exists(url):
        before = json.loads(storage.read_text(url)).get("fingerprint")
        if before != fingerprint and not opts.overwrite:
            raise InputError(f"{opts.out}: holds a composite of other items or settings (fingerprint {before}, "
                             f"now {fingerprint}); pass --overwrite to replace it, or another --out")
        if before != fingerprint:
            storage.remove(storage.join(opts.out, STACKS), recursive=True)
            storage.remove(storage.join(opts.out, RECORD))
            return set()
    return {name[: -len(".vrt")] for name in storage.listdir(storage.join(opts.out, STACKS)) if name.endswith(".vrt")}


def drive(opts: CompositeOptions, start, log=print) -> dict:
    """Composite ``opts.inputs`` on the runner ``start()`` gives (``(tasks, cpus)``, asked for once
    the inputs are checked); returns the record. Tiles finished by an earlier run are kept."""
    t0 = time.perf_counter()
    grid = parse_grid(opts.grid)
    found = sources(list(opts.inputs), opts.search, ItemSelection(max_cloud=opts.max_cloud, where=opts.search))
    storage.check_writable(opts.out)
    describe(found[:1], opts.bands, opts.mask, grid)  # a band or mask the inputs lack: one line before Ray starts
    tasks, cpus = start()
    parts = [found[i : i + SOURCES_PER_TASK] for i in range(0, len(found), SOURCES_PER_TASK)]
    observations = [o for part in tasks.gather([tasks.submit(describe, p, opts.bands, opts.mask, grid)
                                                for p in parts]) for o in part]
    fingerprint = fingerprint_of(opts, observations)
    record_url = storage.join(opts.out, RECORD)
    done = _state(opts, fingerprint)
    if storage.exists(record_url) and json.loads(storage.read_text(record_url)).get("fingerprint") == fingerprint:
        log(f"{record_url}: already complete, skipped")
        return json.loads(storage.read_text(record_url))
    storage.write_text(storage.join(opts.out, STATE), json.dumps({"fingerprint": fingerprint}))
    plans = plan_composite(opts, observations, done)
    total = sum(len(p.tiles) for p in plans)
    kept = sum(len(p.done) for p in plans)
    used = {w.name: sum(len(p.members[j]) for p in plans) for j, w in enumerate(opts.windows)}
    log(f"composite: {len(observations)} observations, {total} tiles of {opts.side} px on {opts.grid}, "
        f"{opts.statistic} per window: " + ", ".join(f"{n} ({w.dates}, {used[n]} observations)"
                                                     for n, w in ((w.name, w) for w in opts.windows)))
    if kept:
        log(f"{opts.out}: resuming, {kept} of {total} tiles done already; those are kept")
    t_plan = time.perf_counter() - t0
    progress = Progress(total, "tiles")
    progress.update(kept)
    handles = []
    for plan in plans:
        ref = tasks.put(plan)
        handles += [tasks.submit(stages.composite_tile, ref, i) for i in range(len(plan.tiles))
                    if plan.tile_id(i) not in plan.done]
    mpix_obs = task_s = 0.0
    for res in as_done(tasks, handles):
        mpix_obs += res["pixels"] / len(opts.windows) / 1e6 * res["observations"]
        task_s += res["seconds"]
        progress.update(1, res["pixels"])
    progress.close(complete=True)
    t_tiles = time.perf_counter() - t0 - t_plan
    collection, listed = stages.write_catalog(
        opts.out, plans, f"geoseg composite: {opts.statistic} of {len(observations)} observations' clear pixels")
    record = {
        "status": "complete", "fingerprint": fingerprint, "grid": str(grid), "tile_size": opts.side,
        "statistic": opts.statistic, "bands": list(opts.bands), "mask": str(opts.mask),
        "windows": [{"name": w.name, "start": w.start, "end": w.end, "observations": used[w.name]}
                    for w in opts.windows],
        "tiles": total, "resumed": kept, "observations": len(observations),
        "stores": [{"crs": p.crs, "zone": p.zone or None, "tiles": len(p.tiles)} for p in plans],
        "collection": collection, "stacks": listed,
        "timings_s": {"plan": round(t_plan, 3), "tiles": round(t_tiles, 3),
                      "total": round(time.perf_counter() - t0, 3)},
        # output megapixels x the observations that reached them, per second of a task (a core)
        "throughput": {"mpix_obs_per_core_s": round(mpix_obs / task_s, 3) if task_s else None},
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(), "versions": {"geoseg": __version__},
    }
    storage.write_text(record_url, json.dumps(record, indent=1))
    log(f"composite {opts.out}: {total} tiles x {len(opts.windows)} windows in {record['timings_s']['total']:.1f}s "
        f"({kept} resumed); stacks listed in {listed}")
    return record
