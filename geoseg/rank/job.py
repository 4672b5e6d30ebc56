"""The Ray layer of ``geoseg rank``: the driver loop (:mod:`geoseg.rank.driver`) with each scene's
candidates and each chip's files made in Ray tasks (half a CPU each), for jobs of many scenes."""

from __future__ import annotations

from geoseg.execution.runtime import RayTasks
from geoseg.rank.driver import CPUS, drive
from geoseg.rank.plan import RankOptions


def rank(opts: RankOptions, address: str | None = None, log=print) -> dict:
    from geoseg.execution.runtime import check_address, init_ray

    check_address(address)

    def start():
        init_ray(address)
        return RayTasks(CPUS)

    return drive(opts, start, log)
