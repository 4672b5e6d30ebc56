"""A predict job that this process runs on its own, without Ray: one scene, the model on this
machine's CPUs.

Ray brings a job its scale: many scenes planned and read at once, model actors, other
nodes, the dashboard. A job of one scene on one machine, whose model runs in the driver
anyway (:class:`~geoseg.predict.driver.DriverModel`), needs none of it, and Ray's own start
is not free: its processes (GCS, raylet, agents, monitors, Ray Data's actors, workers
importing Ray Data and geoseg) took 14-17 CPU seconds and 9-11 s of wall time on the
2-core benchmark box before the first tile reached the model, a third of a 4096² scene's
whole job with an INT8 model. So such a job (:func:`runs_locally`) starts no Ray: the
same stages run in the driver, in the same order, on threads, and the same driver loop
(:func:`geoseg.predict.driver.drive`) takes them in, from :class:`LocalRunner`:

    plan_scenes (the scene planned by plan_job: outputs created or kept to resume)
      -> read_tiles        reader threads, one per CPU_CALLS_PER_ACTOR cores, on the low-priority
                           I/O threads of :mod:`~geoseg.predict.stages` (as in a read task)
      -> Infer, writes     DriverModel: one single-threaded call per core, the writes on the I/O thread
      -> SceneTracker      as for a Ray job, its blend and completion tasks run inline
                           (:class:`~geoseg.execution.tasks.InlineTasks`)

A bounded queue between the readers and the model keeps memory at a few batches,
whatever the scene's size; the Zarr progress log makes an interrupted job resume as
any other. Anything beyond that one scene (``--workers``, ``--address``, a Ray already up,
a CUDA device, ``--dashboard``, more scenes) runs on Ray, as before.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np

from geoseg.models.onnx import cuda_present
from geoseg.predict import stages
from geoseg.predict.driver import DriverModel, NoMetrics
from geoseg.predict.finish import blend_tiles, complete_scene
from geoseg.predict.layout import ActorLayout, actor_layout
from geoseg.predict.options import PredictOptions
from geoseg.predict.plan import JobPlan
from geoseg.execution.runtime import handle_sigterm, ray_connected, requested_address, wants_dashboard
from geoseg.execution.tasks import InlineTasks, machine_cpus
from geoseg.execution.threads import io_threads


def runs_locally(job: JobPlan, opts: PredictOptions) -> bool:
    """Whether the job runs in this process alone, starting no Ray: one scene left to predict
    (planned already), with a checkpoint or model file on this machine's CPUs, in the driver
    (no ``--workers`` or ``--gpus-per-worker``), no cluster named (``--address``,
    ``RAY_ADDRESS``) or Ray up already (a library caller's, whose Ray costs nothing more), no
    ``--dashboard`` to watch, and no CUDA device (a GPU actor runs the model there)."""
    return (len(job.todo) == 1 and job.first is not None and not job.first_error and job.ctx.ref.deep
            and opts.worker_range is None and opts.gpus_per_worker == 0
            and requested_address(opts.address) is None and not ray_connected()
            and not wants_dashboard() and not cuda_present())


def read_batches(job: JobPlan, cpus: float, readers: int, ahead: int) -> Iterator[dict]:
    """The first scene's tiles, batch by batch, as the read tasks of a Ray job give them:
    ``readers`` threads read its tile ranges in order, at most ``ahead`` batches ahead of
    the consumer. An error in a reader is raised here; closing the iterator stops them."""
    ctx, shape = job.ctx, job.tile_shape()
    first = stages.source_rows([job.first])[0]
    first["source"] = stages.pack(job.first)
    rows = [r for out in stages.plan_scenes({k: np.array([v], dtype=object) for k, v in first.items()},
                                            ctx=ctx, cpus=cpus)
            for r in _split(out)]
    io_threads(readers)
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
                for batch in stages.read_tiles(row, ctx, shape):
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


class LocalRunner:
    """The runner of a job in this process alone (:func:`runs_locally`): the driver's readers, the
    model and the writes as :class:`~geoseg.predict.driver.DriverModel` runs them, the scene's
    blends and completion inline."""

    ray = False  # (the run record's placement)
    blend, complete = staticmethod(blend_tiles), staticmethod(complete_scene)

    def __init__(self, job: JobPlan, opts: PredictOptions, model: DriverModel):
        self.job, self.opts, self.model = job, opts, model
        self.cpus = machine_cpus()
        self.metrics, self.tasks = NoMetrics(), InlineTasks()

    def start(self) -> None:
        handle_sigterm()  # SIGTERM unwinds like Ctrl-C
        self.model.predictor()  # the checkpoint fits its architecture (else one line), before any output

    def layout(self) -> ActorLayout:
        return actor_layout(self.opts, self.job.ctx.ref.deep, self.cpus, 0, local=True)

    def batches(self, layout: ActorLayout) -> Iterator[dict]:
        writer = stages.write_softmax if self.job.ctx.hann else stages.write_tiles
        reads = read_batches(self.job, self.cpus, layout.readers or 1, layout.calls + 1)
        return self.model.run(reads, writer, layout.calls)

    def close(self) -> None:
        self.model.close()
