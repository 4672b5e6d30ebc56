"""The driver loop of ``geoseg evaluate``, shared by its runners (no Ray).

    find_pairs, plan_scenes        pairs checked, metadata only (bad input fails before the runner starts)
      -> runner.score              every chunk of every pair: additive sums per scene
      -> report.build              per scene and overall
      -> instances, error maps     the runner's tasks (one per scene)
      -> report.write              metrics.json, metrics.md, confusion_matrix.png

A runner has ``start()``, ``score(plans, progress)`` and ``tasks`` (:mod:`geoseg.execution.tasks`):
:class:`geoseg.evaluate.job.RayRunner` (Ray Data and Ray tasks) or
:class:`geoseg.evaluate.local.LocalRunner` (this process).
"""

from __future__ import annotations

from geoseg.console import Progress
from geoseg.data import storage
from geoseg.errors import InputError
from geoseg.evaluate import report
from geoseg.evaluate.instances import IOU, predicted_instances, score_instances
from geoseg.evaluate.plan import CHUNK, find_pairs, plan_scenes
from geoseg.evaluate.stages import error_map


def drive(predictions: list[str], labels: list[str] | None, runner, *, label_asset: str = "labels",
          num_classes: int | None = None, out: str | None = None, error_maps: bool = True, chunk: int = CHUNK,
          instances: list[str] | None = None) -> dict:
    """Find and check the pairs, score them on ``runner``, write the report (and each scene's error
    map) under ``out``; returns the report (see :func:`geoseg.evaluate.job.run_evaluation`)."""
    pairs = find_pairs(predictions, labels, label_asset)
    plans = plan_scenes(pairs, num_classes, chunk)  # bad input fails here, before the runner starts
    if instances is not None:
        if len(instances) != len(pairs):
            raise InputError(f"{len(pairs)} scene(s) but {len(instances)} --instances: give one reference per scene")
        predicted = [predicted_instances(p.prediction) for p in pairs]
    if out:
        storage.check_writable(out)
    runner.start()
    tasks = runner.tasks
    progress = Progress(sum(p.n_chunks for p in plans), "chunks")
    evaluation = runner.score(plans, progress)
    progress.close(complete=True)
    rep = report.build(plans, evaluation.counts, evaluation.seconds)
    if instances is not None:
        rep["instances"] = instance_report(pairs, predicted, instances, tasks)
    if out:
        maps = {}
        if error_maps:
            names = {p.pair.name: f"errors/{p.pair.name}.png" for p in plans}
            tasks.gather([tasks.submit(error_map, p, storage.join(out, names[p.pair.name])) for p in plans])
            maps = names
        rep["outputs"] = report.write(rep, out, maps)
    return rep


def instance_report(pairs, predicted: list[str], references: list[str], tasks) -> dict:
    """Object-level scores of every scene (a task each) and over all (the matches added up)."""
    per = tasks.gather([tasks.submit(score_instances, p.prediction, pred, ref)
                        for p, pred, ref in zip(pairs, predicted, references)])
    total = {k: sum(s[k] for s in per) for k in ("predicted", "reference", "tp", "fp", "fn")}
    tp, fp, fn = total["tp"], total["fp"], total["fn"]
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    return {"iou_threshold": IOU, **total, "precision": precision, "recall": recall, "f1": f1,
            "scenes": {p.name: s for p, s in zip(pairs, per)}}
