"""The stages of a predict job, without Ray: each a plain function (or class) over a batch.

A batch is a dict of numpy arrays, as Ray Data hands them over; each stage takes its rows and
the job's :class:`~geoseg.predict.plan.JobContext`, never the user's options. The runners only
wire these together (:mod:`geoseg.predict.job`: one Ray Data dataset; :mod:`geoseg.predict.local`:
threads in this process), and the driver loop (:mod:`geoseg.predict.driver`) follows which
scenes are finished. In order::

    plan_scenes    scene sources -> tile ranges of each scene, its plan with them  (planning tasks)
    read_tiles     tile ranges -> image tiles, validity, core crops
    Infer          image tiles -> class cores (+ probabilities), or whole-tile softmax (hann)
    write_tiles    class cores -> one Zarr chunk each, progress log        (crop)
    write_softmax  whole-tile softmax -> scratch array, progress log       (hann, pass 1)

and, per scene once its tiles are through, in :mod:`geoseg.predict.finish`: ``blend_tiles``
(hann, pass 2), ``finish_scene`` (COG) and ``complete_scene`` (STAC item, run record, last).

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

import pickle
import time

import numpy as np

from geoseg.data import output, stitch, uncertainty
from geoseg.data.classes import MASKED, NODATA
from geoseg.data.masks import MaskSpec
from geoseg.data.raster import tile_reader
from geoseg.errors import ReadError, one_line
from geoseg.models.predictor import ModelSpec
from geoseg.predict.plan import (JobContext, SceneSource, ScenePlan, is_scene_error, plan_scene, prepare_scene,
                                 scene_read_ranges)
from geoseg.execution.threads import low_priority

NO_MASK = MaskSpec()
CARRY = ("plan", "accounted", "error")  # the columns every row carries from planning to the driver

# --- helpers -------------------------------------------------------------------

def pack(plan) -> bytes:
    return pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL)


def plans_of(batch: dict) -> dict[int, ScenePlan]:
    """The plans of a batch's scenes by scene index (one unpickled per scene)."""
    scenes = np.asarray(batch["scene"])
    if len(scenes) == 0:
        return {}
    _, first = np.unique(scenes, return_index=True)
    return {int(scenes[i]): pickle.loads(batch["plan"][i]) for i in first}


def is_set(bitmap: np.ndarray | None, t: int) -> bool:
    return bitmap is not None and bool((bitmap[t >> 3] >> (7 - (t & 7))) & 1)


def _counts(scenes, model_s, pixels, batch: dict) -> dict:
    return {
        "scene": np.asarray(scenes, dtype=np.int32),
        "model_s": np.asarray(model_s, dtype=np.float64),
        "pixels": np.asarray(pixels, dtype=np.int64),
        **{k: batch[k] for k in CARRY},
    }


def _keep_cells(plans: dict[int, ScenePlan], scenes: np.ndarray, tiles: np.ndarray, batch: dict) -> None:
    """``--uncertainty``: each scene's tiles' cell scores, kept until the scene is finished."""
    if "cells" not in batch:
        return
    for s in np.unique(scenes):
        sel = (scenes == s) & (tiles >= 0)
        if sel.any():
            uncertainty.write_part(plans[int(s)].out, tiles[sel], np.asarray(batch["cells"])[sel])


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


def plan_scenes(batch: dict, ctx: JobContext, cpus: float):
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
                plan = plan_scene(src, ctx, ctx.dtype)
            except Exception as exc:
                if ctx.fail_fast or not is_scene_error(exc):
                    raise
                yield _rows([{"scene": src.index, "plan": packed, "lo": 0, "hi": 0, "error": one_line(exc)}])
                continue
        if plan.status != "done":
            prepare_scene(plan, ctx)
        yield _rows(planned_rows(plan, ctx.batch_size, cpus))


def _rows(rows: list[dict]) -> dict:
    return {"scene": np.array([r["scene"] for r in rows], np.int32),
            "plan": np.array([r["plan"] for r in rows], dtype=object),
            "lo": np.array([r["lo"] for r in rows], np.int64), "hi": np.array([r["hi"] for r in rows], np.int64),
            "error": np.array([r["error"] for r in rows], dtype=object)}


# --- read ----------------------------------------------------------------------


