"""``geoseg evaluate`` in this process, without Ray: every chunk of every scene, one after another;
the driver loop of the Ray job (:func:`geoseg.evaluate.driver.drive`) with :class:`LocalRunner`."""

from __future__ import annotations

import time

from geoseg.evaluate.driver import drive
from geoseg.evaluate.plan import CHUNK, ScenePlan
from geoseg.evaluate.stages import Evaluation, score_scene
from geoseg.execution.tasks import InlineTasks


def score_in_process(plans: list[ScenePlan]) -> Evaluation:
    """Every scene in this process, one chunk after another (no Ray)."""
    t0 = time.perf_counter()
    return Evaluation(plans, [score_scene(p) for p in plans], time.perf_counter() - t0)


class LocalRunner:
    """Every chunk, instance score and error map in this process."""

    tasks = InlineTasks()

    def start(self) -> None:
        pass

    @staticmethod
    def score(plans: list[ScenePlan], progress=None) -> Evaluation:
        ev = score_in_process(plans)
        if progress is not None:
            progress.update(sum(p.n_chunks for p in plans), sum(p.pixels for p in plans))
        return ev


def evaluate_here(predictions: list[str], labels: list[str] | None = None, *, label_asset: str = "labels",
                  num_classes: int | None = None, out: str | None = None, error_maps: bool = True,
                  chunk: int = CHUNK, instances: list[str] | None = None) -> dict:
    """:func:`geoseg.evaluate.job.run_evaluation` without Ray: the same report and files."""
    return drive(predictions, labels, LocalRunner(), label_asset=label_asset, num_classes=num_classes, out=out,
                 error_maps=error_maps, chunk=chunk, instances=instances)
