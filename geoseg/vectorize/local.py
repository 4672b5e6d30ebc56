"""``geoseg vectorize`` in this process, without Ray.

* :func:`vectorize_here`: the same driver loop as on Ray (:func:`geoseg.vectorize.driver.drive`),
  its windows' tasks run inline, one after another: the same files, parts and records;
  :func:`runs_locally`: where ``geoseg vectorize`` runs so, starting no Ray (one map on this machine).
* :func:`polygons_here`: every polygon of a class map in memory, the quad-tree run window after
  window (tests, small maps): the closed polygons of every level, in pixel space, nothing written.
"""

from __future__ import annotations

from geoseg.execution.tasks import InlineTasks
from geoseg.vectorize.driver import drive
from geoseg.vectorize.plan import VectorizeOptions, plan_sources
from geoseg.vectorize.stages import CHUNK, Piece, Source, merge_group, polygonize_chunk


LOCAL_MAX_PX = 1 << 27  # a map this small vectorizes in this process in about the time a local Ray takes to start


def runs_locally(sources: list, opts: VectorizeOptions) -> bool:
    """Whether ``geoseg vectorize`` runs in this process alone, starting no Ray: one class map of at
    most ``LOCAL_MAX_PX`` pixels, no cluster named (``--address``, ``RAY_ADDRESS``) or Ray up
    already (a library caller's), and no ``--dashboard`` to watch."""
    from geoseg.execution.runtime import ray_connected, requested_address, wants_dashboard

    return (len(sources) == 1 and sources[0][0].height * sources[0][0].width <= LOCAL_MAX_PX
            and requested_address(opts.address) is None and not ray_connected() and not wants_dashboard())


def vectorize_here(target: str, opts: VectorizeOptions, out: str | None = None, log=print,
                   missing_only: bool = False) -> list[dict]:
    """:func:`geoseg.vectorize.job.vectorize` without Ray."""
    return drive(plan_sources(target, opts, out, missing_only), opts, InlineTasks(), log)


def polygons_here(src: Source, read, chunk: int = CHUNK, read_probs=None, area=None) -> Piece:
    """Every polygon of a class map, the quad-tree run here window after window (tests, small maps,
    a machine without Ray): the closed polygons of every level, in pixel space."""
    tree = src.tree(chunk)
    out, opened = Piece(), {}
    for g in tree.groups(0):
        closed, opened[g] = polygonize_chunk(src, tree.window(0, *g), read, read_probs, area)
        out.extend(closed)
    for level in range(1, tree.levels + 1):
        below, opened = opened, {}
        for g in tree.groups(level):
            kids = [below[c] for c in tree.children(level, *g)]
            closed, opened[g] = merge_group(src, tree.window(level, *g), kids, chunk << (level - 1))
            out.extend(closed)
    for left in opened.values():
        out.extend(left)
    return out