def read_tiles(batch: dict, ctx: JobContext, shape: tuple[int, int, int]):
    """Tile ranges (with their scenes' plans) -> image tiles in the job's pixel type, yielded
    ``ctx.batch_size`` tiles at a time.

    A task's memory thus does not grow with the length of its range. ``shape``:
    ``(bands, input size, core)`` of the job's tiles (for markers). An unreadable
    block fails its scene (one marker row with the error, naming the file and
    window: the scene's other tiles are not predicted), or with ``--skip-bad-tiles`` the
    tiles that need it are logged as ``bad`` (left nodata, listed in the run
    record); ``--fail-fast``: the job stops.
    """
    dtype, batch_size, skip_bad, fail_fast = ctx.dtype, ctx.batch_size, ctx.skip_bad_tiles, ctx.fail_fast
    shape = (*shape[:3], n_extra(ctx))
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
                out, dropped = low_priority(_read_tiles, ids[j : j + batch_size], plan, dtype, skip_bad, ctx.mask)
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


def n_extra(ctx: JobContext) -> int:
    """Bands each tile carries beside the model's (``extra``): the cloud model's own, where the
    model reads other bands. (An asset mask is decoded as the tiles are read: it travels as ``masked``.)"""
    return len(ctx.mask_reads) if ctx.mask.kind == "model" else 0


def marker(scene: int, packed: bytes, accounted: int, error: str, dtype: str, shape: tuple[int, ...]) -> dict:
    """A row standing for tiles with nothing to predict (and for a scene's error)."""
    nb, size, core, ne = (*shape, 0)[:4]
    out = {"scene": np.array([scene], np.int32), "tile": np.array([-1], np.int64),
           "image": np.zeros((1, nb, size, size), dtype), "valid": np.zeros((1, core, core), bool),
           "masked": np.zeros((1, core, core), bool),
           "crop": np.zeros((1, 4), np.int32), "plan": np.array([packed], dtype=object),
           "accounted": np.array([accounted], np.int32), "error": np.array([error], dtype=object)}
    if ne:
        out["extra"] = np.zeros((1, ne, size, size), dtype)
    return out


def _read_scene_tiles(plan: ScenePlan, tiles: list, dtype: str, skip_bad: bool) -> tuple[np.ndarray, list]:
    """``(images (N, bands, T, T), [valid or None, ...])``: None for a tile with an unreadable
    block (``skip_bad``; its image is left empty)."""
    reader = tile_reader(plan.url, plan.read_bands, len(plan.bands))
    try:
        return reader.read_tiles(tiles, dtype, plan.order)
    except ReadError:
        if not skip_bad:
            raise
    size, nb = plan.grid.input_size, len(plan.read_bands)
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


def _read_tiles(ids: np.ndarray, plan: ScenePlan, dtype: str, skip_bad: bool = False,
                mask: MaskSpec = NO_MASK) -> tuple[dict, int]:
    """Tile numbers of one scene -> ``({scene, tile, image, valid, masked, crop, plan, accounted,
    error[, extra]}, dropped)``.

    ``image``: ``(N, bands, T, T)`` model inputs; ``valid``: ``(N, core, core)``
    input validity of each core; ``masked``: ``(N, core, core)`` the valid pixels a
    mask band (``--mask scl``...) masks; ``extra``: ``(N, E, T, T)`` the bands read
    for the cloud model beside the model's (``--mask model``); ``crop``: ``(N, 4)``
    the core's place in its input. Tiles already finished (or whose softmax is
    stored) are dropped; tiles without a single valid pixel are dropped and logged
    as ``nodata``; tiles whose valid pixels are all masked are written (masked) and
    logged as ``masked``, without the model; ``dropped`` counts them. The tiles are
    read together (:meth:`geoseg.data.raster.TileReader.read_tiles`), straight into the batch.
    """
    todo = [(int(t), plan.grid[plan.grid.index(int(t))]) for t in ids
            if not (is_set(plan.done, int(t)) or is_set(plan.softmax, int(t)))]
    core, size, nb = plan.grid.core, plan.grid.input_size, len(plan.bands)
    ne = len(plan.extra) if mask.kind == "model" else 0
    tiles, valids, maskeds, crops, empty, bad, covered, keep = [], [], [], [], [], [], [], []
    images = np.empty((0, len(plan.read_bands), size, size), dtype)
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
            masked = np.zeros((core, core), dtype=bool)
            if mask.kind in ("values", "bits"):  # the mask band, stacked after the model's
                r, c, h, w = tile.crop.row_off, tile.crop.col_off, tile.crop.height, tile.crop.width
                masked[:h, :w] = mask.decode(images[i, nb, r : r + h, c : c + w])
                masked &= full
                if masked.sum() == full.sum():  # nothing clear: no model
                    write_masked(plan, tile, full)
                    covered.append(t)
                    continue
            keep.append(i)
            tiles.append(t)
            valids.append(full)
            maskeds.append(masked)
            crops.append((tile.crop.row_off, tile.crop.col_off, tile.crop.height, tile.crop.width))
        if len(keep) != len(todo):
            images = images[keep]  # a copy only where tiles were dropped
        output.log_done(plan.out, np.asarray(empty, dtype=np.int64), kind="nodata")
        output.log_done(plan.out, np.asarray(bad, dtype=np.int64), kind="bad")
        output.log_done(plan.out, np.asarray(covered, dtype=np.int64), kind="masked")
    n = len(tiles)
    out = {
        "scene": np.full(n, plan.index, dtype=np.int32),
        "tile": np.asarray(tiles, dtype=np.int64),
        "image": images if not plan.extra else np.ascontiguousarray(images[:, :nb]),
        "valid": np.stack(valids) if valids else np.empty((0, core, core), bool),
        "masked": np.stack(maskeds) if maskeds else np.empty((0, core, core), bool),
        "crop": np.asarray(crops, dtype=np.int32).reshape(-1, 4),
        "plan": np.empty(n, dtype=object),
        "accounted": np.ones(n, dtype=np.int32),
        "error": np.full(n, "", dtype=object),
    }
    if ne:
        out["extra"] = np.ascontiguousarray(images[:, nb:])
    return out, len(ids) - n


