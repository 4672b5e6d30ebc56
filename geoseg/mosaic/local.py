"""``geoseg mosaic`` in this process, without Ray: the driver loop of the Ray job
(:func:`geoseg.mosaic.driver.drive`), its tasks run inline, one after another."""

from __future__ import annotations

from geoseg.mosaic.driver import drive
from geoseg.mosaic.plan import Period
from geoseg.execution.tasks import InlineTasks, machine_cpus


def mosaic_here(prefix: str, grid: str, out: str | None = None, name: str = "mosaic", chunk: int = 1024,
                rule: str = "auto", overwrite: bool = False, log=print, frequencies: bool = False,
                period: Period = Period()) -> list[dict]:
    """:func:`geoseg.mosaic.job.mosaic` without Ray: the same stores, records and collection."""
    return drive(prefix, grid, lambda: (InlineTasks(), machine_cpus()), out, name, chunk, rule,
                 overwrite, log, frequencies, period)
