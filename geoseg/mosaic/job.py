"""The Ray layer of ``geoseg mosaic``: the driver loop (:mod:`geoseg.mosaic.driver`) with run
records read and chunks written as Ray tasks (a quarter, a half and a half CPU each)."""

from __future__ import annotations

from geoseg.mosaic.driver import CPUS, drive
from geoseg.mosaic.plan import Period
from geoseg.execution.runtime import RayTasks


def mosaic(prefix: str, grid: str, out: str | None = None, name: str = "mosaic", chunk: int = 1024,
           rule: str = "auto", overwrite: bool = False, address: str | None = None, log=print,
           frequencies: bool = False, period: Period = Period()) -> list[dict]:
    """Mosaic every finished scene under ``prefix`` onto ``grid`` on Ray (started, or joined at
    ``address``, once the inputs are checked): see :func:`geoseg.mosaic.driver.drive`."""
    from geoseg.execution.runtime import check_address, cluster_cpus, init_ray

    check_address(address)

    def start():
        init_ray(address)
        return RayTasks(CPUS), cluster_cpus()

    return drive(prefix, grid, start, out, name, chunk, rule, overwrite, log, frequencies, period)
