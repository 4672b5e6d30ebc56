"""Planning a predict job, without Ray: options, the job's scenes, one :class:`ScenePlan` per scene, tile ranges.

:func:`plan_job` (the driver, before Ray starts) expands the inputs, checks the
model and the stems, finds the scenes complete already with one listing, and
plans the first scene to predict, so that a one-scene job's bad input fails
before Ray starts. :func:`plan_scene` plans every other scene in the job's
planning tasks (:func:`geoseg.predict.stages.plan_scenes`): metadata reads (and,
for ``index-otsu``, a decimated read per scene) and the VRT of an item's bands,
nothing else written; :func:`prepare_scene` then creates its Zarr (or keeps it,
to resume).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace

import numpy as np

from geoseg import checkpoint, limits, output, storage
from geoseg.bands import Selection, select_bands
from geoseg.classes import LANDCOVER, ClassScheme
from geoseg.errors import GeosegError, InputError, OutputExistsError, RasterError, one_line
from geoseg.inputs import expand_inputs, searched_inputs
from geoseg.models.index import BAND_ROLES, INDEX_MODELS, fit_otsu
from geoseg.output import SceneOutput
from geoseg.predictor import ModelSpec
from geoseg.raster import RasterInfo, check_image, read_info
from geoseg.stac import Search, Stack, StackOptions
from geoseg.tiling import ReadOrder, TileGrid, read_ranges, strip_for


@dataclass(frozen=True)
class PredictOptions:
    model: str | None = None  # index model name
    checkpoint: str | None = None
    tile_size: int = 512  # side of a tile's core (= an output chunk); the model sees tile_size + 2 * halo
    halo: int = 32
    batch_size: int = 8
    bands: Selection | None = None  # --bands: band numbers or a role map
    workers: int | tuple[int, int] | None = None  # model actors: a number, or (min, max) for an autoscaling pool
    gpus_per_worker: float = 0.0
    probabilities: bool = False
    tta: bool = False
    precision: str = "auto"
    compile: bool = False
    stitch: str = "crop"  # or "hann": weighted blending of overlapping tiles
    overwrite: bool = False
    asset: str | None = None
    stack: StackOptions | None = None  # STAC items with one asset per band: --assets, --resolution, --resampling
    search: Search | None = None  # --stac-api: predict every item a STAC API search finds
    address: str | None = None
    skip_bad_tiles: bool = False  # unreadable blocks: their tiles left nodata and listed, instead of failing
    allow_no_crs: bool = False  # accept rasters without a CRS (outputs then have none either)
    quicklook: bool = False  # small PNGs beside each output: input in true colour, classes, both side by side
    fail_fast: bool = False  # the first scene that fails stops the job (else it is listed and skipped)
    mosaic: str | None = None  # --mosaic GRID: every scene into one Zarr on that grid, once they are done
    vectors: bool = False  # --vectors: each finished scene's polygons (GeoParquet, FlatGeobuf), once they are done

    def __post_init__(self) -> None:
        if (self.model is None) == (self.checkpoint is None):
            raise InputError("give exactly one of --model NAME or --checkpoint RUN_DIR")
        if self.model is not None and self.model not in INDEX_MODELS:
            raise InputError(f"--model: unknown model {self.model!r} (built-in: {', '.join(INDEX_MODELS)})")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.halo >= self.tile_size * 4:
            raise InputError(f"--halo {self.halo} is too large for --tile-size {self.tile_size}")
        lo, hi = self.worker_range or (1, 1)
        if not 1 <= lo <= hi:
            raise InputError(f"--workers must be N or MIN,MAX with 1 <= MIN <= MAX, got {self.workers}")
        if self.stitch not in ("crop", "hann"):
            raise InputError(f"--stitch must be crop or hann, got {self.stitch!r}")
        if self.gpus_per_worker < 0:
            raise InputError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.mosaic is not None:
            from geoseg.mosaic.grid import parse_grid

            parse_grid(self.mosaic)  # a bad grid is refused before any work

    @property
    def worker_range(self) -> tuple[int, int] | None:
        """``(min, max)`` model actors asked for, or None for the default."""
        if self.workers is None:
            return None
        return (self.workers, self.workers) if isinstance(self.workers, int) else tuple(self.workers)

    def fingerprint(self, bands: list[int]) -> dict:
        """What determines a scene's output values: a rerun with another one is refused."""
        return {
            "model": self.model or "checkpoint",
            "checkpoint": self.checkpoint,
            "tile_size": self.tile_size,
            "halo": self.halo,
            "bands": bands,
            "probabilities": self.probabilities,
            "tta": self.tta,
            "stitch": self.stitch,
            **({"stack": self.stack.fingerprint()} if self.stack and self.stack.fingerprint() else {}),
        }

    def job_fingerprint(self) -> dict:
        """What determines the outputs of every scene of a job (the bands as asked for; each
        scene's own fingerprint has the band numbers chosen for it)."""
        fp = self.fingerprint([])
        fp["bands"] = self.bands if self.bands is None else repr(self.bands)
        return fp


