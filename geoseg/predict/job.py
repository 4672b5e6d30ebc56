"""The Ray layer of ``geoseg predict``: the Ray runner, and :func:`predict`, which picks a runner.

    plan_job (driver, no Ray)            the model resolved and described once; inputs, stems; scenes
                                         complete already (one listing); the first scene planned;
                                         the job's context fixed
      start_ray                          Ray starts; meanwhile the checkpoint's weights are checked
      -> ray.data.from_items(scenes)     one row per scene to plan, never a list of tiles
      -> map_batches(plan_scenes)        planning tasks: header, VRT, parameters, outputs created;
                                         a few tile ranges per scene, its plan with them
      -> map_batches(read_tiles)         CPU tasks
      -> map_batches(Infer)              actor pool: the model is built once per actor
      -> map_batches(write_tiles)        CPU tasks (hann: write_softmax)
         (on geoseg's own local Ray with the model on CPU, DriverModel runs Infer
          and the writes in the driver instead: no model actor to start)
      drive (driver, no Ray)             the SceneTracker: a scene whose tiles are all through the model
         -> blend_tiles (Ray tasks)      (hann) its chunks blended
         -> complete_scene (Ray task)    COG, STAC item, run record (last)
      -> job summary (driver)            every scene's status, failures with their errors

A job of one scene with its model on this machine's CPUs runs the same stages and the same
driver loop (:func:`geoseg.predict.driver.drive`) on :class:`geoseg.predict.local.LocalRunner`,
with no Ray at all. Every stage is a Ray-free function of :mod:`geoseg.predict.stages` /
:mod:`geoseg.predict.finish`; geoseg's Ray metrics are counted here, in the driver, from what the
stages return.
"""

from __future__ import annotations

import datetime as dt
import functools
import sys
import time
from dataclasses import replace
from typing import Iterator

import numpy as np

from geoseg.models import checkpoint, reference
from geoseg.predict import stages
from geoseg.predict.driver import DriverModel, drive
from geoseg.predict.finish import blend_tiles, complete_scene
from geoseg.predict.layout import ActorLayout, actor_layout
from geoseg.predict.local import LocalRunner, runs_locally
from geoseg.predict.options import PredictOptions
from geoseg.predict.plan import JobContext, JobPlan, ScenePlan, plan_job
from geoseg.execution.runtime import (check_address, cluster_cpus, cluster_gpus, init_ray, owns_ray, ray_connected,
                                    require_gpus, requested_address)
from geoseg.execution.runtime import RayTasks

# What the workers of every stage import: a local Ray's workers import it as they start, while Ray starts
PRELOAD = ("ray.data", "geoseg.predict.job")


def read_strategy(layout: ActorLayout):
    """Ray Data's strategy for the read tasks: as many at once as the layout says."""
    import ray

    return ray.data.TaskPoolStrategy(size=layout.readers)


def actor_strategy(layout: ActorLayout):
    """Ray Data's actor pool for the model stage."""
    import ray

    return ray.data.ActorPoolStrategy(
        min_size=layout.min_workers,
        max_size=layout.max_workers,
        max_tasks_in_flight_per_actor=max(2, layout.calls),
        max_concurrent_calls_per_actor=layout.calls,
        enable_true_multi_threading=layout.calls > 1,
    )


# --- where each stage ran -------------------------------------------------------
#
# Thin Ray-layer wrappers add the id of the node that ran a stage to its batch, and
# carry the upstream stages' ids along, so the driver learns the job's placement
# (model actors on GPU nodes, readers and writers wherever CPUs are) and records it.

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


def build_pipeline(job: JobPlan, layout: ActorLayout, cpus: float, model: DriverModel | None = None) -> Iterator[dict]:
    """The job's one Ray Data pipeline, across all its scenes, as what its writes return:
    planning tasks (each scene's header, VRT, parameters, outputs) -> read tasks -> the model
    (actors, or ``model``: the driver, ``layout.driver``) -> write tasks. Scenes are planned
    while the first ones are read, and the model never drains between scenes."""
    import ray

    ctx = job.ctx
    spec = ctx.spec
    if layout.threads:
        spec = replace(spec, options={**spec.options, "threads": layout.threads})
    writer = stages.write_softmax if ctx.hann else stages.write_tiles
    todo = [s for s in job.todo if not (job.first_error and s.index == job.todo[0].index)]
    rows = stages.source_rows(todo)
    if job.first is not None:  # planned in the driver already
        rows[0]["source"] = stages.pack(job.first)
    blocks = max(1, min(len(rows), int(8 * cpus)))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    # Planning waits on storage (headers, VRTs) more than it computes: a tenth of a CPU each.
    ds = ds.map_batches(_plan_on_node, fn_kwargs={"ctx": ctx, "cpus": cpus}, batch_size=1, num_cpus=0.1,
                        compute=ray.data.TaskPoolStrategy(size=min(blocks, max(2, int(cpus)))))
    # A planned scene is a few rows (tile ranges), one per read task: one block each, or a
    # single task would read the whole scene (streaming repartition, no shuffle).
    ds = ds.repartition(target_num_rows_per_block=1)
    # Readers are CPU tasks that scale apart from the model actors (different resources: not fused).
    ds = ds.map_batches(_read_on_node, fn_kwargs={"ctx": ctx, "shape": job.tile_shape()},
                        batch_size=1, num_cpus=0.25, compute=read_strategy(layout))
    if model is not None:
        return model.run(iter(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=layout.calls)),
                         functools.partial(_write_on_node, stage=writer), layout.calls, infer=_InferOnNode,
                         job=ctx.job)
    ds = ds.map_batches(
        _InferOnNode,
        fn_constructor_kwargs={"spec": spec, **stages.Infer.options(ctx), "job": ctx.job},
        batch_size=ctx.batch_size,
        compute=actor_strategy(layout),
        num_cpus=layout.num_cpus,
        num_gpus=layout.num_gpus,
    )
    return _batches(ds.map_batches(_write_on_node, fn_kwargs={"stage": writer}, batch_size=None, num_cpus=0.25))


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


