"""``geoseg rank`` in this process, without Ray: the driver loop (:func:`geoseg.rank.driver.drive`),
its tasks run inline."""

from __future__ import annotations

from geoseg.execution.tasks import InlineTasks
from geoseg.rank.driver import drive
from geoseg.rank.plan import RankOptions


def rank_here(opts: RankOptions, log=print) -> dict:
    return drive(opts, InlineTasks, log)
