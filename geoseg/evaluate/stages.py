"""The stages of ``geoseg evaluate``, without Ray: one prediction scored against its labels, chunk by chunk.

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

from geoseg.data.classmap import open_class_map
from geoseg.data.tiling import Window
from geoseg.errors import RasterError
from geoseg.evaluate.plan import ScenePlan
from geoseg.models.metrics import confusion


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


@dataclass
class Evaluation:
    """The sums of each scene (``counts[i]`` for ``plans[i]``); :func:`geoseg.evaluate.report.build`
    adds them up and reports them."""

    plans: list[ScenePlan]
    counts: list[Counts]
    seconds: float = 0.0


_SOURCES: dict = {}  # per worker process: class maps kept open between chunks (few at a time)
_SOURCES_JOB: list = [None]  # the job they were opened for: a later job may read rewritten files


def _sources(job: str) -> dict:
    if _SOURCES_JOB[0] != job:
        for opened in _SOURCES.values():
            opened.__exit__(None, None, None)
        _SOURCES.clear()
        _SOURCES_JOB[0] = job
    return _SOURCES


def score_ranges(batch: dict, plans: list[ScenePlan], offsets: np.ndarray, job: str) -> dict:
    """The sums of the chunks numbered ``lo..hi-1`` (all scenes' chunks
    numbered one after another), one row per scene touched. Class maps stay open in the
    worker between chunks of one job (``job``: its id)."""
    sources = _sources(job)
    k = plans[0].k
    per_scene: dict[int, Counts] = {}
    chunks: dict[int, int] = {}
    for lo, hi in zip(batch["lo"], batch["hi"]):
        for g in range(int(lo), int(hi)):
            s = int(np.searchsorted(offsets, g, side="right") - 1)
            counts = score_chunk(plans[s], plans[s].window(g - int(offsets[s])), sources)
            if s in per_scene:
                per_scene[s] += counts
            else:
                per_scene[s] = counts
            chunks[s] = chunks.get(s, 0) + 1
    scenes = sorted(per_scene)
    return {
        "scene": np.array(scenes, dtype=np.int64),
        "confusion": np.stack([per_scene[s].confusion.ravel() for s in scenes]) if scenes
        else np.zeros((0, k * k), np.int64),
        "label_m2": np.stack([per_scene[s].label_m2 for s in scenes]) if scenes else np.zeros((0, k)),
        "predicted_m2": np.stack([per_scene[s].predicted_m2 for s in scenes]) if scenes else np.zeros((0, k)),
        "label_nodata": np.array([per_scene[s].ignored["label_nodata"] for s in scenes], dtype=np.int64),
        "prediction_nodata": np.array([per_scene[s].ignored["prediction_nodata"] for s in scenes], dtype=np.int64),
        "chunks": np.array([chunks[s] for s in scenes], dtype=np.int64),
    }


def error_map(plan: ScenePlan, url: str) -> str:
    """One scene's error map (decimated reads of both class maps): a task of its own."""
    from geoseg.data.classmap import scheme_of
    from geoseg.data.quicklook import write_error_map

    scheme = scheme_of(plan.labels) or scheme_of(plan.prediction)
    return write_error_map(plan.pair.prediction, plan.pair.labels, plan.names, scheme, url,
                           plan.label_nodata, plan.prediction_nodata)
