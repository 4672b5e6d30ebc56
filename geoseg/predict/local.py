"""A predict job that this process runs on its own, without Ray: one scene, the model on this
machine's CPUs.

Ray brings a job its scale: many scenes planned and read at once, model actors, other
nodes, the dashboard. A job of one scene on one machine, whose model runs in the driver
anyway (:class:`~geoseg.predict.job.DriverModel`), needs none of it, and Ray's own start
is not free: its processes (GCS, raylet, agents, monitors, Ray Data's actors, workers
importing Ray Data and geoseg) took 14-17 CPU seconds and 9-11 s of wall time on the
2-core benchmark box before the first tile reached the model, a third of a 4096² scene's
whole job with an INT8 model. So such a job (:func:`runs_locally`) starts no Ray: the
same stages run in the driver, in the same order, on threads:

    plan_scenes (the scene planned by plan_job: outputs created or kept to resume)
      -> read_tiles        reader threads, one per CPU_CALLS_PER_ACTOR cores, on the low-priority
                           I/O threads of :mod:`~geoseg.predict.stages` (as in a read task)
      -> Infer, writes     DriverModel: one single-threaded call per core, the writes on the I/O thread
      -> SceneTracker      as for a Ray job, its blend and completion tasks run inline (InlineTasks)

A bounded queue between the readers and the model keeps memory at a few batches,
whatever the scene's size; the Zarr progress log makes an interrupted job resume as
any other. Anything beyond that one scene (``--workers``, ``--address``, a Ray already up,
a CUDA device, ``--dashboard``, more scenes) runs on Ray, as before.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future
from typing import Iterator

import numpy as np

from geoseg.predict import stages
from geoseg.predict.plan import JobPlan, PredictOptions


def machine_cpus() -> int:
    """The CPUs this process may run on (its affinity; what a local Ray would count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def runs_locally(job: JobPlan, opts: PredictOptions) -> bool:
    """Whether the job runs in this process alone, starting no Ray: one scene left to predict
    (planned already), with a checkpoint or model file on this machine's CPUs, in the driver
    (no ``--workers`` or ``--gpus-per-worker``), no cluster named (``--address``,
    ``RAY_ADDRESS``) or Ray up already (a library caller's, whose Ray costs nothing more), no
    ``--dashboard`` to watch, and no CUDA device (a GPU actor runs the model there)."""
    from geoseg.predictor import cuda_present
    from geoseg.runtime import ray_connected, requested_address, wants_dashboard

    return (len(job.todo) == 1 and job.first is not None and not job.first_error and job.spec.name == "checkpoint"
            and opts.worker_range is None and opts.gpus_per_worker == 0
            and requested_address(opts.address) is None and not ray_connected()
            and not wants_dashboard() and not cuda_present())


def read_batches(job: JobPlan, opts: PredictOptions, cpus: float, readers: int, ahead: int,
                 shape: tuple[int, int, int]) -> Iterator[dict]:
    """The first scene's tiles, batch by batch, as the read tasks of a Ray job give them:
    ``readers`` threads read its tile ranges in order, at most ``ahead`` batches ahead of
    the consumer. An error in a reader is raised here; closing the iterator stops them."""
    from dataclasses import replace

    slim = replace(job, sources=[], done=frozenset())
    first = stages.source_rows([job.first])[0]
    first["source"] = stages.pack(job.first)
    rows = [r for out in stages.plan_scenes({k: np.array([v], dtype=object) for k, v in first.items()},
                                            job=slim, opts=opts, batch_size=opts.batch_size, cpus=cpus)
            for r in _split(out)]
    stages.io_threads(readers)
    todo = iter(rows)
    lock, stop = threading.Lock(), threading.Event()
    out: queue.Queue = queue.Queue(maxsize=max(1, ahead))
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            while not stop.is_set():
                with lock:
                    row = next(todo, None)
                if row is None:
                    break
                for batch in stages.read_tiles(row, job.dtype, shape, opts.batch_size, opts.skip_bad_tiles,
                                               opts.fail_fast):
                    if not put(batch):
                        return
        except BaseException as exc:  # noqa: BLE001 - raised in the consumer, where the job fails
            put(exc)
            return
        put(done)

    threads = [threading.Thread(target=reader, name=f"geoseg-reader-{i}", daemon=True)
               for i in range(max(1, min(readers, len(rows))))]
    for t in threads:
        t.start()
    try:
        finished = 0
        while finished < len(threads):
            item = out.get()
            if item is done:
                finished += 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        stop.set()


def _split(rows: dict) -> list[dict]:
    """A batch of planned rows as one-row batches (one tile range each, as Ray Data's blocks)."""
    return [{k: v[i : i + 1] for k, v in rows.items()} for i in range(len(rows["scene"]))]


class InlineTasks:
    """The scene tracker's tasks (a scene's blends, its completion) run at once, in this process."""

    def submit(self, fn, *args) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - the tracker decides what fails
            f.set_exception(exc)
        return f

    def ready(self, handles: list, block: bool) -> list:
        return list(handles)

    def get(self, handle: Future):
        return handle.result()
