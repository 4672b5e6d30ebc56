"""The stages of a predict job, without Ray: each a plain function (or class) over a batch.

A batch is a dict of numpy arrays, as Ray Data hands them over; the Ray layer
(:mod:`geoseg.predict.job`) only wires these into one dataset and follows, in the
driver, which scenes are finished. In order::

    plan_scenes    scene sources -> tile ranges of each scene, its plan with them  (planning tasks)
    read_tiles     tile ranges -> image tiles, validity, core crops
    Infer          image tiles -> class cores (+ probabilities), or whole-tile softmax (hann)
    write_tiles    class cores -> one Zarr chunk each, progress log        (crop)
    write_softmax  whole-tile softmax -> scratch array, progress log       (hann, pass 1)
    blend_tiles    a scene's tile range -> blended class cores -> chunks   (hann, pass 2, per scene)
    finish_scene   Zarr -> consolidated metadata and COG; progress log removed
    complete_scene finish_scene, then the STAC item and the run record, last

Every row after planning carries its scene's plan (``plan``, pickled: a few kB,
so a job's scenes are planned while it runs and no process holds every plan),
``accounted`` (how many of the scene's tiles the row stands for: itself and the
tiles dropped before it, done, nodata or unreadable) and ``error`` (why the
scene failed, or ""). Rows with ``tile`` -1 are markers: they carry the count
and the error only. The driver adds ``accounted`` up per scene: at the scene's
tile count, the scene is through the model. Every stage after the model returns
``{"scene", "model_s", "pixels"}`` per row (with the carried columns):
``pixels`` is the number of output pixels the row wrote (0 for a stored softmax).
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from geoseg import catalog, output, stitch, storage
from geoseg.classes import NODATA, ClassScheme
from geoseg.errors import ReadError, one_line
from geoseg.predict.plan import (JobPlan, PredictOptions, SceneSource, ScenePlan, is_scene_error, plan_scene,
                                 prepare_scene, scene_read_ranges)
from geoseg.predictor import ModelSpec
from geoseg.raster import tile_reader

CARRY = ("plan", "accounted", "error")  # the columns every row carries from planning to the driver

# --- helpers -------------------------------------------------------------------

_IO_THREAD: ThreadPoolExecutor | None = None
_IO_THREADS = 1  # how many low-priority I/O threads this process has (io_threads)


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
        _IO_THREAD = ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="geoseg-io", initializer=_lower_this_thread)
    return _IO_THREAD.submit(fn, *args, **kwargs).result()


def io_threads(n: int) -> None:
    """At least ``n`` low-priority I/O threads in this process: a job without Ray reads with
    several reader threads in the driver, as a Ray job reads in several read tasks."""
    global _IO_THREAD, _IO_THREADS
    if n > _IO_THREADS:
        _IO_THREADS = n
        if _IO_THREAD is not None:
            old, _IO_THREAD = _IO_THREAD, None
            old.shutdown(wait=False)


def _lower_this_thread() -> None:
    nice = int(os.environ.get("GEOSEG_IO_NICE", "10"))
    if nice > 0 and sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError:
            pass


def pack(plan) -> bytes:
    return pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL)


def plans_of(batch: dict) -> dict[int, ScenePlan]:
    """The plans of a batch's scenes by scene index (one unpickled per scene)."""
    scenes = np.asarray(batch["scene"])
    if len(scenes) == 0:
        return {}
    _, first = np.unique(scenes, return_index=True)
    return {int(scenes[i]): pickle.loads(batch["plan"][i]) for i in first}


def _is_set(bitmap: np.ndarray | None, t: int) -> bool:
    return bitmap is not None and bool((bitmap[t >> 3] >> (7 - (t & 7))) & 1)


def _counts(scenes, model_s, pixels, batch: dict) -> dict:
    return {
        "scene": np.asarray(scenes, dtype=np.int32),
        "model_s": np.asarray(model_s, dtype=np.float64),
        "pixels": np.asarray(pixels, dtype=np.int64),
        **{k: batch[k] for k in CARRY},
    }


