"""Predict's outputs as a STAC catalog, for tools that do not know geoseg.

For each finished scene ``PREFIX/<stem>.item.json``: a STAC 1.1 Item with the
projection (code, transform, shape), classification (class values, names,
colours) and raster extensions, assets for the COG (``classes``), the Zarr
store and the run record, the processing extension (the software that made it),
the ML-model extension (the model), and a ``derived_from`` link to the input
item when the input was a STAC item. ``PREFIX/catalog.json`` links every item
written under the prefix (jobs add to it). ``pystac`` reads them and
``odc.stac.load(items, bands=["classes"])`` gives the COG's pixels.
"""

from __future__ import annotations

import datetime as dt
import json

from geoseg.version import __version__
from geoseg.data import storage
from geoseg.data.classes import MASKED, NODATA, ClassScheme
from geoseg.data.raster import RasterInfo

EXTENSIONS = [
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
    "https://stac-extensions.github.io/mlm/v1.4.0/schema.json",
]


def utc_time(when: str | None) -> str | None:
    """An ISO 8601 time as STAC wants it (RFC 3339 in UTC, ``Z``): one without a zone (a TIFF's
    ``DATETIME``) taken as UTC, one with another zone converted; None where it does not parse."""
    if not when:
        return None
    try:
        t = dt.datetime.fromisoformat(str(when).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    t = t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)
    return t.isoformat().replace("+00:00", "Z")


def item_url(prefix: str, stem: str) -> str:
    return storage.join(prefix, f"{stem}.item.json")


def _footprint(info: RasterInfo) -> tuple[list[float], dict]:
    """``(bbox, geometry)`` in WGS84 of the raster's extent."""
    from rasterio.warp import transform_bounds, transform_geom

    a, b, c, d, e, f = info.transform
    xs = [c, c + a * info.width, c + b * info.height, c + a * info.width + b * info.height]
    ys = [f, f + d * info.width, f + e * info.height, f + d * info.width + e * info.height]
    left, right, bottom, top = min(xs), max(xs), min(ys), max(ys)
    if info.crs is None:  # no CRS: the pixel extent, as is (geoseg refused it unless --allow-no-crs)
        return [left, bottom, right, top], _box(left, bottom, right, top)
    box = _box(left, bottom, right, top)
    geom = transform_geom(info.crs, "EPSG:4326", box)
    return list(transform_bounds(info.crs, "EPSG:4326", left, bottom, right, top, densify_pts=21)), geom


def _box(w: float, s: float, e: float, n: float) -> dict:
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def _proj(info: RasterInfo) -> dict:
    out = {"proj:shape": [info.height, info.width], "proj:transform": list(info.transform[:6])}
    if info.crs:
        from rasterio.crs import CRS

        epsg = CRS.from_wkt(info.crs).to_epsg()
        out.update({"proj:code": f"EPSG:{epsg}"} if epsg else {"proj:code": None, "proj:wkt2": info.crs})
    return out


def _classes(classes: ClassScheme) -> list[dict]:
    return [{"value": i, "name": n, "color_hint": "%02X%02X%02X" % tuple(c)}
            for i, (n, c) in enumerate(zip(classes.names, classes.colors))] + [
        {"value": MASKED, "name": "masked", "description": "not classified: masked (--mask: cloud, shadow...)",
         "nodata": True},
        {"value": NODATA, "name": "nodata", "nodata": True}]


