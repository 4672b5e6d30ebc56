"""Planning a predict job, without Ray: options, one :class:`ScenePlan` per input, tile ranges.

Planning reads metadata only (and, for ``index-otsu``, a decimated read per
scene) and writes nothing, so a bad input fails here, before Ray is started and
before any output is touched; :func:`prepare_outputs` then creates each scene's
Zarr (or keeps it, to resume).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np

from geoseg import checkpoint, output, storage
from geoseg.bands import Selection, select_bands
from geoseg.classes import LANDCOVER, ClassScheme
from geoseg.errors import InputError, RasterError
from geoseg.inputs import expand_inputs, searched_inputs
from geoseg.models.index import BAND_ROLES, INDEX_MODELS, fit_otsu
from geoseg.output import SceneOutput
from geoseg.predictor import ModelSpec
from geoseg.raster import RasterInfo, check_image, read_info
from geoseg.stac import Search, StackOptions
from geoseg.tiling import TileGrid


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
    start: int  # global number of this scene's first tile
    status: str  # new / resume / done
    done: np.ndarray | None = None  # packed bitmap of finished tiles (resume)
    softmax: np.ndarray | None = None  # packed bitmap of tiles whose softmax is stored (hann, resume)
    previous: dict = field(default_factory=dict)  # tile counts by kind of an interrupted earlier run


@dataclass(frozen=True)
class JobPlan:
    scenes: list[ScenePlan]
    spec: ModelSpec
    classes: ClassScheme
    meta: checkpoint.CheckpointMeta | None = None  # the checkpoint's description (None: an index model)

    @property
    def todo(self) -> list[ScenePlan]:
        return [p for p in self.scenes if p.status != "done"]

    @property
    def total_tiles(self) -> int:
        last = self.scenes[-1]
        return last.start + len(last.grid)

    @property
    def dtype(self) -> str:
        """Tiles travel in the rasters' own dtype (uint16 is half of float32)."""
        return np.result_type(*[np.dtype(p.info.pixel_dtype) for p in self.scenes]).name


def plan_job(inputs: list[str], prefix: str, opts: PredictOptions) -> JobPlan:
    """Plan every scene: every check of the inputs, the model's description and the
    outputs (to resume them), but nothing written to the outputs yet
    (:func:`prepare_outputs`). The checkpoint's weights are checked against its
    architecture separately (:func:`geoseg.checkpoint.verify`: it imports torch)."""
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
    urls = expand_inputs(inputs, opts.asset, opts.stack, model_bands, folder) if inputs else []
    if opts.search:
        urls += searched_inputs(opts.search, opts.asset, opts.stack, model_bands, folder)
    if not urls:
        raise InputError("no inputs given: name rasters or STAC items, or search with --stac-api")
    job = uuid.uuid4().hex
    stems: dict[str, str] = {}
    scenes: list[ScenePlan] = []
    scene_params: dict[int, dict] = {}
    for i, url in enumerate(urls):
        stem = storage.stem(url)
        if stem in stems:
            raise InputError(f"{url} and {stems[stem]} would both write {stem}.*; rename one of them")
        stems[stem] = url
        start = scenes[-1].start + len(scenes[-1].grid) if scenes else 0
        plan = plan_scene(i, url, start, SceneOutput(prefix, stem, job), opts, meta)
        if opts.model == "index-otsu" and plan.status != "done":
            scene_params[i] = fit_otsu(url, plan.bands).to_dict()
        scenes.append(plan)
    options = {"precision": opts.precision, "compile": opts.compile, "tta": opts.tta} if opts.checkpoint else {}
    spec = ModelSpec(name=opts.model or "checkpoint", checkpoint=opts.checkpoint,
                     scene_params=scene_params, options=options)
    return JobPlan(scenes, spec, classes, meta)


def _check_stride(opts: PredictOptions, model) -> None:
    side, m = opts.tile_size + 2 * opts.halo, model.size_multiple
    if side % m:
        raise InputError(
            f"--tile-size {opts.tile_size} + 2 x --halo {opts.halo} = {side} px, but {model.arch} "
            f"needs tiles whose side is a multiple of {m} (e.g. --tile-size 512 --halo 32)"
        )


def plan_scene(index: int, url: str, start: int, out: SceneOutput, opts: PredictOptions, meta) -> ScenePlan:
    """Read one scene's metadata, choose its bands and grid, and check its outputs (what a
    rerun resumes); writes nothing."""
    info = read_info(url)
    check_image(info, opts.allow_no_crs)
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
    grid = TileGrid(info.height, info.width, opts.tile_size, opts.halo)
    fp = opts.fingerprint(bands)
    status = output.check_existing(out, fp, opts.overwrite)
    done = softmax = previous = None
    if status == "resume":
        done, previous = output.read_done(out, len(grid))
        output.check_alignment(out, grid)  # one writer per chunk, or no plan
        if opts.stitch == "hann":
            softmax, _ = output.read_done(out, len(grid), kinds=("softmax",))
    return ScenePlan(index, url, info, grid, out, bands, fp, start, status, done, softmax, previous or {})


def prepare_outputs(job: JobPlan, opts: PredictOptions) -> None:
    """Create the outputs of the scenes to predict (deleting old ones first with
    ``--overwrite``); outputs being resumed are kept as they are."""
    for plan in job.todo:
        if plan.status == "new":
            if opts.overwrite:
                output.remove_outputs(plan.out)
            output.create_zarr(plan.out, plan.info, plan.grid, job.classes, plan.fingerprint, opts.probabilities)
            output.check_alignment(plan.out, plan.grid)
        if opts.stitch == "hann":  # kept if it exists: a rerun resumes
            output.create_scratch(plan.out, plan.grid, len(job.classes))


def tile_ranges(total: int, batch: int, cpus: float, max_tasks: int = 10_000) -> list[dict]:
    """Global tile numbers cut into ``{"lo", "hi"}`` ranges, one per read task.

    A few tasks per CPU, at least a batch each, at most ``max_tasks`` however many
    tiles: the driver holds ranges, never a list of tiles. (Not ``ray.data.range``:
    its read task wants a whole CPU, which no node may have left beside the actors.)
    """
    tasks = min(total // batch + 1, int(4 * cpus) * max(1, total // (batch * 64)), max_tasks)
    per = max(batch, -(-total // max(1, tasks)))
    return [{"lo": lo, "hi": min(lo + per, total)} for lo in range(0, total, per)]
