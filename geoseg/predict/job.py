"""The Ray layer of ``geoseg predict``: actor resources, the Ray Data pipeline, the driver loop.

    plan_job (driver, no Ray)            inputs, model, stems; scenes complete already (one listing);
                                         the first scene planned
      start_ray                          Ray starts; meanwhile the checkpoint's weights are checked
      -> ray.data.from_items(scenes)     one row per scene to plan, never a list of tiles
      -> map_batches(plan_scenes)        planning tasks: header, VRT, parameters, outputs created;
                                         a few tile ranges per scene, its plan with them
      -> map_batches(read_tiles)         CPU tasks
      -> map_batches(Infer)              actor pool: the model is built once per actor
      -> map_batches(write_tiles)        CPU tasks (hann: write_softmax)
         (on geoseg's own local Ray with the model on CPU, DriverModel runs Infer
          and the writes in the driver instead: no model actor to start)
      SceneTracker (driver)              a scene whose tiles are all through the model:
         -> blend_tiles (Ray tasks)      (hann) its chunks blended
         -> complete_scene (Ray task)    COG, STAC item, run record (last)
      -> job summary (driver)            every scene's status, failures with their errors

Every stage is a Ray-free function of :mod:`geoseg.predict.stages`; geoseg's Ray
metrics are counted here, in the driver, from what the stages return.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import pickle
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np

from geoseg import catalog, checkpoint, export, output, storage
from geoseg.console import Progress
from geoseg.errors import ScenesFailedError, one_line
from geoseg.models.index import BAND_ROLES
from geoseg.predict import stages
from geoseg.predict.local import InlineTasks, machine_cpus, read_batches, runs_locally
from geoseg.predict.plan import JobPlan, PredictOptions, ScenePlan, SceneSource, is_scene_error, plan_job, tile_ranges
from geoseg.predictor import onnx_device
from geoseg.runtime import (check_address, cluster_cpus, cluster_gpus, handle_sigterm, init_ray, owns_ray,
                            ray_connected, require_gpus, requested_address)

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


def runtime_of(job: JobPlan, opts: PredictOptions, layout) -> dict:
    """The runtime and precision the model runs at (:func:`geoseg.predictor.choose_runtime`; the
    index models are numpy)."""
    from geoseg.predictor import choose_runtime

    if job.meta is None:
        return {"runtime": "numpy", "precision": "fp32", "note": ""}
    how = choose_runtime(job.meta, "cuda" if layout.num_gpus else "cpu", opts.precision)
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

PLACEMENT = ("plan", "read", "infer", "write")
METRIC_TAG = "geoseg_job"  # the tag of geoseg's Ray metrics: the job's id


def _node_column(n: int) -> np.ndarray:
    import ray

    return np.full(n, ray.get_runtime_context().get_node_id())


def _plan_on_node(batch: dict, **kwargs):
    for out in stages.plan_scenes(batch, **kwargs):
        out["plan_node"] = _node_column(len(out["scene"]))
        yield out


def _read_on_node(batch: dict, **kwargs):
    for out in stages.read_tiles(batch, **kwargs):
        out["plan_node"] = np.full(len(out["tile"]), batch["plan_node"][0])  # (one tile range a batch)
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
        out["plan_node"], out["read_node"] = batch["plan_node"], batch["read_node"]
        out["infer_node"] = _node_column(len(out["tile"]))
        return out


def _write_on_node(batch: dict, stage) -> dict:
    out = stage(batch)
    for name in ("plan_node", "read_node", "infer_node"):
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
        self.kwargs = {"core": job.tile_core(opts), "probabilities": opts.probabilities,
                       "softmax": opts.stitch == "hann"}
        self.job_id = job.job
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
        if export.kind_of(self.spec.checkpoint) == "onnx" and export.is_model_file(self.spec.checkpoint):
            # ONNX Runtime sets its own threads; torch is not imported at all
            if only_without_gpu and onnx_device() == "cuda":
                return None
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

    def run(self, batches: Iterator[dict], writer, calls: int, on_ray: bool = True) -> Iterator[dict]:
        """What the model pass's writes return, batch by batch. ``batches``: the read tasks' (Ray
        Data's ``iter_batches``), or in a job without Ray (``on_ray`` False) the driver's own
        readers' (:func:`geoseg.predict.local.read_batches`)."""
        pool = ThreadPoolExecutor(calls, thread_name_prefix="geoseg-model")
        running: set[Future] = set()
        try:
            first = next(batches, None)  # the reads start, while the model may still be building
            if first is None:
                return
            if on_ray:  # (and where each stage ran, and the model's batch times as a Ray metric)
                infer = _InferOnNode(job=self.job_id, spec=self.spec, predictor=self.predictor(), **self.kwargs)
                write = functools.partial(_write_on_node, stage=writer)
            else:
                infer, write = stages.Infer(spec=self.spec, predictor=self.predictor(), **self.kwargs), writer
            for batch in itertools.chain([first], batches):
                running.add(pool.submit(infer, batch))
                while len(running) >= calls:
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    yield from (write(f.result()) for f in done)
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                yield from (write(f.result()) for f in done)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            # the reads stop now (Ray Data's executor and prefetch threads, or the driver's readers),
            # not when collected: on Ctrl-C / SIGTERM, Ray is shut down next, under their feet
            batches.close()


def build_pipeline(job: JobPlan, opts: PredictOptions, layout: ActorLayout, cpus: float,
                   model: DriverModel | None = None) -> Iterator[dict]:
    """The job's one Ray Data pipeline, across all its scenes, as what its writes return:
    planning tasks (each scene's header, VRT, parameters, outputs) -> read tasks -> the model
    (actors, or ``model``: the driver, ``layout.driver``) -> write tasks. Scenes are planned
    while the first ones are read, and the model never drains between scenes."""
    import ray

    spec = job.spec
    if layout.threads:
        spec = replace(spec, options={**spec.options, "threads": layout.threads})
    hann = opts.stitch == "hann"
    writer = stages.write_softmax if hann else stages.write_tiles
    todo = [s for s in job.todo if not (job.first_error and s.index == job.todo[0].index)]
    rows = stages.source_rows(todo)
    if job.first is not None:  # planned in the driver already
        rows[0]["source"] = stages.pack(job.first)
    slim = replace(job, sources=[], done=frozenset())  # what a planning task needs of the job
    blocks = max(1, min(len(rows), int(8 * cpus)))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    # Planning waits on storage (headers, VRTs) more than it computes: a tenth of a CPU each.
    ds = ds.map_batches(_plan_on_node, fn_kwargs={"job": slim, "opts": opts, "batch_size": opts.batch_size,
                                                       "cpus": cpus},
                        batch_size=1, num_cpus=0.1,
                        compute=ray.data.TaskPoolStrategy(size=min(blocks, max(2, int(cpus)))))
    # A planned scene is a few rows (tile ranges), one per read task: one block each, or a
    # single task would read the whole scene (streaming repartition, no shuffle).
    ds = ds.repartition(target_num_rows_per_block=1)
    # Readers are CPU tasks that scale apart from the model actors (different resources: not fused).
    ds = ds.map_batches(_read_on_node, fn_kwargs={"dtype": job.dtype, "shape": tile_shape(job, opts),
                                                  "batch_size": opts.batch_size, "skip_bad": opts.skip_bad_tiles,
                                                  "fail_fast": opts.fail_fast},
                        batch_size=1, num_cpus=0.25, compute=layout.read_strategy())
    if model is not None:
        return model.run(iter(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=layout.calls)),
                         writer, layout.calls)
    ds = ds.map_batches(
        _InferOnNode,
        fn_constructor_kwargs={"spec": spec, "core": job.tile_core(opts), "probabilities": opts.probabilities,
                               "softmax": hann, "job": job.job},
        batch_size=opts.batch_size,
        compute=layout.strategy(),
        num_cpus=layout.num_cpus,
        num_gpus=layout.num_gpus,
    )
    return _batches(ds.map_batches(_write_on_node, fn_kwargs={"stage": writer}, batch_size=None, num_cpus=0.25))


