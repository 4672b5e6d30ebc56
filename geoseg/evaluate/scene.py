"""Scoring one prediction against its labels, chunk by chunk, without Ray.

:func:`plan_scene` reads both rasters' metadata and refuses, in one line, what
cannot be compared (not class maps, different grids, different class names);
:func:`score_chunk` reads one window of both and returns its additive sums
(:class:`Counts`: confusion matrix, class areas, ignored pixels), so chunks can
be scored anywhere, in any order, and summed. Memory is one chunk per call.

Pixels where the labels or the prediction are nodata are ignored (counted in
``ignored``); a value that is neither nodata nor a class is an error naming the
file and window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geoseg.data.area import PixelArea
from geoseg.data.classes import NODATA, ClassScheme
from geoseg.data.classmap import open_class_map, scheme_of
from geoseg.errors import RasterError
from geoseg.evaluate.pairs import Pair
from geoseg.models.metrics import confusion
from geoseg.data.raster import RasterInfo, check_class_map, grid_difference
from geoseg.data.tiling import Window

CHUNK = 2048  # side of a scoring chunk: a multiple of predict's 512-px tiles and of common block sizes


@dataclass(frozen=True)
class ScenePlan:
    """What scoring one pair needs, all of it small: both rasters' metadata, the classes,
    the nodata values and the pixel area."""

    pair: Pair
    prediction: RasterInfo
    labels: RasterInfo
    names: tuple[str, ...]
    label_nodata: tuple[int, ...]
    prediction_nodata: tuple[int, ...]
    area: PixelArea | None
    chunk: int = CHUNK

    @property
    def k(self) -> int:
        return len(self.names)

    @property
    def pixels(self) -> int:
        return self.labels.height * self.labels.width

    @property
    def n_chunks(self) -> int:
        return -(-self.labels.height // self.chunk) * -(-self.labels.width // self.chunk)

    def window(self, i: int) -> Window:
        """Chunk ``i`` (row-major) of the scene."""
        per_row = -(-self.labels.width // self.chunk)
        r, c = (i // per_row) * self.chunk, (i % per_row) * self.chunk
        return Window(r, c, min(self.chunk, self.labels.height - r), min(self.chunk, self.labels.width - c))

    def windows(self) -> list[Window]:
        return [self.window(i) for i in range(self.n_chunks)]


@dataclass
class Counts:
    """Additive sums over pixels: a chunk's, a scene's or a whole job's."""

    confusion: np.ndarray  # (k, k) int64, rows: labels, columns: prediction
    label_m2: np.ndarray  # (k,) area labelled as each class
    predicted_m2: np.ndarray  # (k,) area predicted as each class (labelled or not)
    ignored: dict = field(default_factory=lambda: {"label_nodata": 0, "prediction_nodata": 0})

    @classmethod
    def zeros(cls, k: int) -> "Counts":
        return cls(np.zeros((k, k), np.int64), np.zeros(k), np.zeros(k))

    def __iadd__(self, other: "Counts") -> "Counts":
        self.confusion += other.confusion
        self.label_m2 += other.label_m2
        self.predicted_m2 += other.predicted_m2
        for key, v in other.ignored.items():
            self.ignored[key] = self.ignored.get(key, 0) + int(v)
        return self


def plan_scene(pair: Pair, num_classes: int | None = None, chunk: int = CHUNK) -> ScenePlan:
    """Check a pair and describe it; every refusal is one line naming the files."""
    pred, labels = open_class_map(pair.prediction).info, open_class_map(pair.labels).info
    check_class_map(pred)
    check_class_map(labels, "label raster")
    diff = grid_difference(pred, labels)
    if diff:
        raise RasterError(f"{pair.prediction} and {pair.labels} are not on the same grid ({diff})")
    names = class_names(pair, scheme_of(labels), scheme_of(pred), num_classes)
    return ScenePlan(pair, pred, labels, names, _nodata(labels), _nodata(pred),
                     PixelArea.of(labels.crs, labels.transform), chunk)