def _log_by_scene(plans: dict[int, ScenePlan], scenes: np.ndarray, tiles: np.ndarray, kind: str = "done") -> None:
    for s in np.unique(scenes):
        sel = (scenes == s) & (tiles >= 0)
        if sel.any():
            output.log_done(plans[int(s)].out, tiles[sel], kind=kind)


# --- plan ----------------------------------------------------------------------


def source_rows(sources: list[SceneSource]) -> list[dict]:
    """The planning tasks' input: one row per scene to plan."""
    return [{"scene": s.index, "source": pack(s)} for s in sources]


def planned_rows(plan: ScenePlan, batch_size: int, cpus: float) -> list[dict]:
    """A planned scene's rows for the readers: its tile ranges, each with the plan; one empty
    range for a scene complete already."""
    if plan.status == "done":
        return [{"scene": plan.index, "plan": pack(plan), "lo": 0, "hi": 0, "error": ""}]
    plan, ranges = scene_read_ranges(plan, batch_size, cpus)
    packed = pack(plan)
    return [{"scene": plan.index, "plan": packed, "lo": r["lo"], "hi": r["hi"], "error": ""} for r in ranges]


def plan_scenes(batch: dict, job: JobPlan, opts: PredictOptions, batch_size: int, cpus: float):
    """Scene sources -> the rows of each scene's tile ranges, as each scene is planned (its VRT
    built, its header read, its outputs created or kept to resume). A scene that cannot be
    planned becomes one row with its error (``--fail-fast``: the job stops)."""
    for i in range(len(batch["scene"])):
        packed = batch["source"][i]
        src = pickle.loads(packed)
        if isinstance(src, ScenePlan):  # planned in the driver (the job's first scene)
            plan = src
        else:
            try:
                plan = plan_scene(src, job, opts, job.dtype)
            except Exception as exc:
                if opts.fail_fast or not is_scene_error(exc):
                    raise
                yield _rows([{"scene": src.index, "plan": packed, "lo": 0, "hi": 0, "error": one_line(exc)}])
                continue
        if plan.status != "done":
            prepare_scene(plan, job.classes, opts)
        yield _rows(planned_rows(plan, batch_size, cpus))


def _rows(rows: list[dict]) -> dict:
    return {"scene": np.array([r["scene"] for r in rows], np.int32),
            "plan": np.array([r["plan"] for r in rows], dtype=object),
            "lo": np.array([r["lo"] for r in rows], np.int64), "hi": np.array([r["hi"] for r in rows], np.int64),
            "error": np.array([r["error"] for r in rows], dtype=object)}


# --- read ----------------------------------------------------------------------


def read_tiles(batch: dict, dtype: str, shape: tuple[int, int, int], batch_size: int = 8, skip_bad: bool = False,
               fail_fast: bool = False):
    """Tile ranges (with their scenes' plans) -> image tiles, yielded ``batch_size`` tiles at a time.

    A task's memory thus does not grow with the length of its range. ``shape``:
    ``(bands, input size, core)`` of the job's tiles (for markers). An unreadable
    block fails its scene (one marker row with the error, naming the file and
    window: the scene's other tiles are not predicted), or with ``skip_bad`` the
    tiles that need it are logged as ``bad`` (left nodata, listed in the run
    record); ``fail_fast``: the job stops.
    """
    for i in range(len(batch["lo"])):
        lo, hi, packed = int(batch["lo"][i]), int(batch["hi"][i]), batch["plan"][i]
        scene, error = int(batch["scene"][i]), batch["error"][i]
        if error or hi <= lo:  # a scene that failed, or was complete already: a marker says so
            yield marker(scene, packed, 0, error, dtype, shape)
            continue
        plan, pending = pickle.loads(packed), 0
        ids = plan.order.tiles(lo, hi)  # positions in the scene's reading order -> tile numbers
        for j in range(0, len(ids), batch_size):
            try:
                out, dropped = _low_priority(_read_tiles, ids[j : j + batch_size], plan, dtype, skip_bad)
            except ReadError as exc:
                if fail_fast:
                    raise
                yield marker(scene, packed, pending + len(ids) - j, one_line(exc), dtype, shape)
                break
            pending += dropped
            if len(out["tile"]):  # the tiles dropped so far are accounted for by the first row
                out["accounted"][0] += pending
                out["plan"][:] = [packed] * len(out["tile"])
                pending = 0
                yield out
        else:
            if pending:
                yield marker(scene, packed, pending, "", dtype, shape)


