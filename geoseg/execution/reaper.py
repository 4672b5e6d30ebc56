"""Watchdog of a local Ray: ``python -m geoseg.execution.reaper DRIVER_PID`` (started by :mod:`geoseg.execution.runtime`).

It keeps a list of the processes the driver has started (Ray's GCS, raylet,
dashboard, agents and workers), refreshed every second, and reads its stdin,
a pipe whose other end only the driver holds. When the pipe closes (the driver
shut Ray down, or died, even by SIGKILL), it stops every process of that list
still running: SIGTERM, then SIGKILL after a grace period. Without it, a killed
driver leaves Ray's dashboard and runtime-env agents running, orphaned.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

import psutil

GRACE_S = 3.0


def _descendants(pid: int) -> dict[int, float]:
    try:
        return {p.pid: p.create_time() for p in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return {}


def _created(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _stop(procs: dict[int, float]) -> None:
    alive = []
    for pid, created in procs.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created:  # the same process, not a reused pid
                p.terminate()
                alive.append(p)
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive, timeout=GRACE_S)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass


def main(driver: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    known: dict[int, float] = {}
    while True:
        known.update(_descendants(driver))
        ready, _, _ = select.select([sys.stdin], [], [], 1.0)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # EOF: the driver is done with Ray, or gone
    time.sleep(0.5)  # a normal shutdown is finishing: let it
    # what Ray's processes started last (workers); not the driver's new children: it may
    # go on to start another Ray, whose processes are not ours
    for pid, created in list(known.items()):
        if _created(pid) == created:  # (not a reused pid)
            known.update({p: c for p, c in _descendants(pid).items() if p not in known})
    known.pop(os.getpid(), None)
    _stop(known)


if __name__ == "__main__":
    main(int(sys.argv[1]))