def write_masked(plan: ScenePlan, tile, valid: np.ndarray) -> None:
    """A tile whose valid pixels are all masked: its chunk, masked where valid, nodata elsewhere."""
    chunk = np.where(valid, np.uint8(MASKED), np.uint8(NODATA))
    output.write_tile(plan.out, tile.core, chunk)


# --- infer ---------------------------------------------------------------------


class Infer:
    """The model stage: holds one model (built once) and turns image tiles into class
    cores (and probabilities), or with ``softmax`` into whole-tile softmax for blending.
    Ray runs it as an actor pool, or the driver calls it (a local job's model on CPU);
    it is a plain callable class. ``predictor``: one built already (else ``spec`` builds it).
    Marker rows (``tile`` -1) pass through without reaching the model.

    ``mask``: the job's ``--mask``. A mask band's pixels come decoded (``masked``); the cloud
    model (``--mask model``) runs here, on the same tiles, its blue, green, red and nir at
    ``cloud_index`` among the model's bands and the ``extra`` ones. Masked pixels are
    :data:`~geoseg.data.classes.MASKED` in the classes (probabilities 0, softmax -1), and a
    tile with no clear pixel does not reach the segmentation model."""

    def __init__(self, spec: ModelSpec, core: int, probabilities: bool = False, softmax: bool = False,
                 predictor=None, mask: MaskSpec = NO_MASK, cloud_index: tuple[int, ...] = (),
                 uncertainty: bool = False, tta: bool = False):
        self.predictor = predictor if predictor is not None else spec.build()
        self.core, self.probabilities, self.softmax = core, probabilities, softmax
        self.uncertainty, self.tta = uncertainty, tta
        self.k = self.predictor.num_classes or 1
        self.mask, self.cloud_index = mask, tuple(cloud_index)
        self._scenes: set[int] = set()  # scenes whose own parameters the model has

    @staticmethod
    def options(ctx: JobContext) -> dict:
        """The stage's options in a job of ``ctx`` (its model is the spec, built where it runs)."""
        return {"core": ctx.core, "probabilities": ctx.probabilities, "softmax": ctx.hann, "mask": ctx.mask,
                "cloud_index": ctx.cloud_index, "uncertainty": ctx.uncertainty, "tta": ctx.tta}

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
        masked = self._masked(batch)
        clear = (batch["valid"] & ~masked).any(axis=(1, 2)) if len(tiles) else np.zeros(0, bool)
        sub = batch if clear.all() else {k: v[clear] for k, v in batch.items()}
        if self.softmax:
            soft, disagree = self._softmax(sub)
            if self.uncertainty:
                out["cells"] = self._cells(sub, soft, soft.argmax(1), disagree, clear, len(tiles), masked)
            if not clear.all():
                full = np.full((len(tiles), *soft.shape[1:]), np.nan, np.float32)
                full[clear] = soft
                soft = full
            out["softmax"] = stitch.mask_softmax(soft, batch["valid"], batch["crop"], masked)
        else:
            res = self._classes(sub)
            if self.uncertainty:
                out["cells"] = self._cells(sub, *res.pop("cells"), clear, len(tiles), masked)
            if not clear.all():
                res = {k: _scatter(v, clear, len(tiles)) for k, v in res.items()}
            res["classes"][~clear] = NODATA
            res["classes"][masked] = MASKED
            if "proba" in res:
                res["proba"][np.broadcast_to(masked[:, None], res["proba"].shape)] = 0
            out.update(res)
        out["model_s"] = np.full(len(tiles), (time.perf_counter() - t0) / max(1, len(tiles)))
        out.update({k: batch[k] for k in CARRY})
        return out

    def _masked(self, batch: dict) -> np.ndarray:
        """The valid pixels of each core that are masked: the mask band's, or the cloud model's."""
        masked = np.asarray(batch.get("masked", np.zeros_like(batch["valid"])), bool)
        if self.mask.kind != "model" or len(masked) == 0:
            return masked
        from geoseg.models.cloud import cloud_model

        model = cloud_model(self.mask.level)
        image = batch["image"]
        bands = np.concatenate([image, batch["extra"]], axis=1) if "extra" in batch else image
        masked = masked.copy()
        scenes = np.asarray(batch["scene"])
        for s, plan in plans_of(batch).items():
            rows = np.flatnonzero(scenes == s)
            whole = model.masked(bands[rows][:, list(self.cloud_index)], plan.cloud_scale, plan.cloud_factor)
            cores = stitch.crop_cores(whole, batch["crop"][rows], self.core, fill=False)
            masked[rows] |= cores
        return masked & np.asarray(batch["valid"], bool)

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

    def _softmax(self, batch: dict) -> tuple[np.ndarray, np.ndarray | None]:
        """Softmax ``(N, K, T, T)``, and with ``--uncertainty --tta`` the passes' disagreement."""
        images = batch["image"]
        if len(images) == 0:
            return np.empty((0, self.k, images.shape[-1], images.shape[-1]), np.float32), None
        if self.uncertainty and self.tta:
            return uncertainty.tta_passes(self.predictor, images, batch["scene"])
        return np.asarray(self.predictor.predict_proba(images, batch["scene"])), None

    def _cells(self, batch: dict, proba: np.ndarray, classes: np.ndarray, disagree, clear, n: int, masked):
        """Each core's cell scores (:func:`geoseg.data.uncertainty.cell_scores`), of its clear pixels."""
        crops = batch["crop"]
        valid = np.asarray(batch["valid"], bool) & ~np.asarray(masked, bool)[clear]
        cells = uncertainty.cell_scores(
            stitch.crop_cores(proba, crops, self.core), stitch.crop_cores(classes, crops, self.core),
            valid, self.k, None if disagree is None else stitch.crop_cores(disagree, crops, self.core))
        full = np.zeros((n, *cells.shape[1:]), np.float32)
        full[clear] = cells
        return full

    def _classes(self, batch: dict) -> dict:
        images, scenes, crops = batch["image"], batch["scene"], batch["crop"]
        if len(images) == 0:
            out = {"classes": np.empty((0, self.core, self.core), np.uint8)}
            if self.probabilities:
                out["proba"] = np.empty((0, self.k, self.core, self.core), np.uint8)
            if self.uncertainty:
                out["cells"] = (np.empty((0, self.k, self.core, self.core), np.float32),
                                np.empty((0, self.core, self.core), np.uint8), None)
            return out
        out = {}
        if self.probabilities or self.uncertainty:
            proba, disagree = self._softmax(batch)
            classes = proba.argmax(1).astype(np.uint8)
            if self.probabilities:
                out["proba"] = stitch.to_uint8_proba(proba, crops, self.core)
            if self.uncertainty:
                out["cells"] = (proba, classes, disagree)
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
    return low_priority(_write_tiles, batch)


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
    _keep_cells(plans, scenes, tiles, batch)
    _log_by_scene(plans, scenes, tiles)
    return _counts(scenes, batch["model_s"], pixels, batch)


def write_softmax(batch: dict) -> dict:
    """``--stitch hann``, pass 1: store each tile's softmax, log it as ``softmax``."""
    return low_priority(_write_softmax, batch)


def _write_softmax(batch: dict) -> dict:
    scenes, tiles = np.asarray(batch["scene"]), np.asarray(batch["tile"])
    plans = plans_of(batch)
    for i, (s, t) in enumerate(zip(scenes, tiles)):
        if t >= 0:
            output.write_softmax(plans[int(s)].out, int(t), batch["softmax"][i])
    _keep_cells(plans, scenes, tiles, batch)
    _log_by_scene(plans, scenes, tiles, kind="softmax")
    return _counts(scenes, batch["model_s"], np.zeros(len(tiles)), batch)
