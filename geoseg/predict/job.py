"""The Ray layer of ``geoseg predict``: actor resources, the Ray Data graph, the driver loop.

    plan_job (driver, no Ray)            scenes, tile grids, outputs checked (nothing written)
      start_ray                          Ray starts; meanwhile the checkpoint's weights are checked
      prepare_outputs                    outputs created, or kept to resume
      -> ray.data.from_items(ranges)     a few ranges of tile numbers, never a list of tiles
      -> map_batches(read_tiles)         CPU tasks
      -> map_batches(Infer)              actor pool: the model is built once per actor
      -> map_batches(write_tiles)        CPU tasks (hann: write_softmax, then a
                                         second pass of blend_tiles tasks)
         (on geoseg's own local Ray with the model on CPU, DriverModel runs Infer
          and the writes in the driver instead: no model actor to start)
      -> finish_scene (Ray tasks)        COG from the Zarr
      -> run records (driver)            written last

Every stage is a Ray-free function of :mod:`geoseg.predict.stages`; geoseg's Ray
metrics are counted here, in the driver, from what the stages return.
"""

from __future__ import annotations

import datetime as dt
import itertools
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Iterable, Iterator

import numpy as np

from geoseg import catalog, checkpoint, output
from geoseg.console import Progress
from geoseg.stac import item_of
from geoseg.predict import stages
from geoseg.predict.plan import JobPlan, PredictOptions, ScenePlan, plan_job, prepare_outputs, tile_ranges
from geoseg.runtime import (check_address, cluster_cpus, cluster_gpus, init_ray, owns_ray, ray_connected,
                            require_gpus, requested_address)

CPU_CALLS_PER_ACTOR = 8  # on CPU: single-threaded calls sharing one model in one actor
GPU_CALLS_PER_ACTOR = 1  # on GPU: one call at a time (two at once measured slower: 0.62x against 0.76x
# the model alone on an H100, bf16; the host side is the bottleneck), the next batch queued (in flight)
# What the workers of every stage import: a local Ray's workers import it as they start, while Ray starts
PRELOAD = ("ray.data", "geoseg.predict.job")


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

    def read_strategy(self):
        import ray

        return ray.data.TaskPoolStrategy(size=self.readers)

    def strategy(self):
        import ray

        return ray.data.ActorPoolStrategy(
            min_size=self.min_workers,
            max_size=self.max_workers,
            max_tasks_in_flight_per_actor=max(2, self.calls),
            max_concurrent_calls_per_actor=self.calls,
            enable_true_multi_threading=self.calls > 1,
        )


