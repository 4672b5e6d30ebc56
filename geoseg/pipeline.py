"""``geoseg predict`` as a Ray Data pipeline.

    plan scenes (metadata only)
      -> ray.data.from_items(ranges of tile numbers)  a few ranges, never a list of tiles
      -> map_batches(read_tiles)       CPU tasks: windowed reads, nodata/done tiles dropped
      -> map_batches(PredictActor)     actor pool: the model loads once per actor
      -> map_batches(write_tiles)      CPU tasks: one Zarr chunk per tile, progress log
      -> finish_scene (Ray tasks)      COG from the Zarr, then the run record, last

With ``--stitch hann`` the model pass writes every tile's softmax window to a
scratch array instead (write_windows), and a second pass of CPU tasks
(blend_tiles) blends each output chunk from the windows that cover it.

Everything each stage does is in a Ray-free module (raster, tiling, predictor,
stitch, output); this module only wires them together.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from geoseg import __version__, storage
from geoseg.bands import resolve_roles
from geoseg.classes import LANDCOVER, NODATA, ClassScheme
from geoseg.errors import InputError, RasterError
from geoseg.inputs import expand_inputs
from geoseg.output import SceneOutput
from geoseg.predictor import ModelSpec
from geoseg.raster import RasterInfo, read_info, tile_reader
from geoseg.tiling import TileGrid


@dataclass(frozen=True)
class PredictOptions:
    model: str | None = None  # index model name
    checkpoint: str | None = None
    tile_size: int = 512
    halo: int = 32
    batch_size: int = 8
    bands: dict[str, int] | None = None
    workers: int | None = None  # model actors
    gpus_per_worker: float = 0.0
    probabilities: bool = False
    tta: bool = False
    precision: str = "auto"
    compile: bool = False
    stitch: str = "crop"  # or "hann": weighted blending of overlapping windows
    overwrite: bool = False
    asset: str | None = None
    address: str | None = None

    def __post_init__(self) -> None:
        if (self.model is None) == (self.checkpoint is None):
            raise InputError("give exactly one of --model NAME or --checkpoint RUN_DIR")
        if self.model is not None and self.model not in ("index", "index-otsu"):
            raise InputError(f"--model: unknown model {self.model!r} (built-in: index, index-otsu)")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.halo >= self.tile_size * 4:
            raise InputError(f"--halo {self.halo} is too large for --tile-size {self.tile_size}")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be >= 1, got {self.workers}")
        if self.stitch not in ("crop", "hann"):
            raise InputError(f"--stitch must be crop or hann, got {self.stitch!r}")
        if self.gpus_per_worker < 0:
            raise InputError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")


@dataclass(frozen=True)
class ScenePlan:
    index: int
    url: str
    info: RasterInfo
    grid: TileGrid
    out: SceneOutput
    bands: list[int]
    start: int  # global number of this scene's first tile
    status: str  # new / resume / done
    done: np.ndarray | None = None  # packed bitmap of finished tiles
    windows: np.ndarray | None = None  # packed bitmap of tiles with a scratch window (hann)
    previous: dict = field(default_factory=dict)


# --- planning (driver; metadata only) ----------------------------------------


def model_inputs(opts: PredictOptions):
    """``(classes, band roles, checkpoint meta)`` of the model to run."""
    if opts.model:
        return LANDCOVER, ["blue", "green", "red", "nir"], None
    from geoseg import checkpoint

    meta = checkpoint.read_meta(opts.checkpoint)
    return meta.classes, meta.band_roles, meta


def _bands_for(info: RasterInfo, opts: PredictOptions, roles, meta) -> list[int]:
    if meta is None or (meta.band_roles and (opts.bands or _has_roles(info, meta.band_roles))):
        mapping = resolve_roles(info.descriptions, opts.bands, info.url, needed=tuple(roles))
        return [mapping[r] for r in roles]
    numbers = meta.band_numbers or list(range(1, meta.model.in_channels + 1))
    if max(numbers) > info.count:
        raise RasterError(f"{info.url}: the model needs band {max(numbers)} but the raster has {info.count} bands")
    return list(numbers)


def _has_roles(info: RasterInfo, roles) -> bool:
    try:
        resolve_roles(info.descriptions, None, info.url, needed=tuple(roles))
        return True
    except InputError:
        return False


def fingerprint(opts: PredictOptions, bands: list[int]) -> dict:
    """What determines the output's values: a rerun with another one is refused."""
    return {
        "model": opts.model or "checkpoint",
        "checkpoint": opts.checkpoint,
        "tile_size": opts.tile_size,
        "halo": opts.halo,
        "bands": bands,
        "probabilities": opts.probabilities,
        "tta": opts.tta,
        "stitch": opts.stitch,
    }