def tile_shape(job: JobPlan, opts: PredictOptions) -> tuple[int, int, int]:
    """``(bands, input size, core)`` of every tile of the job."""
    nb = len(job.first.bands) if job.first else (job.meta.model.in_channels if job.meta else len(BAND_ROLES))
    core = job.tile_core(opts)
    return nb, core + 2 * opts.halo, core


def _batches(ds) -> Iterator[dict]:
    """A dataset's batches as they come (lazy: it runs when the driver loop gets to it)."""
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


class _Metrics:
    """geoseg's Ray metrics, exported to Prometheus and the Ray dashboard (prefixed ``ray_``).

    ``geoseg_tiles_written`` and ``geoseg_pixels_written`` (counters),
    ``geoseg_scenes_done`` (counter: COG and record out), ``geoseg_scenes_failed``
    (counter: scenes that failed, and scenes finished with unreadable tiles, ``--skip-bad-tiles``),
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
        self.failed = Counter("geoseg_scenes_failed",
                              description="Scenes that failed, or finished with unreadable tiles left nodata",
                              tag_keys=tags)
        self.bad_tiles = Counter("geoseg_tiles_bad", description="Tiles whose input could not be read",
                                 tag_keys=tags)
        self.rate = Gauge("geoseg_mpix_per_second", description="Megapixels predicted per second (job so far)",
                          tag_keys=tags)


class _NoMetrics:
    """geoseg's metrics in a job without Ray: nothing to export them to."""

    class _Metric:
        def inc(self, *args, **kwargs) -> None:
            pass

        set = inc

    def __init__(self):
        self.tags: dict = {}
        self.tiles = self.pixels = self.scenes = self.failed = self.bad_tiles = self.rate = self._Metric()