def actor_layout(opts: PredictOptions, deep: bool, cpus: float, gpus: float, local: bool = False) -> ActorLayout:
    """The model actor pool for a cluster of ``cpus`` / ``gpus`` (``deep``: a torch model).

    GPU: one actor per GPU, one call at a time with the next batch already sent to
    it (two batches in flight). CPU: one actor per ``CPU_CALLS_PER_ACTOR`` cores, each
    running that many single-threaded calls at once: single-threaded inference has
    no intra-op barriers for a reader to stall (measured faster than one call on
    all cores), and one actor per node imports torch and builds the model once.

    ``local`` (geoseg's own local Ray: one machine, no autoscaler) with the model on
    CPU and no ``--workers``: no actors, the driver runs the model (:class:`DriverModel`),
    one single-threaded call per core.
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


# --- where each stage ran -------------------------------------------------------
#
# Thin Ray-layer wrappers add the id of the node that ran a stage to its batch, and
# carry the upstream stages' ids along, so the driver learns the job's placement
# (model actors on GPU nodes, readers and writers wherever CPUs are) and records it.

PLACEMENT = ("read", "infer", "write")
METRIC_TAG = "geoseg_job"  # the tag of geoseg's Ray metrics: the job's id


def _node_column(n: int) -> np.ndarray:
    import ray

    return np.full(n, ray.get_runtime_context().get_node_id())


def _read_on_node(batch: dict, **kwargs):
    for out in stages.read_tiles(batch, **kwargs):
        out["read_node"] = _node_column(len(out["tile"]))
        yield out


class _InferOnNode(stages.Infer):
    """The model stage in a Ray actor: also the node it ran on, and each batch's model time
    as the ``geoseg_model_batch_seconds`` histogram (exported by the actor's node)."""

    def __init__(self, *, job: str, **kwargs):
        from ray.util.metrics import Histogram

        super().__init__(**kwargs)
        self._tags = {METRIC_TAG: job}
        self._batch_s = Histogram("geoseg_model_batch_seconds", description="Model time of one batch in a model actor",
                                  boundaries=[0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30], tag_keys=(METRIC_TAG,))

    def __call__(self, batch: dict) -> dict:
        out = super().__call__(batch)
        if len(out["tile"]):
            self._batch_s.observe(float(out["model_s"].sum()), tags=self._tags)
        out["read_node"] = batch["read_node"]
        out["infer_node"] = _node_column(len(out["tile"]))
        return out


def _write_on_node(batch: dict, stage, **kwargs) -> dict:
    out = stage(batch, **kwargs)
    for name in ("read_node", "infer_node"):
        if name in batch:
            out[name] = batch[name]
    out["write_node"] = _node_column(len(out["scene"]))
    return out


class DriverModel:
    """The model stage in the driver process: a local job's model on CPU, no model actor.

    On geoseg's own local Ray (one machine, the driver on it) a model actor is one
    more process to start in every job, which imports torch and
    segmentation-models-pytorch and builds the model before its first tile: 11-12 s
    on the 2-core benchmark box, as long as a third of the model's work on a 4096²
    scene. The driver is a process on that machine already: it builds the model on
    a thread while Ray starts (:meth:`start`), takes the read tasks' batches from
    Ray Data (``iter_batches``), runs ``calls`` of them at once on threads sharing
    the model (single-threaded each, as in a CPU model actor), and writes each
    result (``write_tiles`` / ``write_softmax``, the same stages as the actor path)
    on its low-priority I/O thread. On a machine with a CUDA device, the model goes
    to a GPU actor as before (:meth:`start` builds nothing).
    """

    def __init__(self, job: JobPlan, opts: PredictOptions):
        self.kwargs = {"core": opts.tile_size, "probabilities": opts.probabilities, "softmax": opts.stitch == "hann"}
        self.job_id = job.scenes[0].out.job
        # the whole model on this process's CPUs: one single-threaded call per core
        self.spec = job.spec if job.spec.name != "checkpoint" else replace(
            job.spec, options={**job.spec.options, "device": "cpu", "threads": 1})
        self._building: Future | None = None
        self._predictor = None
        self._threads: int | None = None  # torch's threads before, restored by close()

    @staticmethod
    def expected(opts: PredictOptions) -> bool:
        """Whether the model will run in the driver, as far as is known before Ray starts:
        geoseg's own local Ray (starting it, or started), no ``--workers``, no GPUs asked for."""
        local = requested_address(opts.address) is None and (owns_ray() or not ray_connected())
        return local and opts.worker_range is None and opts.gpus_per_worker == 0

    def start(self) -> "DriverModel":
        """Build the model on a thread: torch's imports are seconds of CPU, which run
        while Ray starts and the first tiles are read. Loading the checkpoint checks it."""
        pool = ThreadPoolExecutor(1, thread_name_prefix="geoseg-model-build")
        self._building = pool.submit(self._build, True)
        pool.shutdown(wait=False)
        return self

    def _build(self, only_without_gpu: bool = False):
        if self.spec.name != "checkpoint":
            return self.spec.build()
        import torch

        if only_without_gpu and torch.cuda.is_available():
            return None  # a GPU machine: the model goes to a GPU actor
        if self._threads is None:
            self._threads = torch.get_num_threads()
        return self.spec.build()

    def ready(self) -> bool:
        """Wait for :meth:`start`'s build; True when it built the model (False: not started,
        or a GPU machine). A checkpoint that does not fit its architecture fails here, in one line."""
        if self._building is not None:
            building, self._building = self._building, None
            self._predictor = building.result()
        return self._predictor is not None

    def predictor(self):
        """The model: the one :meth:`start` built, else built now."""
        if not self.ready():
            self._predictor = self._build()
        return self._predictor

    def close(self) -> None:
        """torch's thread count as it was (a library caller's process goes on using it), once
        the build is over (a job that failed before it needed the model may not have waited)."""
        if self._building is not None:
            try:
                self.ready()
            except Exception:  # noqa: BLE001 - the job's own error is what the caller gets
                pass
        if self._threads is not None:
            import torch

            torch.set_num_threads(self._threads)
            self._threads = None

    def run(self, reads, writer, plans: list[ScenePlan], calls: int) -> Iterator[dict]:
        """What the model pass's writes return, batch by batch (``reads``: the read tasks' dataset)."""
        batches = iter(reads.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=calls))
        pool = ThreadPoolExecutor(calls, thread_name_prefix="geoseg-model")
        running: set[Future] = set()
        try:
            first = next(batches, None)  # the reads start, while the model may still be building
            if first is None:
                return
            infer = _InferOnNode(job=self.job_id, spec=self.spec, predictor=self.predictor(), **self.kwargs)
            for batch in itertools.chain([first], batches):
                running.add(pool.submit(infer, batch))
                while len(running) >= calls:
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    yield from (_write_on_node(f.result(), writer, plans=plans) for f in done)
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                yield from (_write_on_node(f.result(), writer, plans=plans) for f in done)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            # Ray Data's iteration stops now (its executor and prefetch threads), not when collected:
            # on Ctrl-C / SIGTERM, Ray is shut down next, under their feet
            batches.close()


