"""The stages of a predict job, without Ray: each a plain function (or class) over a batch.

A batch is a dict of numpy arrays, as Ray Data hands them over; the Ray layer
(:mod:`geoseg.predict.job`) only wires these into a dataset and counts what the
driver receives. In order::

    read_tiles     {lo, hi} tile-number ranges -> image tiles, validity, core crops
    Infer          image tiles -> class cores (+ probabilities), or whole-tile softmax (hann)
    write_tiles    class cores -> one Zarr chunk each, progress log        (crop)
    write_softmax  whole-tile softmax -> scratch array, progress log       (hann, pass 1)
    blend_tiles    {lo, hi} ranges -> blended class cores -> Zarr chunks   (hann, pass 2)
    finish_scene   Zarr -> consolidated metadata and COG; progress log removed

Every stage after the model returns ``{"scene", "model_s", "pixels"}`` per tile:
``pixels`` is the number of output pixels the row wrote (0 for a stored softmax).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from geoseg import output, stitch, storage
from geoseg.classes import NODATA, ClassScheme
from geoseg.errors import ReadError
from geoseg.predict.plan import ScenePlan
from geoseg.predictor import ModelSpec
from geoseg.raster import tile_reader

# --- helpers -------------------------------------------------------------------

_IO_THREAD: ThreadPoolExecutor | None = None


def _low_priority(fn, *args, **kwargs):
    """Run ``fn`` on this process's low-priority I/O thread (nice ``GEOSEG_IO_NICE``, 10).

    Readers and writers share nodes with the model actors. A reader that preempts
    one of torch's intra-op threads stalls the whole parallel region; at a lower
    priority it runs in the gaps the model leaves instead. Only that one thread is
    lowered (Linux nice is per thread), so a worker process later reused for
    other work keeps its normal priority.
    """
    global _IO_THREAD
    if _IO_THREAD is None:
        _IO_THREAD = ThreadPoolExecutor(1, thread_name_prefix="geoseg-io", initializer=_lower_this_thread)
    return _IO_THREAD.submit(fn, *args, **kwargs).result()


def _lower_this_thread() -> None:
    nice = int(os.environ.get("GEOSEG_IO_NICE", "10"))
    if nice > 0 and sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError:
            pass


def tile_ids(batch: dict) -> np.ndarray:
    """Global tile numbers of a batch of ``{lo, hi}`` ranges."""
    return np.concatenate([np.arange(lo, hi, dtype=np.int64) for lo, hi in zip(batch["lo"], batch["hi"])])


def _locate(ids: np.ndarray, plans: list[ScenePlan]):
    """``(scene index, scene plan, tile number in its scene)`` of each global tile number."""
    starts = np.array([p.start for p in plans], dtype=np.int64)
    for gid, s in zip(ids, np.searchsorted(starts, ids, side="right") - 1):
        yield int(s), plans[s], int(gid - plans[s].start)


def _is_set(bitmap: np.ndarray | None, t: int) -> bool:
    return bitmap is not None and bool((bitmap[t >> 3] >> (7 - (t & 7))) & 1)


def _counts(scenes, model_s, pixels) -> dict:
    return {
        "scene": np.asarray(scenes, dtype=np.int32),
        "model_s": np.asarray(model_s, dtype=np.float64),
        "pixels": np.asarray(pixels, dtype=np.int64),
    }


def _log_by_scene(plans: list[ScenePlan], scenes: np.ndarray, tiles: np.ndarray, kind: str = "done") -> None:
    for s in np.unique(scenes):
        output.log_done(plans[s].out, tiles[scenes == s], kind=kind)


# --- read ----------------------------------------------------------------------


def read_tiles(batch: dict, plans: list[ScenePlan], dtype: str, batch_size: int = 8, skip_bad: bool = False):
    """Tile-number ranges -> image tiles, yielded ``batch_size`` tiles at a time.

    A task's memory thus does not grow with the length of its range (ranges get
    longer as jobs grow; see :func:`geoseg.predict.plan.tile_ranges`). An
    unreadable block fails the job naming the file and window
    (:class:`~geoseg.errors.ReadError`), or with ``skip_bad`` the tiles that
    need it are logged as ``bad`` (left nodata, listed in the run record).
    """
    ids = tile_ids(batch)
    for i in range(0, len(ids), batch_size):
        out = _low_priority(_read_tiles, ids[i : i + batch_size], plans, dtype, skip_bad)
        if len(out["tile"]):  # nothing to predict (done, nodata or bad): nothing to send on
            yield out


def _read_scene_tiles(plan: ScenePlan, tiles: list, dtype: str, skip_bad: bool) -> tuple[np.ndarray, list]:
    """``(images (N, bands, T, T), [valid or None, ...])``: None for a tile with an unreadable
    block (``skip_bad``; its image is left empty)."""
    reader = tile_reader(plan.url, plan.bands)
    try:
        return reader.read_tiles(tiles, dtype)
    except ReadError:
        if not skip_bad:
            raise
    size, nb = plan.grid.input_size, len(plan.bands)
    images, valids = np.zeros((len(tiles), nb, size, size), dtype), []
    for i, tile in enumerate(tiles):  # one by one: only the tiles that need the bad block are lost
        try:
            image, valid = reader.read(tile)
        except ReadError:
            valid = None
        else:
            images[i] = image
        valids.append(valid)
    return images, valids


def _read_tiles(ids: np.ndarray, plans: list[ScenePlan], dtype: str, skip_bad: bool = False) -> dict:
    """Tile numbers -> ``{scene, tile, image, valid, crop}``.

    ``image``: ``(N, bands, T, T)`` model inputs; ``valid``: ``(N, core, core)``
    input validity of each core; ``crop``: ``(N, 4)`` the core's place in its
    input. Tiles already finished (or whose softmax is stored) are dropped; tiles
    without a single valid pixel are dropped and logged as ``nodata``. Each
    scene's tiles are read together (:meth:`geoseg.raster.TileReader.read_tiles`),
    straight into the batch.
    """
    wanted: dict[int, list[tuple[int, object]]] = {}
    for s, plan, t in _locate(ids, plans):
        if not (_is_set(plan.done, t) or _is_set(plan.softmax, t)):
            wanted.setdefault(s, []).append((t, plan.grid[plan.grid.index(t)]))
    scenes, tiles, images, valids, crops = [], [], [], [], []
    core = plans[0].grid.core
    for s, todo in wanted.items():
        plan, empty, bad, keep = plans[s], [], [], []
        read, read_valid = _read_scene_tiles(plan, [tile for _, tile in todo], dtype, skip_bad)
        for i, ((t, tile), valid) in enumerate(zip(todo, read_valid)):
            if valid is None:
                bad.append(t)
                continue
            if not valid.any():
                empty.append(t)
                continue
            full = np.zeros((core, core), dtype=bool)
            full[: valid.shape[0], : valid.shape[1]] = valid
            keep.append(i)
            scenes.append(s)
            tiles.append(t)
            valids.append(full)
            crops.append((tile.crop.row_off, tile.crop.col_off, tile.crop.height, tile.crop.width))
        images.append(read if len(keep) == len(todo) else read[keep])  # a copy only where tiles were dropped
        output.log_done(plan.out, np.asarray(empty, dtype=np.int64), kind="nodata")
        output.log_done(plan.out, np.asarray(bad, dtype=np.int64), kind="bad")
    size, nb = plans[0].grid.input_size, len(plans[0].bands)
    return {
        "scene": np.asarray(scenes, dtype=np.int32),
        "tile": np.asarray(tiles, dtype=np.int64),
        "image": (images[0] if len(images) == 1 else np.concatenate(images)) if images
        else np.empty((0, nb, size, size), dtype),
        "valid": np.stack(valids) if valids else np.empty((0, core, core), bool),
        "crop": np.asarray(crops, dtype=np.int32).reshape(-1, 4),
    }


# --- infer ---------------------------------------------------------------------


class Infer:
    """The model stage: holds one model (built once) and turns image tiles into class
    cores (and probabilities), or with ``softmax`` into whole-tile softmax for blending.
    Ray runs it as an actor pool, or the driver calls it (a local job's model on CPU);
    it is a plain callable class. ``predictor``: one built already (else ``spec`` builds it)."""

    def __init__(self, spec: ModelSpec, core: int, probabilities: bool = False, softmax: bool = False,
                 predictor=None):
        self.predictor = predictor if predictor is not None else spec.build()
        self.core, self.probabilities, self.softmax = core, probabilities, softmax
        self.k = self.predictor.num_classes or 1

    def __call__(self, batch: dict) -> dict:
        images, scenes = batch["image"], batch["scene"]
        out = {"scene": scenes, "tile": batch["tile"]}
        t0 = time.perf_counter()
        if self.softmax:
            out["softmax"] = self._softmax(batch)
        else:
            out.update(self._classes(batch))
        out["model_s"] = np.full(len(images), (time.perf_counter() - t0) / max(1, len(images)))
        return out

    def _softmax(self, batch: dict) -> np.ndarray:
        images = batch["image"]
        if len(images) == 0:
            return np.empty((0, self.k, images.shape[-1], images.shape[-1]), np.float32)
        proba = self.predictor.predict_proba(images, batch["scene"])
        return stitch.mask_softmax(proba, batch["valid"], batch["crop"])

    def _classes(self, batch: dict) -> dict:
        images, scenes, crops = batch["image"], batch["scene"], batch["crop"]
        if len(images) == 0:
            out = {"classes": np.empty((0, self.core, self.core), np.uint8)}
            if self.probabilities:
                out["proba"] = np.empty((0, self.k, self.core, self.core), np.uint8)
            return out
        out = {}
        if self.probabilities:
            proba = self.predictor.predict_proba(images, scenes)
            classes = proba.argmax(1).astype(np.uint8)
            out["proba"] = stitch.to_uint8_proba(proba, crops, self.core)
        else:
            classes = self.predictor.predict(images, scenes)
        out["classes"] = stitch.finish(classes, batch["valid"], crops, self.core)
        return out


# --- write ---------------------------------------------------------------------


def write_tiles(batch: dict, plans: list[ScenePlan]) -> dict:
    """Write each tile's core into its own Zarr chunk, then log the tiles as done."""
    return _low_priority(_write_tiles, batch, plans)


def _write_tiles(batch: dict, plans: list[ScenePlan]) -> dict:
    scenes, tiles = np.asarray(batch["scene"]), np.asarray(batch["tile"])
    proba = batch.get("proba")
    pixels = np.zeros(len(tiles), dtype=np.int64)
    for i, (s, t) in enumerate(zip(scenes, tiles)):
        plan = plans[s]
        core = plan.grid[plan.grid.index(int(t))].core
        output.write_tile(plan.out, core, batch["classes"][i], None if proba is None else proba[i])
        pixels[i] = core.size
    _log_by_scene(plans, scenes, tiles)
    return _counts(scenes, batch["model_s"], pixels)


def write_softmax(batch: dict, plans: list[ScenePlan]) -> dict:
    """``--stitch hann``, pass 1: store each tile's softmax, log it as ``softmax``."""
    return _low_priority(_write_softmax, batch, plans)


def _write_softmax(batch: dict, plans: list[ScenePlan]) -> dict:
    scenes, tiles = np.asarray(batch["scene"]), np.asarray(batch["tile"])
    for i, (s, t) in enumerate(zip(scenes, tiles)):
        output.write_softmax(plans[s].out, int(t), batch["softmax"][i])
    _log_by_scene(plans, scenes, tiles, kind="softmax")
    return _counts(scenes, batch["model_s"], np.zeros(len(tiles)))


# --- blend (hann, pass 2) ------------------------------------------------------


def blend_tiles(batch: dict, plans: list[ScenePlan], probabilities: bool) -> dict:
    """``--stitch hann``, pass 2: blend, finish and write each tile's chunk from the
    stored softmax of the tiles that cover it."""
    return _low_priority(_blend_tiles, batch, plans, probabilities)


def _blend_tiles(batch: dict, plans: list[ScenePlan], probabilities: bool) -> dict:
    cache: OrderedDict = OrderedDict()  # neighbouring tiles share inputs; a few are enough

    def fetch(plan: ScenePlan, iy: int, ix: int):
        key = (plan.index, iy, ix)
        if key not in cache:
            cache[key] = output.read_softmax(plan.out, iy * plan.grid.shape[1] + ix)
            if len(cache) > 12:
                cache.popitem(last=False)
        return cache[key]

    scenes, tiles, pixels = [], [], []
    for s, plan, t in _locate(tile_ids(batch), plans):
        if _is_set(plan.done, t):
            continue
        tile = plan.grid[plan.grid.index(t)]
        probs, valid = stitch.blend_core(plan.grid, tile, lambda iy, ix: fetch(plan, iy, ix))
        if not valid.any():
            continue  # no softmax stored: logged as nodata by the model pass
        classes = probs.argmax(0).astype(np.uint8)
        classes[~valid] = NODATA
        output.write_tile(plan.out, tile.core, classes, stitch.to_uint8(probs) if probabilities else None)
        scenes.append(s)
        tiles.append(t)
        pixels.append(tile.core.size)
    _log_by_scene(plans, np.asarray(scenes, dtype=np.int32), np.asarray(tiles, dtype=np.int64))
    return _counts(scenes, np.zeros(len(tiles)), pixels)


# --- finish --------------------------------------------------------------------


def finish_scene(plan: ScenePlan, classes: ClassScheme, quicklook: bool = False) -> dict:
    """Consolidate the Zarr metadata, build the COG (counting each class's pixels and area on
    the way), write the quicklooks (``quicklook``), drop the progress log.

    Returns ``{"counts": tiles by kind, "bad_tiles": [{tile, window}], "cog_seconds", "classes":
    pixels and hectares by class, "quicklooks": PNG URLs}``; the run record is written
    afterwards by the driver, last of all.
    """
    _, counts = output.read_done(plan.out, len(plan.grid))
    bad = []
    for t in output.logged_tiles(plan.out, "bad"):
        core = plan.grid[plan.grid.index(t)].core
        bad.append({"tile": t, "window": {"row_off": core.row_off, "col_off": core.col_off,
                                           "height": core.height, "width": core.width}})
    output.consolidate(plan.out)
    t0 = time.perf_counter()
    counted = output.zarr_to_cog(plan.out, plan.info, classes)
    cog_s = time.perf_counter() - t0
    pictures = _quicklooks(plan, classes) if quicklook else {}
    storage.remove(plan.out.progress, recursive=True)
    return {"counts": counts, "bad_tiles": bad, "cog_seconds": round(cog_s, 3),
            "classes": output.class_areas(classes, counted), "quicklooks": pictures}


def _quicklooks(plan: ScenePlan, classes: ClassScheme) -> dict[str, str]:
    """The scene's quicklook PNGs (from the input's and the COG's overviews: small reads), by
    the names the run record lists them under."""
    from geoseg.quicklook import write_predict_quicklooks

    urls = write_predict_quicklooks(plan.url, plan.out.cog, classes, storage.join(plan.out.prefix, plan.out.stem))
    return {"quicklook" if name == "quicklook" else f"quicklook_{name}": url for name, url in urls.items()}


def add_quicklooks(plan: ScenePlan, classes: ClassScheme) -> bool:
    """``--quicklook`` on a scene finished earlier without them: draw them and list them in its
    run record (rewritten whole, so it stays complete). False when it has them already."""
    record = json.loads(storage.read_text(plan.out.record))
    if record.get("outputs", {}).get("quicklook"):
        return False
    record["outputs"].update(_quicklooks(plan, classes))
    item_url = record["outputs"].get("stac_item")
    if item_url and storage.exists(item_url):  # and in its STAC item
        from geoseg.catalog import quicklook_assets

        item = json.loads(storage.read_text(item_url))
        item["assets"].update(quicklook_assets(record["outputs"]))
        storage.write_text(item_url, json.dumps(item, indent=2))
    output.write_record(plan.out, record)
    return True