@dataclass(frozen=True)
class SceneSource:
    """One scene of a job before it is planned: its place in the job, what to read, its outputs' stem."""

    index: int
    source: str | Stack  # a raster URL, or an item's bands to stack (a VRT built when planned)
    stem: str

    @property
    def url(self) -> str:
        return self.source if isinstance(self.source, str) else self.source.url


@dataclass(frozen=True)
class ScenePlan:
    """One input scene of a job: where it is, how it is tiled, where it goes, what is left."""

    index: int  # position in the job
    url: str
    info: RasterInfo
    grid: TileGrid
    out: SceneOutput
    bands: list[int]
    fingerprint: dict
    status: str  # new / resume / done
    done: np.ndarray | None = None  # packed bitmap of finished tiles (resume)
    softmax: np.ndarray | None = None  # packed bitmap of tiles whose softmax is stored (hann, resume)
    previous: dict = field(default_factory=dict)  # tile counts by kind of an interrupted earlier run
    params: dict | None = None  # the scene's own model parameters (index-otsu thresholds)
    strip: int = 0  # tile columns of the strips its readers go down (tiling.ReadOrder); 0: whole rows

    @property
    def order(self) -> ReadOrder:
        return ReadOrder(self.grid, self.strip or self.grid.shape[1])


@dataclass(frozen=True)
class JobPlan:
    """A job before any scene but the first is planned: every scene's source, the model, the
    scenes found complete by one listing, and the first scene to predict, planned in the driver
    (its bad input fails a one-scene job before Ray starts; its pixel type is the job's)."""

    sources: list[SceneSource]
    spec: ModelSpec
    classes: ClassScheme
    prefix: str
    job: str  # the job's id
    fingerprint: dict  # what determines every scene's outputs, as the job summary stores it
    meta: checkpoint.CheckpointMeta | None = None  # the checkpoint's description (None: an index model)
    done: frozenset = frozenset()  # indexes of scenes complete already (their record listed, vouched for)
    first: ScenePlan | None = None  # the first scene to predict, planned here
    first_error: str | None = None  # ... or why it could not be planned (a job of several scenes goes on)
    dtype: str = "float32"  # tiles travel in it: the first scene's pixel type
    core: int | None = None  # the tiles' core side, where --tile-size was larger than the first scene: clamped

    def tile_core(self, opts: "PredictOptions") -> int:
        """The side of every tile's core in this job."""
        return self.core or opts.tile_size

    @property
    def todo(self) -> list[SceneSource]:
        return [s for s in self.sources if s.index not in self.done]

    def output(self, stem: str) -> SceneOutput:
        return SceneOutput(self.prefix, stem, self.job)


# Errors of one scene (its file, its bands, its outputs' state); any other error stops the job.
def is_scene_error(exc: BaseException) -> bool:
    return isinstance(exc, GeosegError) and not isinstance(exc, OutputExistsError)


