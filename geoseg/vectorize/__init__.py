"""Polygons from class maps: ``geoseg vectorize`` and ``geoseg predict --vectors``.

    plan.py    no Ray   VectorizeOptions, the class maps and classes to vectorize, where the outputs go
    stages.py  no Ray   polygonize a chunk, merge windows along their seams, simplify, write parts
    job.py     Ray      tasks up the quad-tree, the parts assembled into GeoParquet and FlatGeobuf
"""

from geoseg.vectorize.plan import VectorizeOptions


def vectorize(*args, **kwargs):
    """:func:`geoseg.vectorize.job.vectorize` (Ray is imported only when it runs)."""
    from geoseg.vectorize.job import vectorize as run

    return run(*args, **kwargs)


__all__ = ["VectorizeOptions", "vectorize"]
