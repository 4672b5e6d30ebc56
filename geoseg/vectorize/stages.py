"""Class maps to polygons, chunk by chunk, merged exactly along the seams (no Ray).

Pixel space first: every geometry is built and merged in pixel coordinates (integers on the
pixel grid, so unions across seams are exact) and moved to the class map's CRS only when it
is written.

    polygonize_chunk   one chunk (read with a 1-pixel apron): polygons of each class
                       (``rasterio.features.shapes``, 4-connected, holes kept), each with its
                       pixels, area (m², per row on geographic grids), summed class
                       probability and the junction vertices of its rings (grid points where
                       three regions meet, or two diagonally: the ends of its shared edges);
                       polygons that reach the chunk's inner edges are *open*
    merge_group        the open polygons of 2 x 2 groups of the level below: those of one class
                       sharing an edge across a seam are unioned (their sums added); what no
                       longer reaches the group's inner edges is closed
    finish_polygons    closed polygons: simplified (:func:`simplify`), moved to the CRS, given
                       their attributes, written as one GeoParquet part

Memory: a task holds one chunk, or the open polygons of one group (what touches its seams).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from geoseg.data import storage
from geoseg.data.classes import NODATA
from geoseg.data.quadtree import QuadTree
from geoseg.data.tiling import Window
from geoseg.vectorize.junctions import junction_keys
from geoseg.vectorize.rings import Rings
from geoseg.vectorize.seams import seam_pairs, union

CHUNK = 2048  # px a side of a polygonizing task's window
_NO_JUNCTIONS = np.zeros(0, np.int64)


@dataclass
class Piece:
    """Polygons with their sums, in pixel space: what tasks hand each other (pickled with its
    polygons as WKB, in one call)."""

    geoms: list = field(default_factory=list)  # shapely polygons (pickled as WKB between tasks)
    cls: list = field(default_factory=list)
    pixels: list = field(default_factory=list)
    area_m2: list = field(default_factory=list)
    prob_sum: list = field(default_factory=list)
    junctions: list = field(default_factory=list)  # per polygon: int64 keys y * (width + 1) + x

    def add(self, geom, cls, pixels, area, prob, junctions) -> None:
        self.geoms.append(geom)
        self.cls.append(int(cls))
        self.pixels.append(int(pixels))
        self.area_m2.append(float(area))
        self.prob_sum.append(float(prob))
        self.junctions.append(np.asarray(junctions, np.int64))

    @classmethod
    def of(cls, geoms, classes, pixels, area, prob, junctions, keep) -> "Piece":
        """The polygons where ``keep`` of columns given whole (arrays, and a list of junctions)."""
        idx = np.flatnonzero(keep)
        return cls(list(geoms[idx]), classes[idx].tolist(), np.rint(pixels[idx]).astype(np.int64).tolist(),
                   area[idx].tolist(), prob[idx].tolist(), [junctions[i] for i in idx])

    def __getstate__(self) -> dict:
        import shapely

        return {**self.__dict__, "geoms": shapely.to_wkb(np.asarray(self.geoms, dtype=object))}

    def __setstate__(self, state: dict) -> None:
        import shapely

        self.__dict__.update({**state, "geoms": list(shapely.from_wkb(state["geoms"]))})

    @property
    def wkb(self) -> list:
        """The polygons as WKB."""
        import shapely

        return list(shapely.to_wkb(np.asarray(self.geoms, dtype=object)))

    def __len__(self) -> int:
        return len(self.geoms)

    def extend(self, other: "Piece") -> None:
        for name in ("geoms", "cls", "pixels", "area_m2", "prob_sum", "junctions"):
            getattr(self, name).extend(getattr(other, name))


@dataclass(frozen=True)
class Source:
    """A class map to vectorize: where it is, its grid, what to keep."""

    url: str
    height: int
    width: int
    transform: tuple
    crs: str | None
    classes: tuple[int, ...]  # class numbers to vectorize
    names: tuple[str, ...]  # every class's name, by number
    scene: str  # the scene's stem (attribute)
    probabilities: str | None = None  # the Zarr holding "probabilities" (class, y, x) uint8, or None
    grow: int = 0  # instances: steps each closed interior grows over the boundary (vectorize/instances.py)

    def tree(self, chunk: int) -> QuadTree:
        """The map's quad-tree of ``chunk``-square windows (the merge's order)."""
        return QuadTree(self.height, self.width, chunk)


def polygonize_chunk(src: Source, win: Window, read, read_probs=None, area=None, junctions: bool = True
                     ) -> tuple[Piece, Piece]:
    """``(closed, open)`` polygons of one chunk. ``read(window)`` gives class numbers, ``read_probs``
    (class, h, w) uint8 probabilities or None, ``area`` a :class:`geoseg.data.area.PixelArea` or None;
    ``junctions``: also each polygon's junction vertices (what simplification needs)."""
    import shapely

    H, W = src.height, src.width
    # the window and a 1-pixel apron (out of the raster: label -1), for the junctions on its edges
    ap = Window(max(0, win.row_off - 1), max(0, win.col_off - 1),
                min(H, win.row_off + win.height + 1) - max(0, win.row_off - 1),
                min(W, win.col_off + win.width + 1) - max(0, win.col_off - 1))
    raw = np.asarray(read(ap if junctions else win))
    if raw.dtype.kind == "u" and raw.dtype.itemsize <= 2:  # a lookup: several times np.isin's speed
        wanted = np.zeros(1 << (8 * raw.dtype.itemsize), bool)
        wanted[[c for c in src.classes if c < len(wanted)]] = True
        top = int(raw.max(initial=0))
        if wanted[: min(top + 1, NODATA)].all() and not wanted[NODATA:top + 1].any():
            keep = raw < min(top + 1, NODATA)  # every value below the nodata one wanted: one comparison
        else:
            keep = wanted[raw]
    else:
        keep = np.isin(raw, src.classes)
    if junctions:
        lab = np.full((win.height + 2, win.width + 2), -1, np.int32)
        y0, x0 = ap.row_off - (win.row_off - 1), ap.col_off - (win.col_off - 1)
        lab[y0 : y0 + ap.height, x0 : x0 + ap.width] = np.where(keep, raw, -2)  # -2: not vectorized
        keys = junction_keys(lab, W, win.row_off, win.col_off)
        inner = (slice(win.row_off - ap.row_off, win.row_off - ap.row_off + win.height),
                 slice(win.col_off - ap.col_off, win.col_off - ap.col_off + win.width))
        raw, keep = raw[inner], keep[inner]
    data = raw.astype(np.uint8, copy=False)
    if not keep.any():
        return Piece(), Piece()
    rings = Rings.of(data, keep)
    n = rings.n
    pixels = rings.sums()  # the shoelace area of a pixel-space polygon is its pixel count
    if area is None:
        areas = np.zeros(n)
    elif area.constant_m2 is not None:
        areas = pixels * area.constant_m2
    else:
        areas = rings.sums(rows=np.concatenate([[0.0], np.cumsum(area.rows_m2(win.row_off, win.height))]))
    probs = np.zeros(n)
    if read_probs is not None:
        p = np.asarray(read_probs(win))  # (class, h, w) uint8, probability x 255
        chosen = np.take_along_axis(p, np.minimum(data, p.shape[0] - 1)[None].astype(np.intp), 0)[0]
        table = np.zeros((win.height + 1, win.width + 1), np.int64)  # summed-area table
        table[1:, 1:] = chosen.astype(np.int64).cumsum(0).cumsum(1)
        probs = rings.sums(table=table) / 255.0
    geoms = rings.polygons(win.col_off, win.row_off)
    bounds = shapely.bounds(geoms)
    reaches = _reaches_inner_edge(bounds, win, H, W)
    if junctions:  # on each polygon's rings: at its vertices, or inside a straight edge (a neighbour's corner)
        points = shapely.points(np.column_stack([keys % (W + 1), keys // (W + 1)]).astype(float))
        on_poly, on_point = shapely.STRtree(points).query(shapely.boundary(geoms), predicate="intersects") \
            if len(points) else (np.zeros(0, int), np.zeros(0, int))
        order = np.argsort(on_poly, kind="stable")
        split = np.split(keys[on_point[order]], np.searchsorted(on_poly[order], np.arange(1, n)))
    else:
        split = [_NO_JUNCTIONS] * n
    return (Piece.of(geoms, rings.values, pixels, areas, probs, split, ~reaches),
            Piece.of(geoms, rings.values, pixels, areas, probs, split, reaches))


def _reaches_inner_edge(b, win: Window, H: int, W: int):
    """True where bounds ``(minx, miny, maxx, maxy)`` (pixel space; an ``(n, 4)`` array gives ``n``
    answers) reach an edge of ``win`` that is not the raster's: the polygon may go on in the
    neighbouring window."""
    b = np.asarray(b, np.float64)
    minx, miny, maxx, maxy = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return (((minx <= win.col_off) & (win.col_off > 0)) | ((miny <= win.row_off) & (win.row_off > 0))
            | ((maxx >= win.col_off + win.width) & (win.col_off + win.width < W))
            | ((maxy >= win.row_off + win.height) & (win.row_off + win.height < H)))


def merge_group(src: Source, win: Window, parts: list[Piece], half: int) -> tuple[Piece, Piece]:
    """``(closed, open)``: the open polygons of the windows making up ``win`` (``half`` pixels a
    side), those of one class that share an edge across a seam unioned (sums added, junctions
    joined), split by whether they still reach an inner edge of ``win``."""
    import shapely

    merged = Piece()
    for p in parts:
        merged.extend(p)
    if not len(merged):
        return Piece(), Piece()
    geoms = np.asarray(merged.geoms, dtype=object)
    cls = np.asarray(merged.cls)
    parent = np.arange(len(geoms))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    seams = (win.col_off + half, win.row_off + half)
    for a, b in seam_pairs(geoms, cls, *seams):
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(len(geoms)):
        groups.setdefault(root(i), []).append(i)
    closed, opened = Piece(), Piece()
    for members in groups.values():
        geom = geoms[members[0]] if len(members) == 1 else union(geoms[members], *seams)
        polys = [geom] if geom.geom_type == "Polygon" else list(getattr(geom, "geoms", []))
        sums = [sum(getattr(merged, name)[i] for i in members) for name in ("pixels", "area_m2", "prob_sum")]
        junctions = np.unique(np.concatenate([merged.junctions[i] for i in members]))
        for j, poly in enumerate(polys):  # a union is one polygon, unless edges met only at a corner
            share = poly.area / max(geom.area, 1e-12) if len(polys) > 1 else 1.0
            target = opened if bool(_reaches_inner_edge(poly.bounds, win, src.height, src.width)) else closed
            target.add(poly, cls[members[0]], round(sums[0] * share), sums[1] * share,
                       sums[2] * share, junctions)
    return closed, opened


# --- simplification -----------------------------------------------------------------------------


def simplify(poly, junctions: np.ndarray, width: int, tolerance_px: float):
    """``poly`` (pixel space) simplified edge by edge so that the polygons sharing an edge simplify
    it alike: each ring is cut at its junction vertices into chains, collinear vertices that are no
    junction dropped, and each chain simplified by Douglas-Peucker (``tolerance_px``) with its ends
    fixed, in one canonical direction (the same on both sides of an edge), never to a bare segment
    (the farthest vertex stays: no ring collapses). A result that is not valid (chains crossing)
    is repaired (``make_valid``), its polygonal part kept."""
    import shapely

    if tolerance_px <= 0:
        return poly
    rings = [poly.exterior, *poly.interiors]
    out = [_simplify_ring(np.asarray(r.coords)[:-1], junctions, width, tolerance_px) for r in rings]
    if len(out[0]) < 4:
        return poly  # an exterior simplified away: kept as it is (smaller than the tolerance)
    holes = [h for h in out[1:] if len(h) >= 4]
    result = shapely.Polygon(out[0], holes)
    if not result.is_valid:
        fixed = shapely.make_valid(result)
        parts = [g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type in ("Polygon", "MultiPolygon")]
        result = shapely.union_all(parts) if parts else poly
    return result


def _simplify_ring(v: np.ndarray, junctions: np.ndarray, width: int, tol: float) -> np.ndarray:
    v = _with_junctions(v, junctions, width)
    keys = np.rint(v[:, 1]).astype(np.int64) * (width + 1) + np.rint(v[:, 0]).astype(np.int64)
    is_j = np.isin(keys, junctions)
    prev, nxt = np.roll(v, 1, axis=0), np.roll(v, -1, axis=0)
    cross = (v[:, 0] - prev[:, 0]) * (nxt[:, 1] - v[:, 1]) - (v[:, 1] - prev[:, 1]) * (nxt[:, 0] - v[:, 0])
    keep = is_j | (np.abs(cross) > 1e-9)
    v, is_j = v[keep], is_j[keep]
    if len(v) < 3:
        return np.vstack([v, v[:1]])
    if not is_j.any():  # a ring no other region cuts (an island and the hole around it): from its
        is_j[int(np.lexsort((v[:, 1], v[:, 0]))[0])] = True  # canonical lowest vertex
    start = int(np.nonzero(is_j)[0][0])
    v, is_j = np.roll(v, -start, axis=0), np.roll(is_j, -start)
    cuts = list(np.nonzero(is_j)[0]) + [len(v)]
    ring = np.vstack([v, v[:1]])
    pieces = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        chain = ring[a : b + 1]
        if len(chain) < 3:
            pieces.append(chain[:-1])
        elif tuple(chain[0]) == tuple(chain[-1]):  # a loop (from a junction back to it): cut where it is
            d = ((chain - chain[0]) ** 2).sum(1)  # farthest, so both sides cut it alike
            far = int(np.lexsort((chain[:, 1], chain[:, 0], -d))[0])
            pieces += [_canonical(chain[: far + 1], tol)[:-1], _canonical(chain[far:], tol)[:-1]]
        else:
            pieces.append(_canonical(chain, tol)[:-1])
    out = np.vstack(pieces)
    return np.vstack([out, out[:1]])


def _canonical(chain: np.ndarray, tol: float) -> np.ndarray:
    """A chain simplified in its canonical direction (from its lower end), given back in its own."""
    if len(chain) < 3:
        return chain
    flip = tuple(chain[0]) > tuple(chain[-1])
    line = _simplify_chain(chain[::-1] if flip else chain, tol)
    return line[::-1] if flip else line


def _with_junctions(v: np.ndarray, junctions: np.ndarray, width: int) -> np.ndarray:
    """The ring's vertices with the junctions that lie inside its (axis-parallel) edges inserted:
    a neighbour's corner on a straight edge of this ring ends a shared edge there too."""
    if not len(junctions):
        return v
    jx, jy = (junctions % (width + 1)).astype(float), (junctions // (width + 1)).astype(float)
    nxt = np.roll(v, -1, axis=0)
    out = []
    for p, q in zip(v, nxt):
        out.append(p[None])
        if p[0] == q[0]:  # vertical edge
            lo, hi = sorted((p[1], q[1]))
            sel = (jx == p[0]) & (jy > lo) & (jy < hi)
            ys = np.sort(jy[sel]) if q[1] > p[1] else -np.sort(-jy[sel])
            out.append(np.column_stack([np.full(len(ys), p[0]), ys]))
        elif p[1] == q[1]:
            lo, hi = sorted((p[0], q[0]))
            sel = (jy == p[1]) & (jx > lo) & (jx < hi)
            xs = np.sort(jx[sel]) if q[0] > p[0] else -np.sort(-jx[sel])
            out.append(np.column_stack([xs, np.full(len(xs), p[1])]))
    return np.vstack(out)


def _simplify_chain(line: np.ndarray, tol: float) -> np.ndarray:
    """Douglas-Peucker of an open chain, its ends fixed; the first and last steps kept where it is
    long enough (chains leave their junctions as they did: where chains meet at small angles, a
    simplified one would cross its neighbour), and never a bare segment (its ring could collapse)."""
    import shapely

    if len(line) > 4:
        mid = np.asarray(shapely.simplify(shapely.LineString(line[1:-1]), tol, preserve_topology=False).coords)
        return np.vstack([line[:1], mid, line[-1:]])
    simple = np.asarray(shapely.simplify(shapely.LineString(line), tol, preserve_topology=False).coords)
    if len(simple) == 2:
        a, b = line[0], line[-1]
        dist = np.abs((b[0] - a[0]) * (line[1:-1, 1] - a[1]) - (b[1] - a[1]) * (line[1:-1, 0] - a[0]))
        simple = np.vstack([a, line[1 + int(np.argmax(dist))], b])
    return simple


# --- writing ------------------------------------------------------------------------------------


def finish_polygons(src: Source, piece: Piece, part_url: str, tolerance: float, area_known: bool,
                    read=None) -> int:
    """Closed polygons to one Parquet part (WKB and attributes, the columns of the GeoParquet
    :func:`geoseg.vectorize.finish.assemble` writes): instances grown over their boundary
    (:mod:`geoseg.vectorize.instances`, ``read`` the class map), simplified (``tolerance`` in CRS
    units), moved to the CRS, with their attributes. Returns how many were written."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    if not len(piece):
        return 0
    a, b, c, d, e, f = src.transform[:6]
    tol_px = tolerance / max(abs(a), 1e-12) if tolerance else 0.0
    geoms = np.asarray(piece.geoms, dtype=object)
    areas = np.asarray(piece.area_m2, np.float64)
    pixels = np.asarray(piece.pixels, np.int64)
    prob = np.asarray(piece.prob_sum) / np.maximum(pixels, 1) if src.probabilities else np.full(len(pixels), np.nan)
    junctions = piece.junctions
    if src.grow:  # instances: each interior grown over the boundary pixels nearest to it (disjoint)
        from geoseg.vectorize.instances import grow

        geoms, pixels, grown_m2, junctions = grow(list(geoms), src.grow, read, src.height, src.width, _area(src))
        areas = grown_m2 if area_known else areas
        geoms = np.asarray(geoms, dtype=object)
    if tol_px > 0:
        geoms = np.asarray([simplify(g, j, src.width, tol_px) for g, j in zip(geoms, junctions)], dtype=object)
    geoms = shapely.transform(geoms, lambda xy: np.column_stack([a * xy[:, 0] + b * xy[:, 1] + c,
                                                                  d * xy[:, 0] + e * xy[:, 1] + f]))
    cls = np.asarray(piece.cls, np.int32)
    names = np.asarray([*src.names, *(f"class_{k}" for k in range(len(src.names), int(cls.max()) + 1))], object)
    box = shapely.bounds(geoms)
    table = pa.table({  # the columns assemble writes (finish.py), the bbox covering column already made
        "class": cls,
        "class_name": pa.array(names[cls], pa.large_string()),
        "area_ha": areas / 1e4 if area_known else np.full(len(cls), np.nan),
        "pixels": pixels,
        "mean_probability": np.asarray(prob, np.float64),
        "scene": pa.array([src.scene] * len(cls), pa.large_string()),
        "geometry": pa.array(shapely.to_wkb(geoms), pa.binary()),
        "bbox": pa.StructArray.from_arrays([pa.array(box[:, i]) for i in range(4)],
                                           names=["xmin", "ymin", "xmax", "ymax"]),
    })
    table = table.cast(table.schema.set(6, table.schema.field("geometry").with_metadata(_geoarrow(src.crs))))
    with storage.staging_path(part_url, ".parquet") as local:
        # a part is read once, by the map's last task: compressed only where it crosses a network
        pq.write_table(table, local, compression="snappy" if storage.is_remote(part_url) else "none")
        storage.publish(local, part_url)
    return len(table)


@functools.lru_cache(maxsize=16)
def _geoarrow(crs: str | None) -> dict:
    """The geometry column's GeoArrow extension metadata (WKB and its CRS as PROJJSON), as
    geopandas writes it."""
    import json

    meta = {}
    if crs:
        from pyproj import CRS

        meta = {"crs": CRS.from_user_input(crs).to_json_dict()}
    return {"ARROW:extension:name": "geoarrow.wkb", "ARROW:extension:metadata": json.dumps(meta)}


def nodata_free(values: np.ndarray) -> np.ndarray:
    """Class numbers other than the nodata value."""
    return values[values != NODATA]


# --- the tasks up the quad-tree: each reads its own window, writes what it closes -----------------


def _reader(src: Source):
    from geoseg.data.classmap import open_class_map

    cmap = open_class_map(src.url).__enter__()
    return cmap.read


def _prob_reader(src: Source):
    if not src.probabilities:
        return None
    import zarr

    arr = zarr.open_group(storage.zarr_store(src.probabilities, read_only=True), mode="r")["probabilities"]
    return lambda w: arr[:, w.slices[0], w.slices[1]]


@functools.lru_cache(maxsize=16)
def _pixel_area(crs: str | None, transform: tuple):
    from geoseg.data.area import PixelArea

    return PixelArea.of(crs, transform)


def _area(src: Source):
    return _pixel_area(src.crs, tuple(src.transform))


def chunk_task(src: Source, gy: int, gx: int, chunk: int, parts: str, tolerance: float) -> Piece:
    """Level 0: one chunk polygonized; its closed polygons written as a part; its open ones returned."""
    win = src.tree(chunk).window(0, gy, gx)
    area = _area(src)
    closed, opened = polygonize_chunk(src, win, _reader(src), _prob_reader(src), area, junctions=tolerance > 0)
    finish_polygons(src, closed, storage.join(parts, f"0-{gy}-{gx}.parquet"), tolerance, area is not None,
                    _reader(src) if src.grow else None)
    return opened


def merge_task(src: Source, level: int, gy: int, gx: int, chunk: int, parts: str, tolerance: float,
               *below: Piece) -> Piece:
    """Level L: the open polygons of the four windows below merged; the closed ones written."""
    win = src.tree(chunk).window(level, gy, gx)
    closed, opened = merge_group(src, win, list(below), chunk << (level - 1))
    finish_polygons(src, closed, storage.join(parts, f"{level}-{gy}-{gx}.parquet"), tolerance,
                    _area(src) is not None, _reader(src) if src.grow else None)
    return opened