def plan_job(inputs: list[str], prefix: str, opts: PredictOptions) -> JobPlan:
    """Plan the job: the model's description, the inputs (expanded, stems checked), the scenes
    complete already and the first scene to predict, but nothing written to the outputs yet.

    Every other scene is planned by :func:`plan_scene` in the job's planning tasks, while the
    first ones are read. The checkpoint's weights are checked against its architecture
    separately (:func:`geoseg.checkpoint.verify`: it imports torch)."""
    classes, meta = LANDCOVER, None
    if opts.checkpoint:
        meta = checkpoint.describe(opts.checkpoint)
        classes = meta.classes
        _check_stride(opts, meta.model)
    storage.check_writable(prefix)
    # STAC items with one asset per band: the bands asked for, else the model's own
    model_bands = BAND_ROLES if meta is None else (
        tuple(meta.extra.get("inputs", {}).get("assets") or meta.band_roles or ()) or None)
    folder = storage.join(prefix, ".geoseg", "_inputs")
    found = expand_inputs(inputs, opts.asset, opts.stack, model_bands, folder, defer=True) if inputs else []
    if opts.search:
        found += searched_inputs(opts.search, opts.asset, opts.stack, model_bands, folder, defer=True)
    if not found:
        raise InputError("no inputs given: name rasters or STAC items, or search with --stac-api")
    sources: list[SceneSource] = []
    stems: dict[str, str] = {}
    for i, src in enumerate(found):
        stem = storage.stem(src) if isinstance(src, str) else src.stem
        url = src if isinstance(src, str) else src.url
        if stem in stems:
            raise InputError(f"{url} and {stems[stem]} would both write {stem}.*; rename one of them")
        stems[stem] = url
        sources.append(SceneSource(i, src, stem))
    del stems
    options = {"precision": opts.precision, "compile": opts.compile, "tta": opts.tta} if opts.checkpoint else {}
    spec = ModelSpec(name=opts.model or "checkpoint", checkpoint=opts.checkpoint, options=options)
    fingerprint = opts.job_fingerprint()
    job = JobPlan(sources, spec, classes, prefix, uuid.uuid4().hex, fingerprint, meta,
                  frozenset(finished_scenes(prefix, sources, fingerprint, opts.overwrite)))
    todo = job.todo
    if not todo:
        return job
    try:
        first = plan_scene(todo[0], job, opts)
    except Exception as exc:
        if len(job.sources) == 1 or opts.fail_fast or not is_scene_error(exc):
            raise
        return replace(job, first_error=one_line(exc))
    return replace(job, first=first, dtype=first.info.pixel_dtype,
                   core=first.grid.core if first.grid.core != opts.tile_size else None)


def finished_scenes(prefix: str, sources: list[SceneSource], fingerprint: dict, overwrite: bool) -> set[int]:
    """The scenes a rerun need not open: those the prefix's job summary lists as complete with
    this job's fingerprint and whose run record is still there. One read and one listing,
    however many scenes (other scenes are checked one by one when planned)."""
    if overwrite:
        return set()
    summary = output.read_job_summary(prefix)
    if not summary or summary.get("fingerprint") != fingerprint:
        return set()
    vouched = {s.get("stem") for s in summary.get("scenes", []) if s.get("status") in ("complete", "done")}
    names = set(storage.listdir(prefix))
    return {s.index for s in sources if s.stem in vouched and f"{s.stem}.json" in names}


def _check_stride(opts: PredictOptions, model) -> None:
    side, m = opts.tile_size + 2 * opts.halo, model.size_multiple
    if side % m:
        raise InputError(
            f"--tile-size {opts.tile_size} + 2 x --halo {opts.halo} = {side} px, but {model.arch} "
            f"needs tiles whose side is a multiple of {m} (e.g. --tile-size 512 --halo 32)"
        )


