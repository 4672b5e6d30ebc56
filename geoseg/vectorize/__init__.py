"""Polygons from class maps: ``geoseg vectorize`` and ``geoseg predict --vectors``.

    plan.py    no Ray   VectorizeOptions, the class maps and classes to vectorize, where the outputs go
    stages.py  no Ray   polygonize a chunk, merge windows along their seams, simplify, write parts;
                        the tasks of the quad-tree (chunk_task, merge_task)
    junctions.py no Ray  grid points where three regions meet (shared edges are cut there)
    instances.py no Ray field instances: closed interiors grown over their boundary, disjoint
    finish.py  no Ray   the parts assembled into GeoParquet and FlatGeobuf; records and STAC items
    driver.py  no Ray   the driver loop every runner shares: tasks up each map's quad-tree
    local.py   no Ray   the same in this process (vectorize_here), or in memory (polygons_here)
    job.py     Ray      the driver loop on Ray tasks
"""

from geoseg.vectorize.plan import VectorizeOptions, named_format


def vectorize(*args, **kwargs):
    """:func:`geoseg.vectorize.job.vectorize` (Ray is imported only when it runs)."""
    from geoseg.vectorize.job import vectorize as run

    return run(*args, **kwargs)


__all__ = ["VectorizeOptions", "named_format", "vectorize"]