def marker(scene: int, packed: bytes, accounted: int, error: str, dtype: str, shape: tuple[int, int, int]) -> dict:
    """A row standing for tiles with nothing to predict (and for a scene's error)."""
    nb, size, core = shape
    return {"scene": np.array([scene], np.int32), "tile": np.array([-1], np.int64),
            "image": np.zeros((1, nb, size, size), dtype), "valid": np.zeros((1, core, core), bool),
            "crop": np.zeros((1, 4), np.int32), "plan": np.array([packed], dtype=object),
            "accounted": np.array([accounted], np.int32), "error": np.array([error], dtype=object)}


def _read_scene_tiles(plan: ScenePlan, tiles: list, dtype: str, skip_bad: bool) -> tuple[np.ndarray, list]:
    """``(images (N, bands, T, T), [valid or None, ...])``: None for a tile with an unreadable
    block (``skip_bad``; its image is left empty)."""
    reader = tile_reader(plan.url, plan.bands)
    try:
        return reader.read_tiles(tiles, dtype, plan.order)
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


def _read_tiles(ids: np.ndarray, plan: ScenePlan, dtype: str, skip_bad: bool = False) -> tuple[dict, int]:
    """Tile numbers of one scene -> ``({scene, tile, image, valid, crop, plan, accounted, error}, dropped)``.

    ``image``: ``(N, bands, T, T)`` model inputs; ``valid``: ``(N, core, core)``
    input validity of each core; ``crop``: ``(N, 4)`` the core's place in its
    input. Tiles already finished (or whose softmax is stored) are dropped; tiles
    without a single valid pixel are dropped and logged as ``nodata``; ``dropped``
    counts them. The tiles are read together
    (:meth:`geoseg.raster.TileReader.read_tiles`), straight into the batch.
    """
    todo = [(int(t), plan.grid[plan.grid.index(int(t))]) for t in ids
            if not (_is_set(plan.done, int(t)) or _is_set(plan.softmax, int(t)))]
    core, size, nb = plan.grid.core, plan.grid.input_size, len(plan.bands)
    tiles, valids, crops, empty, bad, keep = [], [], [], [], [], []
    images = np.empty((0, nb, size, size), dtype)
    if todo:
        images, read_valid = _read_scene_tiles(plan, [tile for _, tile in todo], dtype, skip_bad)
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
            tiles.append(t)
            valids.append(full)
            crops.append((tile.crop.row_off, tile.crop.col_off, tile.crop.height, tile.crop.width))
        if len(keep) != len(todo):
            images = images[keep]  # a copy only where tiles were dropped
        output.log_done(plan.out, np.asarray(empty, dtype=np.int64), kind="nodata")
        output.log_done(plan.out, np.asarray(bad, dtype=np.int64), kind="bad")
    n = len(tiles)
    return {
        "scene": np.full(n, plan.index, dtype=np.int32),
        "tile": np.asarray(tiles, dtype=np.int64),
        "image": images,
        "valid": np.stack(valids) if valids else np.empty((0, core, core), bool),
        "crop": np.asarray(crops, dtype=np.int32).reshape(-1, 4),
        "plan": np.empty(n, dtype=object),
        "accounted": np.ones(n, dtype=np.int32),
        "error": np.full(n, "", dtype=object),
    }, len(ids) - n