def build_passes(job: JobPlan, opts: PredictOptions, layout: ActorLayout, ranges: list[dict],
                 model: DriverModel | None = None) -> list[Iterable[dict]]:
    """The passes to run, in order, each an iterable of what its writes return: the model
    pass (and, for hann, the blend pass). ``model``: the driver runs the model (``layout.driver``)."""
    import ray

    spec = job.spec
    if layout.threads:
        spec = replace(spec, options={**spec.options, "threads": layout.threads})
    hann = opts.stitch == "hann"
    plans = job.scenes
    writer = stages.write_softmax if hann else stages.write_tiles
    ds = ray.data.from_items(ranges, override_num_blocks=len(ranges))
    # Readers are CPU tasks that scale apart from the model actors (different resources: not fused).
    ds = ds.map_batches(_read_on_node, fn_kwargs={"plans": plans, "dtype": job.dtype, "batch_size": opts.batch_size,
                                                  "skip_bad": opts.skip_bad_tiles},
                        batch_size=1, num_cpus=0.25, compute=layout.read_strategy())
    if model is not None:
        passes = [model.run(ds, writer, plans, layout.calls)]
    else:
        ds = ds.map_batches(
            _InferOnNode,
            fn_constructor_kwargs={"spec": spec, "core": opts.tile_size, "probabilities": opts.probabilities,
                                   "softmax": hann, "job": job.scenes[0].out.job},
            batch_size=opts.batch_size,
            compute=layout.strategy(),
            num_cpus=layout.num_cpus,
            num_gpus=layout.num_gpus,
        )
        passes = [_batches(ds.map_batches(_write_on_node, fn_kwargs={"stage": writer, "plans": plans},
                                          batch_size=None, num_cpus=0.25))]
    if hann:  # second pass, after every softmax is stored: blend each chunk from its neighbours
        blend = ray.data.from_items(ranges, override_num_blocks=len(ranges))
        passes.append(_batches(blend.map_batches(
            _write_on_node, fn_kwargs={"stage": stages.blend_tiles, "plans": plans,
                                       "probabilities": opts.probabilities},
            batch_size=1, num_cpus=0.25)))
    return passes


def _batches(ds) -> Iterator[dict]:
    """A dataset's batches as they come (lazy: it runs when the driver loop gets to it)."""
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


class _Metrics:
    """geoseg's Ray metrics, exported to Prometheus and the Ray dashboard (prefixed ``ray_``).

    ``geoseg_tiles_written`` and ``geoseg_pixels_written`` (counters),
    ``geoseg_scenes_done`` (counter: COG and record out), ``geoseg_scenes_failed``
    (counter: scenes finished with unreadable tiles, ``--skip-bad-tiles``),
    ``geoseg_tiles_bad`` (counter) and ``geoseg_mpix_per_second`` (gauge of the job
    so far), counted by the driver; ``geoseg_model_batch_seconds`` (histogram) is
    observed in the model actors. Each has the tag ``geoseg_job`` (not ``job``: Prometheus
    keeps that label for its scrape job and would rename ours). The Grafana dashboard
    ``cluster/grafana/geoseg-dashboard.json`` plots them.
    """

    def __init__(self, job: str):
        from ray.util.metrics import Counter, Gauge

        tags = (METRIC_TAG,)
        self.tags = {METRIC_TAG: job}
        self.tiles = Counter("geoseg_tiles_written", description="Tiles predicted and written", tag_keys=tags)
        self.pixels = Counter("geoseg_pixels_written", description="Pixels predicted and written", tag_keys=tags)
        self.scenes = Counter("geoseg_scenes_done", description="Scenes finished (COG and record written)",
                              tag_keys=tags)
        self.failed = Counter("geoseg_scenes_failed", description="Scenes finished with unreadable tiles left nodata",
                              tag_keys=tags)
        self.bad_tiles = Counter("geoseg_tiles_bad", description="Tiles whose input could not be read",
                                 tag_keys=tags)
        self.rate = Gauge("geoseg_mpix_per_second", description="Megapixels predicted per second (job so far)",
                          tag_keys=tags)


