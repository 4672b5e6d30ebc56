"""STAC items whose bands are separate assets (Sentinel-2, Landsat, HLS: one COG per band).

An item and a list of band names (``--assets blue,green,red,nir``) become one
multi-band raster without copying a pixel: a GDAL VRT (a few kB of XML) that
stacks the band assets on one grid, the finest of them by default or one of
``--resolution`` metres, each band resampled on the fly (bilinear for
reflectance, nearest for categorical bands such as a scene classification).
GDAL then reads the VRT window by window, straight from object storage, like
any COG; the VRT is written beside the outputs
(``PREFIX/.geoseg/inputs/<item id>.vrt``), where every worker can read it.

Bands are found by asset key, then by common name in STAC 1.1 ``bands`` or in
``eo:bands``. Scale, offset and nodata come from ``raster:bands`` (or the
asset's STAC 1.1 ``bands``) where present and are written into the VRT, where
geoseg's readers apply them (:mod:`geoseg.data.raster`).
"""

from __future__ import annotations

import html
import math
import posixpath
from dataclasses import dataclass
from functools import lru_cache

from geoseg.data import storage
from geoseg.errors import InputError

@dataclass(frozen=True)
class StackOptions:
    """How items with one asset per band become rasters (``--assets``, ``--resolution``, ``--resampling``)."""

    assets: tuple[str, ...] | None = None  # band names; None: the model's own bands
    resolution: float | None = None  # metres (CRS units) of the stack; None: the finest band's
    resampling: dict[str, str] | None = None  # per band name; default bilinear, nearest for categorical

    def fingerprint(self) -> dict:
        out = {"assets": list(self.assets) if self.assets else None, "resolution": self.resolution,
               "resampling": dict(sorted((self.resampling or {}).items())) or None}
        return {k: v for k, v in out.items() if v is not None}


RESAMPLING = ("nearest", "bilinear", "cubic", "cubicspline", "lanczos", "average", "mode")


def parse_resampling(text: str | None) -> dict[str, str] | None:
    """``"scl=nearest,nir08=average"`` -> ``{"scl": "nearest", "nir08": "average"}``."""
    if not text:
        return None
    out = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, method = part.partition("=")
        if not sep or method.strip().lower() not in RESAMPLING:
            raise InputError(f"--resampling: {part!r} is not BAND=METHOD with METHOD one of {', '.join(RESAMPLING)}")
        out[name.strip().lower()] = method.strip().lower()
    return out