# --- infer ---------------------------------------------------------------------


class Infer:
    """The model stage: holds one model (built once) and turns image tiles into class
    cores (and probabilities), or with ``softmax`` into whole-tile softmax for blending.
    Ray runs it as an actor pool, or the driver calls it (a local job's model on CPU);
    it is a plain callable class. ``predictor``: one built already (else ``spec`` builds it).
    Marker rows (``tile`` -1) pass through without reaching the model."""

    def __init__(self, spec: ModelSpec, core: int, probabilities: bool = False, softmax: bool = False,
                 predictor=None):
        self.predictor = predictor if predictor is not None else spec.build()
        self.core, self.probabilities, self.softmax = core, probabilities, softmax
        self.k = self.predictor.num_classes or 1
        self._scenes: set[int] = set()  # scenes whose own parameters the model has

    def __call__(self, batch: dict) -> dict:
        scenes, tiles = np.asarray(batch["scene"]), np.asarray(batch["tile"])
        real = tiles >= 0
        if not real.all():  # markers: the model sees only real tiles; markers get empty outputs
            # (not self(...): Ray's single-threaded actor wrapper would wait on itself)
            sub = self._run({k: v[real] for k, v in batch.items()})
            out = {k: _scatter(v, real, len(tiles)) for k, v in sub.items() if k not in CARRY and k != "tile"}
            return {**out, "scene": scenes, "tile": tiles, **{k: batch[k] for k in CARRY}}
        return self._run(batch)

    def _run(self, batch: dict) -> dict:
        scenes, tiles = np.asarray(batch["scene"]), np.asarray(batch["tile"])
        self._learn_scenes(batch)
        out = {"scene": scenes, "tile": tiles}
        t0 = time.perf_counter()
        if self.softmax:
            out["softmax"] = self._softmax(batch)
        else:
            out.update(self._classes(batch))
        out["model_s"] = np.full(len(tiles), (time.perf_counter() - t0) / max(1, len(tiles)))
        out.update({k: batch[k] for k in CARRY})
        return out

    def _learn_scenes(self, batch: dict) -> None:
        """A scene's own model parameters (``index-otsu`` thresholds), from its plan, once."""
        if not hasattr(self.predictor, "set_scene"):
            return
        new = set(np.unique(batch["scene"]).tolist()) - self._scenes
        if new:
            for s, plan in plans_of(batch).items():
                if s in new and plan.params:
                    self.predictor.set_scene(s, plan.params)
            self._scenes |= new

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


def _scatter(values: np.ndarray, where: np.ndarray, n: int) -> np.ndarray:
    """``values`` of the rows ``where`` into ``n`` rows, zeros elsewhere."""
    full = np.zeros((n, *values.shape[1:]), values.dtype)
    full[where] = values
    return full


# --- write ---------------------------------------------------------------------


def write_tiles(batch: dict) -> dict:
    """Write each tile's core into its own Zarr chunk, then log the tiles as done."""
    return _low_priority(_write_tiles, batch)


def _write_tiles(batch: dict) -> dict:
    scenes, tiles = np.asarray(batch["scene"]), np.asarray(batch["tile"])
    plans = plans_of(batch)
    proba = batch.get("proba")
    pixels = np.zeros(len(tiles), dtype=np.int64)
    for i, (s, t) in enumerate(zip(scenes, tiles)):
        if t < 0:
            continue
        plan = plans[int(s)]
        core = plan.grid[plan.grid.index(int(t))].core
        output.write_tile(plan.out, core, batch["classes"][i], None if proba is None else proba[i])
        pixels[i] = core.size
    _log_by_scene(plans, scenes, tiles)
    return _counts(scenes, batch["model_s"], pixels, batch)


