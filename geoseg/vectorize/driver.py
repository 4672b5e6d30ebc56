"""The driver loop of ``geoseg vectorize``, shared by its runners (no Ray).

    drive(sources, tasks)   each class map (up to AHEAD in flight, finished in order):
      -> submit_map         its windows' tasks level by level up the quad-tree (stages.chunk_task,
                            stages.merge_task): polygonize each chunk, merge 2 x 2 windows' open
                            polygons; every task writes the polygons it closes as a GeoParquet part
      -> assemble_task      once they are done: the parts into one GeoParquet and one FlatGeobuf (finish.py)
      -> finish_map         awaited
      -> record             the scene's run record and STAC item list them

The runner is the ``tasks`` it is handed (:mod:`geoseg.execution.tasks`): Ray tasks
(:mod:`geoseg.vectorize.job`), or inline in this process (:mod:`geoseg.vectorize.local`).
"""

from __future__ import annotations

import time
import uuid

from geoseg.data import storage
from geoseg.vectorize.finish import assemble_task, record
from geoseg.vectorize.plan import VectorizeOptions, outputs
from geoseg.vectorize.stages import Source, chunk_task, merge_task


AHEAD = 8  # class maps whose tasks are in flight at once: one map's merge and files overlap the next's chunks


def drive(sources: list, opts: VectorizeOptions, tasks, log=print) -> list[dict]:
    """Every ``(source, base, record)`` of :func:`geoseg.vectorize.plan.plan_sources` vectorized
    on ``tasks`` (up to ``AHEAD`` maps in flight); a scene's record (where it has one) lists its files."""
    results, flight = [], []

    def finish_first() -> None:
        src, base, rec, started = flight.pop(0)
        result = finish_map(src, opts, base, started, tasks, log)
        if rec is not None:
            record(base, rec, result)
        results.append({"scene": src.scene, **result})

    for src, base, rec in sources:
        flight.append((src, base, rec, submit_map(src, opts, base, tasks)))
        if len(flight) >= AHEAD:
            finish_first()
    while flight:
        finish_first()
    return results


def submit_map(src: Source, opts: VectorizeOptions, base: str, tasks) -> tuple:
    """A class map's window tasks, level by level up the quad-tree (each merge takes the open
    polygons of the windows below), and the task assembling its files once they are done, handed
    to ``tasks``: ``(start time, the assembling task's handle)``."""
    t0 = time.perf_counter()
    parts = f"{base}.vectors.parts-{uuid.uuid4().hex[:8]}"
    tree = src.tree(opts.chunk)
    refs = {g: tasks.submit(chunk_task, src, *g, opts.chunk, parts, opts.simplify) for g in tree.groups(0)}
    for level in range(1, tree.levels + 1):
        refs = {g: tasks.submit(merge_task, src, level, *g, opts.chunk, parts, opts.simplify,
                                *[refs[c] for c in tree.children(level, *g)])
                for g in tree.groups(level)}
    files = outputs(base, opts.formats)
    return t0, tasks.submit(assemble_task, src.url, src.crs, parts, files, (opts.min_area_ha, opts.max_area_ha),
                            opts.schema, *refs.values())


def finish_map(src: Source, opts: VectorizeOptions, base: str, started: tuple, tasks, log=print) -> dict:
    """A submitted map's files awaited; what its record says of them."""
    t0, handle = started
    try:
        (files, counts), = tasks.gather([handle])
    except Exception as exc:  # noqa: BLE001 - the task's own error, not its runner's wrapper
        raise tasks.cause(exc)
    rec = {"files": files, "polygons": counts["polygons"], "by_class": counts["by_class"],
           "classes": [src.names[k] if k < len(src.names) else f"class_{k}" for k in src.classes],
           "simplify": opts.simplify, "min_area_ha": opts.min_area_ha, "max_area_ha": opts.max_area_ha,
           "schema": opts.schema, "crs": src.crs,
           "seconds": round(time.perf_counter() - t0, 2)}
    log(f"{src.scene}: {counts['polygons']} polygons -> " + ", ".join(files.values()))
    return rec