def plan_scenes(inputs: list[str], prefix: str, opts: PredictOptions) -> tuple[list[ScenePlan], ModelSpec, ClassScheme]:
    from geoseg import output
    from geoseg.models.index import fit_otsu

    urls = expand_inputs(inputs, opts.asset)
    classes, roles, meta = model_inputs(opts)
    if meta is not None:
        side, m = opts.tile_size + 2 * opts.halo, meta.model.size_multiple
        if side % m:
            raise InputError(
                f"--tile-size {opts.tile_size} + 2 x --halo {opts.halo} = {side} px, but {meta.model.arch} "
                f"needs tiles whose side is a multiple of {m} (e.g. --tile-size 512 --halo 32)"
            )
    stems: dict[str, str] = {}
    job = uuid.uuid4().hex
    plans: list[ScenePlan] = []
    scene_params: dict[int, dict] = {}
    start = 0
    for i, url in enumerate(urls):
        stem = storage.stem(url)
        if stem in stems:
            raise InputError(f"{url} and {stems[stem]} would both write {stem}.*; rename one of them")
        stems[stem] = url
        info = read_info(url)
        bands = _bands_for(info, opts, roles, meta)
        if meta is not None and len(bands) != meta.model.in_channels:
            raise RasterError(f"{url}: model needs {meta.model.in_channels} bands, got {len(bands)}")
        grid = TileGrid(info.height, info.width, opts.tile_size, opts.halo)
        out = SceneOutput(prefix, stem, job)
        fp = fingerprint(opts, bands)
        status = output.check_existing(out, fp, opts.overwrite)
        done, windows, previous = None, None, {}
        if status == "new":
            output.create_zarr(out, info, grid, classes, fp, opts.probabilities)
        elif status == "resume":
            done, previous = output.read_done(out, len(grid))
        if status != "done":
            output.check_alignment(out, grid)  # one writer per chunk, or no plan
            if opts.stitch == "hann":
                output.create_scratch(out, grid, len(classes))
                if status == "resume":
                    windows, _ = output.read_done(out, len(grid), kinds=("window",))
        if opts.model == "index-otsu" and status != "done":
            scene_params[i] = fit_otsu(url, bands).to_dict()
        plans.append(ScenePlan(i, url, info, grid, out, bands, start, status, done, windows, previous))
        start += len(grid)
    options = {"precision": opts.precision, "compile": opts.compile, "tta": opts.tta}
    spec = ModelSpec(
        name=opts.model or "checkpoint",
        checkpoint=opts.checkpoint,
        scene_params=scene_params,
        options=options if opts.checkpoint else {},
    )
    return plans, spec, classes


# --- the three data stages (run inside Ray workers) ---------------------------


def _starts(plans: list[ScenePlan]) -> np.ndarray:
    return np.array([p.start for p in plans], dtype=np.int64)


_IO_THREAD = None


