"""The Ray layer of ``geoseg evaluate``: the driver loop (:mod:`geoseg.evaluate.driver`) with many
pairs scored in parallel, chunk by chunk, as Ray Data tasks, and the instances and error maps as Ray tasks.

    find_pairs, plan_scenes (driver, no Ray)   pairs checked, metadata only
      -> ray.data.from_items(ranges)           ranges of global chunk numbers, never a list of chunks
      -> map_batches(score_ranges)             CPU tasks: each reads its chunks and returns sums per scene
      -> driver                                sums per scene and overall, the report
      -> error maps (Ray tasks)                one small PNG per scene (decimated reads)

Everything that touches pixels is :mod:`geoseg.evaluate.stages` (no Ray); the sums
are additive, so the numbers do not depend on how the chunks were spread.
"""

from __future__ import annotations

import time
import uuid

import numpy as np

from geoseg.console import Progress
from geoseg.evaluate.driver import drive
from geoseg.evaluate.instances import score_instances
from geoseg.evaluate.plan import CHUNK, ScenePlan
from geoseg.evaluate.stages import Counts, Evaluation, error_map, score_ranges
from geoseg.execution.runtime import RayTasks


def score_on_ray(plans: list[ScenePlan], progress: Progress | None = None) -> Evaluation:
    """Every chunk of every scene as Ray Data tasks on the cluster (Ray must be up)."""
    import ray

    from geoseg.data.tiling import tile_ranges
    from geoseg.execution.runtime import cluster_cpus

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


class RayRunner:
    """Scoring as Ray Data tasks, instances and error maps as Ray tasks (a CPU each), on the Ray
    started or joined at ``address`` once the inputs are checked."""

    def __init__(self, address: str | None):
        self.address, self.tasks = address, None

    def start(self) -> None:
        from geoseg.execution.runtime import init_ray

        init_ray(self.address)
        self.tasks = RayTasks({score_instances: 1, error_map: 1})

    score = staticmethod(score_on_ray)


def run_evaluation(predictions: list[str], labels: list[str] | None = None, *, label_asset: str = "labels",
                   num_classes: int | None = None, out: str | None = None, address: str | None = None,
                   error_maps: bool = True, chunk: int = CHUNK, instances: list[str] | None = None) -> dict:
    """``geoseg evaluate``: find and check the pairs, score them on Ray, write the report
    (and each scene's error map) under ``out``; returns the report. ``instances``: reference
    instances (rasters or vector files), one per pair in order: the predicted instance polygons
    beside each prediction are scored against them too (``instances`` in the report)."""
    from geoseg.execution.runtime import check_address

    check_address(address)
    return drive(predictions, labels, RayRunner(address), label_asset=label_asset, num_classes=num_classes,
                 out=out, error_maps=error_maps, chunk=chunk, instances=instances)