def write_softmax(batch: dict) -> dict:
    """``--stitch hann``, pass 1: store each tile's softmax, log it as ``softmax``."""
    return _low_priority(_write_softmax, batch)


def _write_softmax(batch: dict) -> dict:
    scenes, tiles = np.asarray(batch["scene"]), np.asarray(batch["tile"])
    plans = plans_of(batch)
    for i, (s, t) in enumerate(zip(scenes, tiles)):
        if t >= 0:
            output.write_softmax(plans[int(s)].out, int(t), batch["softmax"][i])
    _log_by_scene(plans, scenes, tiles, kind="softmax")
    return _counts(scenes, batch["model_s"], np.zeros(len(tiles)), batch)


# --- blend (hann, pass 2) ------------------------------------------------------


def blend_tiles(plan: ScenePlan, lo: int, hi: int, probabilities: bool) -> dict:
    """``--stitch hann``, pass 2, once a scene's softmax is stored: blend, finish and write the
    chunks of its tiles ``lo`` to ``hi`` from the stored softmax of the tiles that cover them.
    Returns ``{"tiles": blended, "pixels": written}``."""
    return _low_priority(_blend_tiles, plan, lo, hi, probabilities)


def _blend_tiles(plan: ScenePlan, lo: int, hi: int, probabilities: bool) -> dict:
    cache: OrderedDict = OrderedDict()  # neighbouring tiles share inputs; a few are enough

    def fetch(iy: int, ix: int):
        key = (iy, ix)
        if key not in cache:
            cache[key] = output.read_softmax(plan.out, iy * plan.grid.shape[1] + ix)
            if len(cache) > 12:
                cache.popitem(last=False)
        return cache[key]

    tiles, pixels = [], 0
    for t in range(lo, hi):
        if _is_set(plan.done, t):
            continue
        tile = plan.grid[plan.grid.index(t)]
        probs, valid = stitch.blend_core(plan.grid, tile, fetch)
        if not valid.any():
            continue  # no softmax stored: logged as nodata by the model pass
        classes = probs.argmax(0).astype(np.uint8)
        classes[~valid] = NODATA
        output.write_tile(plan.out, tile.core, classes, stitch.to_uint8(probs) if probabilities else None)
        tiles.append(t)
        pixels += tile.core.size
    output.log_done(plan.out, np.asarray(tiles, dtype=np.int64))
    return {"tiles": len(tiles), "pixels": pixels}


# --- finish --------------------------------------------------------------------


def finish_scene(plan: ScenePlan, classes: ClassScheme, quicklook: bool = False) -> dict:
    """Consolidate the Zarr metadata, build the COG (counting each class's pixels and area on
    the way), write the quicklooks (``quicklook``), drop the progress log.

    Returns ``{"counts": tiles by kind, "bad_tiles": [{tile, window}], "cog_seconds", "classes":
    pixels and hectares by class, "quicklooks": PNG URLs}``; the run record is written
    afterwards, last of all (:func:`complete_scene`). A scene whose progress log does not
    account for every tile is refused (it stays incomplete; a rerun resumes it).
    """
    _, counts = output.read_done(plan.out, len(plan.grid))
    missing = len(plan.grid) - sum(counts.values())
    if missing > 0:
        raise ReadError(f"{plan.url}: {missing} of {len(plan.grid)} tiles were not written; "
                        "rerun the same command to finish the scene")
    bad = []
    for t in output.logged_tiles(plan.out, "bad"):
        core = plan.grid[plan.grid.index(t)].core
        bad.append({"tile": t, "window": {"row_off": core.row_off, "col_off": core.col_off,
                                           "height": core.height, "width": core.width}})
    output.consolidate(plan.out)
    t0 = time.perf_counter()
    counted = output.zarr_to_cog(plan.out, plan.info, classes)
    cog_s = time.perf_counter() - t0
    pictures = _quicklooks(plan.url, plan.out, classes) if quicklook else {}
    storage.remove(plan.out.progress, recursive=True)
    return {"counts": counts, "bad_tiles": bad, "cog_seconds": round(cog_s, 3),
            "classes": output.class_areas(classes, counted), "quicklooks": pictures}