def _low_priority(fn, *args, **kwargs):
    """Run ``fn`` on this worker's low-priority I/O thread (nice ``GEOSEG_IO_NICE``, 10).

    Readers and writers share nodes with the model actors. A reader that preempts
    one of torch's intra-op threads stalls the whole parallel region; at a lower
    priority it runs in the gaps the model leaves instead. Only that one thread is
    lowered (Linux nice is per thread), so a Ray worker later reused for another
    task or actor keeps its normal priority.
    """
    global _IO_THREAD
    if _IO_THREAD is None:
        from concurrent.futures import ThreadPoolExecutor

        _IO_THREAD = ThreadPoolExecutor(1, thread_name_prefix="geoseg-io", initializer=_lower_this_thread)
    return _IO_THREAD.submit(fn, *args, **kwargs).result()


def _lower_this_thread() -> None:
    import os
    import sys
    import threading

    nice = int(os.environ.get("GEOSEG_IO_NICE", "10"))
    if nice > 0 and sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError:
            pass


def _tile_ids(batch: dict) -> np.ndarray:
    return np.concatenate([np.arange(lo, hi, dtype=np.int64) for lo, hi in zip(batch["lo"], batch["hi"])])


def read_tiles(batch: dict, plans: list[ScenePlan], dtype: str, chunk: int = 8):
    """Ray Data stage: tile numbers -> padded image tiles (see :func:`_read_tiles`).

    Yields ``chunk`` tiles at a time, so a task's memory does not grow with the
    length of its range (ranges get longer as jobs grow; see :func:`tile_ranges`).
    """
    ids = _tile_ids(batch)
    yielded, out = False, None
    for i in range(0, len(ids), chunk):
        out = _low_priority(_read_tiles, ids[i : i + chunk], plans, dtype)
        if len(out["tile"]):
            yielded = True
            yield out
    if not yielded and out is not None:
        yield out  # nothing to predict in this whole range: one empty batch


def _is_set(bitmap: np.ndarray | None, t: int) -> bool:
    return bitmap is not None and bool((bitmap[t >> 3] >> (7 - (t & 7))) & 1)


def _read_tiles(ids: np.ndarray, plans: list[ScenePlan], dtype: str) -> dict:
    """Tile numbers -> padded image tiles, core validity masks and core crops.

    Tiles already finished, or with a scratch window, (resume) are dropped; tiles
    without a single valid pixel are dropped and logged as finished (their output
    is the fill value).
    """
    from geoseg import output

    which = np.searchsorted(_starts(plans), ids, side="right") - 1
    scenes, tiles, images, valids, crops = [], [], [], [], []
    empty: dict[int, list[int]] = {}
    core = plans[0].grid.core
    for gid, s in zip(ids, which):
        plan = plans[s]
        t = int(gid - plan.start)
        if _is_set(plan.done, t) or _is_set(plan.windows, t):
            continue
        tile = plan.grid[plan.grid.index(t)]
        image, valid = tile_reader(plan.url, plan.bands).read(tile)
        if not valid.any():
            empty.setdefault(int(s), []).append(t)
            continue
        full = np.zeros((core, core), dtype=bool)
        full[: valid.shape[0], : valid.shape[1]] = valid
        scenes.append(s)
        tiles.append(t)
        images.append(image)
        valids.append(full)
        crops.append((tile.crop.row_off, tile.crop.col_off, tile.crop.height, tile.crop.width))
    for s, ts in empty.items():
        output.log_done(plans[s].out, np.asarray(ts), kind="nodata")
    size = plans[0].grid.tile_size
    nb = len(plans[0].bands)
    return {
        "scene": np.asarray(scenes, dtype=np.int32),
        "tile": np.asarray(tiles, dtype=np.int64),
        "image": np.stack(images).astype(dtype, copy=False) if images else np.empty((0, nb, size, size), dtype),
        "valid": np.stack(valids) if valids else np.empty((0, core, core), bool),
        "crop": np.asarray(crops, dtype=np.int32).reshape(-1, 4),
    }