def plan_scene(src: SceneSource, job: JobPlan, opts: PredictOptions, dtype: str | None = None) -> ScenePlan:
    """Read one scene's metadata (building its VRT first, for an item's bands), choose its bands
    and grid, check its outputs (what a rerun resumes) and fit its own model parameters
    (``index-otsu``); writes nothing but the VRT. ``dtype``: the job's tile type, which the
    scene's pixels must fit."""
    url = src.source if isinstance(src.source, str) else src.source.build()
    meta = job.meta
    info = read_info(url)
    check_image(info, opts.allow_no_crs)
    if dtype is not None and not np.can_cast(info.pixel_dtype, dtype):
        raise RasterError(f"{url}: pixels of type {info.pixel_dtype} do not fit the job's {dtype} tiles "
                          "(those of its first scene); predict it in a job of its own")
    if meta is None:
        bands, _ = select_bands(url, info.descriptions, roles=BAND_ROLES, override=opts.bands)
    else:
        numbers = meta.band_numbers or list(range(1, meta.model.in_channels + 1))
        bands, _ = select_bands(url, info.descriptions, roles=meta.band_roles, numbers=numbers, override=opts.bands)
        if len(bands) != meta.model.in_channels:
            raise RasterError(f"{url}: model needs {meta.model.in_channels} bands, got {len(bands)}")
        trained_scaled = meta.extra.get("inputs", {}).get("scaled")
        if trained_scaled is not None and trained_scaled != info.scaled:  # values 10^4 apart, say: garbage out
            raise RasterError(
                f"{url}: the model was trained on {'scaled values' if trained_scaled else 'raw digital numbers'}, "
                f"but this raster {'declares' if info.scaled else 'declares no'} band scale/offset; "
                "give it inputs read the same way")
    # a --tile-size larger than the job's first scene is clamped to it (the job's tiles then all take that side)
    multiple = meta.model.size_multiple if meta is not None else 1
    core = job.core or limits.clamp_tile(opts.tile_size, opts.halo, info.height, info.width, multiple)
    grid = TileGrid(info.height, info.width, core, opts.halo)
    limits.check_fits(limits.batch_bytes(opts.batch_size, len(bands), grid.input_size, meta is not None),
                      f"{url}: --tile-size {core} with --halo {opts.halo} and --batch-size {opts.batch_size} "
                      f"({grid.input_size} px model inputs)", "use a smaller --tile-size or --batch-size")
    fp = opts.fingerprint(bands)
    out = job.output(src.stem)
    status = output.check_existing(out, fp, opts.overwrite)
    done = softmax = previous = None
    if status == "resume":
        done, previous = output.read_done(out, len(grid))
        output.check_alignment(out, grid)  # one writer per chunk, or no plan
        if opts.stitch == "hann":
            softmax, _ = output.read_done(out, len(grid), kinds=("softmax",))
    params = fit_otsu(url, bands).to_dict() if opts.model == "index-otsu" and status != "done" else None
    return ScenePlan(src.index, url, info, grid, out, bands, fp, status, done, softmax, previous or {}, params)


def prepare_scene(plan: ScenePlan, classes: ClassScheme, opts: PredictOptions) -> None:
    """Create the outputs of a scene to predict (deleting old ones first with ``--overwrite``);
    outputs being resumed are kept as they are."""
    if plan.status == "new":
        if opts.overwrite:
            output.remove_outputs(plan.out)
        output.create_zarr(plan.out, plan.info, plan.grid, classes, plan.fingerprint, opts.probabilities)
        output.check_alignment(plan.out, plan.grid)
    if opts.stitch == "hann" and plan.status != "done":  # kept if it exists: a rerun resumes
        output.create_scratch(plan.out, plan.grid, len(classes))


def range_size(total: int, batch: int, cpus: float, max_tasks: int = 10_000) -> int:
    """Tiles per read task: a few tasks per CPU, at least a batch each, at most ``max_tasks``
    however many tiles."""
    tasks = min(total // batch + 1, int(4 * cpus) * max(1, total // (batch * 64)), max_tasks)
    return max(batch, -(-total // max(1, tasks)))


def tile_ranges(total: int, batch: int, cpus: float, max_tasks: int = 10_000) -> list[dict]:
    """Global tile numbers cut into ``{"lo", "hi"}`` ranges (the hann blend's tasks).

    The driver holds ranges, never a list of tiles. (Not ``ray.data.range``:
    its read task wants a whole CPU, which no node may have left beside the actors.)
    """
    per = range_size(total, batch, cpus, max_tasks)
    return [{"lo": lo, "hi": min(lo + per, total)} for lo in range(0, total, per)]


def scene_read_ranges(plan: ScenePlan, batch: int, cpus: float) -> tuple[ScenePlan, list[dict]]:
    """A scene's read ranges: positions in its :class:`~geoseg.tiling.ReadOrder`, near-squares
    of tiles inside strips (the plan, returned, names the strip width its readers follow)."""
    per = range_size(len(plan.grid), batch, cpus)
    order = ReadOrder(plan.grid, strip_for(plan.grid, per))
    return replace(plan, strip=order.strip), read_ranges(order, per)
