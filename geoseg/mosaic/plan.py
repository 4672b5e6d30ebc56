"""Planning a mosaic, without Ray: the scenes a job finished, the stores they go into, what is left.

A scene is known to the mosaic by its run record (:func:`read_scene`: its COG,
Zarr, grid, whether it has probabilities, when it was taken); a store
(:class:`MosaicPlan`) is one grid (the ``--grid``'s, or one UTM zone's) covering
its scenes, in ``chunk``-square chunks. Each chunk is written by one task, once,
and logged done after: a rerun skips the chunks logged, and a store whose record
exists with the same fingerprint is complete.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from geoseg.data import output, storage
from geoseg.data.catalog import utc_time
from geoseg.data.classes import ClassScheme
from geoseg.errors import InputError, OutputExistsError
from geoseg.mosaic.grid import MosaicGrid, snap, utm_zone, zone_name
from geoseg.mosaic.merge import NEEDS_PROBABILITIES
from geoseg.mosaic.merge import RULES as MERGE_RULES
from geoseg.data.raster import RasterInfo
from geoseg.data.tiling import Window

RULES = ("auto", *MERGE_RULES)


@dataclass(frozen=True)
class MosaicScene:
    """What a mosaic needs of one finished scene (a few hundred bytes)."""

    order: int  # merge order: by acquisition time where known, else the job's order (later wins)
    stem: str
    cog: str
    zarr: str
    crs: str  # EPSG:xxxx where it has a code, else WKT
    transform: tuple[float, ...]
    height: int
    width: int
    probabilities: bool
    acquired: str | None
    bounds_4326: tuple[float, float, float, float]


def read_scene(record_url: str) -> MosaicScene:
    """A finished scene, from its run record (order -1 until the scenes are sorted)."""
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds

    rec = json.loads(storage.read_text(record_url))
    if rec.get("status") != "complete":
        raise InputError(f"{record_url}: not a complete run record")
    r = rec["raster"]
    if not r.get("crs"):
        raise InputError(f"{record_url}: the scene has no CRS; a mosaic needs georeferenced scenes")
    epsg = CRS.from_user_input(r["crs"]).to_epsg()
    crs = f"EPSG:{epsg}" if epsg else r["crs"]
    t = tuple(float(v) for v in r["transform"][:6])
    west, east = sorted((t[2], t[2] + t[0] * r["width"]))
    south, north = sorted((t[5], t[5] + t[4] * r["height"]))
    b = transform_bounds(crs, "EPSG:4326", west, south, east, north, densify_pts=21)
    zarr_url = rec["outputs"]["zarr"]
    has_proba = storage.exists(storage.join(zarr_url, "probabilities", "zarr.json"))
    return MosaicScene(-1, storage.stem(record_url), rec["outputs"]["cog"], zarr_url, crs, t, int(r["height"]),
                       int(r["width"]), has_proba, utc_time(rec.get("acquired")), tuple(float(v) for v in b))


def read_scenes(urls: list[str]) -> list[MosaicScene]:
    """The scenes of several run records (one task reads a batch of them)."""
    return [read_scene(u) for u in urls]


def scene_records(prefix: str) -> tuple[list[str], str]:
    """``(run record URLs in the job's order, what they are)`` of a prefix's finished scenes: those
    its job summary lists complete (one read), else every run record the prefix holds (one listing)."""
    summary = output.read_job_summary(prefix)
    if summary:
        urls = [s["record"] for s in summary.get("scenes", []) if s.get("status") in ("complete", "done")]
        pending = [s for s in summary.get("scenes", []) if s.get("status") not in ("complete", "done")]
        if pending:
            raise InputError(f"{prefix}: {len(pending)} of {len(summary['scenes'])} scenes of the job are not "
                             f"complete (the first: {pending[0]['input']}, {pending[0]['status']}); "
                             "rerun the job to finish them before the mosaic")
        basis = json.dumps(summary.get("fingerprint"), sort_keys=True) + "".join(sorted(urls))
    else:
        names = storage.listdir(prefix)
        urls = [storage.join(prefix, n) for n in names if n.endswith(".json") and not n.startswith("_")
                and not n.endswith(".item.json") and n not in ("catalog.json",) and not n.startswith("mosaic")]
        basis = "".join(urls)
    if not urls:
        raise InputError(f"{prefix}: no finished scenes to mosaic (no run records)")
    return urls, hashlib.sha256(basis.encode()).hexdigest()[:16]


def order_scenes(scenes: list[MosaicScene]) -> list[MosaicScene]:
    """The merge order: acquisition time where known (scenes without one first), then the job's."""
    from dataclasses import replace

    ranked = sorted(range(len(scenes)), key=lambda i: (scenes[i].acquired is not None, scenes[i].acquired or "", i))
    return [replace(scenes[i], order=k) for k, i in enumerate(ranked)]


@dataclass(frozen=True)
class MosaicPlan:
    """One store of a mosaic: its grid, scenes (bounds in the store's CRS), chunks, levels, state."""

    name: str  # mosaic, or mosaic-utm32N
    prefix: str  # where the store, its record and its progress log go
    crs: str
    transform: tuple[float, ...]
    height: int
    width: int
    chunk: int
    rule: str  # confidence / latest
    scenes: list[MosaicScene]
    bounds: np.ndarray  # (scenes, 4) west, south, east, north in the store's CRS
    fingerprint: dict
    status: str = "new"  # new / resume / done
    done: dict = field(default_factory=dict)  # level -> packed bitmap of chunks logged done (resume)
    k: int = 1  # classes of the scheme (a larger value is nodata or masked)
    frequencies: bool = False  # also each class's share of the clear observations
    since: str | None = None  # --from: scenes acquired on or after it
    until: str | None = None  # --to: scenes acquired on or before it

    @property
    def url(self) -> str:
        return storage.join(self.prefix, f"{self.name}.zarr")

    @property
    def record(self) -> str:
        return storage.join(self.prefix, f"{self.name}.json")

    @property
    def log(self) -> output.SceneOutput:
        """The progress log (``PREFIX/.geoseg/_<name>/``), by :mod:`geoseg.data.output`'s rules."""
        return output.SceneOutput(self.prefix, f"_{self.name}")

    def shape(self, level: int = 0) -> tuple[int, int]:
        f = 1 << level
        return -(-self.height // f), -(-self.width // f)

    def level_transform(self, level: int = 0) -> tuple[float, ...]:
        a, b, c, d, e, f = self.transform
        k = float(1 << level)
        return (a * k, b, c, d, e * k, f)

    @property
    def levels(self) -> int:
        """Overview levels beyond the full resolution: halved until one chunk holds the map."""
        n = 0
        while max(self.shape(n)) > self.chunk:
            n += 1
        return n

    def chunks(self, level: int = 0) -> tuple[int, int]:
        h, w = self.shape(level)
        return -(-h // self.chunk), -(-w // self.chunk)

    def n_chunks(self, level: int = 0) -> int:
        ny, nx = self.chunks(level)
        return ny * nx

    def window(self, i: int, level: int = 0) -> Window:
        ny, nx = self.chunks(level)
        iy, ix = divmod(i, nx)
        h, w = self.shape(level)
        r0, c0 = iy * self.chunk, ix * self.chunk
        return Window(r0, c0, min(self.chunk, h - r0), min(self.chunk, w - c0))

    def info(self, level: int = 0) -> RasterInfo:
        """The store's grid as a :class:`~geoseg.data.raster.RasterInfo` (for its georeferencing)."""
        from rasterio.crs import CRS

        h, w = self.shape(level)
        return RasterInfo(self.url, h, w, 1, "uint8", CRS.from_user_input(self.crs).to_wkt(),
                          self.level_transform(level), 255, ("classes",))


@dataclass(frozen=True)
class Period:
    """``--from`` / ``--to``: the dates (or date-times, ISO 8601) of the scenes a mosaic merges."""

    since: str | None = None
    until: str | None = None

    def __post_init__(self) -> None:
        for flag, v in (("--from", self.since), ("--to", self.until)):
            if v is not None:
                _instant(v, flag)
        if self.since and self.until and _instant(self.since, "--from") > _instant(self.until, "--to", end=True):
            raise InputError(f"--from {self.since} is after --to {self.until}")

    @property
    def active(self) -> bool:
        return bool(self.since or self.until)

    def holds(self, acquired: str | None) -> bool:
        if not self.active:
            return True
        if not acquired:
            return False
        t = _instant(acquired, "acquired")
        return ((not self.since or t >= _instant(self.since, "--from"))
                and (not self.until or t <= _instant(self.until, "--to", end=True)))


def _instant(text: str, flag: str, end: bool = False):
    """An ISO 8601 date or date-time as an aware datetime (UTC where no zone is given); a bare
    date as ``end`` is the last instant of that day."""
    import datetime as dt

    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{flag} {text!r}: not an ISO 8601 date or date-time, e.g. 2025-06-01") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    if end and len(text.strip()) == 10:  # a date: the whole day
        t += dt.timedelta(days=1, microseconds=-1)
    return t


def destination(prefix: str, out: str | None, name: str = "mosaic") -> tuple[str, str]:
    """``(folder, name)`` of the stores: ``--out`` is a folder for ``NAME.zarr`` (default: the prefix),
    or the store itself when it ends ``.zarr`` (``--out m.zarr``: the store ``m.zarr``, its record
    ``m.json`` beside it; with ``--grid utm:R`` one ``m-utmNNX.zarr`` per zone)."""
    if not out or not out.rstrip("/").lower().endswith(".zarr"):
        return storage.absolute(out or prefix), name
    path = storage.absolute(out.rstrip("/"))
    folder, store = path.rsplit("/", 1)
    stem = store[: -len(".zarr")]
    if not stem:
        raise InputError(f"--out {out}: name the store, e.g. --out maps/mosaic.zarr")
    if name not in ("mosaic", stem):
        raise InputError(f"--out {out} names the store {stem}.zarr, --name {name} another; give one of them")
    return folder or "/", stem


def plan_mosaic(scenes: list[MosaicScene], grid: MosaicGrid, prefix: str, name: str, chunk: int, rule: str,
                basis: str, overwrite: bool = False, k: int = 1, frequencies: bool = False,
                period: Period = Period()) -> list[MosaicPlan]:
    """The stores of a mosaic of ``scenes`` (ordered, :func:`order_scenes`) on ``grid``: one, or one per
    UTM zone; each with its state (a rerun resumes, a complete store is left as it is)."""
    from rasterio.warp import transform_bounds

    if rule not in RULES:
        raise InputError(f"--merge must be one of {', '.join(RULES)}, got {rule!r}")
    if chunk < 64:
        raise InputError(f"--chunk must be >= 64, got {chunk}")
    if period.active:
        kept = [s for s in scenes if period.holds(s.acquired)]
        if not kept:
            raise InputError(f"no scene was acquired between --from {period.since or '..'} and --to "
                             f"{period.until or '..'} ({len(scenes)} scenes, "
                             f"{sum(1 for s in scenes if not s.acquired)} without an acquisition time)")
        scenes = kept
    zones: dict[str, list[MosaicScene]] = {}
    for s in scenes:
        zones.setdefault(utm_zone(s.crs, s.bounds_4326) if grid.per_zone else grid.crs, []).append(s)
    plans = []
    for crs, members in sorted(zones.items()):
        bounds = []
        for s in members:
            t = s.transform
            west, east = sorted((t[2], t[2] + t[0] * s.width))
            south, north = sorted((t[5], t[5] + t[4] * s.height))
            bounds.append(transform_bounds(s.crs, crs, west, south, east, north, densify_pts=21))
        b = np.asarray(bounds, dtype=np.float64)
        transform, height, width = snap((b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()),
                                        grid.resolution)
        use = rule if rule != "auto" else ("confidence" if all(s.probabilities for s in members) else "latest")
        if use in NEEDS_PROBABILITIES and not all(s.probabilities for s in members):
            first = next(s for s in members if not s.probabilities)
            raise InputError(f"--merge {use} needs every scene predicted with --probabilities "
                             f"({first.stem} was predicted without)")
        store = f"{name}-{zone_name(crs)}" if grid.per_zone else name
        fp = {"grid": str(grid), "crs": crs, "chunk": chunk, "rule": use, "scenes": basis,
              **({"frequencies": True} if frequencies else {}),
              **({"from": period.since, "to": period.until} if period.active else {})}
        plans.append(MosaicPlan(store, prefix, crs, transform, height, width, chunk, use, members, b, fp, k=k,
                                frequencies=frequencies, since=period.since, until=period.until))
    return [_state(p, overwrite) for p in plans]


def _state(plan: MosaicPlan, overwrite: bool) -> MosaicPlan:
    from dataclasses import replace

    existing = _stored_fingerprint(plan)
    if existing is None or overwrite:
        return plan
    if existing != plan.fingerprint:
        diff = sorted(k for k in set(existing) | set(plan.fingerprint) if existing.get(k) != plan.fingerprint.get(k))
        what = ", ".join("scenes (the job's scenes changed)" if k == "scenes" else k for k in diff)
        raise OutputExistsError(f"{plan.url}: exists with different {what}; pass --overwrite to make it again")
    if storage.exists(plan.record):
        return replace(plan, status="done")
    done = {lvl: output.read_done(plan.log, plan.n_chunks(lvl), kinds=(kind(lvl),))[0]
            for lvl in range(plan.levels + 1)}
    return replace(plan, status="resume", done=done)


def kind(level: int) -> str:
    """The progress log's name for chunks of ``level`` done."""
    return "done" if level == 0 else f"level{level}"


def _stored_fingerprint(plan: MosaicPlan) -> dict | None:
    import zarr

    if not storage.exists(storage.join(plan.url, "zarr.json")):
        return None
    root = zarr.open_group(storage.zarr_store(plan.url, read_only=True), mode="r")
    return dict(root.attrs).get("geoseg_mosaic")


def prepare(plan: MosaicPlan, classes: ClassScheme) -> None:
    """Create the store of a new mosaic (its full resolution and every overview level), or
    keep it to resume."""
    if plan.status != "new":
        return
    storage.remove(plan.record)
    storage.remove(plan.url, recursive=True)
    storage.remove(plan.log.progress, recursive=True)
    levels = [{"level": 0, "path": ".", "factor": 1}]
    for lvl in range(1, plan.levels + 1):
        levels.append({"level": lvl, "path": f"overviews/{lvl}", "factor": 1 << lvl})
    attrs = {"geoseg_mosaic": plan.fingerprint,
             "multiscales": {"resampling": "mode", "levels": levels}}
    output.create_class_map(plan.url, plan.info(0), plan.chunk, classes, attrs)
    _extra_layers(plan, len(classes))
    if plan.levels:  # an explicit group, so that consolidated metadata finds the levels in it
        import zarr

        zarr.open_group(storage.zarr_store(storage.join(plan.url, "overviews")), mode="w", zarr_format=3)
    for lvl in range(1, plan.levels + 1):
        output.create_class_map(storage.join(plan.url, "overviews", str(lvl)), plan.info(lvl), plan.chunk, classes,
                                {"geoseg_mosaic_level": lvl})


def _extra_layers(plan: MosaicPlan, k: int) -> None:
    """The store's ``count`` of clear observations, and with ``--frequencies`` each class's share."""
    import zarr

    root = zarr.open_group(storage.zarr_store(plan.url), mode="r+")
    geo = {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}
    root.create_array("count", shape=(plan.height, plan.width), chunks=(plan.chunk, plan.chunk), dtype="uint16",
                      fill_value=0, dimension_names=("y", "x"),
                      attributes={**geo, "long_name": "clear observations (not nodata, not masked)"})
    if plan.frequencies:
        root.create_array("frequencies", shape=(k, plan.height, plan.width), chunks=(k, plan.chunk, plan.chunk),
                          dtype="uint8", fill_value=0, dimension_names=("class", "y", "x"),
                          attributes={**geo, "scale_factor": 1 / 255,
                                      "long_name": "share of the clear observations in each class"})
