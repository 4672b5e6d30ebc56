"""The driver loop of a predict job, shared by every runner (no Ray).

    drive(job, runner)       the scenes complete already logged; the model pass's batches
                             (runner.batches) into the SceneTracker; each scene through the model
                             finished by the runner's tasks; the catalog and the job summary;
                             failures raised as one error
    SceneTracker             per scene: the tiles accounted for, its blends and completion sent off
    DriverModel              the model in this process: a local job's model on CPU, no actor

A runner says where the stages run and nothing else: :class:`geoseg.predict.local.LocalRunner`
(this process alone, no Ray) or :class:`geoseg.predict.job.RayRunner` (Ray Data and Ray tasks).
It gives ``cpus``, ``metrics``, ``tasks`` (``submit`` / ``ready`` / ``get`` / ``cause``), the
``blend`` and ``complete`` functions those tasks run, ``layout()``, ``batches(layout)`` (what the
writes return) and ``close()``.
"""

from __future__ import annotations

import itertools
import pickle
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Iterator

import numpy as np

from geoseg.console import Progress
from geoseg.data import catalog, output, storage
from geoseg.data.tiling import tile_ranges
from geoseg.errors import ScenesFailedError, one_line
from geoseg.models.onnx import onnx_device
from geoseg.predict import stages
from geoseg.predict.finish import add_quicklooks
from geoseg.predict.layout import runtime_of
from geoseg.predict.plan import JobContext, JobPlan, SceneSource, is_scene_error

PLACEMENT = ("plan", "read", "infer", "write")  # the stages whose nodes the run record names


class NoMetrics:
    """geoseg's metrics where there is nothing to export them to (a job without Ray)."""

    class _Metric:
        def inc(self, *args, **kwargs) -> None:
            pass

        set = inc

    def __init__(self):
        self.tags: dict = {}
        self.tiles = self.pixels = self.scenes = self.failed = self.bad_tiles = self.rate = self._Metric()


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

    def __init__(self, ctx: JobContext):
        self.kwargs = stages.Infer.options(ctx)
        # the whole model on this process's CPUs: one single-threaded call per core
        self.spec = ctx.spec if not ctx.ref.deep else replace(
            ctx.spec, options={**ctx.spec.options, "device": "cpu", "threads": 1})
        self._building: Future | None = None
        self._predictor = None
        self._threads: int | None = None  # torch's threads before, restored by close()

    def start(self) -> "DriverModel":
        """Build the model on a thread: torch's imports are seconds of CPU, which run
        while Ray starts and the first tiles are read. Loading the checkpoint checks it."""
        pool = ThreadPoolExecutor(1, thread_name_prefix="geoseg-model-build")
        self._building = pool.submit(self._build, True)
        pool.shutdown(wait=False)
        return self

    def _build(self, only_without_gpu: bool = False):
        if not self.spec.ref.deep:
            return self.spec.build()
        if self.spec.ref.kind == "onnx":
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

    def run(self, batches: Iterator[dict], write, calls: int, infer=stages.Infer, **extra) -> Iterator[dict]:
        """What the model pass's writes return, batch by batch. ``batches``: the read tasks' (Ray
        Data's ``iter_batches``) or the driver's own readers' (:func:`geoseg.predict.local.read_batches`);
        ``infer`` the model stage (:class:`~geoseg.predict.stages.Infer`, or the Ray layer's, which
        also says where it ran; ``extra``: its own arguments) and ``write`` the write stage, as the
        runner gives them."""
        pool = ThreadPoolExecutor(calls, thread_name_prefix="geoseg-model")
        running: set[Future] = set()
        try:
            first = next(batches, None)  # the reads start, while the model may still be building
            if first is None:
                return
            model = infer(spec=self.spec, predictor=self.predictor(), **self.kwargs, **extra)
            for batch in itertools.chain([first], batches):
                running.add(pool.submit(model, batch))
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

    def __init__(self, job: JobPlan, runner, progress: Progress, started, t0: float, log=print):
        self.job, self.ctx, self.progress = job, job.ctx, progress
        self.cpus, self.metrics = runner.cpus, runner.metrics
        self.started, self.t0, self.log = started, t0, log
        self.placement: dict = {}
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
        # where a scene's blends and completion run, as the runner says: Ray tasks, or inline
        self.tasks, self._blend, self._complete = runner.tasks, runner.blend, runner.complete

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
            self.quicklooks(planned.url, planned.out)
            return None
        if planned.status == "resume" and self.verbose:
            self.log(f"{planned.url}: resuming, {sum(planned.previous.values())} of {len(planned.grid)} tiles "
                     "already done")
        self.pixels += planned.info.height * planned.info.width
        self.progress.extend(len(planned.grid) * (2 if self.ctx.hann else 1))
        self.live[s] = {"plan": planned, "accounted": 0, "model_s": 0.0, "error": "", "blends": 0}
        return self.live[s]

    def _through_model(self, s: int) -> None:
        state = self.live[s]
        plan = state["plan"]
        if state["error"]:
            del self.live[s]
            self.fail(s, plan.url, state["error"])
            return
        if self.ctx.hann:
            for r in tile_ranges(len(plan.grid), self.ctx.batch_size, self.cpus):
                ref = self.tasks.submit(self._blend, plan, r["lo"], r["hi"], self.ctx.probabilities)
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
        ref = self.tasks.submit(self._complete, state["plan"], self.ctx, timings, placement, self.started)
        self.pending[ref] = ("complete", s)

    def fail(self, s: int, url: str, error: str) -> None:
        if self.ctx.fail_fast:
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
                err = self.tasks.cause(exc)
                if not is_scene_error(err) or self.ctx.fail_fast:
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

    def quicklooks(self, url: str, out) -> None:
        """``--quicklook`` on a scene finished earlier without them."""
        if self.ctx.quicklook and add_quicklooks(url, out, self.ctx.classes):
            self.log(f"{url}: quicklooks added ({out.stem}.quicklook.png)")

    def summary(self, seconds: float) -> dict:
        scenes = []
        for src in self.job.sources:
            status = "done" if src.index in self.job.done else self.status.get(src.index, "unfinished")
            entry = {"stem": src.stem, "input": storage.absolute(src.url), "status": status,
                     "record": self.job.output(src.stem).record}
            if not isinstance(src.source, str):  # an item's bands, stacked
                entry["stac_item"] = {"href": src.source.source, "id": src.stem}
            if src.index in self.errors:
                entry["error"] = self.errors[src.index]
            if "masked" in self.records.get(src.index, {}):  # --mask: the scene's measured masked share
                entry["masked_fraction"] = self.records[src.index]["masked"]["fraction"]
            scenes.append(entry)
        counts = {k: sum(1 for e in scenes if e["status"] == k) for k in ("complete", "done", "failed", "unfinished")}
        return {"status": "failed" if counts["failed"] else "complete", "fingerprint": self.ctx.job_fingerprint,
                "counts": {"scenes": len(scenes), **counts}, "pixels": int(self.pixels),
                "seconds": round(seconds, 3),
                "first_tile_s": None if self.t_first is None else round(self.t_first, 3), "scenes": scenes}



