"""What a composite does, decided before a pixel is read (no Ray).

    TimeWindow        --window [NAME=]START/END: the dates a composite takes its observations from
    parse_statistic   --statistic: median, mean or a percentile pNN
    CompositeOptions  the user's options, checked as they are made
    Observation       one scene (a STAC item or a raster): its time, and per band the file, band
                      number and grid to read (each band asset on its own grid: no VRT, no resampling
                      before the composite's own); its mask's bands; its bounds on the output grid
    describe          sources -> observations (asset headers read only where an item lacks its grid)
    CompositePlan     the output tiles of one grid (one per UTM zone with utm:RES), the observations
                      of each window, the fingerprint, the tiles done already

Output tiles are squares of ``side`` px on the grid's CRS, numbered from the CRS's origin:
``x{col}_y{row}`` spans x from ``col`` to ``col + 1`` and y from ``row`` to ``row + 1`` tile
sides (``row`` counts northwards, like y), so composites on the same grid line up tile for tile
whatever items they hold.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import re
from dataclasses import dataclass, field

import numpy as np

from geoseg.data import storage
from geoseg.data.masks import CLOUD_BANDS, MaskSpec
from geoseg.errors import InputError
from geoseg.mosaic import MosaicGrid, parse_grid, utm_zone, zone_name

STATISTICS = "median (default), mean, or a percentile pNN (p10, p90)"
DEFAULT_SIDE = 2048  # px of an output tile's side (20.48 km at 10 m)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class TimeWindow:
    """The dates a composite takes observations from, both ends included (None: open)."""

    name: str
    start: str | None = None  # YYYY-MM-DD
    end: str | None = None

    def holds(self, when: str | None) -> bool:
        if self.start is None and self.end is None:
            return True
        if not when:
            return False
        day = when[:10]
        return (self.start is None or day >= self.start) and (self.end is None or day <= self.end)

    @property
    def dates(self) -> str:
        return f"{self.start or '..'}/{self.end or '..'}"


def _date(text: str, flag: str) -> str | None:
    text = text.strip()
    if text in ("", ".."):
        return None
    try:
        return dt.date.fromisoformat(text[:10]).isoformat()
    except ValueError:
        raise InputError(f"--window {flag!r}: {text!r} is not a date (YYYY-MM-DD)") from None


def parse_windows(texts: list[str] | None) -> tuple[TimeWindow, ...]:
    """``["2025-03-01/2025-05-31", "harvest=2025-08-01/2025-10-15"]`` -> windows named ``2025-03``
    (the start's month; its date where two windows start in one month) and ``harvest``. None: one
    window ``all`` of every observation."""
    if not texts:
        return (TimeWindow("all"),)
    parsed = []
    for text in texts:
        name, sep, span = str(text).rpartition("=")
        start, slash, end = span.partition("/")
        if not slash:
            raise InputError(f"--window {text!r}: expected [NAME=]START/END, e.g. 2025-03-01/2025-05-31 or "
                             "planting=2025-03-01/2025-05-31")
        a, b = _date(start, text), _date(end, text)
        if a and b and a > b:
            raise InputError(f"--window {text!r}: starts after it ends")
        if sep and not _NAME.match(name):
            raise InputError(f"--window {text!r}: a window's name is letters, digits, - and _ (it names bands: "
                             "red@NAME)")
        parsed.append((name if sep else None, a, b, text))
    defaults = [a[:7] if a else "open" for n, a, _, _ in parsed if n is None]
    out = []
    for name, a, b, text in parsed:
        if name is None:
            name = a[:7] if a and defaults.count(a[:7]) == 1 else (a or "open")
        if any(w.name == name for w in out):
            raise InputError(f"--window {text!r}: another window is named {name!r}; name them, e.g. "
                             "--window planting=2025-03-01/2025-05-31")
        out.append(TimeWindow(name, a, b))
    return tuple(out)


def parse_statistic(text: str | None) -> str:
    """``median``, ``mean`` or ``pNN`` (0 <= NN <= 100); one line if not."""
    s = (text or "median").strip().lower()
    if s in ("median", "mean"):
        return s
    if s.startswith("p"):
        try:
            q = float(s[1:])
        except ValueError:
            q = float("nan")
        if 0 <= q <= 100:
            return f"p{q:g}"
    raise InputError(f"--statistic {text!r}: expected {STATISTICS}")


@dataclass(frozen=True)
class CompositeOptions:
    """``geoseg composite``'s options, checked as they are made."""

    inputs: tuple[str, ...]
    out: str
    grid: str
    windows: tuple[TimeWindow, ...] = (TimeWindow("all"),)
    statistic: str = "median"
    bands: tuple[str, ...] = ("blue", "green", "red", "nir")
    mask: MaskSpec = MaskSpec()
    side: int = DEFAULT_SIDE
    bbox: tuple[float, float, float, float] | None = None  # W, S, E, N in degrees
    search: object | None = None  # a geoseg.data.stac.Search
    max_cloud: float | None = None
    overwrite: bool = False

    def __post_init__(self):
        parse_grid(self.grid)
        if self.side < 64:
            raise InputError(f"--tile-size {self.side}: at least 64 px")
        if not self.bands:
            raise InputError("--bands: give the bands to composite, e.g. blue,green,red,nir")
        if any("@" in b for b in self.bands):
            raise InputError(f"--bands {','.join(self.bands)}: a band to composite has no window (@) yet: the "
                             "composite names its bands BAND@WINDOW")
        if len({b.lower() for b in self.bands}) != len(self.bands):
            raise InputError(f"--bands {','.join(self.bands)}: a band is given twice")
        if any(b.lower() == "count" for b in self.bands):
            raise InputError("--bands: 'count' is the composite's own band (clear observations)")


@dataclass(frozen=True)
class Layer:
    """One band of one observation, as stored: its file, band number and grid."""

    href: str
    band: int  # 1-based
    crs: str
    transform: tuple[float, ...]
    width: int
    height: int
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None  # None: the file's own (read when opened)

    @property
    def grid_key(self) -> tuple:
        return (self.crs, self.transform, self.width, self.height)


@dataclass(frozen=True)
class Observation:
    """One scene of a composite: its id, time, the layers of the composite's bands (in their
    order), its mask's layers (a mask band, or the cloud model's blue, green, red, nir) and its
    bounds on the output grid."""

    id: str
    when: str | None
    layers: tuple[Layer, ...]
    mask: tuple[Layer, ...]
    crs: str  # the output grid's CRS it belongs to (its UTM zone with utm:RES)
    bounds: tuple[float, float, float, float]  # W, S, E, N in ``crs``


def _item_layers(item: dict, where: str, names: list[str], headers: dict) -> list[Layer]:
    from geoseg.data import stac

    out = []
    for b in stac.resolve_bands(item, where, names):
        g = stac.asset_grid(item, b, headers)
        out.append(Layer(b.href, 1, g.crs, tuple(g.transform), g.width, g.height,
                         1.0 if b.scale is None else b.scale, 0.0 if b.offset is None else b.offset, b.nodata))
    return out


def _raster_layers(info, names: list[str]) -> list[Layer]:
    from geoseg.data.bands import resolve_roles

    numbers = resolve_roles(info.descriptions, None, info.url, needed=tuple(names))
    return [Layer(info.url, n, info.crs, tuple(info.transform), info.width, info.height,
                  info.scales[n - 1] if info.scales else 1.0, info.offsets[n - 1] if info.offsets else 0.0,
                  info.nodata) for n in numbers.values()]


def describe(sources: list, bands: tuple[str, ...], mask: MaskSpec, grid: MosaicGrid) -> list[Observation]:
    """Observations of ``sources`` (raster URLs or ``(item, where)``): each band's layer, the mask's,
    the time and the bounds on ``grid`` (a planning task: headers are read only where needed)."""
    from rasterio.warp import transform_bounds

    from geoseg.data.masks import mask_band
    from geoseg.data.output import acquired
    from geoseg.data.raster import read_info, same_crs

    out = []
    for source in sources:
        if isinstance(source, str):
            info = read_info(source)
            if info.crs is None:
                raise InputError(f"{source}: has no CRS; a composite puts every scene on its grid")
            layers = _raster_layers(info, list(bands))
            if mask.kind in ("values", "bits"):
                n = mask_band(source, info.descriptions, mask)
                masks = [Layer(source, n, info.crs, tuple(info.transform), info.width, info.height)]
            else:
                masks = _raster_layers(info, list(CLOUD_BANDS)) if mask.kind == "model" else []
            ident, when = storage.stem(source), acquired(info)
        else:
            item, where = source
            headers: dict = {}
            layers = _item_layers(item, where, list(bands), headers)
            masks = (_item_layers(item, where, list(mask.reads), headers) if mask.active else [])
            if mask.kind in ("values", "bits"):  # a mask band's values are codes: never scaled
                masks = [dataclasses.replace(m, scale=1.0, offset=0.0) for m in masks]
            props = item.get("properties") or {}
            ident, when = str(item.get("id") or storage.stem(where)), props.get("datetime") or props.get("start_datetime")
        first = layers[0]
        a, _, c, _, e, f = first.transform
        west, east = sorted((c, c + a * first.width))
        south, north = sorted((f, f + e * first.height))
        if grid.per_zone:
            b4326 = transform_bounds(first.crs, "EPSG:4326", west, south, east, north, densify_pts=21)
            crs = utm_zone(first.crs, b4326)
        else:
            crs = grid.crs
        box = transform_bounds(first.crs, crs, west, south, east, north, densify_pts=21)
        # a layer in the grid's CRS says so in the grid's words: its pixels are then an affine map away
        layers, masks = ([dataclasses.replace(la, crs=crs) if la.crs != crs and same_crs(la.crs, crs) else la
                          for la in group] for group in (layers, masks))
        out.append(Observation(ident, when, tuple(layers), tuple(masks), crs, tuple(float(v) for v in box)))
    return out


@dataclass(frozen=True)
class CompositePlan:
    """The output tiles of one grid CRS and what each window takes (no pixels)."""

    out: str
    crs: str
    zone: str  # "" or the UTM zone's name (utm32N): a prefix of the tile ids
    resolution: float
    side: int
    windows: tuple[TimeWindow, ...]
    statistic: str
    bands: tuple[str, ...]
    mask: MaskSpec
    observations: tuple[Observation, ...]
    members: tuple[tuple[int, ...], ...]  # per window: the observations it takes, by time
    tiles: tuple[tuple[int, int], ...]  # (col, row) of each output tile, from the CRS's origin
    fingerprint: str
    done: frozenset = field(default_factory=frozenset)  # tile ids complete already

    @property
    def bounds(self) -> np.ndarray:
        return np.asarray([o.bounds for o in self.observations], float).reshape(-1, 4)

    def tile_id(self, i: int) -> str:
        col, row = self.tiles[i]
        return f"{self.zone + '_' if self.zone else ''}x{col}_y{row}"

    def tile_transform(self, i: int) -> tuple[float, ...]:
        col, row = self.tiles[i]
        span = self.side * self.resolution
        return (self.resolution, 0.0, col * span, 0.0, -self.resolution, (row + 1) * span)

    def tile_bounds(self, i: int) -> tuple[float, float, float, float]:
        a, _, c, _, e, f = self.tile_transform(i)
        return (c, f + e * self.side, c + a * self.side, f)

    def cog(self, i: int, window: TimeWindow) -> str:
        tile = self.tile_id(i)
        return storage.join(self.out, "tiles", tile, f"{tile}_{window.name}.tif")

    def item(self, i: int, window: TimeWindow) -> str:
        tile = self.tile_id(i)
        return storage.join(self.out, "tiles", tile, f"{tile}_{window.name}.json")

    def stack(self, i: int) -> str:
        """The tile's stack of every window's bands (a VRT), written last: the tile is then done."""
        return storage.join(self.out, STACKS, f"{self.tile_id(i)}.vrt")


STACKS = "stacks"  # OUT/stacks/<tile>.vrt: one per finished tile
RECORD = "composite.json"
STATE = ".geoseg/composite.state.json"  # the fingerprint of the composite being made


def fingerprint(opts: CompositeOptions, observations: list[Observation]) -> str:
    """What determines the composite's pixels: the observations' files, the windows, the statistic,
    the bands, the mask, the grid and the tiles."""
    doc = {"observations": sorted([o.id, o.when, [(la.href, la.band) for la in o.layers]] for o in observations),
           "windows": [[w.name, w.start, w.end] for w in opts.windows], "statistic": opts.statistic,
           "bands": list(opts.bands), "mask": str(opts.mask), "grid": str(parse_grid(opts.grid)), "side": opts.side,
           "bbox": opts.bbox}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tiles_of(box, span: float) -> set[tuple[int, int]]:
    w, s, e, n = box
    cols = range(math.floor(w / span), max(math.floor(w / span) + 1, math.ceil(round(e / span, 9))))
    rows = range(math.floor(s / span), max(math.floor(s / span) + 1, math.ceil(round(n / span, 9))))
    return {(c, r) for c in cols for r in rows}


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def plan_composite(opts: CompositeOptions, observations: list[Observation], done: set[str]) -> list[CompositePlan]:
    """One plan per grid CRS (one, or a UTM zone each): the windows' observations by time, the tiles
    they reach (inside ``--bbox``), the fingerprint; ``done``: tile ids finished already."""
    from rasterio.warp import transform_bounds

    grid = parse_grid(opts.grid)
    print_ = fingerprint(opts, observations)
    in_window = [o for o in observations if any(w.holds(o.when) for w in opts.windows)]
    if not in_window:
        times = sorted(o.when[:10] for o in observations if o.when)
        raise InputError(f"--window {' '.join(w.dates for w in opts.windows)}: none of the {len(observations)} "
                         f"observations falls in a window (their dates: "
                         f"{times[0] + ' to ' + times[-1] if times else 'none known: a raster is dated by its '}"
                         f"{'' if times else 'TIFFTAG_DATETIME, an item by its datetime'})")
    plans = []
    for crs in sorted({o.crs for o in in_window}):
        obs = sorted((o for o in in_window if o.crs == crs), key=lambda o: (o.when or "", o.id))
        span = opts.side * grid.resolution
        clip = transform_bounds("EPSG:4326", crs, *opts.bbox, densify_pts=21) if opts.bbox else None
        tiles: set = set()
        for o in obs:
            if clip is None or _overlaps(o.bounds, clip):
                tiles |= _tiles_of(o.bounds, span)
        members = tuple(tuple(k for k, o in enumerate(obs) if w.holds(o.when)) for w in opts.windows)
        keep = tuple(t for t in sorted(tiles, key=lambda t: (-t[1], t[0])) if clip is None
                     or _overlaps((t[0] * span, t[1] * span, (t[0] + 1) * span, (t[1] + 1) * span), clip))
        zone = zone_name(crs) if grid.per_zone else ""
        plan = CompositePlan(storage.absolute(opts.out), crs, zone, grid.resolution, opts.side, opts.windows,
                             opts.statistic, opts.bands, opts.mask, tuple(obs), members, keep, print_)
        plans.append(dataclasses.replace(plan, done=frozenset(plan.tile_id(i) for i in range(len(keep))
                                                              if plan.tile_id(i) in done)))
    if not any(p.tiles for p in plans):
        raise InputError(f"--bbox {opts.bbox}: no observation reaches it")
    return plans