class PredictActor:
    """Holds one model (loaded once) and turns image tiles into finished class tiles
    (or, with ``windows``, into softmax windows for blending)."""

    def __init__(self, spec: ModelSpec, core: int, probabilities: bool = False, windows: bool = False):
        self.predictor = spec.build()
        self.core, self.probabilities, self.windows = core, probabilities, windows

    def __call__(self, batch: dict) -> dict:
        from geoseg import stitch

        images, scenes = batch["image"], batch["scene"]
        out = {"scene": scenes, "tile": batch["tile"]}
        if self.windows:
            if len(images) == 0:
                size = images.shape[-1]
                out["window"] = np.empty((0, self.predictor.num_classes or 1, size, size), np.float32)
                out["model_s"] = np.empty(0)
                return out
            t0 = time.perf_counter()
            out["window"] = stitch.mask_windows(self.predictor.predict_proba(images, scenes),
                                                batch["valid"], batch["crop"])
            out["model_s"] = np.full(len(images), (time.perf_counter() - t0) / len(images))
            return out
        if len(images) == 0:
            out["classes"] = np.empty((0, self.core, self.core), np.uint8)
            out["model_s"] = np.empty(0)
            if self.probabilities:
                out["proba"] = np.empty((0, self.predictor.num_classes or 1, self.core, self.core), np.uint8)
            return out
        t0 = time.perf_counter()
        if self.probabilities:
            proba = self.predictor.predict_proba(images, scenes)
            classes = proba.argmax(1).astype(np.uint8)
            out["proba"] = stitch.to_uint8_proba(proba, batch["crop"], self.core)
        else:
            classes = self.predictor.predict(images, scenes)
        out["classes"] = stitch.finish(classes, batch["valid"], batch["crop"], self.core)
        out["model_s"] = np.full(len(images), (time.perf_counter() - t0) / len(images))
        return out


def write_tiles(batch: dict, plans: list[ScenePlan]) -> dict:
    """Ray Data stage: write each tile's core into its own Zarr chunk, then log it as done."""
    return _low_priority(_write_tiles, batch, plans)


def _write_tiles(batch: dict, plans: list[ScenePlan]) -> dict:
    from geoseg import output

    scenes, tiles = batch["scene"], batch["tile"]
    proba = batch.get("proba")
    pixels = np.zeros(len(tiles), dtype=np.int64)
    for i, (s, t) in enumerate(zip(scenes, tiles)):
        plan = plans[s]
        core = plan.grid[plan.grid.index(int(t))].core
        output.write_tile(plan.out, core, batch["classes"][i], None if proba is None else proba[i])
        pixels[i] = core.height * core.width
    for s in np.unique(scenes):
        output.log_done(plans[s].out, tiles[scenes == s])
    job = plans[0].out.job
    metrics().tiles.inc(len(tiles), tags={"job": job})
    metrics().pixels.inc(int(pixels.sum()), tags={"job": job})
    return {
        "scene": np.asarray(scenes, dtype=np.int32),
        "model_s": np.asarray(batch["model_s"], dtype=np.float64),
        "pixels": pixels,
    }


def write_windows(batch: dict, plans: list[ScenePlan]) -> dict:
    """Ray Data stage (``--stitch hann``): store each tile's softmax window, log it."""
    return _low_priority(_write_windows, batch, plans)


def _write_windows(batch: dict, plans: list[ScenePlan]) -> dict:
    from geoseg import output

    scenes, tiles = batch["scene"], batch["tile"]
    for i, (s, t) in enumerate(zip(scenes, tiles)):
        output.write_window(plans[s].out, int(t), batch["window"][i])
    for s in np.unique(scenes):
        output.log_done(plans[s].out, tiles[scenes == s], kind="window")
    return {
        "scene": np.asarray(scenes, dtype=np.int32),
        "model_s": np.asarray(batch["model_s"], dtype=np.float64),
        "pixels": np.zeros(len(tiles), dtype=np.int64),
    }


def blend_tiles(batch: dict, plans: list[ScenePlan], probabilities: bool) -> dict:
    """Ray Data stage (``--stitch hann``): blend, finish and write each tile's chunk."""
    return _low_priority(_blend_tiles, batch, plans, probabilities)