def run_passes(passes: list[Iterable[dict]], n_scenes: int, metrics: _Metrics, progress: Progress | None = None
               ) -> tuple[np.ndarray, dict]:
    """Drive the passes to the end; returns model seconds per scene and the nodes
    that ran each stage (``{"read": [...], "infer": [...], "write": [...]}``)."""
    model_s = np.zeros(n_scenes)
    nodes: dict[str, set] = {stage: set() for stage in PLACEMENT}
    t0, done_px = time.perf_counter(), 0
    for batches in passes:
        for batch in batches:
            np.add.at(model_s, batch["scene"], batch["model_s"])
            for stage in PLACEMENT:
                nodes[stage].update(str(n) for n in np.unique(batch.get(f"{stage}_node", [])))
            written = batch["pixels"] > 0
            if progress is not None:
                progress.update(len(batch["scene"]), int(batch["pixels"].sum()))
            if written.any():
                px = int(batch["pixels"].sum())
                done_px += px
                metrics.tiles.inc(int(written.sum()), tags=metrics.tags)
                metrics.pixels.inc(px, tags=metrics.tags)
            metrics.rate.set(done_px / 1e6 / max(time.perf_counter() - t0, 1e-9), tags=metrics.tags)
    return model_s, {stage: sorted(ids) for stage, ids in nodes.items()}


def start_ray(opts: PredictOptions, model: DriverModel | None = None) -> None:
    """Start (or join) Ray while the checkpoint's weights are checked against its
    architecture (:func:`geoseg.checkpoint.verify`; a misfit fails here, in one line,
    before any output is written).

    Where this architecture was built on this machine before, the model's shapes
    are known and the check takes milliseconds. Else it imports torch and builds
    the model: seconds of CPU. Ray's own start leaves the CPUs half idle, waiting on
    its processes, so that check runs beside it, in its own process
    (:class:`~geoseg.checkpoint.BackgroundCheck`), instead of before it; where the
    driver builds the model anyway (``model``, started), that build is the check.
    Where Ray is up already, or torch imported, it runs here.
    """
    check, verified = None, False
    if opts.checkpoint and not (ray_connected() or "torch" in sys.modules):
        verified = checkpoint.verify(opts.checkpoint, build=False) is not None
        if not verified and model is None:
            check = checkpoint.BackgroundCheck(opts.checkpoint)
    try:
        init_ray(opts.address or None, preload=PRELOAD)
    except BaseException:
        if check is not None:
            check.cancel()
        raise
    if check is not None:
        check.result()
    elif opts.checkpoint and not verified and not (model is not None and model.ready()):
        checkpoint.verify(opts.checkpoint)  # (where the driver built no model: a GPU machine)


def predict(inputs: list[str], prefix: str, opts: PredictOptions, log=print) -> list[dict]:
    """Run a prediction job; returns the run record of every scene it finished."""
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    check_address(opts.address)
    job = plan_job(inputs, prefix, opts)  # bad input fails here, before Ray starts
    model = DriverModel(job, opts).start() if job.todo and DriverModel.expected(opts) else None
    try:
        return _predict(job, prefix, opts, model, log, started, t0)
    finally:
        if model is not None:
            model.close()


