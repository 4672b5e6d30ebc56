"""Planning ``geoseg evaluate``, without Ray: what was given, as (prediction, labels) pairs, and one
:class:`ScenePlan` per pair, checked before any pixel is read.

Predictions: class rasters (GeoTIFF / COG) or predict's Zarr stores, globs of them,
``.txt`` lists, predict's run records (``<stem>.json``), its STAC items, item
collections or output catalog (``PREFIX/catalog.json``, or the ``PREFIX`` folder
itself). Labels (``--labels``): one folder (each prediction finds the label raster
of its own name, e.g. ``labels/<stem>.tif``), or rasters / globs / lists, paired
in order. Without ``--labels``, each STAC prediction takes the ``labels`` asset
(``--label-asset``) of its item or of the input item it was derived from; and
``geoseg evaluate PREDICTION LABELS`` (two rasters) is one pair.

:func:`plan_scene` reads both rasters' metadata and refuses, in one line, what cannot be
compared (not class maps, different grids, different class names); :func:`plan_scenes` plans
every pair (metadata of many objects, read in threads) and refuses pairs of other classes.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from geoseg.data import stac, storage
from geoseg.data.area import PixelArea
from geoseg.data.classes import NODATA, ClassScheme
from geoseg.data.classmap import open_class_map, scheme_of
from geoseg.data.inputs import expand_glob, is_glob, read_list
from geoseg.data.raster import RasterInfo, check_class_map, grid_difference
from geoseg.data.tiling import Window
from geoseg.errors import InputError, RasterError

RASTER_SUFFIXES = (".tif", ".tiff", ".zarr", ".vrt", ".jp2", ".img")


@dataclass(frozen=True)
class Pair:
    """One scene to score: its name (unique in a job), the prediction and the labels."""

    name: str
    prediction: str
    labels: str


@dataclass(frozen=True)
class _Prediction:
    url: str
    name: str
    labels: str | None = None  # from a STAC item's label asset


def find_pairs(predictions: list[str], labels: list[str] | None = None, label_asset: str = "labels") -> list[Pair]:
    """The pairs to score, in the order given, each with a unique name."""
    predictions = [storage.absolute(p) for p in predictions]  # the same files on every worker, from any folder
    labels = [storage.absolute(u) for u in labels] if labels else labels
    found = [p for arg in predictions for p in _predictions(arg, label_asset)]
    if not found:
        raise InputError("no predictions given")
    if labels:
        label_urls = _labels_for(found, labels)
    elif all(p.labels for p in found):
        label_urls = [p.labels for p in found]
    elif len(predictions) == 2 and len(found) == 2 and not any(_is_collection(a) for a in predictions):
        # ``geoseg evaluate PREDICTION LABELS``: one pair
        found, label_urls = found[:1], [found[1].url]
    else:
        missing = next(p for p in found if not p.labels)
        raise InputError(f"{missing.url}: no labels for this prediction; pass --labels FOLDER (label rasters named "
                         f"as the predictions) or --labels FILES, or give STAC items with a {label_asset!r} asset")
    names: dict[str, int] = {}
    pairs = []
    for p, lab in zip(found, label_urls):
        n = names[p.name] = names.get(p.name, 0) + 1
        pairs.append(Pair(p.name if n == 1 else f"{p.name}-{n}", p.url, lab))
    return pairs


def _is_collection(arg: str) -> bool:
    low = arg.lower().rstrip("/")
    return is_glob(arg) or low.endswith((".txt", ".json")) or (not low.endswith(".zarr") and storage.isdir(arg))


def _predictions(arg: str, label_asset: str) -> list[_Prediction]:
    low = arg.lower().rstrip("/")
    if is_glob(arg):
        return [p for url in expand_glob(arg) for p in _predictions(url, label_asset)]
    if low.endswith(".txt"):
        return [p for url in read_list(arg) for p in _predictions(url, label_asset)]
    if low.endswith((".json", ".geojson")):
        return _from_json(arg, _read_json(arg), label_asset)
    if not low.endswith(RASTER_SUFFIXES) and storage.isdir(arg):
        catalog = storage.join(arg, "catalog.json")
        if not storage.exists(catalog):
            raise InputError(f"{arg}: a folder without catalog.json; give class rasters, Zarr stores, or a "
                             "geoseg predict output folder")
        return _predictions(catalog, label_asset)
    return [_Prediction(arg, storage.stem(arg))]


def _read_json(url: str) -> dict:
    try:
        doc = json.loads(storage.read_text(url))
    except json.JSONDecodeError as exc:
        raise InputError(f"{url}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{url}: not a STAC document or geoseg run record")
    return doc


def _from_json(url: str, doc: dict, label_asset: str) -> list[_Prediction]:
    kind = doc.get("type")
    if kind == "Catalog" or kind == "Collection":
        items = [stac.resolve_href(ln["href"], url) for ln in doc.get("links") or [] if ln.get("rel") == "item"]
        if not items:
            raise InputError(f"{url}: a catalog without items")
        return [p for item in items for p in _from_json(item, _read_json(item), label_asset)]
    if kind == "FeatureCollection":
        return [p for f in doc.get("features") or [] for p in _from_json(url, f, label_asset)]
    if kind == "Feature":
        where = stac.self_href(doc, url)
        assets = doc.get("assets") or {}
        key = "classes" if "classes" in assets else None
        if key is None:
            raise InputError(f"{where}: item {doc.get('id')!r} has no 'classes' asset (assets {sorted(assets)}); "
                             "not an item of geoseg predict")
        return [_Prediction(stac.resolve_href(assets[key]["href"], where), str(doc.get("id") or storage.stem(where)),
                            _label_asset(doc, where, label_asset))]
    if isinstance(doc.get("outputs"), dict) and "cog" in doc["outputs"]:  # a geoseg predict run record
        if doc.get("status") != "complete":
            raise InputError(f"{url}: the run record of an unfinished prediction")
        labels = None
        if doc.get("stac_item"):
            item_url = doc["stac_item"]["href"]
            labels = _label_asset(_read_json(item_url), item_url, label_asset)
        return [_Prediction(doc["outputs"]["cog"], storage.stem(url), labels)]
    raise InputError(f"{url}: not a STAC Item, ItemCollection or Catalog, nor a geoseg run record")


def _label_asset(item: dict, where: str, key: str) -> str | None:
    """The label raster of an item: its own ``key`` asset, or that of the item it was derived from."""
    assets = item.get("assets") or {}
    if key in assets:
        return stac.resolve_href(assets[key]["href"], where)
    for link in item.get("links") or []:
        if link.get("rel") == "derived_from" and link.get("href"):
            source = stac.resolve_href(link["href"], where)
            try:
                parent = _read_json(source)
            except (InputError, OSError):
                return None
            parent_assets = parent.get("assets") or {}
            if key in parent_assets:
                return stac.resolve_href(parent_assets[key]["href"], stac.self_href(parent, source))
    return None


def _labels_for(found: list[_Prediction], labels: list[str]) -> list[str]:
    """Label URLs for the predictions: by name from one folder, else in order."""
    if len(labels) == 1 and not labels[0].lower().rstrip("/").endswith(RASTER_SUFFIXES + (".txt",)) \
            and not is_glob(labels[0]) and storage.isdir(labels[0]):
        folder = labels[0]
        by_stem: dict[str, str] = {}
        for name in storage.listdir(folder):
            if name.lower().endswith(RASTER_SUFFIXES):
                by_stem.setdefault(storage.stem(name), storage.join(folder, name))
        out = []
        for p in found:
            if p.name not in by_stem:
                raise InputError(f"{folder}: no label raster named {p.name}.tif (or .tiff, .zarr, ...) "
                                 f"for prediction {p.url}")
            out.append(by_stem[p.name])
        return out
    urls = []
    for arg in labels:
        if is_glob(arg):
            urls.extend(expand_glob(arg))
        elif arg.lower().endswith(".txt"):
            urls.extend(read_list(arg))
        else:
            urls.append(arg)
    if len(urls) != len(found):
        raise InputError(f"{len(found)} prediction(s) but {len(urls)} label raster(s); give one label raster "
                         "per prediction (paired in order) or one --labels FOLDER")
    return urls


CHUNK = 2048  # side of a scoring chunk: a multiple of predict's 512-px tiles and of common block sizes


@dataclass(frozen=True)
class ScenePlan:
    """What scoring one pair needs, all of it small: both rasters' metadata, the classes,
    the nodata values and the pixel area."""

    pair: Pair
    prediction: RasterInfo
    labels: RasterInfo
    names: tuple[str, ...]
    label_nodata: tuple[int, ...]
    prediction_nodata: tuple[int, ...]
    area: PixelArea | None
    chunk: int = CHUNK

    @property
    def k(self) -> int:
        return len(self.names)

    @property
    def pixels(self) -> int:
        return self.labels.height * self.labels.width

    @property
    def n_chunks(self) -> int:
        return -(-self.labels.height // self.chunk) * -(-self.labels.width // self.chunk)

    def window(self, i: int) -> Window:
        """Chunk ``i`` (row-major) of the scene."""
        per_row = -(-self.labels.width // self.chunk)
        r, c = (i // per_row) * self.chunk, (i % per_row) * self.chunk
        return Window(r, c, min(self.chunk, self.labels.height - r), min(self.chunk, self.labels.width - c))

    def windows(self) -> list[Window]:
        return [self.window(i) for i in range(self.n_chunks)]


def plan_scene(pair: Pair, num_classes: int | None = None, chunk: int = CHUNK) -> ScenePlan:
    """Check a pair and describe it; every refusal is one line naming the files."""
    pred, labels = open_class_map(pair.prediction).info, open_class_map(pair.labels).info
    check_class_map(pred)
    check_class_map(labels, "label raster")
    diff = grid_difference(pred, labels)
    if diff:
        raise RasterError(f"{pair.prediction} and {pair.labels} are not on the same grid ({diff})")
    names = class_names(pair, scheme_of(labels), scheme_of(pred), num_classes)
    return ScenePlan(pair, pred, labels, names, _nodata(labels), _nodata(pred),
                     PixelArea.of(labels.crs, labels.transform), chunk)


def class_names(pair: Pair, from_labels: ClassScheme | None, from_pred: ClassScheme | None,
                num_classes: int | None) -> tuple[str, ...]:
    """The classes scored: the label raster's names (``CLASS_NAMES``), else the prediction's;
    ``num_classes`` says how many when neither has names, or overrides them."""
    if from_labels and from_pred and from_labels.names != from_pred.names:
        raise RasterError(f"{pair.prediction} and {pair.labels} name their classes differently "
                          f"({list(from_pred.names)} vs {list(from_labels.names)})")
    scheme = from_labels or from_pred
    if num_classes is None:
        if scheme is None:
            raise RasterError(f"{pair.labels}: no class names (CLASS_NAMES tag); pass --num-classes")
        return tuple(scheme.names)
    known = list(scheme.names) if scheme else []
    return tuple(known[i] if i < len(known) else f"class_{i}" for i in range(num_classes))


def _nodata(info: RasterInfo) -> tuple[int, ...]:
    """Values that mean "no class here": the raster's nodata and geoseg's 255."""
    values = {NODATA}
    if info.nodata is not None and float(info.nodata).is_integer():
        values.add(int(info.nodata))
    return tuple(sorted(values))


def plan_scenes(pairs: list[Pair], num_classes: int | None = None, chunk: int = CHUNK) -> list[ScenePlan]:
    """Every pair checked before any pixel is read (metadata of many objects, read in threads)."""
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(pairs)))) as pool:
        plans = list(pool.map(lambda p: plan_scene(p, num_classes, chunk), pairs))
    first = plans[0]
    for p in plans[1:]:
        if p.names != first.names:
            raise RasterError(f"{p.pair.labels} has classes {list(p.names)} but {first.pair.labels} has "
                              f"{list(first.names)}; score them separately")
    return plans
