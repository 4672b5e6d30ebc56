"""The Ray layer of ``geoseg vectorize`` (and ``geoseg predict --vectors``): the driver loop
(:mod:`geoseg.vectorize.driver`) with each window's task a Ray task (a CPU each).

    vectorize           a predict PREFIX (each finished scene) or one class map (plan.plan_sources)
      -> drive          each class map: Ray tasks level by level up the quad-tree of windows
                        (a task's open polygons passed to the one above as its result)
      -> assemble       the parts into one GeoParquet and one FlatGeobuf; records, STAC items
"""

from __future__ import annotations

from geoseg.execution.runtime import RayTasks
from geoseg.vectorize.driver import drive
from geoseg.vectorize.plan import VectorizeOptions, plan_sources
from geoseg.execution.tasks import InlineTasks
from geoseg.vectorize.finish import assemble_task
from geoseg.vectorize.local import runs_locally
from geoseg.vectorize.stages import chunk_task, merge_task


def vectorize(target: str, opts: VectorizeOptions, out: str | None = None, log=print,
              missing_only: bool = False) -> list[dict]:
    """Vectorize a predict PREFIX (every finished scene, or with ``missing_only`` those whose record
    lists no vectors yet; each record and STAC item then lists its vector files) or one class map
    (``out``: the files' base name, default beside it)."""
    from geoseg.execution.runtime import init_ray

    sources = plan_sources(target, opts, out, missing_only)
    if not sources:
        return []
    if runs_locally(sources, opts):  # one map on this machine: no Ray to start
        return drive(sources, opts, InlineTasks(), log)
    init_ray(opts.address)
    return drive(sources, opts, RayTasks({chunk_task: 1, merge_task: 1, assemble_task: 1}), log)
