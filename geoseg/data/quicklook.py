"""Quicklooks: small PNGs to look at a scene, a class map and its errors without a GIS.

Every picture comes from decimated reads (a COG's overviews where it has them),
at most ``max_side`` pixels a side, never from a full-resolution read held in
memory. Pictures (all RGBA, nodata transparent):

* :func:`true_colour`  the red, green and blue bands (found by band name, else
  bands 1-3), each stretched between its 2nd and 98th percentile;
* :func:`class_colours` a class map in its class colours;
* :func:`error_colours` where a prediction and its labels disagree, by kind;
* :func:`compose` pictures side by side with titles and a legend.

:func:`write_predict_quicklooks`, :func:`write_error_map` and :func:`quicklook`
(``geoseg quicklook RASTER``) put these together for predict, evaluate and any
raster geoseg wrote.
"""

from __future__ import annotations

import io
import json

import numpy as np

from geoseg.data import storage
from geoseg.data.bands import resolve_roles
from geoseg.data.classes import NODATA, ClassScheme
from geoseg.errors import InputError

MAX_SIDE = 1024
CORRECT = (205, 205, 205)  # error map: prediction and labels agree
ERROR_LEGEND = [("", None), ("errors panel:", None), ("correct", CORRECT), ("wrong: in the colour", None),
                ("of the class predicted", None)]
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


# --- reading -------------------------------------------------------------------


def rgb_bands(url: str, descriptions: tuple[str | None, ...], count: int) -> list[int]:
    """Band numbers of red, green and blue: by band name, else 1, 2, 3 (one band: grey)."""
    try:
        roles = resolve_roles(descriptions, None, url, needed=("red", "green", "blue"))
        return [roles["red"], roles["green"], roles["blue"]]
    except InputError:
        return [1, 2, 3] if count >= 3 else [1]


