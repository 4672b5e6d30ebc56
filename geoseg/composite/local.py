"""``geoseg composite`` in this process, without Ray: the driver loop of the Ray job
(:func:`geoseg.composite.driver.drive`), its tasks run inline, one after another."""

from __future__ import annotations

from geoseg.composite.driver import drive
from geoseg.composite.plan import CompositeOptions
from geoseg.execution.tasks import InlineTasks, machine_cpus


def composite_here(opts: CompositeOptions, log=print) -> dict:
    """:func:`geoseg.composite.job.composite` without Ray: the same tiles, items and record."""
    return drive(opts, lambda: (InlineTasks(), machine_cpus()), log)