def class_names(pair: Pair, from_labels: ClassScheme | None, from_pred: ClassScheme | None,
                num_classes: int | None) -> tuple[str, ...]:
    """The classes scored: the label raster's names (``CLASS_NAMES``), else the prediction's;
    ``num_classes`` says how many when neither has names, or overrides them."""
    if from_labels and from_pred and from_labels.names != from_pred.names:
        raise RasterError(f"{pair.prediction} and {pair.labels} name their classes differently "
                          f"({list(from_pred.names)} vs {list(from_labels.names)})")
    scheme = from_labels or from_pred
    if num_classes is None:
        if scheme is None:
            raise RasterError(f"{pair.labels}: no class names (CLASS_NAMES tag); pass --num-classes")
        return tuple(scheme.names)
    known = list(scheme.names) if scheme else []
    return tuple(known[i] if i < len(known) else f"class_{i}" for i in range(num_classes))


def _nodata(info: RasterInfo) -> tuple[int, ...]:
    """Values that mean "no class here": the raster's nodata and geoseg's 255."""
    values = {NODATA}
    if info.nodata is not None and float(info.nodata).is_integer():
        values.add(int(info.nodata))
    return tuple(sorted(values))


def score_chunk(plan: ScenePlan, window: Window, sources: dict | None = None) -> Counts:
    """The sums of one window of a pair. ``sources``: open class maps to reuse
    (``{url: opened}``), as a worker keeps them between chunks."""
    truth = _read(plan.pair.labels, window, sources)
    guess = _read(plan.pair.prediction, window, sources)
    k = plan.k
    label_ok = ~np.isin(truth, plan.label_nodata)
    pred_ok = ~np.isin(guess, plan.prediction_nodata)
    _refuse_outside(plan.pair.labels, truth, label_ok, k, window)
    _refuse_outside(plan.pair.prediction, guess, pred_ok, k, window)
    both = label_ok & pred_ok
    cm = confusion(truth[both], guess[both], k, ignore=-1)
    counts = Counts(cm, np.zeros(k), np.zeros(k),
                    {"label_nodata": int((~label_ok).sum()), "prediction_nodata": int((label_ok & ~pred_ok).sum())})
    if plan.area is not None:
        counts.label_m2 = plan.area.class_areas_m2(np.where(label_ok, truth, k), window.row_off, k)
        counts.predicted_m2 = plan.area.class_areas_m2(np.where(pred_ok, guess, k), window.row_off, k)
    return counts


def _read(url: str, window: Window, sources: dict | None) -> np.ndarray:
    if sources is None:
        with open_class_map(url) as cmap:
            return cmap.read(window)
    if url not in sources:
        if len(sources) >= 16:  # few scenes at a time per worker
            old = next(iter(sources))
            sources.pop(old).__exit__(None, None, None)
        sources[url] = open_class_map(url).__enter__()
    return sources[url].read(window)


def _refuse_outside(url: str, values: np.ndarray, ok: np.ndarray, k: int, w: Window) -> None:
    bad = ok & ((values >= k) | (values < 0))
    if bad.any():
        found = sorted(int(v) for v in np.unique(values[bad]))[:5]
        raise RasterError(f"{url}: class value(s) {found} outside the {k} classes, in window rows "
                          f"{w.row_off}:{w.row_off + w.height}, cols {w.col_off}:{w.col_off + w.width}; "
                          "pass --num-classes to score more classes")


def score_scene(plan: ScenePlan) -> Counts:
    """One scene in this process, chunk after chunk (the reference the Ray job must equal)."""
    total = Counts.zeros(plan.k)
    sources: dict = {}
    try:
        for w in plan.windows():
            total += score_chunk(plan, w, sources)
    finally:
        for s in sources.values():
            s.__exit__(None, None, None)
    return total