def _predict(job: JobPlan, prefix: str, opts: PredictOptions, model: DriverModel | None, log, started,
             t0: float) -> list[dict]:
    import ray

    start_ray(opts, model)
    prepare_outputs(job, opts)
    t_plan = time.perf_counter() - t0
    for p in job.scenes:
        if p.status == "done":
            log(f"{p.url}: already complete ({p.out.record}), skipped")
            if opts.quicklook and stages.add_quicklooks(p, job.classes):
                log(f"{p.url}: quicklooks added ({p.out.stem}.quicklook.png)")
        elif p.status == "resume":
            log(f"{p.url}: resuming, {sum(p.previous.values())} of {len(p.grid)} tiles already done")
    metrics = _Metrics(job.scenes[0].out.job)

    t1 = time.perf_counter()
    model_s, placement = np.zeros(len(job.scenes)), {}
    if job.todo:
        cpus = cluster_cpus()
        layout = actor_layout(opts, job.spec.name == "checkpoint", cpus, cluster_gpus(), local=owns_ray())
        if not layout.driver:
            model = None
        elif model is None:  # (not expected before Ray started)
            model = DriverModel(job, opts)
        require_gpus(layout.num_gpus if opts.gpus_per_worker else 0, "--gpus-per-worker")
        # Blocks of about one batch of tiles: Ray Data buffers a task's output up to a
        # block (128 MiB by default) in the worker's own memory, and a block of a
        # longer range would make every process grow with the job.
        ctx = ray.data.DataContext.get_current()
        saved_block_size = ctx.target_max_block_size
        nb, size = max(len(p.bands) for p in job.scenes), job.scenes[0].grid.input_size
        ctx.target_max_block_size = max(1 << 22, opts.batch_size * nb * size * size * np.dtype(job.dtype).itemsize)
        todo = sum(len(p.grid) - sum(p.previous.values()) for p in job.todo)
        progress = Progress(todo * (2 if opts.stitch == "hann" else 1), "tiles")
        try:
            passes = build_passes(job, opts, layout, tile_ranges(job.total_tiles, opts.batch_size, cpus), model)
            model_s, nodes = run_passes(passes, len(job.scenes), metrics, progress)
            progress.close(complete=True)
            placement = {"nodes": nodes, "model": "driver" if layout.driver else "actors",
                         "actors": [] if layout.driver else [layout.min_workers, layout.max_workers],
                         "gpus_per_actor": layout.num_gpus}
        finally:
            ctx.target_max_block_size = saved_block_size
            if model is not None:
                model.close()
    t_pipeline = time.perf_counter() - t1

    t2 = time.perf_counter()
    finish = ray.remote(num_cpus=0.5)(stages.finish_scene)
    results = ray.get([finish.remote(p, job.classes, opts.quicklook) for p in job.todo])
    timings = {"plan": t_plan, "pipeline": t_pipeline, "finish": time.perf_counter() - t2}
    records, items = [], []
    for plan, res in zip(job.todo, results):
        rec = _record(plan, job, opts, res, {**timings, "model": model_s[plan.index]}, t0, started)
        rec["placement"] = placement  # which nodes ran each stage (node ids)
        model = {**rec["model"], "bands": [plan.info.descriptions[b - 1] or f"band{b}" for b in plan.bands],
                 "arch": job.meta.model.arch if job.meta else None}
        items.append(catalog.write_item(plan.out.prefix, plan.out.stem, catalog.scene_item(
            plan.out.stem, rec["outputs"], plan.info, job.classes, rec, model, rec.get("stac_item"))))
        rec["outputs"]["stac_item"] = items[-1]
        output.write_record(plan.out, rec)  # last: the scene is complete
        metrics.scenes.inc(1, tags=metrics.tags)
        if rec["tiles"]["bad"]:
            metrics.failed.inc(1, tags=metrics.tags)
            metrics.bad_tiles.inc(rec["tiles"]["bad"], tags=metrics.tags)
        records.append(rec)
    if items:
        catalog.update_catalog(prefix, items)
    if len(job.scenes) > 1 or opts.search:
        scenes = [{"input": p.url, "record": p.out.record, "status": p.status,
                   **({"stac_item": item_of(p.info.tags)} if item_of(p.info.tags) else {})} for p in job.scenes]
        pixels = sum(p.info.height * p.info.width for p in job.scenes)
        output.write_job_summary(prefix, scenes, pixels, time.perf_counter() - t0)
    return records


def _record(plan: ScenePlan, job: JobPlan, opts: PredictOptions, finished: dict, timings: dict,
            t0: float, started) -> dict:
    counts, previous = finished["counts"], plan.previous
    return output.scene_record(
        plan.out,
        url=plan.url,
        info=plan.info,
        model={
            "name": job.spec.name,
            "checkpoint": opts.checkpoint,
            "classes": job.classes.to_dict(),
            "thresholds": job.spec.scene_params.get(plan.index),
        },
        parameters={**plan.fingerprint, "batch_size": opts.batch_size, "precision": opts.precision},
        tiles={
            "total": len(plan.grid),
            # this run only; tiles finished by an interrupted earlier run count as resumed
            "predicted": counts.get("done", 0) - previous.get("done", 0),
            "nodata_skipped": counts.get("nodata", 0) - previous.get("nodata", 0),
            "resumed": sum(previous.values()),
            # unreadable input (--skip-bad-tiles): left nodata; each with its core window
            "bad": counts.get("bad", 0),
            "bad_tiles": finished["bad_tiles"],
        },
        timings={**timings, "cog": finished["cog_seconds"], "total": time.perf_counter() - t0},
        started=started,
        classes=finished["classes"],
        quicklooks=finished["quicklooks"],
    )
