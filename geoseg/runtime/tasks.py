"""Task runners with one interface, for a driver that sends work off and takes results in as
they come: ``submit(fn, *args)`` -> handle, ``ready(handles, block)``, ``get(handle)``, and
``cause(exc)`` (the task's own exception behind the runner's wrapper).

:class:`InlineTasks` runs each task at once in this process (a job without Ray);
:class:`RayTasks` sends each as a Ray task with the CPUs asked for it. A feature's driver
loop takes either from its runner and never asks which it has.
"""

from __future__ import annotations

from concurrent.futures import Future


def cause_of(exc: BaseException) -> BaseException:
    """A Ray task error's own exception (the worker's), else the error itself."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class InlineTasks:
    """Tasks run at once, in this process."""

    def submit(self, fn, *args) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - the caller decides what fails
            f.set_exception(exc)
        return f

    def ready(self, handles: list, block: bool) -> list:
        return list(handles)

    def get(self, handle: Future):
        return handle.result()

    cause = staticmethod(cause_of)


class RayTasks:
    """Tasks as Ray tasks: ``cpus`` maps each function to the CPUs its tasks ask for."""

    def __init__(self, cpus: dict):
        import ray

        self._remote = {fn: ray.remote(num_cpus=n)(fn) for fn, n in cpus.items()}

    def submit(self, fn, *args):
        return self._remote[fn].remote(*args)

    def ready(self, refs: list, block: bool) -> list:
        import ray

        ready, _ = ray.wait(refs, num_returns=1 if block else len(refs), timeout=None if block else 0)
        return ready

    def get(self, ref):
        import ray

        return ray.get(ref)

    cause = staticmethod(cause_of)