def parse_assets(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    if not names:
        raise InputError("--assets: empty; give band names, e.g. blue,green,red,nir")
    return names


CATEGORICAL = ("scl", "qa", "qa_pixel", "fmask", "mask", "cloud", "snow", "classification")


@dataclass(frozen=True)
class BandAsset:
    """One band of an item: which asset holds it and how to put it on the stack's grid."""

    name: str  # the band name asked for (also the VRT band's description)
    key: str  # asset key in the item
    href: str  # absolute URL or path
    resampling: str  # nearest, bilinear, average, ...
    scale: float | None = None
    offset: float | None = None
    nodata: float | None = None


@dataclass(frozen=True)
class Grid:
    crs: str  # WKT or EPSG:xxxx
    transform: tuple[float, float, float, float, float, float]  # affine a, b, c, d, e, f
    width: int
    height: int

    @property
    def res(self) -> float:
        return abs(self.transform[0])


def is_item(doc: dict) -> bool:
    return isinstance(doc, dict) and doc.get("type") == "Feature" and isinstance(doc.get("assets"), dict)


def _band_meta(asset: dict) -> dict:
    """The first band's metadata of an asset (STAC 1.1 ``bands``, else ``eo:bands`` / ``raster:bands``)."""
    out: dict = {}
    for field in ("raster:bands", "eo:bands", "bands"):
        bands = asset.get(field)
        if isinstance(bands, list) and bands and isinstance(bands[0], dict):
            out.update(bands[0])
    return out


def _common_name(asset: dict) -> str | None:
    meta = _band_meta(asset)
    return meta.get("eo:common_name") or meta.get("common_name")


def find_asset(item: dict, name: str, source: str) -> str:
    """The asset key holding band ``name``: by key, then by common name."""
    assets = item.get("assets") or {}
    lowered = {k.lower(): k for k in assets}
    if name.lower() in lowered:
        return lowered[name.lower()]
    matches = [k for k, a in assets.items() if (_common_name(a) or "").lower() == name.lower()]
    if len(matches) > 1:  # e.g. Landsat's nir and a lower-resolution copy: prefer the data asset
        data = [k for k in matches if "data" in (assets[k].get("roles") or [])]
        matches = data or matches
    if not matches:
        names = sorted({*assets, *(n for a in assets.values() if (n := _common_name(a)))})
        raise InputError(f"{source}: item {item.get('id')!r} has no band {name!r} "
                         f"(assets and common names: {', '.join(names)})")
    return matches[0]


def resolve_href(href: str, item_source: str) -> str:
    """An href of a STAC document at ``item_source``: absolute as is, relative from its folder."""
    if storage.is_remote(href) or href.startswith(("/", "file://")):
        return href
    return storage.join(posixpath.dirname(item_source) or ".", href)


def resolve_bands(item: dict, source: str, names: list[str], resampling: dict[str, str] | None = None
                  ) -> list[BandAsset]:
    """The assets of ``names``, in that order, with resampling, scale, offset and nodata."""
    if len(set(n.lower() for n in names)) != len(names):
        raise InputError(f"--assets: a band is named twice in {','.join(names)}")
    out = []
    for name in names:
        key = find_asset(item, name, source)
        asset = item["assets"][key]
        meta = _band_meta(asset)
        categorical = key.lower() in CATEGORICAL or name.lower() in CATEGORICAL or "classification:classes" in asset
        method = (resampling or {}).get(name.lower()) or ("nearest" if categorical else "bilinear")
        out.append(BandAsset(
            name=name, key=key, href=resolve_href(asset["href"], source), resampling=method,
            scale=_num(meta.get("scale")), offset=_num(meta.get("offset")), nodata=_num(meta.get("nodata")),
        ))
    return out


def _num(v) -> float | None:
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v


def asset_grid(item: dict, band: BandAsset, headers: dict | None = None) -> Grid:
    """The grid of one band asset: from the projection extension, else from the file's header
    (read once per href into ``headers``, which :func:`stack_item` shares with the dtype lookup)."""
    asset = item["assets"][band.key]
    props = item.get("properties") or {}
    shape = asset.get("proj:shape") or props.get("proj:shape")
    transform = asset.get("proj:transform") or props.get("proj:transform")
    code = asset.get("proj:code") or props.get("proj:code")
    epsg = asset.get("proj:epsg") or props.get("proj:epsg")
    wkt = asset.get("proj:wkt2") or props.get("proj:wkt2")
    crs = wkt or code or (f"EPSG:{epsg}" if epsg else None)
    if shape and transform and crs and len(transform) >= 6:
        return Grid(crs, tuple(float(x) for x in transform[:6]), int(shape[1]), int(shape[0]))
    info = _header(band.href, headers)
    if info.crs is None:
        raise InputError(f"{band.href}: band {band.name!r} of item {item.get('id')!r} has no CRS")
    return Grid(info.crs, info.transform, info.width, info.height)


def _header(href: str, headers: dict | None):
    from geoseg.data.raster import read_info

    if headers is None:
        return read_info(href)
    if href not in headers:
        headers[href] = read_info(href)
    return headers[href]


def stack_grid(grids: list[Grid], resolution: float | None, source: str) -> Grid:
    """The grid every band is put on: the finest band's, or ``resolution`` over the same extent."""
    from geoseg.data.raster import same_crs

    finest = min(grids, key=lambda g: g.res)
    for g in grids:
        if not same_crs(g.crs, finest.crs):
            raise InputError(f"{source}: the band assets are in different CRSs; geoseg stacks bands of one CRS")
        if g.transform[1] or g.transform[3]:
            raise InputError(f"{source}: a band asset has a rotated grid, which geoseg does not stack")
    if resolution is None:
        return finest
    a, _, c, _, e, f = finest.transform
    width = max(1, round(finest.width * abs(a) / resolution))
    height = max(1, round(finest.height * abs(e) / resolution))
    return Grid(finest.crs, (math.copysign(resolution, a), 0.0, c, 0.0, math.copysign(resolution, e), f),
                width, height)


def gdal_path(href: str) -> str:
    """A path GDAL opens: ``s3://b/k`` -> ``/vsis3/b/k``, ``https://`` -> ``/vsicurl/https://``."""
    if href.startswith("s3://"):
        return "/vsis3/" + href[5:]
    if href.startswith(("gs://", "gcs://")):
        return "/vsigs/" + href.split("://", 1)[1]
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    return storage.local_path(href)


def _dtype(dtypes: list[str]) -> str:
    import numpy as np

    name = np.result_type(*[np.dtype(d) for d in dtypes]).name
    return {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
            "int32": "Int32", "float32": "Float32", "float64": "Float64"}.get(name, "Float32")


def build_vrt(bands: list[BandAsset], grids: list[Grid], target: Grid, dtypes: list[str],
              block: int = 512, metadata: dict[str, str] | None = None) -> str:
    """The VRT XML stacking ``bands`` (with their own ``grids``) onto ``target``;
    ``metadata`` becomes the VRT's tags (the item it came from)."""
    from rasterio.crs import CRS

    a, b, c, d, e, f = target.transform
    wkt = CRS.from_user_input(target.crs).to_wkt()
    parts = [f'<VRTDataset rasterXSize="{target.width}" rasterYSize="{target.height}">',
             f"  <SRS>{html.escape(wkt)}</SRS>",
             f"  <GeoTransform>{c!r}, {a!r}, {b!r}, {f!r}, {d!r}, {e!r}</GeoTransform>"]
    if metadata:
        parts.append("  <Metadata>")
        parts += [f'    <MDI key="{html.escape(k)}">{html.escape(str(v))}</MDI>' for k, v in metadata.items()]
        parts.append("  </Metadata>")
    vrt_type = _dtype(dtypes)
    for i, (band, grid) in enumerate(zip(bands, grids), start=1):
        ga, _, gc, _, ge, gf = grid.transform
        # the band's extent in target pixels (same CRS, north-up)
        x0, y0 = (gc - c) / a, (gf - f) / e
        xs, ys = grid.width * ga / a, grid.height * ge / e
        parts.append(f'  <VRTRasterBand dataType="{vrt_type}" band="{i}" blockXSize="{block}" blockYSize="{block}">')
        parts.append(f"    <Description>{html.escape(band.name)}</Description>")
        if band.nodata is not None:
            parts.append(f"    <NoDataValue>{band.nodata!r}</NoDataValue>")
        if band.scale is not None:
            parts.append(f"    <Scale>{band.scale!r}</Scale>")
        if band.offset is not None:
            parts.append(f"    <Offset>{band.offset!r}</Offset>")
        parts.append(f'    <ComplexSource resampling="{band.resampling}">')
        parts.append(f'      <SourceFilename relativeToVRT="0">{html.escape(gdal_path(band.href))}</SourceFilename>')
        parts.append("      <SourceBand>1</SourceBand>")
        parts.append(f'      <SrcRect xOff="0" yOff="0" xSize="{grid.width}" ySize="{grid.height}"/>')
        parts.append(f'      <DstRect xOff="{x0!r}" yOff="{y0!r}" xSize="{xs!r}" ySize="{ys!r}"/>')
        if band.nodata is not None:
            parts.append(f"      <NODATA>{band.nodata!r}</NODATA>")
        parts.append("    </ComplexSource>")
        parts.append("  </VRTRasterBand>")
    parts.append("</VRTDataset>")
    return "\n".join(parts) + "\n"


def stack_item(item: dict, source: str, names: list[str], folder: str, resolution: float | None = None,
               resampling: dict[str, str] | None = None) -> str:
    """Write ``folder/<item id>.vrt`` stacking the item's bands ``names``; returns its URL."""
    return Stack.of(item, source, names, folder, resolution, resampling).build()


@dataclass(frozen=True)
class Stack:
    """An item's bands to stack into a VRT, checked (the bands exist) but not built yet.

    Building reads asset headers where the item's metadata lacks their grid and
    writes the VRT: I/O that a job of thousands of items does in its planning
    tasks, in parallel, not in the driver. Only what the VRT needs is kept of
    the item (its band assets and projection properties), so a job holds a few
    hundred bytes per item, not the whole item.
    """

    item: dict  # the item, slimmed to its id, datetime, projection properties and the band assets
    source: str  # where the item lives (its self link, or the file it came from)
    names: tuple[str, ...]
    folder: str
    resolution: float | None = None
    resampling: tuple[tuple[str, str], ...] | None = None

    @classmethod
    def of(cls, item: dict, source: str, names: list[str], folder: str, resolution: float | None = None,
           resampling: dict[str, str] | None = None) -> "Stack":
        bands = resolve_bands(item, source, list(names), resampling)  # a missing band fails here, in one line
        props = item.get("properties") or {}
        slim = {"id": item.get("id"),
                "properties": {k: v for k, v in props.items() if k.startswith("proj:") or k == "datetime"},
                "assets": {b.key: item["assets"][b.key] for b in bands}}
        return cls(slim, source, tuple(names), folder, resolution,
                   tuple(sorted(resampling.items())) if resampling else None)

    @property
    def stem(self) -> str:
        return str(self.item.get("id") or storage.stem(self.source))

    @property
    def url(self) -> str:
        """Where the VRT is (or will be) written."""
        return storage.join(self.folder, f"{self.stem}.vrt")

    def build(self) -> str:
        """Write the VRT; returns its URL."""
        item, source = self.item, self.source
        bands = resolve_bands(item, source, list(self.names), dict(self.resampling or ()))
        headers: dict = {}  # each asset's header read at most once, only where the metadata lacks it
        grids = [asset_grid(item, b, headers) for b in bands]
        target = stack_grid(grids, self.resolution, source)
        dtypes = [_band_meta(item["assets"][b.key]).get("data_type") or _header(b.href, headers).dtype
                  for b in bands]
        meta = {ITEM_TAG: source, ITEM_ID_TAG: self.stem}
        if (item.get("properties") or {}).get("datetime"):
            meta[ITEM_DATETIME_TAG] = str(item["properties"]["datetime"])
        storage.write_text(self.url, build_vrt(bands, grids, target, dtypes, metadata=meta))
        return self.url


# a stacked VRT's tags: the item it came from (and its acquisition time)
ITEM_TAG, ITEM_ID_TAG, ITEM_DATETIME_TAG = "GEOSEG_STAC_ITEM", "GEOSEG_STAC_ITEM_ID", "GEOSEG_STAC_DATETIME"


def item_of(tags: dict[str, str]) -> dict | None:
    """``{"href", "id"[, "datetime"]}`` of the STAC item a raster (a stacked VRT) was made from, or None."""
    if ITEM_TAG not in tags:
        return None
    out = {"href": tags[ITEM_TAG], "id": tags.get(ITEM_ID_TAG)}
    if tags.get(ITEM_DATETIME_TAG):
        out["datetime"] = tags[ITEM_DATETIME_TAG]
    return out


# --- which items: a STAC API search, and the same filters on an index or item files ---------


def _instant(text: str, end: bool, what: str = "--datetime"):
    """An RFC 3339 date-time (a date alone: its first or, for an interval's end, its last instant),
    timezone-aware (UTC where none is given); None for an open end (``..`` or empty). ``what`` names
    the text in the one line an unreadable one gives."""
    import datetime as dt

    text = text.strip()
    if text in ("", ".."):
        return None
    try:
        if len(text) == 10:
            day = dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
            return day + dt.timedelta(days=1, microseconds=-1) if end else day
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InputError(f"{what}: {text!r} is not an RFC 3339 date or date-time (e.g. 2024-06-01 or "
                         "2024-06-01T10:00:00Z)") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


@lru_cache(maxsize=64)
def _interval(text: str):
    """``(start, end)`` of a ``--datetime`` text (parsed once, not once per item it is matched with)."""
    if "/" in text:
        a, b = text.split("/", 1)
        return _instant(a, False), _instant(b, True)
    single = text.strip()
    return _instant(single, False), _instant(single, len(single) == 10)


@dataclass(frozen=True)
class Search:
    """Which STAC items: ``--stac-api URL`` searched with ``--collections C --bbox W,S,E,N --datetime A/B
    [--filter CQL2] [--query JSON] [--max-items N]``; without a URL, the same filters over STAC-GeoParquet
    indexes (pushed down to the reader, :mod:`geoseg.data.stacindex`) and item files (:meth:`matches`)."""

    url: str | None
    collections: tuple[str, ...] | None = None
    bbox: tuple[float, float, float, float] | None = None
    datetime: str | None = None
    filter: str | None = None  # CQL2 text or JSON
    query: str | None = None  # JSON of the query extension
    max_items: int | None = None

    @classmethod
    def parse(cls, url: str | None, collections: str | None = None, bbox: str | None = None,
              datetime: str | None = None, filter: str | None = None, query: str | None = None,
              max_items: int | None = None) -> "Search":
        box = None
        if bbox:
            try:
                box = tuple(float(v) for v in bbox.split(","))
            except ValueError:
                box = ()
            if len(box) != 4 or not (box[0] <= box[2] and box[1] <= box[3]):
                raise InputError(f"--bbox must be W,S,E,N in degrees with W <= E and S <= N, got {bbox!r}")
        if max_items is not None and max_items < 1:
            raise InputError(f"--max-items must be positive, got {max_items}")
        cols = tuple(c.strip() for c in collections.split(",") if c.strip()) if collections else None
        found = cls(url, cols, box, datetime, filter, query, max_items)
        if datetime:
            start, end = found.interval()
            if start is not None and end is not None and start > end:
                raise InputError(f"--datetime {datetime}: the interval ends before it starts")
        return found

    def interval(self):
        """``(start, end)`` of ``--datetime`` as aware datetimes (None: open); a date alone is its whole day."""
        return _interval(self.datetime) if self.datetime else (None, None)

    def matches(self, item: dict) -> bool:
        """Whether an item passes ``--collections``, ``--bbox`` (its bbox meets the box) and ``--datetime``
        (its datetime, or its start/end interval, meets the interval)."""
        if self.collections and item.get("collection") not in self.collections:
            return False
        if self.bbox and item.get("bbox"):
            b = item["bbox"]
            x0, y0, x1, y1 = (b[0], b[1], b[3], b[4]) if len(b) == 6 else b[:4]
            w, s, e, n = self.bbox
            if x1 < w or x0 > e or y1 < s or y0 > n:
                return False
        if self.datetime:
            start, end = self.interval()
            props = item.get("properties") or {}
            first = props.get("datetime") or props.get("start_datetime")
            last = props.get("datetime") or props.get("end_datetime")
            if not first or not last:
                return False
            what = f"item {item.get('id')!r}: its datetime"
            lo, hi = _instant(str(first), False, what), _instant(str(last), True, what)
            if (end is not None and lo > end) or (start is not None and hi < start):
                return False
        return True

    def flags(self) -> str:
        """The filters as the user typed them, for messages."""
        said = [("--collections", ",".join(self.collections or ())),
                ("--bbox", ",".join(f"{v:g}" for v in self.bbox) if self.bbox else ""),
                ("--datetime", self.datetime or ""), ("--max-items", str(self.max_items or ""))]
        return " ".join(f"{k} {v}" for k, v in said if v)

    def items(self) -> list[dict]:
        """The items found, as dicts (each with its ``self`` link), at most ``max_items``."""
        import json

        from pystac_client import Client
        from pystac_client.exceptions import APIError

        kwargs: dict = {"collections": list(self.collections) if self.collections else None, "bbox": self.bbox,
                        "datetime": self.datetime, "max_items": self.max_items}
        if self.filter:
            text = self.filter.strip()
            kwargs["filter"] = json.loads(text) if text.startswith("{") else text
            kwargs["filter_lang"] = "cql2-json" if text.startswith("{") else "cql2-text"
        if self.query:
            try:
                kwargs["query"] = json.loads(self.query)
            except ValueError:
                raise InputError('--query must be JSON, e.g. \'{"eo:cloud_cover": {"lt": 20}}\'') from None
        try:
            client = Client.open(self.url)
            found = list(client.search(**{k: v for k, v in kwargs.items() if v is not None}).items_as_dicts())
        except APIError as exc:
            raise InputError(f"--stac-api {self.url}: the search was refused ({str(exc).splitlines()[0][:200]})") from None
        except Exception as exc:  # noqa: BLE001 - connection errors and the like: one line
            raise InputError(f"--stac-api {self.url}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
        if not found:
            raise InputError(f"--stac-api {self.url}: no items match the search")
        return found


def self_href(item: dict, default: str) -> str:
    """Where an item lives (its ``self`` link), to resolve its relative hrefs and to link back to it."""
    for link in item.get("links") or []:
        if link.get("rel") == "self" and link.get("href"):
            return link["href"]
    return default
