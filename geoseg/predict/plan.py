"""Planning a predict job, without Ray: the job's context, its scenes, one :class:`ScenePlan` per scene.

:func:`plan_job` (the driver, before Ray starts) resolves and describes the model once
(:class:`~geoseg.models.reference.ModelRef`), expands the inputs, checks the stems, finds the
scenes complete already with one listing, plans the first scene to predict (so that a one-scene
job's bad input fails before Ray starts), and fixes the job's :class:`JobContext`: everything
the stages and tasks need, from the model to the tile core, in one frozen value. No stage sees
the user's options. :func:`plan_scene` plans every other scene in the job's planning tasks
(:func:`geoseg.predict.stages.plan_scenes`): metadata reads (and, for ``index-otsu``, a
decimated read per scene) and the VRT of an item's bands, nothing else written;
:func:`prepare_scene` then creates its Zarr (or keeps it, to resume).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace

import numpy as np

from geoseg.data import limits, output, storage
from geoseg.data.bands import Selection, select_bands
from geoseg.data.classes import ClassScheme
from geoseg.data.inputs import ItemSelection, expand_inputs, searched_inputs
from geoseg.data.masks import MaskSpec, mask_band
from geoseg.data.output import SceneOutput
from geoseg.data.raster import RasterInfo, check_image, read_info
from geoseg.data.stac import Stack
from geoseg.data.tiling import ReadOrder, TileGrid, range_size, read_ranges, strip_for
from geoseg.errors import GeosegError, InputError, OutputExistsError, RasterError, one_line
from geoseg.models.checkpoint import CheckpointMeta
from geoseg.models.index import BAND_ROLES, fit_otsu
from geoseg.models.predictor import ModelSpec
from geoseg.models.reference import ModelRef, resolve
from geoseg.predict.options import PredictOptions


@dataclass(frozen=True)
class JobContext:
    """What every stage and task of a job needs, fixed once by :func:`plan_job`.

    ``core`` is the one holder of the tile size: the side of every tile's core in this job
    (``--tile-size``, or the first scene's side where that was smaller: ``clamped``). What the
    user asked for is kept only where it is a fact about the outputs: the fingerprint.
    """

    job: str  # the job's id
    prefix: str
    spec: ModelSpec  # the model (its reference, described once) and how it runs
    classes: ClassScheme
    core: int  # side of every tile's core (= an output chunk)
    halo: int
    batch_size: int
    stitch: str  # "crop" or "hann"
    probabilities: bool
    precision: str  # --precision as asked (the run record's parameters)
    params: dict  # what determines a scene's outputs but its bands (its fingerprint, in order)
    job_fingerprint: dict  # what determines every scene's outputs, as the job summary stores it
    bands: Selection | None = None  # --bands: the band selection asked for
    allow_no_crs: bool = False
    overwrite: bool = False
    skip_bad_tiles: bool = False
    fail_fast: bool = False
    quicklook: bool = False
    dtype: str = "float32"  # tiles travel in it: the first scene's pixel type
    clamped: bool = False  # core is the first scene's side, smaller than --tile-size
    mask: MaskSpec = MaskSpec()  # --mask: where each scene's validity mask comes from
    mask_reads: tuple[str, ...] = ()  # bands every scene reads beside the model's, for the mask (stacked after)
    cloud_index: tuple[int, ...] = ()  # the cloud model's blue, green, red, nir among the bands read
    uncertainty: bool = False  # --uncertainty: each cell's scores kept (data.uncertainty), for geoseg rank
    tta: bool = False  # --tta (with --uncertainty: the passes' disagreement too)

    @property
    def ref(self) -> ModelRef:
        return self.spec.ref

    @property
    def meta(self) -> CheckpointMeta | None:
        """The model's description (None: an index model)."""
        return self.spec.ref.meta

    @property
    def hann(self) -> bool:
        return self.stitch == "hann"

    @property
    def input_size(self) -> int:
        """The side of every tile's model input: core + 2 halo."""
        return self.core + 2 * self.halo

    def fingerprint(self, bands: list[int]) -> dict:
        """A scene's fingerprint: what determines its output values (a rerun with another is refused)."""
        return {**self.params, "bands": bands}

    def output(self, stem: str) -> SceneOutput:
        return SceneOutput(self.prefix, stem, self.job)


def model_roles(ref: ModelRef) -> tuple[str, ...] | None:
    """The names of the bands the model reads, in its order (None: band numbers only)."""
    meta = ref.meta
    if meta is None:
        return tuple(BAND_ROLES)
    return tuple(meta.extra.get("inputs", {}).get("assets") or meta.band_roles or ()) or None


def mask_bands(mask: MaskSpec, roles: tuple[str, ...] | None) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``(bands read beside the model's, positions of the cloud model's bands among all bands read)``."""
    from geoseg.data.bands import same_band

    if mask.kind != "model":
        return mask.reads, ()
    roles = roles or ()
    reads = tuple(b for b in mask.reads if not any(same_band(b, r) for r in roles))
    index = []
    for b in mask.reads:
        hit = [i for i, r in enumerate(roles) if same_band(b, r)]
        index.append(hit[0] if hit else len(roles) + reads.index(b))
    return reads, tuple(index)


def context_of(opts: PredictOptions, ref: ModelRef, prefix: str) -> JobContext:
    """The context of a job of ``opts`` with the model ``ref`` (before its first scene is planned)."""
    options = {"precision": opts.precision, "compile": opts.compile, "tta": opts.tta} if ref.deep else {}
    reads, cloud_index = mask_bands(opts.mask, model_roles(ref))
    if opts.mask.kind == "model":
        from geoseg.models.cloud import package_dir

        package_dir()  # the cloud model is installed, or one line says how to install it
    return JobContext(
        job=uuid.uuid4().hex, prefix=prefix, spec=ModelSpec(ref, options=options), classes=ref.classes,
        core=opts.tile_size, halo=opts.halo, batch_size=opts.batch_size, stitch=opts.stitch,
        probabilities=opts.probabilities, precision=opts.precision, params=opts.fingerprint([]),
        job_fingerprint=opts.job_fingerprint(), bands=opts.bands, allow_no_crs=opts.allow_no_crs,
        overwrite=opts.overwrite, skip_bad_tiles=opts.skip_bad_tiles, fail_fast=opts.fail_fast,
        quicklook=opts.quicklook, mask=opts.mask, mask_reads=reads, cloud_index=cloud_index,
        uncertainty=opts.uncertainty, tta=opts.tta and ref.deep)


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
    extra: tuple[int, ...] = ()  # band numbers read beside the model's, for the mask (JobContext.mask_reads)
    cloud_scale: float = 1.0  # the cloud model's inputs: reflectance = value x this
    cloud_factor: int = 1  # raster pixels per pixel of the cloud model's input (about 30 m)

    @property
    def read_bands(self) -> list[int]:
        """Every band a tile read takes: the model's, then the mask's."""
        return [*self.bands, *self.extra]

    @property
    def order(self) -> ReadOrder:
        return ReadOrder(self.grid, self.strip or self.grid.shape[1])


@dataclass(frozen=True)
class JobPlan:
    """A job before any scene but the first is planned: its context, every scene's source, the
    scenes found complete by one listing, and the first scene to predict, planned in the driver
    (its bad input fails a one-scene job before Ray starts; its pixel type is the job's)."""

    ctx: JobContext
    sources: list[SceneSource]
    done: frozenset = frozenset()  # indexes of scenes complete already (their record listed, vouched for)
    first: ScenePlan | None = None  # the first scene to predict, planned here
    first_error: str | None = None  # ... or why it could not be planned (a job of several scenes goes on)

    @property
    def spec(self) -> ModelSpec:
        return self.ctx.spec

    @property
    def classes(self) -> ClassScheme:
        return self.ctx.classes

    @property
    def todo(self) -> list[SceneSource]:
        return [s for s in self.sources if s.index not in self.done]

    def output(self, stem: str) -> SceneOutput:
        return self.ctx.output(stem)

    def tile_shape(self) -> tuple[int, int, int]:
        """``(bands, input size, core)`` of every tile of the job."""
        ctx = self.ctx
        nb = len(self.first.bands) if self.first else (ctx.ref.in_channels or len(BAND_ROLES))
        return nb, ctx.input_size, ctx.core


# Errors of one scene (its file, its bands, its outputs' state); any other error stops the job.
def is_scene_error(exc: BaseException) -> bool:
    return isinstance(exc, GeosegError) and not isinstance(exc, OutputExistsError)


def plan_job(inputs: list[str], prefix: str, opts: PredictOptions, log=print) -> JobPlan:
    """Plan the job: the model resolved and described (once), the inputs (expanded, stems
    checked), the scenes complete already and the first scene to predict, but nothing written
    to the outputs yet.

    Every other scene is planned by :func:`plan_scene` in the job's planning tasks, while the
    first ones are read. The checkpoint's weights are checked against its architecture
    separately (:func:`geoseg.models.checkpoint.verify`: it imports torch)."""
    ref = resolve(opts.model, opts.checkpoint)
    if ref.meta is not None:
        _check_stride(opts, ref.meta.model)
    prefix = storage.absolute(prefix)  # records and workers: the same place from any folder
    storage.check_writable(prefix)
    # STAC items with one asset per band: the bands asked for, else the model's own; then the mask's
    ctx = context_of(opts, ref, prefix)
    select = ItemSelection(ctx.mask_reads, opts.max_cloud, opts.search)
    model_bands = model_roles(ref)
    folder = storage.join(prefix, ".geoseg", "_inputs")
    found = expand_inputs(inputs, opts.asset, opts.stack, model_bands, folder, True, select) if inputs else []
    if opts.search and opts.search.url:
        found += searched_inputs(opts.search, opts.asset, opts.stack, model_bands, folder, True, select)
    elif opts.search and not select.item_sources:
        raise InputError(f"{opts.search.flags()}: these choose STAC items (a STAC-GeoParquet index, item files, "
                         "a --stac-api search); the inputs are rasters")
    if select.skipped:
        log(f"--max-cloud {opts.max_cloud:g}: left out {len(select.skipped)} of {select.seen} items with more "
            f"cloud (eo:cloud_cover {min(c for _, c in select.skipped):g} to {max(c for _, c in select.skipped):g} %)")
    if not found:
        if select.skipped:
            raise InputError(f"--max-cloud {opts.max_cloud:g}: every item has more cloud than that")
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
    job = JobPlan(ctx, sources, frozenset(finished_scenes(prefix, sources, ctx.job_fingerprint, ctx.overwrite)))
    todo = job.todo
    if not todo:
        return job
    try:
        first = plan_scene(todo[0], ctx)
    except Exception as exc:
        if len(job.sources) == 1 or opts.fail_fast or not is_scene_error(exc):
            raise
        return replace(job, first_error=one_line(exc))
    # the job's tiles travel in the first scene's pixel type, and take its core side where it was clamped
    ctx = replace(ctx, dtype=first.info.pixel_dtype, core=first.grid.core, clamped=first.grid.core != ctx.core)
    return replace(job, ctx=ctx, first=first)


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


def plan_scene(src: SceneSource, ctx: JobContext, dtype: str | None = None) -> ScenePlan:
    """Read one scene's metadata (building its VRT first, for an item's bands), choose its bands
    and grid, check its outputs (what a rerun resumes) and fit its own model parameters
    (``index-otsu``); writes nothing but the VRT. ``dtype``: the job's tile type, which the
    scene's pixels must fit."""
    url = src.source if isinstance(src.source, str) else src.source.build()
    meta = ctx.meta
    info = read_info(url)
    check_image(info, ctx.allow_no_crs)
    if dtype is not None and not np.can_cast(info.pixel_dtype, dtype):
        raise RasterError(f"{url}: pixels of type {info.pixel_dtype} do not fit the job's {dtype} tiles "
                          "(those of its first scene); predict it in a job of its own")
    if meta is None:
        bands, _ = select_bands(url, info.descriptions, roles=BAND_ROLES, override=ctx.bands)
    else:
        numbers = meta.band_numbers or list(range(1, meta.model.in_channels + 1))
        bands, _ = select_bands(url, info.descriptions, roles=meta.band_roles, numbers=numbers, override=ctx.bands)
        if len(bands) != meta.model.in_channels:
            raise RasterError(f"{url}: model needs {meta.model.in_channels} bands, got {len(bands)}")
        trained_scaled = meta.extra.get("inputs", {}).get("scaled")
        if trained_scaled is not None and trained_scaled != info.scaled:  # values 10^4 apart, say: garbage out
            raise RasterError(
                f"{url}: the model was trained on {'scaled values' if trained_scaled else 'raw digital numbers'}, "
                f"but this raster {'declares' if info.scaled else 'declares no'} band scale/offset; "
                "give it inputs read the same way")
    # a --tile-size larger than the job's first scene is clamped to it (the job's tiles then all take that side)
    core = ctx.core if ctx.clamped else limits.clamp_tile(ctx.core, ctx.halo, info.height, info.width,
                                                           ctx.ref.size_multiple)
    grid = TileGrid(info.height, info.width, core, ctx.halo)
    extra = mask_band_numbers(url, info, ctx)
    limits.check_fits(limits.batch_bytes(ctx.batch_size, len(bands) + len(extra), grid.input_size, meta is not None),
                      f"{url}: --tile-size {core} with --halo {ctx.halo} and --batch-size {ctx.batch_size} "
                      f"({grid.input_size} px model inputs)", "use a smaller --tile-size or --batch-size")
    fp = ctx.fingerprint(bands)
    out = ctx.output(src.stem)
    status = output.check_existing(out, fp, ctx.overwrite)
    done = softmax = previous = None
    if status == "resume":
        done, previous = output.read_done(out, len(grid))
        output.check_alignment(out, grid)  # one writer per chunk, or no plan
        if ctx.hann:
            softmax, _ = output.read_done(out, len(grid), kinds=("softmax",))
    params = fit_otsu(url, bands).to_dict() if ctx.spec.name == "index-otsu" and status != "done" else None
    cloud = {}
    if ctx.mask.kind == "model":
        from geoseg.models.cloud import factor_for

        cloud = {"cloud_scale": 1.0 if info.scaled else 1e-4, "cloud_factor": factor_for(_metres(info))}
    return ScenePlan(src.index, url, info, grid, out, bands, fp, status, done, softmax, previous or {}, params,
                     extra=extra, **cloud)


def mask_band_numbers(url: str, info: RasterInfo, ctx: JobContext) -> tuple[int, ...]:
    """The band numbers of the bands a scene reads for its mask (a band named ``scl``, the cloud
    model's blue, green, red, nir), found by name; one line naming the raster where one is missing."""
    from geoseg.data.bands import resolve_roles

    if not ctx.mask_reads:
        return ()
    if ctx.mask.kind != "model":
        return (mask_band(url, info.descriptions, ctx.mask),)
    try:
        found = resolve_roles(info.descriptions, None, url, needed=ctx.mask_reads)
    except InputError:
        raise InputError(f"{url}: --mask {ctx.mask} reads {', '.join(ctx.mask_reads)}, which the band "
                         f"descriptions {list(info.descriptions)} do not all name") from None
    return tuple(found[b] for b in ctx.mask_reads)


def _metres(info: RasterInfo) -> float | None:
    """The raster's pixel size in metres (None: not in a projected CRS in metres)."""
    if not info.crs:
        return None
    from rasterio.crs import CRS

    crs = CRS.from_user_input(info.crs)
    if crs.is_geographic:
        return None
    return abs(info.transform[0]) * (crs.linear_units_factor[1] if crs.linear_units_factor else 1.0)


def prepare_scene(plan: ScenePlan, ctx: JobContext) -> None:
    """Create the outputs of a scene to predict (deleting old ones first with ``--overwrite``);
    outputs being resumed are kept as they are."""
    if plan.status == "new":
        if ctx.overwrite:
            output.remove_outputs(plan.out)
        output.create_zarr(plan.out, plan.info, plan.grid, ctx.classes, plan.fingerprint, ctx.probabilities)
        output.check_alignment(plan.out, plan.grid)
    if ctx.hann and plan.status != "done":  # kept if it exists: a rerun resumes
        output.create_scratch(plan.out, plan.grid, len(ctx.classes))


def scene_read_ranges(plan: ScenePlan, batch: int, cpus: float) -> tuple[ScenePlan, list[dict]]:
    """A scene's read ranges: positions in its :class:`~geoseg.data.tiling.ReadOrder`, near-squares
    of tiles inside strips (the plan, returned, names the strip width its readers follow)."""
    per = range_size(len(plan.grid), batch, cpus)
    order = ReadOrder(plan.grid, strip_for(plan.grid, per))
    return replace(plan, strip=order.strip), read_ranges(order, per)