def _blend_tiles(batch: dict, plans: list[ScenePlan], probabilities: bool) -> dict:
    from collections import OrderedDict

    from geoseg import output, stitch

    ids = _tile_ids(batch)
    which = np.searchsorted(_starts(plans), ids, side="right") - 1
    cache: OrderedDict = OrderedDict()  # neighbouring tiles share windows; a few are enough

    def fetch(plan: ScenePlan, iy: int, ix: int):
        key = (plan.index, iy, ix)
        if key not in cache:
            cache[key] = output.read_window(plan.out, iy * plan.grid.shape[1] + ix)
            if len(cache) > 12:
                cache.popitem(last=False)
        return cache[key]

    scenes, tiles, pixels = [], [], []
    for gid, s in zip(ids, which):
        plan = plans[s]
        t = int(gid - plan.start)
        if _is_set(plan.done, t):
            continue
        tile = plan.grid[plan.grid.index(t)]
        probs, valid = stitch.blend_core(plan.grid, tile, lambda iy, ix: fetch(plan, iy, ix))
        if not valid.any():
            continue  # no window: logged as nodata by the model pass
        classes = probs.argmax(0).astype(np.uint8)
        classes[~valid] = NODATA
        proba = stitch.to_uint8(probs) if probabilities else None
        output.write_tile(plan.out, tile.core, classes, proba)
        scenes.append(s)
        tiles.append(t)
        pixels.append(tile.core.size)
    scenes_a, tiles_a = np.asarray(scenes, dtype=np.int32), np.asarray(tiles, dtype=np.int64)
    for s in np.unique(scenes_a):
        output.log_done(plans[s].out, tiles_a[scenes_a == s])
    if tiles:
        job = plans[0].out.job
        metrics().tiles.inc(len(tiles), tags={"job": job})
        metrics().pixels.inc(int(sum(pixels)), tags={"job": job})
    return {"scene": scenes_a, "model_s": np.zeros(len(tiles)), "pixels": np.asarray(pixels, dtype=np.int64)}


class _Metrics:
    """Custom Ray metrics, exported by every node to Prometheus and the Ray dashboard.

    ``geoseg_tiles_written`` and ``geoseg_pixels_written`` (counters, from the writer
    tasks), ``geoseg_scenes_done`` (counter, when a scene's COG and record are out) and
    ``geoseg_mpix_per_second`` (gauge, set by the driver). Ray prefixes them ``ray_``.
    """

    def __init__(self):
        from ray.util.metrics import Counter, Gauge

        tags = ("job",)
        self.tiles = Counter("geoseg_tiles_written", description="Tiles predicted and written", tag_keys=tags)
        self.pixels = Counter("geoseg_pixels_written", description="Pixels predicted and written", tag_keys=tags)
        self.scenes = Counter("geoseg_scenes_done", description="Scenes finished (COG and record written)",
                              tag_keys=tags)
        self.rate = Gauge("geoseg_mpix_per_second", description="Megapixels predicted per second (job so far)",
                          tag_keys=tags)


_METRICS: _Metrics | None = None


def metrics() -> _Metrics:
    global _METRICS
    if _METRICS is None:
        _METRICS = _Metrics()
    return _METRICS


def finish_scene(plan: ScenePlan, classes: ClassScheme) -> dict:
    """Consolidate the Zarr metadata and build the COG; returns tile counts."""
    from geoseg import output

    _, counts = output.read_done(plan.out, len(plan.grid))
    output.consolidate(plan.out)
    t0 = time.perf_counter()
    output.zarr_to_cog(plan.out, plan.info, classes)
    storage.remove(plan.out.progress, recursive=True)
    metrics().scenes.inc(1, tags={"job": plan.out.job})
    return {"counts": counts, "cog_seconds": round(time.perf_counter() - t0, 3)}


