"""What the user asked of ``geoseg predict``: :class:`PredictOptions`, checked as they are made.

The options reach planning (:func:`geoseg.predict.plan.plan_job`, which fixes a job's
:class:`~geoseg.predict.plan.JobContext` from them) and the runners (where the model runs: actors,
GPUs, the cluster); no stage sees them.
"""

from __future__ import annotations

from dataclasses import dataclass

from geoseg.data.bands import Selection
from geoseg.data.masks import MaskSpec
from geoseg.data.stac import Search, StackOptions
from geoseg.errors import InputError
from geoseg.models.reference import check_choice


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
    uncertainty: bool = False  # --uncertainty: each cell's entropy, margin (and TTA disagreement), for geoseg rank
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
    mask: MaskSpec = MaskSpec()  # --mask: where each scene's validity mask comes from (clouds, shadows...)
    max_cloud: float | None = None  # --max-cloud PCT: STAC items with a higher eo:cloud_cover are left out

    def __post_init__(self) -> None:
        check_choice(self.model, self.checkpoint)
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
        if self.max_cloud is not None and not 0 <= self.max_cloud <= 100:
            raise InputError(f"--max-cloud must be a percentage from 0 to 100, got {self.max_cloud:g}")
        if self.mosaic is not None:
            from geoseg.mosaic import parse_grid

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
            **({"uncertainty": True} if self.uncertainty else {}),
            "stitch": self.stitch,
            **({"stack": self.stack.fingerprint()} if self.stack and self.stack.fingerprint() else {}),
            **({"mask": str(self.mask)} if self.mask.active else {}),
        }

    def job_fingerprint(self) -> dict:
        """What determines the outputs of every scene of a job (the bands as asked for; each
        scene's own fingerprint has the band numbers chosen for it)."""
        fp = self.fingerprint([])
        fp["bands"] = self.bands if self.bands is None else repr(self.bands)
        return fp