def _blend_on_node(plan: ScenePlan, lo: int, hi: int, probabilities: bool) -> dict:
    return {**stages.blend_tiles(plan, lo, hi, probabilities), "node": _node_column(1)[0]}


def _cause(exc: BaseException) -> BaseException:
    """A Ray task error's own exception (the worker's), else the error itself."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class RayTasks:
    """The scene tracker's tasks as Ray tasks: a scene's blends (a quarter CPU each) and its
    completion (half a CPU); :class:`geoseg.predict.local.InlineTasks` runs them in the driver."""

    CPUS = {_blend_on_node: 0.25, stages.complete_scene: 0.5}

    def __init__(self):
        import ray

        self._remote = {fn: ray.remote(num_cpus=cpus)(fn) for fn, cpus in self.CPUS.items()}

    def submit(self, fn, *args):
        return self._remote[fn].remote(*args)

    def ready(self, refs: list, block: bool) -> list:
        import ray

        ready, _ = ray.wait(refs, num_returns=1 if block else len(refs), timeout=None if block else 0)
        return ready

    def get(self, ref):
        import ray

        return ray.get(ref)


class SceneTracker:
    """The driver's view of a job's scenes as its pipeline runs.

    It adds up, per scene, the tiles the rows out of the writes account for; at
    the scene's tile count the scene is through the model, and its completion is
    sent off as Ray tasks (``--stitch hann``: its blend tasks first), while the
    pipeline goes on with the other scenes: a continent's scenes are complete one
    by one, each with its COG and run record, not all at the end. A scene that
    failed (planning, reading, finishing) is listed with its error; only the
    plans of the scenes in flight are held.
    """

    def __init__(self, job: JobPlan, opts: PredictOptions, cpus: float, metrics: "_Metrics", progress: Progress,
                 started, t0: float, log=print, placement: dict | None = None, tasks=None):
        self.job, self.opts, self.cpus, self.metrics, self.progress = job, opts, cpus, metrics, progress
        self.started, self.t0, self.log = started, t0, log
        self.slim = replace(job, sources=[], done=frozenset())
        self.placement = placement or {}
        self.live: dict[int, dict] = {}  # scene index -> {"plan", "accounted", "model_s", "error", "blends"}
        self.pending: dict = {}  # ObjectRef -> (what, scene index)
        self.status: dict[int, str] = {}  # scene index -> complete / done / failed
        self.errors: dict[int, str] = {}
        self.records: dict[int, dict] = {}  # scene index -> its run record
        self.items: list[str] = []
        self.nodes: dict[str, set] = {stage: set() for stage in PLACEMENT}
        self.pixels = 0  # of the scenes planned
        self.t_first: float | None = None  # when the first tile came through
        self.verbose = len(job.sources) <= 20  # a line per scene skipped or resumed
        # where a scene's blends and completion run: Ray tasks, or inline in a job without Ray
        self.tasks = tasks if tasks is not None else RayTasks()
        self._blend = _blend_on_node if isinstance(self.tasks, RayTasks) else stages.blend_tiles

    # --- what the pipeline returns ---

    def add(self, batch: dict) -> None:
        """One batch out of the writes."""
        for stage in PLACEMENT:
            self.nodes[stage].update(str(n) for n in np.unique(batch.get(f"{stage}_node", [])))
        pixels = batch["pixels"]
        written = pixels > 0
        if written.any():
            if self.t_first is None:
                self.t_first = time.perf_counter() - self.t0
            self.metrics.tiles.inc(int(written.sum()), tags=self.metrics.tags)
            self.metrics.pixels.inc(int(pixels.sum()), tags=self.metrics.tags)
        scenes = np.asarray(batch["scene"])
        for s in np.unique(scenes).tolist():
            sel = np.flatnonzero(scenes == s)
            state = self.live.get(s)
            if state is None:
                state = self._arrive(s, pickle.loads(batch["plan"][sel[0]]), batch["error"][sel[0]])
                if state is None:
                    continue
            state["accounted"] += int(batch["accounted"][sel].sum())
            state["model_s"] += float(batch["model_s"][sel].sum())
            if not state["error"]:
                state["error"] = next((e for e in batch["error"][sel] if e), "")
            if state["accounted"] >= len(state["plan"].grid):
                self._through_model(s)
        self.progress.update(int(batch["accounted"].sum()), int(pixels.sum()))
        self.poll()

    def _arrive(self, s: int, planned, error: str) -> dict | None:
        """A scene's first rows: its plan (or the source of a scene that could not be planned)."""
        if isinstance(planned, SceneSource):
            self.fail(s, planned.url, error)
            return None
        if planned.status == "done":
            self.status[s] = "done"
            if self.verbose:
                self.log(f"{planned.url}: already complete ({planned.out.record}), skipped")
            self._quicklooks(planned.url, planned.out)
            return None
        if planned.status == "resume" and self.verbose:
            self.log(f"{planned.url}: resuming, {sum(planned.previous.values())} of {len(planned.grid)} tiles "
                     "already done")
        self.pixels += planned.info.height * planned.info.width
        self.progress.extend(len(planned.grid) * (2 if self.opts.stitch == "hann" else 1))
        self.live[s] = {"plan": planned, "accounted": 0, "model_s": 0.0, "error": "", "blends": 0}
        return self.live[s]

    def _through_model(self, s: int) -> None:
        state = self.live[s]
        plan = state["plan"]
        if state["error"]:
            del self.live[s]
            self.fail(s, plan.url, state["error"])
            return
        if self.opts.stitch == "hann":
            for r in tile_ranges(len(plan.grid), self.opts.batch_size, self.cpus):
                ref = self.tasks.submit(self._blend, plan, r["lo"], r["hi"], self.opts.probabilities)
                self.pending[ref] = ("blend", s)
                state["blends"] += 1
        else:
            self._finish(s)

    def _finish(self, s: int) -> None:
        state = self.live[s]
        now = time.perf_counter() - self.t0
        timings = {"plan": self.placement.get("t_plan", 0.0), "pipeline": now, "model": state["model_s"],
                   "total": now}
        placement = {**{k: v for k, v in self.placement.items() if k != "t_plan"},
                     "nodes": {stage: sorted(ids) for stage, ids in self.nodes.items()}}
        ref = self.tasks.submit(stages.complete_scene, state["plan"], self.slim, self.opts, timings, placement,
                                self.started)
        self.pending[ref] = ("complete", s)

    def fail(self, s: int, url: str, error: str) -> None:
        if self.opts.fail_fast:
            raise ScenesFailedError(error)
        self.status[s], self.errors[s] = "failed", error
        self.metrics.failed.inc(1, tags=self.metrics.tags)
        self.log(f"{url}: FAILED: {error}")

    # --- the scenes' completion tasks ---

    def poll(self, block: bool = False) -> None:
        """Take in the completion tasks that are done (``block``: wait for one at least)."""
        if not self.pending:
            return
        for ref in self.tasks.ready(list(self.pending), block):
            what, s = self.pending.pop(ref)
            state = self.live[s]
            try:
                result = self.tasks.get(ref)
            except Exception as exc:  # noqa: BLE001 - a scene's own error fails the scene only
                err = _cause(exc)
                if not is_scene_error(err) or self.opts.fail_fast:
                    raise
                state["blends"] = 0
                if s in self.live:
                    del self.live[s]
                    self.fail(s, state["plan"].url, one_line(err))
                continue
            if s not in self.live:  # failed meanwhile (another blend task)
                continue
            if what == "blend":
                if "node" in result:
                    self.nodes["write"].add(str(result["node"]))
                self.progress.update(result["tiles"], result["pixels"])
                state["blends"] -= 1
                if state["blends"] == 0:
                    self._finish(s)
                continue
            del self.live[s]
            self.status[s] = "complete"
            self.records[s] = result
            self.items.append(result["outputs"]["stac_item"])
            self.metrics.scenes.inc(1, tags=self.metrics.tags)
            if result["tiles"]["bad"]:
                self.metrics.failed.inc(1, tags=self.metrics.tags)
                self.metrics.bad_tiles.inc(result["tiles"]["bad"], tags=self.metrics.tags)

    def drain(self) -> None:
        while self.pending:
            self.poll(block=True)

    def _quicklooks(self, url: str, out) -> None:
        if self.opts.quicklook and stages.add_quicklooks(url, out, self.job.classes):
            self.log(f"{url}: quicklooks added ({out.stem}.quicklook.png)")

    def summary(self, seconds: float) -> dict:
        scenes = []
        for src in self.job.sources:
            status = "done" if src.index in self.job.done else self.status.get(src.index, "unfinished")
            entry = {"stem": src.stem, "input": src.url, "status": status,
                     "record": self.job.output(src.stem).record}
            if not isinstance(src.source, str):  # an item's bands, stacked
                entry["stac_item"] = {"href": src.source.source, "id": src.stem}
            if src.index in self.errors:
                entry["error"] = self.errors[src.index]
            scenes.append(entry)
        counts = {k: sum(1 for e in scenes if e["status"] == k) for k in ("complete", "done", "failed", "unfinished")}
        return {"status": "failed" if counts["failed"] else "complete", "fingerprint": self.job.fingerprint,
                "counts": {"scenes": len(scenes), **counts}, "pixels": int(self.pixels),
                "seconds": round(seconds, 3),
                "first_tile_s": None if self.t_first is None else round(self.t_first, 3), "scenes": scenes}


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
    """Run a prediction job; returns the run record of every scene it finished, in
    the order of the inputs.

    Scenes that fail are listed (with their errors) in ``PREFIX/_job.json`` and
    skipped; the job finishes the others and then raises
    :class:`~geoseg.errors.ScenesFailedError` (``--fail-fast``: the first failure stops it)."""
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    check_address(opts.address)
    job = plan_job(inputs, prefix, opts)  # bad input of a one-scene job fails here, before Ray starts
    model = DriverModel(job, opts).start() if job.first is not None and DriverModel.expected(opts) else None
    try:
        records = _predict(job, prefix, opts, model, log, started, t0)
    finally:
        if model is not None:
            model.close()
    if opts.mosaic:
        from geoseg.mosaic.job import mosaic

        mosaic(prefix, opts.mosaic, log=log)
    if opts.vectors:  # polygons of every finished scene that has none yet (a rerun does not redo them)
        from geoseg.vectorize import VectorizeOptions, vectorize

        vectorize(prefix, VectorizeOptions(address=opts.address), log=log, missing_only=True)
    return records


