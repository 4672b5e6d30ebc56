"""Training targets from labels that are not class rasters (Ray-free): label vectors and instances.

Each is turned, window by window (flat memory), into a label raster on the image's own grid
under ``RUN_DIR/labels/``, once per run (kept while its sources are unchanged), and training
then goes on as with any label raster (the whole-label scan, the split, the chip cache):

* **label vectors** (``--label-vectors FILE --class-field FIELD``: GeoParquet, GeoJSON,
  FlatGeobuf, GeoPackage, any OGR source): each window's polygons read by bounding box
  (reprojected where the CRSs differ) and rasterized; the field holds class numbers, or class
  names (numbered in sorted order, named in the raster's ``CLASS_NAMES``);
* **instances** (``--instances``; an instance-id raster as ``--label``, or polygons, one instance
  each, as ``--label-vectors``): the field-delineation target of three classes, background,
  ``field`` (an instance's interior) and ``boundary`` (its pixels with a 4-neighbour of another
  instance or of the background, ``BOUNDARY`` px wide). A model trained on it predicts the three
  classes; ``geoseg vectorize --instances`` turns each connected interior into one polygon,
  grown back over its boundary.
"""

from __future__ import annotations

import json

import numpy as np

from geoseg.data import storage
from geoseg.data.classes import BOUNDARY, INSTANCE_CLASSES, NODATA, ClassScheme
from geoseg.errors import InputError, RasterError
from geoseg.data.cog import CogWriter
from geoseg.data.raster import RasterInfo, read_info, tile_reader
from geoseg.data.tiling import iter_windows
from geoseg.data.tiling import Window

WINDOW = 1024


def boundary_of(ids: np.ndarray, width: int = BOUNDARY) -> np.ndarray:
    """Pixels of an instance (``ids`` > 0) with a 4-neighbour of another id (or background) within
    ``width`` steps; ``ids`` carries a ``width``-pixel apron, the result does not."""
    h, w = ids.shape[0] - 2 * width, ids.shape[1] - 2 * width
    core = ids[width : width + h, width : width + w]
    edge = np.zeros((h, w), bool)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        for k in range(1, width + 1):
            edge |= ids[width + dy * k : width + dy * k + h, width + dx * k : width + dx * k + w] != core
    return edge & (core > 0)


def instance_target(ids: np.ndarray, valid: np.ndarray, width: int = BOUNDARY) -> np.ndarray:
    """The 3-class target (0 background, 1 field, 2 boundary; nodata where ``valid`` is False) of
    instance ids with a ``width``-pixel apron."""
    core = ids[width : ids.shape[0] - width, width : ids.shape[1] - width]
    out = np.where(core > 0, 1, 0).astype(np.uint8)
    out[boundary_of(ids, width)] = 2
    out[~valid] = NODATA
    return out


def _signature(sources: list[str], extra: dict) -> str:
    return json.dumps({"sources": {u: storage.signature(u) for u in sources}, **extra}, sort_keys=True)


def _kept(out: str, signature: str) -> bool:
    """A derived label raster made from the same sources before (its tag says so)."""
    if not storage.exists(out):
        return False
    try:
        return read_info(out).tags.get("GEOSEG_TARGET") == signature
    except Exception:  # noqa: BLE001 - unreadable: made again
        return False


def from_instances(instances: str, image: RasterInfo, out: str, width: int = BOUNDARY) -> str:
    """The 3-class target of an instance-id raster (on the image's grid), as a label raster at ``out``."""
    info = read_info(instances)
    if info.count != 1 or np.dtype(info.dtype).kind not in "iu":
        raise RasterError(f"{instances}: not an instance raster ({info.count} band(s) of {info.dtype}; expected 1 "
                          "band of integer instance ids, 0 for no instance)")
    if (info.height, info.width) != (image.height, image.width) or tuple(info.transform) != tuple(image.transform):
        raise RasterError(f"{instances} and {image.url} do not share a grid")
    if info.nodata == 0:
        raise InputError(f"{instances}: declares 0, the value of no instance (background), as nodata, so training "
                         "would see no background; declare another nodata (gdal_edit.py -a_nodata -1 FILE) or "
                         "none (gdal_edit.py -unsetnodata FILE); the image's nodata still marks what is not imaged")
    signature = _signature([instances, image.url], {"kind": "instances", "boundary": width})
    if _kept(out, signature):
        return out
    reader, img = tile_reader(instances, [1]), tile_reader(image.url)
    with _writer(out, image, INSTANCE_CLASSES, signature) as dst:
        for win in iter_windows(image.height, image.width, WINDOW):
            ids = _with_apron(lambda w: reader.read_window(w)[0][0], win, image, width, fill=0)
            valid = img.read_window(win)[1]
            if info.nodata is not None:
                valid &= reader.read_window(win)[0][0] != info.nodata
            dst.write(win, instance_target(ids.astype(np.int64), valid, width))
    return out