def scene_item(stem: str, outputs: dict, info: RasterInfo, classes: ClassScheme, record: dict,
               model: dict, input_item: dict | None) -> dict:
    """The STAC Item of one scene's outputs (``outputs``: URLs of cog, zarr and record)."""
    bbox, geometry = _footprint(info)
    made = utc_time(record.get("finished")) or utc_time(dt.datetime.now(dt.timezone.utc).isoformat())
    # when the scene was taken (its input item, else the raster's own time); the processing time apart
    when = utc_time((input_item or {}).get("datetime")) or utc_time(record.get("acquired"))
    props = {
        "datetime": when or made,
        **({} if when else {"geoseg:datetime_is": "processing time: the input carries no acquisition time"}),
        "created": made,
        **_proj(info),
        "classification:classes": _classes(classes),
        "processing:software": {"geoseg": __version__},
        "processing:datetime": made,
        "processing:lineage": f"geoseg predict with model {model.get('name')}"
                              + (f" ({model.get('checkpoint')})" if model.get("checkpoint") else ""),
        "mlm:name": model.get("checkpoint") or model.get("name"),
        "mlm:architecture": model.get("arch") or model.get("name"),
        "mlm:tasks": ["semantic-segmentation"],
        "mlm:framework": "pytorch" if model.get("checkpoint") else "numpy",
        "mlm:input": [{"name": "bands", "bands": model.get("bands") or [],
                       "input": {"shape": [-1, len(model.get("bands") or []), -1, -1],
                                 "dim_order": ["batch", "bands", "height", "width"]}}],
        "mlm:output": [{"name": "classes", "tasks": ["semantic-segmentation"],
                        "result": {"shape": [-1, 1, -1, -1], "dim_order": ["batch", "channel", "height", "width"],
                                   "data_type": "uint8"},
                        "classification:classes": _classes(classes)[:-1]}],
    }
    raster_band = {"data_type": "uint8", "nodata": NODATA, "spatial_resolution": abs(info.transform[0])}
    links = []
    if input_item:
        links.append({"rel": "derived_from", "href": storage.absolute(input_item["href"]), "type": "application/geo+json",
                      "title": f"input item {input_item.get('id')}"})
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": EXTENSIONS,
        "id": stem,
        "bbox": bbox,
        "geometry": geometry,
        "properties": props,
        "links": links,
        "assets": {
            "classes": {"href": storage.absolute(outputs["cog"]), "title": "class map (COG)",
                        "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"],
                        "raster:bands": [raster_band], "classification:classes": _classes(classes)},
            "zarr": {"href": storage.absolute(outputs["zarr"]), "title": "class map (Zarr v3; classes, spatial_ref)",
                     "type": "application/vnd+zarr", "roles": ["data"]},
            "record": {"href": storage.absolute(outputs["record"]), "title": "geoseg run record",
                       "type": "application/json", "roles": ["metadata"]},
            **quicklook_assets(outputs),
        },
    }


def quicklook_assets(outputs: dict) -> dict:
    """The quicklook PNGs of ``predict --quicklook`` as overview assets."""
    titles = {"quicklook": ("input and classes side by side", ["overview"]),
              "quicklook_rgb": ("input in true colour", ["overview"]),
              "quicklook_classes": ("class map with legend", ["overview", "visual"])}
    return {key: {"href": storage.absolute(outputs[key]), "title": title, "type": "image/png", "roles": roles}
            for key, (title, roles) in titles.items() if outputs.get(key)}


def write_item(prefix: str, stem: str, item: dict) -> str:
    url = item_url(prefix, stem)
    doc = dict(item)
    doc["links"] = [*item["links"], {"rel": "self", "href": storage.absolute(url), "type": "application/geo+json"}]
    storage.write_text(url, json.dumps(doc, indent=2, default=str))
    return url


def update_catalog(prefix: str, item_urls: list[str]) -> str:
    """``PREFIX/catalog.json``: a STAC Catalog linking every item written under the prefix."""
    url = storage.join(prefix, "catalog.json")
    try:
        catalog = json.loads(storage.read_text(url)) if storage.exists(url) else None
    except (ValueError, OSError):
        catalog = None
    if not isinstance(catalog, dict) or catalog.get("type") != "Catalog":
        catalog = {"type": "Catalog", "stac_version": "1.1.0", "id": "geoseg-predictions",
                   "description": "Class maps made by geoseg predict", "links": []}
    known = {ln.get("href") for ln in catalog["links"] if ln.get("rel") == "item"}
    for item in item_urls:
        if storage.absolute(item) not in known:
            catalog["links"].append({"rel": "item", "href": storage.absolute(item), "type": "application/geo+json"})
    catalog["links"] = [ln for ln in catalog["links"] if ln.get("rel") not in ("self", "root")] + [
        {"rel": "root", "href": storage.absolute(url), "type": "application/json"},
        {"rel": "self", "href": storage.absolute(url), "type": "application/json"}]
    storage.write_text(url, json.dumps(catalog, indent=2))
    return url