def _run_on_ray(job: JobPlan, opts: PredictOptions, layout: ActorLayout, cpus: float, model: DriverModel | None,
                tracker: SceneTracker, progress: Progress) -> None:
    """The job's Ray Data pipeline, its batches into the tracker, the scenes' tasks awaited."""
    import ray

    # Blocks of about one batch of tiles: Ray Data buffers a task's output up to a
    # block (128 MiB by default) in the worker's own memory, and a block of a
    # longer range would make every process grow with the job.
    ctx = ray.data.DataContext.get_current()
    saved_block_size = ctx.target_max_block_size
    nb, size, _ = tile_shape(job, opts)
    ctx.target_max_block_size = max(1 << 22, opts.batch_size * nb * size * size * np.dtype(job.dtype).itemsize)
    try:
        for batch in build_pipeline(job, opts, layout, cpus, model):
            tracker.add(batch)
        tracker.drain()
        progress.close(complete=True)
    finally:
        ctx.target_max_block_size = saved_block_size
        if model is not None:
            model.close()


def _run_alone(job: JobPlan, opts: PredictOptions, layout: ActorLayout, cpus: float, model: DriverModel,
               tracker: SceneTracker, progress: Progress) -> None:
    """The job's one scene in this process (:mod:`geoseg.predict.local`): the driver's readers,
    the model and the writes as :class:`DriverModel` runs them on Ray, the scene's tasks inline."""
    writer = stages.write_softmax if opts.stitch == "hann" else stages.write_tiles
    reads = read_batches(job, opts, cpus, layout.readers or 1, layout.calls + 1, tile_shape(job, opts))
    try:
        for batch in model.run(reads, writer, layout.calls, on_ray=False):
            tracker.add(batch)
        tracker.drain()
        progress.close(complete=True)
    finally:
        model.close()


