"""Where a predict job's model runs, decided without Ray: :class:`ActorLayout`, and the runtime
and precision it runs at.

The layout is a runner's to ask for (:mod:`geoseg.predict.job` builds Ray Data's strategies
from it; :mod:`geoseg.predict.local` runs the model in the driver as it says).
"""

from __future__ import annotations

from dataclasses import dataclass

from geoseg.models.predictor import choose_runtime
from geoseg.predict.options import PredictOptions
from geoseg.predict.plan import JobContext

CPU_CALLS_PER_ACTOR = 8  # on CPU: single-threaded calls sharing one model in one actor
GPU_CALLS_PER_ACTOR = 1  # on GPU: one call at a time (two at once measured slower: 0.62x against 0.76x
# the model alone on an H100, bf16; the host side is the bottleneck), the next batch queued (in flight)


@dataclass(frozen=True)
class ActorLayout:
    """The model actor pool: its size (min, max), the calls each actor runs at once,
    and what each actor asks Ray for.

    Model actors only run the model: on a GPU cluster each asks for a GPU, so they
    land on GPU nodes, while read, write and blend tasks ask for CPUs only and
    run wherever CPUs are free, CPU-only nodes included.
    """

    min_workers: int
    max_workers: int
    num_cpus: float
    num_gpus: float
    calls: int = 1  # batches each actor works on at once (threads sharing one model)
    threads: int | None = None  # torch / OpenMP threads of each call on CPU
    readers: int | None = None  # read tasks at once (None: as many as the CPUs allow)
    driver: bool = False  # no actors: the driver process runs the model (DriverModel)


def runtime_of(ctx: JobContext, layout: ActorLayout) -> dict:
    """The runtime and precision the model runs at (:func:`geoseg.models.predictor.choose_runtime`;
    the index models are numpy)."""
    if ctx.meta is None:
        return {"runtime": "numpy", "precision": "fp32", "note": ""}
    how = choose_runtime(ctx.meta, "cuda" if layout.num_gpus else "cpu", ctx.precision)
    if how["precision"] == "auto":
        how["precision"] = "bf16" if layout.num_gpus else "fp32"
    return how


def actor_layout(opts: PredictOptions, deep: bool, cpus: float, gpus: float, local: bool = False) -> ActorLayout:
    """The model actor pool for a cluster of ``cpus`` / ``gpus`` (``deep``: a torch model).

    GPU: one actor per GPU, one call at a time with the next batch already sent to
    it (two batches in flight). CPU: one actor per ``CPU_CALLS_PER_ACTOR`` cores, each
    running that many single-threaded calls at once: single-threaded inference has
    no intra-op barriers for a reader to stall (measured faster than one call on
    all cores), and one actor per node imports torch and builds the model once.

    ``local`` (geoseg's own local Ray, or no Ray: one machine, no autoscaler) with the model
    on CPU and no ``--workers``: no actors, the driver runs the model
    (:class:`~geoseg.predict.driver.DriverModel`), one single-threaded call per core.
    """
    use_gpu = opts.gpus_per_worker > 0 or (deep and gpus > 0)
    if use_gpu:
        gpw = opts.gpus_per_worker or 1.0
        lo, hi = opts.worker_range or (max(1, int(gpus // gpw)),) * 2
        return ActorLayout(lo, hi, 1.0, gpw, calls=GPU_CALLS_PER_ACTOR)
    driver = local and opts.worker_range is None
    cores = max(1, int(cpus))
    if not deep:
        lo, hi = opts.worker_range or (1, 1)
        if driver:  # one reader per core but the driver's (the model, the writes): each more is one more
            # worker process to start (measured: 8 read tasks at once on 2 cores took 38 s, 1 took 22 s)
            return ActorLayout(1, 1, 0.0, 0.0, readers=max(1, cores - 1), driver=True)
        return ActorLayout(lo, hi, 1.0, 0.0)
    lo, hi = opts.worker_range or (max(1, -(-cores // CPU_CALLS_PER_ACTOR)),) * 2
    if driver:  # the readers as for actors: one per CPU_CALLS_PER_ACTOR cores
        return ActorLayout(1, 1, 0.0, 0.0, calls=cores, threads=1, readers=hi, driver=True)
    calls = max(1, cores // hi)
    # Logical CPUs only: leave one CPU to the readers and writers, or they never get
    # scheduled (each call's torch threads are set to 1). One read task per model
    # actor: a reader decodes tiles tens of times faster than a CPU model runs them,
    # and each more reader is one more Ray worker to start (seconds of imports)
    # while the model actor starts on the same CPUs.
    return ActorLayout(lo, hi, min(float(calls), max(0.1, (cpus - 1) / hi)), 0.0, calls=calls, threads=1,
                       readers=hi)
