"""Turn what the user typed into a list of raster URLs.

Accepted: paths and URLs, globs (local or remote), a ``.txt`` file with one
path/URL per line, STAC Item / ItemCollection JSON (asset key selectable), and
STAC-GeoParquet indexes (``items.parquet``, :mod:`geoseg.data.stacindex`), whose
items ``--bbox`` / ``--datetime`` / ``--collections`` / ``--max-cloud`` choose.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field

from geoseg.data import stac, stacindex, storage
from geoseg.errors import InputError


def _key(source) -> str:
    return source if isinstance(source, str) else source.url


def is_glob(s: str) -> bool:
    return any(ch in s for ch in "*?[")


def expand_glob(pattern: str) -> list[str]:
    """Sorted matches of a local or object-storage glob; one line if none."""
    if storage.is_remote(pattern):
        fs, _ = storage.filesystem(pattern)
        proto = pattern.split("://", 1)[0]
        found = [f"{proto}://{p}" for p in sorted(fs.glob(pattern.split("://", 1)[1]))]
    else:
        found = [storage.absolute(p) for p in sorted(glob.glob(pattern))]
    if not found:
        raise InputError(f"{pattern}: no files match")
    return found


def read_list(url: str) -> list[str]:
    """The paths / URLs of a ``.txt`` list, one per line (blank lines and ``#`` comments skipped)."""
    lines = storage.read_text(url).splitlines()
    listed = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not listed:
        raise InputError(f"{url}: lists no inputs")
    return listed


def read_stac(url: str) -> dict:
    """A STAC Item or ItemCollection file; one line if it is neither."""
    try:
        doc = json.loads(storage.read_text(url))
    except json.JSONDecodeError as exc:
        raise InputError(f"{url}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict) or doc.get("type") not in ("Feature", "FeatureCollection"):
        raise InputError(f"{url}: not a STAC Item or ItemCollection")
    return doc


@dataclass
class ItemSelection:
    """Which items of STAC inputs are kept, and what each one adds to its stack.

    ``extra``: bands read beside the model's (a ``--mask`` asset such as ``scl``, or the cloud
    model's bands), stacked after them; ``max_cloud``: items whose ``eo:cloud_cover`` is higher
    are left out (``--max-cloud``), counted in ``skipped``; ``where``: the ``--bbox`` / ``--datetime`` /
    ``--collections`` filters (:class:`~geoseg.data.stac.Search`), which item files and indexes
    pass through too (a search's own items are the API's answer to them)."""

    extra: tuple[str, ...] = ()
    max_cloud: float | None = None
    where: stac.Search | None = None
    skipped: list = field(default_factory=list)  # (item id, its cloud cover) of the items left out
    seen: int = 0  # items looked at
    item_sources: int = 0  # item files, indexes and searches among the inputs

    def keeps(self, item: dict) -> bool:
        self.seen += 1
        if self.where is not None and not self.where.matches(item):
            return False
        cover = (item.get("properties") or {}).get("eo:cloud_cover")
        if self.max_cloud is None or not isinstance(cover, (int, float)) or cover <= self.max_cloud:
            return True
        self.skipped.append((item.get("id"), cover))
        return False

    def stack_names(self, names: tuple[str, ...], item: dict, where: str) -> tuple[str, ...]:
        """The model's band names and, after them, the extra bands not among them already."""
        from geoseg.data.bands import same_band

        out = list(names)
        for extra in self.extra:
            if any(same_band(extra, n) for n in out):
                continue
            try:
                stac.find_asset(item, extra, where)
            except InputError:
                raise InputError(f"{where}: item {item.get('id')!r} has no asset {extra!r} for --mask "
                                 f"(assets: {', '.join(sorted(item.get('assets') or {}))})") from None
            out.append(extra)
        return tuple(out)


def _item_raster(item: dict, where: str, asset: str | None, stack: stac.StackOptions | None,
                 default_assets: tuple[str, ...] | None, folder: str | None, defer: bool,
                 select: ItemSelection):
    """An item's raster URL: the ``--asset`` given, the item's one GeoTIFF asset, or a VRT stacking
    its band assets (``--assets``, else the model's own bands; with ``defer`` a
    :class:`~geoseg.data.stac.Stack` to build later, in a planning task)."""
    assets = item.get("assets") or {}
    names = (stack.assets if stack else None) or None
    if asset is None and names is None and select.extra and default_assets:
        names = tuple(default_assets)
    if asset is None and names is None:
        candidates = [k for k, a in assets.items() if "image/tiff" in str(a.get("type", ""))]
        if len(candidates) == 1 or not default_assets:
            if len(candidates) != 1:
                raise InputError(f"{where}: item {item.get('id')!r} has assets {sorted(assets)}; choose one "
                                 "with --asset, or bands to stack with --assets")
            asset = candidates[0]
        else:
            names = tuple(default_assets)
    if names is not None:
        names = select.stack_names(tuple(names), item, where)
        if folder is None:
            raise InputError(f"{where}: stacking band assets needs an output folder")
        request = stac.Stack.of(item, where, list(names), folder, stack.resolution if stack else None,
                                stack.resampling if stack else None)
        return request if defer else request.build()
    if select.extra:
        raise InputError(f"{where}: --mask reads {', '.join(select.extra)} beside the bands, which needs the item's "
                         f"bands stacked (--assets), not one --asset {asset!r}")
    if asset not in assets:
        raise InputError(f"{where}: item {item.get('id')!r} has no asset {asset!r} (has {sorted(assets)})")
    return stac.resolve_href(assets[asset]["href"], where)


def _rasters(found: list, asset, stack, default_assets, folder, defer, select: ItemSelection) -> list:
    """:func:`sources` as raster URLs (each item's, :func:`_item_raster`), without duplicates."""
    urls = [s if isinstance(s, str) else _item_raster(*s, asset, stack, default_assets, folder, defer, select)
            for s in found]
    seen: set = set()
    return [u for u in urls if not (_key(u) in seen or seen.add(_key(u)))]


def searched_inputs(search: stac.Search, asset: str | None = None, stack: stac.StackOptions | None = None,
                    default_assets: tuple[str, ...] | None = None, folder: str | None = None,
                    defer: bool = False, select: ItemSelection | None = None) -> list:
    """Raster URLs of the items a STAC API search finds (one per item, as for item files)."""
    select = select or ItemSelection()
    return _rasters(sources([], search, select), asset, stack, default_assets, folder, defer, select)


def expand_inputs(items: list[str], asset: str | None = None, stack: stac.StackOptions | None = None,
                  default_assets: tuple[str, ...] | None = None, folder: str | None = None,
                  defer: bool = False, select: ItemSelection | None = None) -> list:
    """Expand inputs into raster URLs, in order, without duplicates.

    STAC items with one asset per band become VRTs written under ``folder``
    (see :mod:`geoseg.data.stac`): ``stack.assets``, else ``default_assets`` (the model's bands);
    with ``defer``, :class:`~geoseg.data.stac.Stack` requests that a planning task builds."""
    select = select or ItemSelection()
    return _rasters(sources(items, None, select), asset, stack, default_assets, folder, defer, select)


def sources(items: list[str], search: stac.Search | None = None, select: ItemSelection | None = None) -> list:
    """The inputs as they are: a raster URL (paths, globs, ``.txt`` lists), or ``(item, where it
    lives)`` for each STAC item (item and ItemCollection files, a search) kept by ``select``
    (``--max-cloud``); in order, without duplicates. :func:`expand_inputs` makes them rasters;
    ``geoseg composite`` reads each band asset itself."""
    select = select or ItemSelection()
    found: list = []

    def items_of(doc: dict, where: str) -> None:
        select.item_sources += 1
        for item in (doc.get("features") if doc.get("type") == "FeatureCollection" else [doc]) or []:
            if select.keeps(item):
                found.append((item, stac.self_href(item, where)))

    def index(url: str) -> None:
        items_of({"type": "FeatureCollection", "features": stacindex.read_index(url, select.where, select.max_cloud)},
                 url)

    for entry in items:
        lower = entry.lower()
        if is_glob(entry):  # an index's parts (items/*.parquet) are read as indexes, anything else as rasters
            for match in expand_glob(entry):
                if stacindex.is_index(match):
                    index(match)
                else:
                    found.append(match)
        elif lower.endswith(".txt"):
            found.extend(sources(read_list(entry), None, select))
        elif lower.endswith((".json", ".geojson")):
            items_of(read_stac(entry), entry)
        elif stacindex.is_index(entry):
            index(entry)
        else:
            found.append(storage.absolute(entry))
    if search is not None and search.url:
        items_of({"type": "FeatureCollection", "features": search.items()}, search.url)
    seen: set = set()

    def key(s) -> str:
        return s if isinstance(s, str) else f"{s[1]}#{s[0].get('id')}"

    unique = [s for s in found if not (key(s) in seen or seen.add(key(s)))]
    where = select.where
    if where is not None and where.max_items and not where.url:  # a search's own limit is the API's
        items = [s for s in unique if not isinstance(s, str)][: where.max_items]
        unique = [s for s in unique if isinstance(s, str)] + items
    if not unique:
        if where is not None and not select.skipped:
            raise InputError(f"{where.flags()}: no STAC item of the inputs matches")
        if select.skipped:
            raise InputError(f"--max-cloud {select.max_cloud:g}: all {len(select.skipped)} items have more cloud "
                             f"(eo:cloud_cover from {min(c for _, c in select.skipped):g} %)")
        raise InputError("no inputs given")
    return unique
