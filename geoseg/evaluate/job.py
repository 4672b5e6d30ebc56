"""The Ray layer of ``geoseg evaluate``: many pairs scored in parallel, chunk by chunk.

    find_pairs, plan_scenes (driver, no Ray)   pairs checked, metadata only
      -> ray.data.from_items(ranges)           ranges of global chunk numbers, never a list of chunks
      -> map_batches(score_ranges)             CPU tasks: each reads its chunks and returns sums per scene
      -> driver                                sums per scene and overall, the report
      -> error maps (Ray tasks)                one small PNG per scene (decimated reads)

Everything that touches pixels is :mod:`geoseg.evaluate.scene` (no Ray); the sums
are additive, so the numbers do not depend on how the chunks were spread.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from geoseg.console import Progress
from geoseg.errors import InputError, RasterError
from geoseg.evaluate.pairs import Pair
from geoseg.evaluate.scene import CHUNK, Counts, ScenePlan, plan_scene, score_chunk, score_scene


@dataclass
class Evaluation:
    """The sums of each scene (``counts[i]`` for ``plans[i]``); :func:`geoseg.evaluate.report.build`
    adds them up and reports them."""

    plans: list[ScenePlan]
    counts: list[Counts]
    seconds: float = 0.0


def plan_scenes(pairs: list[Pair], num_classes: int | None = None, chunk: int = CHUNK) -> list[ScenePlan]:
    """Every pair checked before any pixel is read (metadata of many objects, read in threads)."""
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(pairs)))) as pool:
        plans = list(pool.map(lambda p: plan_scene(p, num_classes, chunk), pairs))
    first = plans[0]
    for p in plans[1:]:
        if p.names != first.names:
            raise RasterError(f"{p.pair.labels} has classes {list(p.names)} but {first.pair.labels} has "
                              f"{list(first.names)}; score them separately")
    return plans


def score_in_process(plans: list[ScenePlan]) -> Evaluation:
    """Every scene in this process, one chunk after another (no Ray)."""
    t0 = time.perf_counter()
    return Evaluation(plans, [score_scene(p) for p in plans], time.perf_counter() - t0)


# --- on Ray ------------------------------------------------------------------------

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
    """Ray Data UDF: the sums of the chunks numbered ``lo..hi-1`` (all scenes' chunks
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


def score_on_ray(plans: list[ScenePlan], progress: Progress | None = None) -> Evaluation:
    """Every chunk of every scene as Ray Data tasks on the cluster (Ray must be up)."""
    import ray

    from geoseg.data.tiling import tile_ranges
    from geoseg.runtime.cluster import cluster_cpus

    t0 = time.perf_counter()
    sizes = np.array([p.n_chunks for p in plans], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    total = int(sizes.sum())
    ranges = tile_ranges(total, 1, cluster_cpus())
    ds = ray.data.from_items(ranges, override_num_blocks=len(ranges))
    job = uuid.uuid4().hex
    ds = ds.map_batches(score_ranges, fn_kwargs={"plans": plans, "offsets": offsets, "job": job}, batch_size=1,
                        num_cpus=1)
    k = plans[0].k
    counts = [Counts.zeros(k) for _ in plans]
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i, s in enumerate(batch["scene"]):
            counts[s] += Counts(batch["confusion"][i].reshape(k, k).astype(np.int64), batch["label_m2"][i],
                                batch["predicted_m2"][i], {"label_nodata": int(batch["label_nodata"][i]),
                                                           "prediction_nodata": int(batch["prediction_nodata"][i])})
            if progress is not None:
                n = int(batch["chunks"][i])
                progress.update(n, n * plans[s].pixels // plans[s].n_chunks)
    return Evaluation(plans, counts, time.perf_counter() - t0)


def error_map_task(plan: ScenePlan, url: str) -> str:
    """One scene's error map (decimated reads of both class maps): a Ray task."""
    from geoseg.data.classmap import scheme_of
    from geoseg.data.quicklook import write_error_map

    scheme = scheme_of(plan.labels) or scheme_of(plan.prediction)
    return write_error_map(plan.pair.prediction, plan.pair.labels, plan.names, scheme, url,
                           plan.label_nodata, plan.prediction_nodata)


def instance_report(pairs, predicted: list[str], references: list[str]) -> dict:
    """Object-level scores of every scene (a Ray task each) and over all (the matches added up)."""
    import ray

    from geoseg.evaluate import instances as inst

    task = ray.remote(num_cpus=1)(inst.score_instances)
    per = ray.get([task.remote(p.prediction, pred, ref) for p, pred, ref in zip(pairs, predicted, references)])
    total = {k: sum(s[k] for s in per) for k in ("predicted", "reference", "tp", "fp", "fn")}
    tp, fp, fn = total["tp"], total["fp"], total["fn"]
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    return {"iou_threshold": inst.IOU, **total, "precision": precision, "recall": recall, "f1": f1,
            "scenes": {p.name: s for p, s in zip(pairs, per)}}


def run_evaluation(predictions: list[str], labels: list[str] | None = None, *, label_asset: str = "labels",
                   num_classes: int | None = None, out: str | None = None, address: str | None = None,
                   error_maps: bool = True, chunk: int = CHUNK, instances: list[str] | None = None) -> dict:
    """``geoseg evaluate``: find and check the pairs, score them on Ray, write the report
    (and each scene's error map) under ``out``; returns the report. ``instances``: reference
    instances (rasters or vector files), one per pair in order: the predicted instance polygons
    beside each prediction are scored against them too (``instances`` in the report)."""
    import ray

    from geoseg.data import storage
    from geoseg.evaluate import report
    from geoseg.evaluate.pairs import find_pairs
    from geoseg.runtime.cluster import check_address, init_ray

    check_address(address)
    pairs = find_pairs(predictions, labels, label_asset)
    plans = plan_scenes(pairs, num_classes, chunk)  # bad input fails here, before Ray starts
    if instances is not None:
        from geoseg.evaluate.instances import predicted_instances

        if len(instances) != len(pairs):
            raise InputError(f"{len(pairs)} scene(s) but {len(instances)} --instances: give one reference per scene")
        predicted = [predicted_instances(p.prediction) for p in pairs]
    if out:
        storage.check_writable(out)
    init_ray(address)
    progress = Progress(sum(p.n_chunks for p in plans), "chunks")
    evaluation = score_on_ray(plans, progress)
    progress.close(complete=True)
    rep = report.build(plans, evaluation.counts, evaluation.seconds)
    if instances is not None:
        rep["instances"] = instance_report(pairs, predicted, instances)
    if out:
        maps = {}
        if error_maps:
            task = ray.remote(num_cpus=1)(error_map_task)
            names = {p.pair.name: f"errors/{p.pair.name}.png" for p in plans}
            refs = [task.remote(p, storage.join(out, names[p.pair.name])) for p in plans]
            ray.get(refs)
            maps = names
        rep["outputs"] = report.write(rep, out, maps)
    return rep