def drive(job: JobPlan, runner, log, started, t0: float, failure_note: str = "") -> list[dict]:
    """The job's driver loop on ``runner`` (started already): returns the run record of every
    scene it finished, in the order of the inputs; failures are listed in ``PREFIX/_job.json``
    and raised as one :class:`~geoseg.errors.ScenesFailedError` once the others are done
    (``failure_note`` appended to its line where scenes of several failed)."""
    ctx = job.ctx
    t_plan = time.perf_counter() - t0
    done = [s for s in job.sources if s.index in job.done]
    if len(done) > 20:
        log(f"{len(done)} of {len(job.sources)} scenes already complete, skipped")
    else:
        for s in done:
            log(f"{s.url}: already complete ({job.output(s.stem).record}), skipped")
    progress = Progress(0, "tiles")
    tracker = SceneTracker(job, runner, progress, started, t0, log)
    for s in done:
        tracker.quicklooks(s.url, job.output(s.stem))
    if job.first_error:
        tracker.fail(job.todo[0].index, job.todo[0].url, job.first_error)
    try:
        if any(s.index != job.todo[0].index or not job.first_error for s in job.todo):
            layout = runner.layout()
            tracker.placement = {"model": "driver" if layout.driver else "actors",
                                 "actors": [] if layout.driver else [layout.min_workers, layout.max_workers],
                                 "gpus_per_actor": layout.num_gpus, "t_plan": t_plan,
                                 # which runtime and precision run the model (and why, where it fell back)
                                 "runtime": runtime_of(ctx, layout), "ray": runner.ray}
            for batch in runner.batches(layout):
                tracker.add(batch)
            tracker.drain()
            progress.close(complete=True)
    finally:
        runner.close()
    if tracker.items:
        catalog.update_catalog(ctx.prefix, tracker.items)
    summary = tracker.summary(time.perf_counter() - t0)
    output.write_job_summary(ctx.prefix, summary)
    failed = [(s, tracker.errors[s.index]) for s in job.sources if s.index in tracker.errors]
    if failed:
        (_, error), n = failed[0], len(failed)
        if len(job.sources) == 1:
            raise ScenesFailedError(error)
        raise ScenesFailedError(
            f"{n} of {len(job.sources)} scenes failed (the first: {error}); all are listed in "
            f"{storage.join(ctx.prefix, output.JOB_SUMMARY)}; rerun the same command to retry them"
            + failure_note)
    return [tracker.records[s] for s in sorted(tracker.records)]  # in the order of the inputs
