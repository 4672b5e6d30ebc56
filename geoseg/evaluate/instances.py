"""Object-level scores (no Ray): predicted instances against reference instances, matched at IoU >= 0.5.

The predicted instances are the polygons ``geoseg vectorize --instances`` (or ``predict --vectors``
with a field-delineation model) wrote beside a class map (``<stem>.vectors.parquet``); the
reference is an instance-id raster on the class map's grid (0: none) or a vector file (one
polygon per instance). Both are rasterized (numbered) window by window on the class map's grid;
each window adds its pixels of every (predicted, reference) pair and of every instance, so memory
grows with the number of instances, never with the raster. A pair overlapping by IoU >= 0.5 is a
match (at most one per instance at that threshold); precision, recall and F1 follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geoseg.data import storage
from geoseg.errors import InputError
from geoseg.data.raster import RasterInfo, read_info
from geoseg.data.tiling import iter_windows
from geoseg.data.tiling import Window

IOU = 0.5
WINDOW = 2048


@dataclass
class InstanceCounts:
    """Pixels of each predicted and reference instance, and of each overlapping pair."""

    pred: dict = field(default_factory=dict)
    ref: dict = field(default_factory=dict)
    pairs: dict = field(default_factory=dict)
    predicted_features: int = 0  # polygons in the predicted file: one that covers no pixel centre is a false positive

    def add(self, p: np.ndarray, r: np.ndarray) -> None:
        for ids, into in ((p, self.pred), (r, self.ref)):
            values, n = np.unique(ids[ids > 0], return_counts=True)
            for v, k in zip(values.tolist(), n.tolist()):
                into[v] = into.get(v, 0) + k
        both = (p > 0) & (r > 0)
        if both.any():
            key = p[both].astype(np.int64) * (1 << 32) + r[both].astype(np.int64)
            values, n = np.unique(key, return_counts=True)
            for v, k in zip(values.tolist(), n.tolist()):
                pair = (v >> 32, v & 0xFFFFFFFF)
                self.pairs[pair] = self.pairs.get(pair, 0) + k

    def merge(self, other: "InstanceCounts") -> "InstanceCounts":
        for name in ("pred", "ref", "pairs"):
            mine = getattr(self, name)
            for k, v in getattr(other, name).items():
                mine[k] = mine.get(k, 0) + v
        self.predicted_features += other.predicted_features
        return self


def scores(c: InstanceCounts, iou: float = IOU) -> dict:
    """Matches at ``iou``: true positives, false positives and negatives, precision, recall, F1."""
    matched_p, matched_r = set(), set()
    for (p, r), inter in c.pairs.items():
        if inter / (c.pred[p] + c.ref[r] - inter) >= iou and p not in matched_p and r not in matched_r:
            matched_p.add(p)
            matched_r.add(r)
    tp = len(matched_p)
    predicted = max(len(c.pred), c.predicted_features)
    fp, fn = predicted - tp, len(c.ref) - tp
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if tp == 0 and (fp or fn)
                                                                                     else None)
    return {"iou_threshold": iou, "predicted": predicted, "reference": len(c.ref), "tp": tp, "fp": fp, "fn": fn,
            "precision": precision, "recall": recall, "f1": f1}


def _vector_reader(url: str, grid: RasterInfo):
    """Numbered polygons of a vector file burnt into windows of ``grid`` (read by bounding box,
    reprojected where the CRSs differ); ids: the features' own order, from 1."""
    from geoseg.data.vectorfile import Features

    features = Features(url, grid.crs)

    def read(win: Window) -> np.ndarray:
        frame = features.in_window(grid.affine, win, columns=[])
        shapes = [(g, int(i) + 1) for g, i in zip(frame.geometry, frame.index) if g is not None]
        return features.burn(shapes, grid.affine, win, 0, "int32").astype(np.int64)

    return read


def _raster_reader(url: str, grid: RasterInfo):
    from geoseg.data.raster import tile_reader

    info = read_info(url)
    if (info.height, info.width) != (grid.height, grid.width) or tuple(info.transform) != tuple(grid.transform):
        raise InputError(f"{url}: the reference instances are not on the class map's grid ({grid.url})")
    reader = tile_reader(url, [1])
    return lambda win: reader.read_window(win)[0][0].astype(np.int64)


def reader_of(url: str, grid: RasterInfo):
    """Numbered instances of ``url`` (an instance raster or a vector file), window by window on ``grid``."""
    lower = str(url).lower()
    if lower.endswith((".tif", ".tiff", ".vrt")):
        return _raster_reader(url, grid)
    if not storage.exists(url):
        raise InputError(f"{url}: not found")
    return _vector_reader(url, grid)


def score_instances(class_map: str, predicted: str, reference: str, iou: float = IOU) -> dict:
    """Instance scores of one scene: ``predicted`` polygons against ``reference`` instances, on the grid
    of ``class_map``."""
    from geoseg.data.classmap import open_class_map

    from geoseg.data.vectorfile import Features

    grid = open_class_map(class_map).info
    pred, ref = _vector_reader(predicted, grid), reader_of(reference, grid)
    counts = InstanceCounts(predicted_features=Features(predicted).count())
    for win in iter_windows(grid.height, grid.width, WINDOW):
        counts.add(pred(win), ref(win))
    return scores(counts, iou)


def predicted_instances(class_map: str) -> str:
    """The instance polygons beside a class map (``<stem>.vectors.parquet``), or one line saying how to make them."""
    stripped = class_map.rstrip("/")
    base = stripped[: -len(".zarr")] if stripped.endswith(".zarr") else stripped.rsplit(".", 1)[0]
    url = f"{base}.vectors.parquet"
    if not storage.exists(url):
        raise InputError(f"{class_map}: no instance polygons beside it ({url}); make them with "
                         f"geoseg vectorize --instances {class_map}")
    return url
