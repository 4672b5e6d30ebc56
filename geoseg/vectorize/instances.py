"""Field instances from a background / field / boundary class map (no Ray): each closed interior
grown over the boundary pixels nearest to it, so that instances tile the field pixels.

An instance is a 4-connected interior (class ``field``), polygonized and merged across seams like
any class (:mod:`geoseg.vectorize.stages`). Once it is closed, its polygon takes the ``boundary``
pixels within ``grow`` steps: in each step, every unassigned boundary pixel takes the instance of
its first assigned neighbour, in the fixed order up, left, right, down, then the diagonals. The rule looks at pixels
only, never at which task runs it, so an instance grown in its own window and its neighbour grown
in another claim no pixel twice: the polygons are disjoint, an instance inside another's hole stays
a hole of it, and ``pixels`` / ``area_ha`` are those of the grown polygon. Boundary pixels farther
than ``grow`` steps from every interior belong to no instance.

A closed instance and what decides its growth lie within ``2 * grow + 1`` pixels of its bounding
box, so that window is all that is read; the closed instances of one part are grown together where
their windows fit in ``JOINT`` pixels, else one by one.
"""

from __future__ import annotations

import numpy as np

from geoseg.data.classes import BOUNDARY, INSTANCE_CLASSES
from geoseg.data.tiling import Window
from geoseg.vectorize.junctions import junction_keys

FIELD, EDGE = INSTANCE_CLASSES.names.index("field"), INSTANCE_CLASSES.names.index("boundary")
# the first assigned neighbour wins: up, left, right, down, then the diagonals (a corner pixel of a
# boundary ring touches its own interior only diagonally, and another field's ring along its sides)
ORDER = ((-1, 0), (0, -1), (0, 1), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1))
GROW = 2 * BOUNDARY  # steps: a predicted boundary is often wider than the target's
JOINT = 4096 * 4096  # px: the largest window in which a part's instances are grown together


def grow_labels(labels: np.ndarray, eligible: np.ndarray, steps: int) -> np.ndarray:
    """``labels`` (0: unassigned) grown ``steps`` times into ``eligible`` pixels: each step, an
    unassigned eligible pixel takes the label of its first assigned neighbour in ``ORDER``."""
    lab = labels.copy()
    h, w = lab.shape
    for _ in range(steps):
        before = np.pad(lab, 1)
        open_ = eligible & (lab == 0)
        if not open_.any():
            break
        for dy, dx in ORDER:
            nb = before[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            take = open_ & (nb != 0)
            lab[take] = nb[take]
            open_ &= ~take
    return lab


def _window(bounds: np.ndarray, margin: int, height: int, width: int) -> Window:
    """The pixels of ``bounds`` (minx, miny, maxx, maxy; pixel space) and ``margin`` around, clipped."""
    c0, r0 = max(0, int(np.floor(bounds[0])) - margin), max(0, int(np.floor(bounds[1])) - margin)
    c1 = min(width, int(np.ceil(bounds[2])) + margin)
    r1 = min(height, int(np.ceil(bounds[3])) + margin)
    return Window(r0, c0, r1 - r0, c1 - c0)


def grow(geoms, steps: int, read, height: int, width: int, area=None):
    """Closed interiors (shapely polygons in pixel space) grown over the boundary: ``(polygons,
    pixels, area m², junction keys per polygon)``, in the order given. ``read(window)`` gives class
    numbers; ``area`` a :class:`geoseg.data.area.PixelArea` or None."""
    import shapely

    n = len(geoms)
    out = [None] * n
    pixels, areas = np.zeros(n, np.int64), np.zeros(n)
    junctions = [np.zeros(0, np.int64)] * n
    if not n:
        return out, pixels, areas, junctions
    margin = 2 * steps + 1
    bounds = shapely.bounds(np.asarray(geoms, dtype=object))
    joint = _window(np.r_[bounds[:, :2].min(0), bounds[:, 2:].max(0)], margin, height, width)
    batches = [np.arange(n)] if joint.height * joint.width <= JOINT else [np.array([i]) for i in range(n)]
    for idx in batches:
        win = joint if len(idx) == n else _window(bounds[idx[0]], margin, height, width)
        _grow_in(win, [geoms[i] for i in idx], idx, steps, read, width, area, out, pixels, areas, junctions)
    return out, pixels, areas, junctions


def _grow_in(win: Window, polys, idx, steps, read, width, area, out, pixels, areas, junctions) -> None:
    import rasterio.features
    import scipy.ndimage
    import shapely
    from affine import Affine

    classes = np.asarray(read(win))
    shift = Affine.translation(win.col_off, win.row_off)
    mine = rasterio.features.rasterize(((p, k + 1) for k, p in enumerate(polys)), out_shape=classes.shape,
                                       transform=shift, fill=0, dtype="int32")
    interior = classes == FIELD
    others, _ = scipy.ndimage.label(interior & (mine == 0))  # other instances, each a label of its own
    labels = np.where(mine > 0, mine, -others).astype(np.int32)
    grown = grow_labels(labels, classes == EDGE, steps)
    keys = junction_keys(np.where(grown != 0, grown, np.iinfo(np.int32).min), width, win.row_off + 1,
                         win.col_off + 1)
    ids = np.where(grown > 0, grown, 0)
    count = np.bincount(ids.ravel(), minlength=len(polys) + 1)
    rows = (area.rows_m2(win.row_off, win.height) if area is not None else np.zeros(win.height))
    m2 = np.bincount(ids.ravel(), weights=np.broadcast_to(rows[:, None], ids.shape).ravel(),
                     minlength=len(polys) + 1)
    shapes: dict[int, list] = {}
    for geom, value in rasterio.features.shapes(ids, mask=ids > 0, connectivity=4, transform=shift):
        shapes.setdefault(int(value), []).append(shapely.geometry.shape(geom))
    points = shapely.points(np.column_stack([keys % (width + 1), keys // (width + 1)]).astype(float))
    tree = shapely.STRtree(points) if len(points) else None
    for k, i in enumerate(idx):
        parts = shapes.get(k + 1, [])
        poly = polys[k] if not parts else parts[0] if len(parts) == 1 else shapely.union_all(parts)
        out[i], pixels[i], areas[i] = poly, count[k + 1], m2[k + 1]
        if tree is not None:
            junctions[i] = keys[tree.query(poly.boundary, predicate="intersects")]