def _with_apron(read, win: Window, info: RasterInfo, width: int, fill) -> np.ndarray:
    """``read`` of a window grown by ``width`` pixels, ``fill`` beyond the raster's edges."""
    r0, c0 = max(0, win.row_off - width), max(0, win.col_off - width)
    r1 = min(info.height, win.row_off + win.height + width)
    c1 = min(info.width, win.col_off + win.width + width)
    out = np.full((win.height + 2 * width, win.width + 2 * width), fill, np.int64)
    y, x = r0 - (win.row_off - width), c0 - (win.col_off - width)
    out[y : y + r1 - r0, x : x + c1 - c0] = read(Window(r0, c0, r1 - r0, c1 - c0))
    return out


def vector_classes(urls: str | list[str], field: str) -> tuple[dict, ClassScheme | None]:
    """``({field value: class number}, class names)`` of label vector files' field: numbers are
    class numbers (no names), names are numbered in sorted order."""
    from geoseg.data import vectorfile

    found = []
    for url in [urls] if isinstance(urls, str) else urls:
        _, fields = vectorfile.info(url)
        if field not in fields:
            raise InputError(f"--class-field {field!r}: {url} has no such field (fields: {', '.join(fields)})")
        found.append(np.asarray(vectorfile.values(url, field)))
    url = urls if isinstance(urls, str) else ", ".join(urls[:3])
    drawn = [v for v in found if len(v)]
    if not drawn:  # nothing drawn yet (geoseg rank's empty layers): no labels, said where they are counted
        return {}, None
    if all(np.issubdtype(v.dtype, np.number) for v in drawn):
        values = np.unique(np.concatenate(drawn))
    else:
        values = np.asarray(sorted({str(x) for v in drawn for x in v}), dtype=object)
    if np.issubdtype(np.asarray(values).dtype, np.number):
        bad = [v for v in values if v != int(v) or not 0 <= v < NODATA]
        if bad:
            raise InputError(f"--class-field {field}: value {bad[0]} of {url} is not a class number (0..{NODATA - 1})")
        return {v: int(v) for v in values}, None
    names = sorted(str(v) for v in values)
    return {n: i for i, n in enumerate(names)}, ClassScheme.numbered(names)


def vector_files(spec: str) -> list[str]:
    """``--label-vectors``: one file, a comma-separated list, or globs (``rank/chips/*.gpkg``)."""
    from geoseg.data.inputs import expand_glob, is_glob

    out: list[str] = []
    for part in (p.strip() for p in str(spec).split(",") if p.strip()):
        out += expand_glob(part) if is_glob(part) else [part]
    return out


def from_vectors(url: str, image: RasterInfo, out: str, field: str | None = None, instances: bool = False,
                 width: int = BOUNDARY) -> str:
    """A label raster on the image's grid from vector files (``url``: :func:`vector_files`): ``field``
    gives each polygon's class; with ``instances`` each polygon is one instance of the 3-class
    field-delineation target. Pixels no polygon covers are the ignore value: partial labels (the
    chips of ``geoseg rank``) train only where they are drawn."""
    from geoseg.data.vectorfile import Features

    if not instances and not field:
        raise InputError("--label-vectors needs --class-field FIELD (or --instances: each polygon one instance)")
    urls = vector_files(url)
    mapping, scheme = vector_classes(urls, field) if field else ({}, None)
    signature = _signature([*urls, image.url], {"kind": "vectors", "field": field, "instances": instances,
                                                "boundary": width})
    if _kept(out, signature):
        return out
    files = [Features(u, image.crs) for u in urls]
    for features in files:
        if features.crs is None or features.grid_crs is None:
            raise InputError(f"--label-vectors {features.url}: {'it' if features.crs is None else image.url} has no "
                             "CRS; labels cannot be placed on the image")
    img = tile_reader(image.url)
    with _writer(out, image, INSTANCE_CLASSES if instances else scheme, signature) as dst:
        for win in iter_windows(image.height, image.width, WINDOW):
            grown = Window(win.row_off - width, win.col_off - width, win.height + 2 * width, win.width + 2 * width)
            frames = [f.in_window(image.affine, grown, columns=[field] if field else []) for f in files]
            if instances:
                shapes, first = [], 1  # instance ids unique across files
                for frame in frames:
                    shapes += [(g, first + k) for k, g in enumerate(frame.geometry) if g is not None]
                    first += len(frame)
                ids = Features.burn(shapes, image.affine, grown, 0, "int32")
                labels = instance_target(ids.astype(np.int64), img.read_window(win)[1], width)
            else:
                shapes = [(g, mapping[v]) for frame in frames for g, v in zip(frame.geometry, frame[field])
                          if g is not None and v in mapping]
                burnt = Features.burn(shapes, image.affine, grown, NODATA, "uint8")
                labels = burnt[width : width + win.height, width : width + win.width]
            dst.write(win, labels)
    return out


def _writer(out: str, image: RasterInfo, scheme: ClassScheme | None, signature: str) -> CogWriter:
    tags = {"GEOSEG_TARGET": signature, **(scheme.to_tags() if scheme else {})}
    return CogWriter(out, height=image.height, width=image.width, count=1, dtype="uint8", crs=image.crs,
                     transform=image.affine, nodata=NODATA, tags=tags, resampling="MODE",
                     colormap=scheme.colormap() if scheme else None)
