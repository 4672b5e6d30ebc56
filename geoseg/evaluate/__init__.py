"""``geoseg evaluate``: class maps scored against labels, many scenes in parallel on Ray.

    pairs.py    what was given -> (prediction, labels) pairs
    scene.py    one pair, chunk by chunk, without Ray: checks and additive sums
    job.py      the Ray layer: every chunk of every pair as Ray Data tasks; error maps
    report.py   terminal table, metrics.json, metrics.md, confusion_matrix.png
"""

from __future__ import annotations

from geoseg.evaluate.job import plan_scenes, run_evaluation, score_in_process
from geoseg.evaluate.pairs import Pair, find_pairs
from geoseg.evaluate.report import build as build_report


def evaluate(prediction: str, labels: str, num_classes: int | None = None) -> dict:
    """One pair scored in this process (no Ray): the report of :func:`build_report`."""
    plans = plan_scenes([Pair("scene", prediction, labels)], num_classes)
    ev = score_in_process(plans)
    return build_report(plans, ev.counts, ev.seconds)


__all__ = ["Pair", "build_report", "evaluate", "find_pairs", "plan_scenes", "run_evaluation", "score_in_process"]
