"""The Ray layer of ``geoseg composite``: the driver loop (:mod:`geoseg.composite.driver`) with the
inputs described and every output tile composited as Ray tasks (a quarter CPU and one CPU each)."""

from __future__ import annotations

from geoseg.composite.driver import CPUS, drive
from geoseg.composite.plan import CompositeOptions
from geoseg.execution.runtime import RayTasks


def composite(opts: CompositeOptions, address: str | None = None, log=print) -> dict:
    """Composite ``opts.inputs`` on Ray (started, or joined at ``address``, once the inputs are
    checked): see :func:`geoseg.composite.driver.drive`."""
    from geoseg.execution.runtime import check_address, cluster_cpus, init_ray

    check_address(address)

    def start():
        init_ray(address)
        return RayTasks(CPUS), cluster_cpus()

    return drive(opts, start, log)