def read_image(url: str, max_side: int = MAX_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """``(data (bands, h, w) float32, valid (h, w))``: the true-colour bands of an image,
    decimated (GDAL's overviews where the file has them)."""
    from geoseg.data.raster import read_decimated, read_info

    info = read_info(url)
    bands = rgb_bands(url, info.descriptions, info.count)
    data, _, nodata = read_decimated(url, bands, max_side=max_side, resampling="nearest")
    data = data.astype(np.float32)
    # as everywhere in geoseg: a pixel is nodata when every band holds the (raw) nodata value,
    # which read_decimated keeps unscaled there
    if nodata is None:
        valid = np.ones(data.shape[1:], bool)
    elif np.isnan(nodata):
        valid = ~np.all(np.isnan(data), axis=0)
    else:
        valid = ~np.all(data == np.float32(nodata), axis=0)
    return data, valid


# --- colouring -----------------------------------------------------------------


def stretch(data: np.ndarray, valid: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """The bands between the ``low`` and ``high`` percentile of all their valid values, to
    0..255: one stretch for all bands, so colours keep their hue (soil stays brown)."""
    out = np.zeros(data.shape, np.uint8)
    values = data[:, valid]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return out
    lo, hi = np.percentile(values, [low, high])
    scaled = (data - lo) / max(float(hi - lo), 1e-12)
    return (np.clip(np.nan_to_num(scaled), 0, 1) * 255 + 0.5).astype(np.uint8)


def true_colour(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """RGBA (h, w, 4) of stretched bands (one band: grey); nodata transparent."""
    s = stretch(data, valid)
    rgb = np.repeat(s[:1], 3, axis=0) if len(s) < 3 else s[:3]
    return np.dstack([*rgb, np.where(valid, 255, 0).astype(np.uint8)])


def colours_of(scheme: ClassScheme | None, k: int) -> list[tuple[int, int, int]]:
    colours = list(scheme.colors) if scheme else []
    return [tuple(colours[i]) if i < len(colours) else PALETTE[i % len(PALETTE)] for i in range(k)]


def class_colours(classes: np.ndarray, colours: list[tuple[int, int, int]]) -> np.ndarray:
    """RGBA (h, w, 4) of a class map; values that are no class (nodata) transparent."""
    lut = np.zeros((256, 4), np.uint8)
    for i, c in enumerate(colours[:NODATA]):
        lut[i] = (*c, 255)
    return lut[np.asarray(classes).astype(np.uint8)]


def error_colours(labels: np.ndarray, prediction: np.ndarray, colours: list[tuple[int, int, int]],
                  ignore_labels=(NODATA,), ignore_prediction=(NODATA,)) -> np.ndarray:
    """RGBA (h, w, 4): grey where the prediction is right, the colour of the predicted class
    where it is wrong (the kind of error: what it was taken for), transparent where either is nodata."""
    k = len(colours)
    ok = ~np.isin(labels, ignore_labels) & ~np.isin(prediction, ignore_prediction) & (labels < k) & (prediction < k)
    out = class_colours(np.where(ok, prediction, NODATA), colours)
    out[ok & (labels == prediction)] = (*CORRECT, 255)
    return out


# --- composing -----------------------------------------------------------------


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def legend(entries: list[tuple[str, tuple[int, int, int] | None]], height: int | None = None):
    """A legend panel: a colour swatch and a name per entry (no colour: a line of text)."""
    from PIL import Image, ImageDraw

    font, row = _font(14), 22
    width = 28 + max((int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(n, font=font)) for n, _ in entries),
                     default=40) + 12
    img = Image.new("RGBA", (width, max(height or 0, 12 + row * len(entries))), (255, 255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, (name, colour) in enumerate(entries):
        y = 8 + i * row
        if colour is None:
            draw.text((8, y - 1), name, fill=(0, 0, 0, 255), font=font)
            continue
        draw.rectangle([8, y, 24, y + 14], fill=(*colour, 255), outline=(60, 60, 60, 255))
        draw.text((30, y - 1), name, fill=(0, 0, 0, 255), font=font)
    return img


def compose(panels: list[tuple[str, np.ndarray]], entries: list[tuple[str, tuple[int, int, int] | None]] | None = None):
    """Pictures (RGBA arrays, the same height) side by side on white, each titled, then a legend."""
    from PIL import Image, ImageDraw

    font, title_h, gap = _font(15), 24, 8
    h = max(a.shape[0] for _, a in panels)
    side = legend(entries, h) if entries else None
    width = sum(a.shape[1] for _, a in panels) + gap * (len(panels) + 1) + (side.width + gap if side else 0)
    canvas = Image.new("RGBA", (width, h + title_h + gap), (255, 255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = gap
    for title, arr in panels:
        draw.text((x, 4), title, fill=(0, 0, 0, 255), font=font)
        tile = Image.fromarray(arr, "RGBA")
        canvas.alpha_composite(tile, (x, title_h))
        x += arr.shape[1] + gap
    if side:
        canvas.alpha_composite(side, (x, title_h))
    return canvas


def png_bytes(picture) -> bytes:
    """PNG bytes of a PIL image or an RGBA / RGB array."""
    from PIL import Image

    img = Image.fromarray(picture) if isinstance(picture, np.ndarray) else picture
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_png(url: str, picture) -> str:
    storage.write_bytes(url, png_bytes(picture))
    return url


def class_entries(names, colours) -> list[tuple[str, tuple[int, int, int]]]:
    return [(str(n), tuple(c)) for n, c in zip(names, colours)]


def _same_shape(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``a`` resampled (nearest) to ``shape`` (decimated reads of one grid can differ by a pixel)."""
    if a.shape[:2] == tuple(shape):
        return a
    rows = np.minimum((np.arange(shape[0]) * a.shape[0] / shape[0]).astype(int), a.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * a.shape[1] / shape[1]).astype(int), a.shape[1] - 1)
    return a[rows][:, cols]


# --- what geoseg writes ----------------------------------------------------------


def predict_pictures(image_url: str, classes_url: str, scheme: ClassScheme, max_side: int = MAX_SIDE) -> dict:
    """The pictures of one predicted scene: ``rgb`` (the input in true colour), ``classes``
    (the class map with its legend) and ``quicklook`` (both side by side)."""
    from geoseg.data.classmap import read_overview

    data, valid = read_image(image_url, max_side)
    rgb = true_colour(data, valid)
    classes, _ = read_overview(classes_url, max_side)
    colours = colours_of(scheme, len(scheme))
    cls = _same_shape(class_colours(classes, colours), rgb.shape[:2])
    entries = class_entries(scheme.names, colours)
    return {"rgb": rgb, "classes": compose([("classes", cls)], entries),
            "quicklook": compose([("input (true colour)", rgb), ("classes", cls)], entries)}


def write_predict_quicklooks(image_url: str, classes_url: str, scheme: ClassScheme, base: str,
                             max_side: int = MAX_SIDE) -> dict[str, str]:
    """``<base>.rgb.png``, ``<base>.classes.png`` and ``<base>.quicklook.png``; returns their URLs."""
    pictures = predict_pictures(image_url, classes_url, scheme, max_side)
    return {name: write_png(f"{base}.{name}.png", pic) for name, pic in pictures.items()}


def write_error_map(prediction_url: str, labels_url: str, names, scheme: ClassScheme | None, url: str,
                    label_nodata=(NODATA,), prediction_nodata=(NODATA,), max_side: int = MAX_SIDE) -> str:
    """``url``: labels, prediction and their disagreement side by side, with a legend."""
    from geoseg.data.classmap import read_overview

    labels, _ = read_overview(labels_url, max_side)
    pred, _ = read_overview(prediction_url, max_side)
    pred = _same_shape(pred, labels.shape)
    colours = colours_of(scheme, len(names))
    lab_rgba = class_colours(np.where(np.isin(labels, label_nodata), NODATA, labels), colours)
    pred_rgba = class_colours(np.where(np.isin(pred, prediction_nodata), NODATA, pred), colours)
    err = error_colours(labels, pred, colours, label_nodata, prediction_nodata)
    picture = compose([("labels", lab_rgba), ("prediction", pred_rgba), ("errors", err)],
                      class_entries(names, colours) + ERROR_LEGEND)
    return write_png(url, picture)


def quicklook(url: str, out: str | None = None, max_side: int = MAX_SIDE) -> str:
    """``geoseg quicklook RASTER``: a PNG of any raster geoseg wrote (a class map in its colours
    with a legend, an image in true colour, a predict run record or STAC item as input and
    classes side by side); written to ``out``, by default beside the raster."""
    from geoseg.data.classmap import is_zarr, open_class_map, read_overview, scheme_of
    from geoseg.data.raster import read_info

    base = url.rstrip("/")
    target = out or (base.rsplit(".", 1)[0] if "." in base.rsplit("/", 1)[-1] else base) + ".quicklook.png"
    if base.lower().endswith(".json"):
        return _record_quicklook(url, target, max_side)
    info = open_class_map(url).info if is_zarr(url) else read_info(url)
    scheme = scheme_of(info)
    if scheme is not None or (info.count == 1 and info.dtype == "uint8" and not info.descriptions[0]):
        classes, _ = read_overview(url, max_side)
        if scheme is None:
            k = int(classes[classes != NODATA].max()) + 1 if (classes != NODATA).any() else 1
            scheme = ClassScheme(tuple(f"class {i}" for i in range(k)), tuple(PALETTE[i % 10] for i in range(k)))
        colours = colours_of(scheme, len(scheme))
        return write_png(target, compose([("classes", class_colours(classes, colours))],
                                         class_entries(scheme.names, colours)))
    data, valid = read_image(url, max_side)
    return write_png(target, true_colour(data, valid))


def _record_quicklook(url: str, target: str, max_side: int) -> str:
    """A predict run record or output item: its input and its classes side by side."""
    try:
        doc = json.loads(storage.read_text(url))
    except json.JSONDecodeError as exc:
        raise InputError(f"{url}: not valid JSON ({exc.msg})") from None
    if doc.get("type") == "Feature":  # an item of predict's output catalog: its run record
        from geoseg.data import stac

        record = (doc.get("assets") or {}).get("record")
        if not record:
            raise InputError(f"{url}: not an item of geoseg predict (no record asset)")
        return _record_quicklook(stac.resolve_href(record["href"], stac.self_href(doc, url)), target, max_side)
    if not isinstance(doc.get("outputs"), dict) or "cog" not in doc["outputs"]:
        raise InputError(f"{url}: not a geoseg predict run record or output item")
    scheme = ClassScheme.from_dict(doc["model"]["classes"])
    pictures = predict_pictures(doc["input"], doc["outputs"]["cog"], scheme, max_side)
    return write_png(target, pictures["quicklook"])