def _predict(job: JobPlan, prefix: str, opts: PredictOptions, model: DriverModel | None, log, started,
             t0: float) -> list[dict]:
    # one scene with its model in this process: no Ray at all (geoseg.predict.local)
    alone = model is not None and runs_locally(job, opts)
    if alone:
        handle_sigterm()  # SIGTERM unwinds like Ctrl-C
        model.predictor()  # the checkpoint fits its architecture (else one line), before any output
    elif job.todo:  # (a finished job's rerun: its summary and one listing said so, no Ray needed)
        start_ray(opts, model)
    t_plan = time.perf_counter() - t0
    done = [s for s in job.sources if s.index in job.done]
    if len(done) > 20:
        log(f"{len(done)} of {len(job.sources)} scenes already complete, skipped")
    else:
        for s in done:
            log(f"{s.url}: already complete ({job.output(s.stem).record}), skipped")
    metrics = _Metrics(job.job) if not alone else _NoMetrics()
    cpus = machine_cpus() if alone else cluster_cpus() if job.todo else 1.0
    progress = Progress(0, "tiles")
    tracker = SceneTracker(job, opts, cpus, metrics, progress, started, t0, log,
                           tasks=InlineTasks() if alone else None)
    for s in done:
        tracker._quicklooks(s.url, job.output(s.stem))
    if job.first_error:
        tracker.fail(job.todo[0].index, job.todo[0].url, job.first_error)
    if any(s.index != job.todo[0].index or not job.first_error for s in job.todo):
        layout = actor_layout(opts, job.spec.name == "checkpoint", cpus, 0 if alone else cluster_gpus(),
                              local=alone or owns_ray())
        if not layout.driver:
            model = None
        elif model is None:  # (not expected before Ray started)
            model = DriverModel(job, opts)
        require_gpus(layout.num_gpus if opts.gpus_per_worker else 0, "--gpus-per-worker")
        tracker.placement = {"model": "driver" if layout.driver else "actors",
                             "actors": [] if layout.driver else [layout.min_workers, layout.max_workers],
                             "gpus_per_actor": layout.num_gpus, "t_plan": t_plan,
                             # which runtime and precision run the model (and why, where it fell back)
                             "runtime": runtime_of(job, opts, layout), "ray": not alone}
        if alone:
            _run_alone(job, opts, layout, cpus, model, tracker, progress)
        else:
            _run_on_ray(job, opts, layout, cpus, model, tracker, progress)
    if tracker.items:
        catalog.update_catalog(prefix, tracker.items)
    summary = tracker.summary(time.perf_counter() - t0)
    output.write_job_summary(prefix, summary)
    failed = [(s, tracker.errors[s.index]) for s in job.sources if s.index in tracker.errors]
    if failed:
        (_, error), n = failed[0], len(failed)
        if len(job.sources) == 1:
            raise ScenesFailedError(error)
        raise ScenesFailedError(
            f"{n} of {len(job.sources)} scenes failed (the first: {error}); all are listed in "
            f"{storage.join(prefix, output.JOB_SUMMARY)}; rerun the same command to retry them"
            + ("; no mosaic was made" if opts.mosaic else ""))
    return [tracker.records[s] for s in sorted(tracker.records)]  # in the order of the inputs