def complete_scene(plan: ScenePlan, job: JobPlan, opts: PredictOptions, timings: dict, placement: dict,
                   started) -> dict:
    """Finish a scene whose tiles are all written (:func:`finish_scene`), then write its STAC
    item and, last, its run record: the scene is complete. Returns the record."""
    t0 = time.perf_counter()
    finished = finish_scene(plan, job.classes, opts.quicklook)
    counts, previous = finished["counts"], plan.previous
    rec = output.scene_record(
        plan.out,
        url=plan.url,
        info=plan.info,
        model={
            "name": job.spec.name,
            "checkpoint": opts.checkpoint,
            "classes": job.classes.to_dict(),
            "thresholds": plan.params,
        },
        parameters={**plan.fingerprint, "batch_size": opts.batch_size, "precision": opts.precision,
                    # a --tile-size larger than the scene is clamped to it: the core side used
                    **({"tile_size_used": plan.grid.core} if plan.grid.core != opts.tile_size else {})},
        tiles={
            "total": len(plan.grid),
            # this run only; tiles finished by an interrupted earlier run count as resumed
            "predicted": counts.get("done", 0) - previous.get("done", 0),
            "nodata_skipped": counts.get("nodata", 0) - previous.get("nodata", 0),
            "resumed": sum(previous.values()),
            # unreadable input (--skip-bad-tiles): left nodata; each with its core window
            "bad": counts.get("bad", 0),
            "bad_tiles": finished["bad_tiles"],
        },
        timings={**timings, "finish": time.perf_counter() - t0, "cog": finished["cog_seconds"],
                 "total": timings.get("total", 0.0) + time.perf_counter() - t0},
        started=started,
        classes=finished["classes"],
        quicklooks=finished["quicklooks"],
    )
    rec["placement"] = placement  # which nodes ran each stage (node ids), so far in the job
    model = {**rec["model"], "bands": [plan.info.descriptions[b - 1] or f"band{b}" for b in plan.bands],
             "arch": job.meta.model.arch if job.meta else None}
    rec["outputs"]["stac_item"] = catalog.write_item(plan.out.prefix, plan.out.stem, catalog.scene_item(
        plan.out.stem, rec["outputs"], plan.info, job.classes, rec, model, rec.get("stac_item")))
    output.write_record(plan.out, rec)  # last: the scene is complete
    return rec


def _quicklooks(url: str, out: output.SceneOutput, classes: ClassScheme) -> dict[str, str]:
    """The scene's quicklook PNGs (from the input's and the COG's overviews: small reads), by
    the names the run record lists them under."""
    from geoseg.quicklook import write_predict_quicklooks

    urls = write_predict_quicklooks(url, out.cog, classes, storage.join(out.prefix, out.stem))
    return {"quicklook" if name == "quicklook" else f"quicklook_{name}": url for name, url in urls.items()}


def add_quicklooks(url: str, out: output.SceneOutput, classes: ClassScheme) -> bool:
    """``--quicklook`` on a scene finished earlier without them: draw them and list them in its
    run record (rewritten whole, so it stays complete). False when it has them already."""
    record = json.loads(storage.read_text(out.record))
    if record.get("outputs", {}).get("quicklook"):
        return False
    record["outputs"].update(_quicklooks(url, out, classes))
    item_url = record["outputs"].get("stac_item")
    if item_url and storage.exists(item_url):  # and in its STAC item
        from geoseg.catalog import quicklook_assets

        item = json.loads(storage.read_text(item_url))
        item["assets"].update(quicklook_assets(record["outputs"]))
        storage.write_text(item_url, json.dumps(item, indent=2))
    output.write_record(out, record)
    return True
