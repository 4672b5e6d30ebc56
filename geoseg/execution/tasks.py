"""Task runners with one interface, for a driver that sends work off and takes results in as
they come: ``submit(fn, *args)`` -> handle (a handle among the arguments stands for its result:
a task may take the results of earlier ones), ``ready(handles, block)``, ``get(handle)``,
``gather(handles)``, and ``cause(exc)`` (the task's own exception behind the runner's wrapper).

:class:`InlineTasks` runs each task at once in this process (a job without Ray);
:class:`RayTasks` sends each as a Ray task with the CPUs asked for it. A feature's driver
loop takes either from its runner and never asks which it has.
"""

from __future__ import annotations

import os
from concurrent.futures import Future


def machine_cpus() -> int:
    """The CPUs this process may run on (its affinity; what a local Ray would count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cause_of(exc: BaseException) -> BaseException:
    """A Ray task error's own exception (the worker's), else the error itself."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def as_done(tasks, handles: list):
    """The results of ``tasks``' handles in the order they finish."""
    pending = list(handles)
    while pending:
        for h in tasks.ready(pending, True):
            pending = [p for p in pending if p is not h]
            yield tasks.get(h)


class InlineTasks:
    """Tasks run at once, in this process."""

    def submit(self, fn, *args) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*[a.result() if isinstance(a, Future) else a for a in args]))
        except Exception as exc:  # noqa: BLE001 - the caller decides what fails
            f.set_exception(exc)
        return f

    def ready(self, handles: list, block: bool) -> list:
        return list(handles)

    def get(self, handle: Future):
        return handle.result()

    def gather(self, handles: list) -> list:
        return [h.result() for h in handles]

    def put(self, value):
        """A value every task will take (Ray: stored once in the object store)."""
        return value

    cause = staticmethod(cause_of)
