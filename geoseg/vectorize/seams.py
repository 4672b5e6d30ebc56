"""What merges across the seams of a window (no Ray): the polygons of its 2 x 2 windows that share
an edge on a seam, and their union.

In pixel space a polygon's edges are horizontal or vertical and a polygon of a window reaches a
seam of it only with its exterior ring, so two polygons share an edge exactly where the intervals
their exteriors lay along a seam overlap. Their union is a coverage union (GEOS ``CoverageUnion``,
linear in the vertices, several times ``union_all``'s speed) once each has the other's seam
vertices inserted into its seam edges, so that shared edges match vertex for vertex.
"""

from __future__ import annotations

import numpy as np


def seam_pairs(geoms: np.ndarray, cls: np.ndarray, x: float, y: float) -> list[tuple[int, int]]:
    """Pairs of polygons (pixel space) of one class that share an edge of positive length on the seam
    ``x = x`` or ``y = y``: the 1-D intervals their exterior rings lay along each seam (the pixels
    each owns beside it) overlap. A ring's edges are horizontal or vertical, and a polygon of a
    window reaches a seam of it only with its exterior."""
    import shapely

    xy, idx = shapely.get_coordinates(shapely.get_exterior_ring(geoms), return_index=True)
    same = idx[:-1] == idx[1:]  # an edge: two consecutive vertices of one ring
    p, q, owner = xy[:-1][same], xy[1:][same], idx[:-1][same]
    pairs = []
    for axis, at in ((0, x), (1, y)):  # vertical edges on x = seam (rows), horizontal on y = seam (columns)
        on = (p[:, axis] == at) & (q[:, axis] == at)
        lo = np.minimum(p[on, 1 - axis], q[on, 1 - axis])
        hi = np.maximum(p[on, 1 - axis], q[on, 1 - axis])
        who = owner[on]
        order = np.lexsort((lo, cls[who]))
        reach, first = -np.inf, -1
        for k in order:  # a sweep per class: an interval starting before the reach so far overlaps
            if first >= 0 and cls[who[k]] == cls[who[first]] and lo[k] < reach:
                if who[k] != who[first]:
                    pairs.append((who[first], who[k]))
                reach = max(reach, hi[k])
            else:
                first, reach = k, hi[k]
    return pairs


def union(members: np.ndarray, x: float, y: float):
    """The union of polygons (pixel space) that share edges only on the seams ``x = x`` and ``y = y``:
    a coverage union of them noded along the seams (``union_all`` where GEOS finds them otherwise)."""
    import shapely
    from shapely.errors import GEOSException

    shells = [shapely.get_coordinates(shapely.get_exterior_ring(g)) for g in members]
    cuts = [(axis, at, np.unique(np.concatenate([s[s[:, axis] == at, 1 - axis] for s in shells])))
            for axis, at in ((0, x), (1, y))]
    noded = []
    for g, shell in zip(members, shells):
        for axis, at, c in cuts:
            if len(c):
                shell = _insert(shell, axis, at, c)
        rings = shapely.get_rings(g)
        noded.append(shapely.polygons(shapely.linearrings(shell), holes=rings[1:] if len(rings) > 1 else None))
    try:
        return shapely.coverage_union_all(np.asarray(noded, dtype=object))
    except GEOSException:
        return shapely.union_all(members)


def _insert(ring: np.ndarray, axis: int, at: float, cuts: np.ndarray) -> np.ndarray:
    """A closed ring's vertices with ``cuts`` (coordinates along the seam) inserted inside its edges on
    the seam (coordinate ``axis`` equal to ``at``), in the edges' direction."""
    p, q = ring[:-1], ring[1:]
    on = np.flatnonzero((p[:, axis] == at) & (q[:, axis] == at))
    pieces, last = [], 0
    for i in on:
        a, b = p[i, 1 - axis], q[i, 1 - axis]
        inside = np.sort(cuts[(cuts > min(a, b)) & (cuts < max(a, b))])
        if len(inside):
            pts = np.empty((len(inside), 2))
            pts[:, axis], pts[:, 1 - axis] = at, inside if b > a else inside[::-1]
            pieces += [ring[last : i + 1], pts]
            last = i + 1
    if not pieces:
        return ring
    pieces.append(ring[last:])
    return np.vstack(pieces)
