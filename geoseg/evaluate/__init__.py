"""``geoseg evaluate``: class maps scored against labels, many scenes in parallel on Ray.

    plan.py       no Ray   what was given -> (prediction, labels) pairs -> one ScenePlan each, checked
    stages.py     no Ray   one pair, chunk by chunk: additive sums (Counts); error maps
    instances.py  no Ray   object-level scores of field instances (precision, recall, F1 at IoU 0.5)
    report.py     no Ray   terminal table, metrics.json, metrics.md, confusion_matrix.png
    driver.py     no Ray   the driver loop every runner shares: pairs, scores, report, instances, error maps
    local.py      no Ray   LocalRunner: all of it in this process (evaluate_here; evaluate for one pair)
    job.py        Ray      RayRunner: every chunk of every pair as Ray Data tasks; instances and error maps
                           as Ray tasks (run_evaluation)
"""

from __future__ import annotations

from geoseg.evaluate.job import run_evaluation
from geoseg.evaluate.local import score_in_process
from geoseg.evaluate.plan import Pair, find_pairs, plan_scenes
from geoseg.evaluate.report import build as build_report


def evaluate(prediction: str, labels: str, num_classes: int | None = None) -> dict:
    """One pair scored in this process (no Ray): the report of :func:`build_report`."""
    plans = plan_scenes([Pair("scene", prediction, labels)], num_classes)
    ev = score_in_process(plans)
    return build_report(plans, ev.counts, ev.seconds)


__all__ = ["Pair", "build_report", "evaluate", "find_pairs", "plan_scenes", "run_evaluation", "score_in_process"]
