"""What ``geoseg vectorize`` does, decided before any pixel is read (no Ray): the class maps (a
predict PREFIX's finished scenes, or one class map: a GeoTIFF, predict's Zarr, a mosaic store),
the classes to keep, the chunk quad-tree, and where the outputs go.

The merge is a quad-tree of windows: level 0 are ``CHUNK``-square chunks, level L the windows
of 2^L x 2^L chunks. A level-L task merges the open polygons of its four level L-1 windows;
the top level is one window, the whole map, where every polygon closes. Seams are merged once
each, and no task holds more than one window's open polygons (what touches its edges).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from geoseg import storage
from geoseg.classes import NODATA, ClassScheme
from geoseg.errors import InputError
from geoseg.tiling import Window
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


def levels(height: int, width: int, chunk: int) -> int:
    """Levels of the quad-tree above the chunks: until one window covers the map."""
    n = max(-(-height // chunk), -(-width // chunk))
    return max(0, int(np.ceil(np.log2(n)))) if n > 1 else 0


def window(height: int, width: int, chunk: int, level: int, gy: int, gx: int) -> Window:
    side = chunk << level
    r0, c0 = gy * side, gx * side
    return Window(r0, c0, min(height, r0 + side) - r0, min(width, c0 + side) - c0)


def groups(height: int, width: int, chunk: int, level: int) -> list[tuple[int, int]]:
    side = chunk << level
    return [(gy, gx) for gy in range(-(-height // side)) for gx in range(-(-width // side))]


def children(height: int, width: int, chunk: int, level: int, gy: int, gx: int) -> list[tuple[int, int]]:
    """The windows of ``level - 1`` that make up window ``(gy, gx)`` of ``level``."""
    below = set(groups(height, width, chunk, level - 1))
    return [(2 * gy + dy, 2 * gx + dx) for dy in (0, 1) for dx in (0, 1) if (2 * gy + dy, 2 * gx + dx) in below]


def source_of(url: str, opts: VectorizeOptions, scene: str | None = None) -> Source:
    """A class map to vectorize, its classes chosen (names from its tags or attributes)."""
    from geoseg.classmap import is_zarr, open_class_map

    cmap = open_class_map(url)
    info = cmap.info
    from geoseg.train.targets import BOUNDARY, INSTANCE_CLASSES

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
                  grow=BOUNDARY if instances else 0)


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


def scene_maps(prefix: str) -> list[tuple[str, str, dict]]:
    """``(stem, class map URL, record)`` of each finished scene under a predict PREFIX (its Zarr,
    which holds the probabilities where they were written)."""
    out = []
    for name in storage.listdir(prefix):
        if not name.endswith(".json") or name.startswith("_") or name.endswith(".item.json") or name in (
                "catalog.json",):
            continue
        try:
            rec = json.loads(storage.read_text(storage.join(prefix, name)))
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("status") == "complete" and (rec.get("outputs") or {}).get("zarr"):
            out.append((name[: -len(".json")], rec["outputs"]["zarr"], rec))
    return sorted(out)


def outputs(base: str, formats: tuple[str, ...]) -> dict[str, str]:
    """``{format: URL}`` of the vector files of a class map whose outputs are named ``base``."""
    return {f: f"{base}.vectors.{f}" for f in formats}
