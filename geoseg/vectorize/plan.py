"""What ``geoseg vectorize`` does, decided before any pixel is read (no Ray): the class maps (a
predict PREFIX's finished scenes, or one class map: a GeoTIFF, predict's Zarr, a mosaic store),
the classes to keep, and where the outputs go.

The merge runs up the map's :class:`~geoseg.data.quadtree.QuadTree` (``Source.tree``): level 0 are
``--chunk``-square chunks, level L the windows of 2^L x 2^L chunks. A level-L task merges the open
polygons of its four level L-1 windows; the top level is one window, the whole map, where every
polygon closes. Seams are merged once each, and no task holds more than one window's open
polygons (what touches its edges).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from geoseg.data import storage
from geoseg.data.classmap import scene_maps
from geoseg.data.classes import NODATA, ClassScheme
from geoseg.errors import InputError
from geoseg.data.classes import INSTANCE_CLASSES
from geoseg.vectorize.instances import GROW
from geoseg.vectorize.stages import CHUNK, Source

FORMATS = ("parquet", "fgb")
SCHEMAS = ("geoseg", "fiboa")


@dataclass(frozen=True)
class VectorizeOptions:
    classes: tuple[str, ...] | None = None  # class names or numbers to keep (default: every class)
    instances: bool | None = None  # field instances (None: where the map's classes are background/field/boundary)
    simplify: float = 0.0  # tolerance in the class map's CRS units (0: the exact pixel outlines)
    min_area_ha: float = 0.0  # smaller polygons are dropped
    chunk: int = CHUNK
    formats: tuple[str, ...] = FORMATS
    address: str | None = None
    max_area_ha: float | None = None  # larger polygons are dropped (None: none)
    schema: str = "geoseg"  # the files' columns: geoseg's, or fiboa's (id, area, perimeter, determination_method)

    def __post_init__(self) -> None:
        if self.simplify < 0:
            raise InputError(f"--simplify must be >= 0, got {self.simplify}")
        if self.min_area_ha < 0:
            raise InputError(f"--min-area must be >= 0, got {self.min_area_ha}")
        if self.max_area_ha is not None and not self.max_area_ha > self.min_area_ha:
            raise InputError(f"--max-area must be > --min-area ({self.min_area_ha:g} ha), got {self.max_area_ha:g}")
        if self.schema not in SCHEMAS:
            raise InputError(f"--schema must be one of {', '.join(SCHEMAS)}, got {self.schema!r}")
        if self.chunk < 16:
            raise InputError(f"--chunk must be >= 16, got {self.chunk}")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise InputError(f"--format {bad[0]!r}: choose from {', '.join(FORMATS)}")


def source_of(url: str, opts: VectorizeOptions, scene: str | None = None) -> Source:
    """A class map to vectorize, its classes chosen (names from its tags or attributes)."""
    from geoseg.data.classmap import is_zarr, open_class_map

    cmap = open_class_map(url)
    info = cmap.info

    scheme = ClassScheme.from_tags(info.tags)
    names = tuple(scheme.names) if scheme else ()
    instances = opts.instances if opts.instances is not None else names == INSTANCE_CLASSES.names
    if instances and names != INSTANCE_CLASSES.names:
        raise InputError(f"--instances: {url} is not a field-delineation class map (its classes are "
                         f"{', '.join(names) or 'unnamed'}, not {', '.join(INSTANCE_CLASSES.names)})")
    keep = (1,) if instances else _chosen(opts.classes, names, url)
    probabilities = None
    if is_zarr(url):
        import zarr

        root = zarr.open_group(storage.zarr_store(url, read_only=True), mode="r")
        probabilities = url if "probabilities" in root else None
    return Source(url, info.height, info.width, tuple(info.transform), info.crs, keep,
                  names or tuple(f"class_{i}" for i in range(max(keep, default=0) + 1)),
                  scene or storage.stem(url.rstrip("/").removesuffix(".zarr")), probabilities,
                  grow=GROW if instances else 0)


def _chosen(asked, names: tuple[str, ...], url: str) -> tuple[int, ...]:
    if not asked:
        return tuple(range(len(names))) if names else tuple(range(NODATA))
    out = []
    for a in asked:
        a = str(a).strip()
        if a.isdigit():
            out.append(int(a))
        elif a in names:
            out.append(names.index(a))
        else:
            raise InputError(f"--classes: {a!r} is not a class of {url} (classes: {', '.join(names) or 'numbered'})")
    return tuple(sorted(set(out)))


def plan_sources(target: str, opts: VectorizeOptions, out: str | None = None,
                 missing_only: bool = False) -> list[tuple[Source, str, dict | None]]:
    """What to vectorize: ``(source, base of its files, its scene's record or None)`` for a predict
    PREFIX (every finished scene, or with ``missing_only`` those whose record lists no vectors
    yet) or one class map (``out``: the files' base name, default beside it)."""
    from geoseg.data.classmap import is_zarr

    target = storage.absolute(target)  # records and workers: the same place from any folder
    out = storage.absolute(out) if out else None
    if not is_zarr(target) and storage.isdir(target):
        maps = scene_maps(target)
        if missing_only:
            maps = [m for m in maps if not (m[2].get("outputs") or {}).get("vectors_parquet")]
            if not maps:
                return []
        if not maps:
            raise InputError(f"{target}: no finished scene to vectorize (no run record of a complete scene)")
        return [(source_of(url, opts, stem), storage.join(target, stem), rec) for stem, url, rec in maps]
    named = named_format(out)
    if named is not None and named not in opts.formats:
        raise InputError(f"--out {out} is a {'GeoParquet' if named == 'parquet' else 'FlatGeobuf'} file, but "
                         f"--format is {' '.join(opts.formats)}")
    src = source_of(target, opts)
    stripped = target.rstrip("/")
    base = out or (stripped[: -len(".zarr")] if is_zarr(target) else os.path.splitext(stripped)[0])
    return [(src, base, None)]


SUFFIXES = {".parquet": "parquet", ".geoparquet": "parquet", ".fgb": "fgb"}


def named_format(out: str | None) -> str | None:
    """The format of a vector file ``--out`` names (``map.parquet``: parquet), or None for a base name."""
    lower = str(out or "").lower()
    return next((f for suffix, f in SUFFIXES.items() if lower.endswith(suffix)), None)


def outputs(base: str, formats: tuple[str, ...]) -> dict[str, str]:
    """``{format: URL}`` of the vector files of a class map whose outputs are named ``base``: beside
    the map, ``<base>.vectors.parquet`` / ``.fgb``; where ``base`` is a file (``--out map.parquet``),
    that file, and the other format beside it (``map.fgb``)."""
    named = named_format(base)
    if named is None:
        return {f: f"{base}.vectors.{f}" for f in formats}
    stem = base[: base.rfind(".")]
    return {f: base if f == named else f"{stem}.{f}" for f in formats}