def _blend_on_node(plan: ScenePlan, lo: int, hi: int, probabilities: bool) -> dict:
    return {**blend_tiles(plan, lo, hi, probabilities), "node": _node_column(1)[0]}


class RayRunner:
    """The runner of a job on Ray: Ray Data's pipeline across the scenes (the model in actors, or
    in the driver on geoseg's own local Ray), the scenes' blends (a quarter CPU each) and
    completion (half a CPU) as Ray tasks, geoseg's metrics exported to the dashboard."""

    ray = True  # (the run record's placement)
    blend, complete = staticmethod(_blend_on_node), staticmethod(complete_scene)

    def __init__(self, job: JobPlan, opts: PredictOptions, model: DriverModel | None):
        self.job, self.opts, self.model = job, opts, model
        self.cpus, self.tasks, self.metrics = 1.0, None, None
        self._driver: DriverModel | None = None  # the model in the driver, where the layout says so
        self._block_size: int | None = None

    def start(self) -> None:
        """Ray started or joined (not for a finished job's rerun: its summary and one listing said so)."""
        if self.job.todo:
            start_ray(self.job.ctx, self.opts.address, self.model)
            self.cpus = cluster_cpus()
        self.metrics = _Metrics(self.job.ctx.job)
        self.tasks = RayTasks({_blend_on_node: 0.25, complete_scene: 0.5})

    def layout(self) -> ActorLayout:
        layout = actor_layout(self.opts, self.job.ctx.ref.deep, self.cpus, cluster_gpus(), local=owns_ray())
        if layout.driver:  # (the one started before Ray, or built now: not expected before Ray started)
            self._driver = self.model or DriverModel(self.job.ctx)
        require_gpus(layout.num_gpus if self.opts.gpus_per_worker else 0, "--gpus-per-worker")
        return layout

    def batches(self, layout: ActorLayout) -> Iterator[dict]:
        import ray

        # Blocks of about one batch of tiles: Ray Data buffers a task's output up to a
        # block (128 MiB by default) in the worker's own memory, and a block of a
        # longer range would make every process grow with the job.
        ctx = ray.data.DataContext.get_current()
        self._block_size = ctx.target_max_block_size
        nb, size, _ = self.job.tile_shape()
        ctx.target_max_block_size = max(1 << 22, self.job.ctx.batch_size * nb * size * size
                                        * np.dtype(self.job.ctx.dtype).itemsize)
        return build_pipeline(self.job, layout, self.cpus, self._driver)

    def close(self) -> None:
        if self._block_size is not None:
            import ray

            ray.data.DataContext.get_current().target_max_block_size = self._block_size
            self._block_size = None
        if self._driver is not None:
            self._driver.close()


def driver_expected(opts: PredictOptions) -> bool:
    """Whether the model will run in the driver, as far as is known before Ray starts:
    geoseg's own local Ray (starting it, or started), or none, no ``--workers``, no GPUs asked for."""
    local = requested_address(opts.address) is None and (owns_ray() or not ray_connected())
    return local and opts.worker_range is None and opts.gpus_per_worker == 0


def start_ray(ctx: JobContext, address: str | None, model: DriverModel | None = None) -> None:
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
    ref = ctx.ref
    check, verified = None, False
    if ref.deep and not (ray_connected() or "torch" in sys.modules):
        verified = reference.verify(ref, build=False) is not None
        if not verified and model is None:
            check = checkpoint.BackgroundCheck(ref.url)
    try:
        init_ray(address or None, preload=PRELOAD)
    except BaseException:
        if check is not None:
            check.cancel()
        raise
    if check is not None:
        check.result()
    elif ref.deep and not verified and not (model is not None and model.ready()):
        reference.verify(ref)  # (where the driver built no model: a GPU machine)


def predict(inputs: list[str], prefix: str, opts: PredictOptions, log=print) -> list[dict]:
    """Run a prediction job; returns the run record of every scene it finished, in
    the order of the inputs.

    Scenes that fail are listed (with their errors) in ``PREFIX/_job.json`` and
    skipped; the job finishes the others and then raises
    :class:`~geoseg.errors.ScenesFailedError` (``--fail-fast``: the first failure stops it)."""
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    check_address(opts.address)
    job = plan_job(inputs, prefix, opts, log)  # bad input of a one-scene job fails here, before Ray starts
    model = DriverModel(job.ctx).start() if job.first is not None and driver_expected(opts) else None
    try:
        # one scene with its model in this process: no Ray at all (geoseg.predict.local)
        alone = model is not None and runs_locally(job, opts)
        runner = LocalRunner(job, opts, model) if alone else RayRunner(job, opts, model)
        runner.start()
        records = drive(job, runner, log, started, t0, "; no mosaic was made" if opts.mosaic else "")
    finally:
        if model is not None:
            model.close()
    if opts.mosaic:
        from geoseg.mosaic import mosaic

        mosaic(prefix, opts.mosaic, log=log)
    if opts.vectors:  # polygons of every finished scene that has none yet (a rerun does not redo them)
        from geoseg.vectorize import VectorizeOptions, vectorize

        vectorize(prefix, VectorizeOptions(address=opts.address), log=log, missing_only=True)
    return records