def tile_ranges(total: int, batch: int, cpus: float, max_tasks: int = 10_000) -> list[dict]:
    """Global tile numbers cut into ``{"lo", "hi"}`` ranges, one per read task.

    A few tasks per CPU, at least a batch each, at most ``max_tasks`` however many
    tiles: the driver holds ranges, never a list of tiles. (Not ``ray.data.range``:
    its read task wants a whole CPU, which no node may have left beside the actors.)
    """
    tasks = min(total // batch + 1, int(4 * cpus) * max(1, total // (batch * 64)), max_tasks)
    per = max(batch, -(-total // max(1, tasks)))
    return [{"lo": lo, "hi": min(lo + per, total)} for lo in range(0, total, per)]


# --- the job ------------------------------------------------------------------


def versions() -> dict:
    import importlib.metadata as md

    out = {"geoseg": __version__, "python": platform.python_version()}
    for pkg in ("ray", "torch", "rasterio", "zarr", "numpy", "segmentation-models-pytorch"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        import rasterio

        out["gdal"] = rasterio.__gdal_version__
    except ImportError:
        pass
    return out


def predict(inputs: list[str], prefix: str, opts: PredictOptions, log=print) -> list[dict]:
    """Run a prediction job; returns the run record of every scene."""
    import ray

    from geoseg import output
    from geoseg.runtime import cluster_cpus, cluster_gpus, init_ray

    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    plans, spec, classes = plan_scenes(inputs, prefix, opts)  # bad input fails here, before Ray starts
    init_ray(opts.address or None)
    todo = [p for p in plans if p.status != "done"]
    t_plan = time.perf_counter() - t0
    for p in plans:
        if p.status == "done":
            log(f"{p.url}: already complete ({p.out.record}), skipped")
        elif p.status == "resume":
            log(f"{p.url}: resuming, {sum(p.previous.values())} of {len(p.grid)} tiles already done")

    t1 = time.perf_counter()
    model_s = np.zeros(len(plans))
    if todo:
        # Tiles travel in the rasters' own dtype (uint16 is half of float32); the
        # predictor converts each batch in the actor.
        dtype = np.result_type(*[np.dtype(p.info.dtype) for p in plans]).name
        total = plans[-1].start + len(plans[-1].grid)
        cpus, gpus = cluster_cpus(), cluster_gpus()
        use_gpu = opts.gpus_per_worker > 0 or (spec.name == "checkpoint" and gpus > 0)
        gpw = (opts.gpus_per_worker or 1.0) if use_gpu else 0.0
        if opts.workers:
            workers = opts.workers
        elif use_gpu:
            workers = max(1, int(gpus // gpw))
        elif spec.name == "checkpoint":
            # On CPU, one single-threaded model actor per core: no intra-op barriers for a
            # reader to stall (end to end 0.75-0.87 of the bare model against 0.67 for one
            # actor with all the threads, 4096^2 U-Net on 2 cores). Capped to bound memory.
            workers = max(1, min(int(cpus), 32))
        else:
            workers = 1
        actor_env: dict = {}
        actor_cpus = 1.0
        if spec.name == "checkpoint" and not use_gpu:
            # Torch uses all the cores it is given; split them between the model actors.
            # Ray sets OMP_NUM_THREADS to the actor's 1 CPU; OpenMP must agree with torch's threads.
            threads = max(1, int(cpus // workers))
            spec = ModelSpec(spec.name, spec.checkpoint, spec.scene_params, {**spec.options, "threads": threads})
            if threads > 1:  # (1 is Ray's own setting: no runtime env, so warm idle workers can host the actors)
                actor_env = {"runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(threads)}}}
            # Logical CPUs only: leave one CPU to the readers and writers, or they never get
            # scheduled (torch's threads are set above).
            actor_cpus = min(1.0, max(0.1, (cpus - 1) / workers))
        bs = opts.batch_size
        hann = opts.stitch == "hann"
        # Blocks of about one batch of tiles: Ray Data buffers a task's output up to
        # a block (128 MiB by default) in the worker's own memory, and a block of a
        # longer range would make every process grow with the job.
        nb, size = max(len(p.bands) for p in plans), plans[0].grid.tile_size
        ctx = ray.data.DataContext.get_current()
        saved_block_size = ctx.target_max_block_size
        ctx.target_max_block_size = max(1 << 22, bs * nb * size * size * np.dtype(dtype).itemsize)
        ranges = tile_ranges(total, bs, cpus)
        ds = ray.data.from_items(ranges, override_num_blocks=len(ranges))
        # Readers are CPU tasks that scale apart from the model actors (different resources: not fused).
        ds = ds.map_batches(read_tiles, fn_kwargs={"plans": plans, "dtype": dtype, "chunk": bs},
                            batch_size=1, num_cpus=0.25)
        ds = ds.map_batches(
            PredictActor,
            fn_constructor_kwargs={
                "spec": spec,
                "core": opts.tile_size,
                "probabilities": opts.probabilities,
                "windows": hann,
            },
            batch_size=bs,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=actor_cpus,
            num_gpus=gpw,
            **actor_env,
        )
        writer = write_windows if hann else write_tiles
        ds = ds.map_batches(writer, fn_kwargs={"plans": plans}, batch_size=None, num_cpus=0.25)
        passes = [ds]
        if hann:  # second pass, after every window is stored: blend each chunk from its neighbours
            blend = ray.data.from_items(ranges, override_num_blocks=len(ranges)).map_batches(
                blend_tiles, fn_kwargs={"plans": plans, "probabilities": opts.probabilities},
                batch_size=1, num_cpus=0.25)
            passes.append(blend)
        done_px, gauge = 0, metrics().rate
        try:
            for stage in passes:
                for batch in stage.iter_batches(batch_size=None, batch_format="numpy"):
                    np.add.at(model_s, batch["scene"], batch["model_s"])
                    done_px += int(batch["pixels"].sum())
                    gauge.set(done_px / 1e6 / max(time.perf_counter() - t1, 1e-9), tags={"job": plans[0].out.job})
        finally:
            ctx.target_max_block_size = saved_block_size
    t_pipeline = time.perf_counter() - t1

    t2 = time.perf_counter()
    finish = ray.remote(num_cpus=0.5)(finish_scene)
    results = ray.get([finish.remote(p, classes) for p in todo])
    t_finish = time.perf_counter() - t2

    records = []
    for plan, res in zip(todo, results):
        counts = res["counts"]
        rec = {
            "status": "complete",
            "input": plan.url,
            "outputs": {"zarr": plan.out.zarr, "cog": plan.out.cog, "record": plan.out.record},
            "model": {
                "name": spec.name,
                "checkpoint": opts.checkpoint,
                "classes": classes.to_dict(),
                "thresholds": spec.scene_params.get(plan.index),
            },
            "parameters": {
                **fingerprint(opts, plan.bands),
                "batch_size": opts.batch_size,
                "precision": opts.precision,
            },
            "raster": {
                "height": plan.info.height,
                "width": plan.info.width,
                "crs": plan.info.crs,
                "transform": list(plan.info.transform),
                "nodata": plan.info.nodata,
            },
            "tiles": {
                "total": len(plan.grid),
                # this run only; tiles finished by an interrupted earlier run count as resumed
                "predicted": counts.get("done", 0) - plan.previous.get("done", 0),
                "nodata_skipped": counts.get("nodata", 0) - plan.previous.get("nodata", 0),
                "resumed": sum(plan.previous.values()),
            },
            "timings_s": {
                "plan": round(t_plan, 3),
                "pipeline": round(t_pipeline, 3),
                "finish": round(t_finish, 3),
                "cog": res["cog_seconds"],
                "model": round(float(model_s[plan.index]), 3),
                "total": round(time.perf_counter() - t0, 3),
            },
            "started": started.isoformat(),
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
            "versions": versions(),
        }
        output.write_record(plan.out, rec)
        records.append(rec)
    if len(plans) > 1:
        summary = {
            "scenes": [{"input": p.url, "record": p.out.record, "status": p.status} for p in plans],
            "pixels": int(sum(p.info.height * p.info.width for p in plans)),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        storage.write_text(storage.join(prefix, "_job.json"), json.dumps(summary, indent=2))
    return records
