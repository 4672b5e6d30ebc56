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


@dataclass(frozen=True)
class VectorizeOptions:
    classes: tuple[str, ...] | None = None  # class names or numbers to keep (default: every class)
    instances: bool | None = None  # field instances (None: where the map's classes are background/field/boundary)
    simplify: float = 0.0  # tolerance in the class map's CRS units (0: the exact pixel outlines)
    min_area_ha: float = 0.0  # smaller polygons are dropped
    chunk: int = CHUNK
    formats: tuple[str, ...] = FORMATS
    address: str | None = None

    def __post_init__(self) -> None:
        if self.simplify < 0:
            raise InputError(f"--simplify must be >= 0, got {self.simplify}")
        if self.min_area_ha < 0:
            raise InputError(f"--min-area must be >= 0, got {self.min_area_ha}")
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
    src = source_of(target, opts)
    stripped = target.rstrip("/")
    base = out or (stripped[: -len(".zarr")] if is_zarr(target) else os.path.splitext(stripped)[0])
    return [(src, base, None)]


def outputs(base: str, formats: tuple[str, ...]) -> dict[str, str]:
    """``{format: URL}`` of the vector files of a class map whose outputs are named ``base``."""
    return {f: f"{base}.vectors.{f}" for f in formats}
