"""The stages of a predict job after the model pass, per scene, without Ray.

    blend_tiles    a scene's tile range -> blended class cores -> chunks   (hann, pass 2)
    finish_scene   Zarr -> consolidated metadata and COG; progress log removed
    complete_scene finish_scene, then the STAC item and the run record, last

The driver's scene tracker (:mod:`geoseg.predict.driver`) sends them off as a scene's last
tile comes through the model: Ray tasks, or inline in a job without Ray.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict

import numpy as np

from geoseg.data import catalog, output, stitch, storage, uncertainty
from geoseg.data.classes import MASKED, NODATA, ClassScheme
from geoseg.data.masks import masked_share
from geoseg.errors import ReadError
from geoseg.predict.plan import JobContext, ScenePlan
from geoseg.predict.stages import is_set
from geoseg.execution.threads import low_priority


# --- blend (hann, pass 2) ------------------------------------------------------


def blend_tiles(plan: ScenePlan, lo: int, hi: int, probabilities: bool) -> dict:
    """``--stitch hann``, pass 2, once a scene's softmax is stored: blend, finish and write the
    chunks of its tiles ``lo`` to ``hi`` from the stored softmax of the tiles that cover them.
    Returns ``{"tiles": blended, "pixels": written}``."""
    return low_priority(_blend_tiles, plan, lo, hi, probabilities)


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
        if is_set(plan.done, t):
            continue
        tile = plan.grid[plan.grid.index(t)]
        probs, valid, masked = stitch.blend_core(plan.grid, tile, fetch)
        if not valid.any():
            continue  # no softmax stored: logged as nodata (or masked) by the model pass
        classes = probs.argmax(0).astype(np.uint8)
        classes[~valid] = NODATA
        classes[masked] = MASKED
        proba = None
        if probabilities:
            proba = stitch.to_uint8(probs)
            proba[:, masked] = 0
        output.write_tile(plan.out, tile.core, classes, proba)
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
    table = uncertainty.assemble(plan.out, plan.grid, len(classes))  # --uncertainty: the scene's cells
    storage.remove(plan.out.progress, recursive=True)
    return {"counts": counts, "bad_tiles": bad, "cog_seconds": round(cog_s, 3),
            "classes": output.class_areas(classes, counted), "masked": masked_share(counted),
            "quicklooks": pictures, **({"uncertainty": table} if table else {})}


def complete_scene(plan: ScenePlan, ctx: JobContext, timings: dict, placement: dict, started) -> dict:
    """Finish a scene whose tiles are all written (:func:`finish_scene`), then write its STAC
    item and, last, its run record: the scene is complete. Returns the record."""
    t0 = time.perf_counter()
    finished = finish_scene(plan, ctx.classes, ctx.quicklook)
    counts, previous = finished["counts"], plan.previous
    rec = output.scene_record(
        plan.out,
        url=plan.url,
        info=plan.info,
        model={
            "name": ctx.spec.name,
            "checkpoint": ctx.ref.url,
            "classes": ctx.classes.to_dict(),
            "thresholds": plan.params,
        },
        parameters={**plan.fingerprint, "batch_size": ctx.batch_size, "precision": ctx.precision,
                    # a --tile-size larger than the scene is clamped to it: the core side used
                    **({"tile_size_used": plan.grid.core} if plan.grid.core != ctx.params["tile_size"] else {})},
        tiles={
            "total": len(plan.grid),
            # this run only; tiles finished by an interrupted earlier run count as resumed
            "predicted": counts.get("done", 0) - previous.get("done", 0),
            "nodata_skipped": counts.get("nodata", 0) - previous.get("nodata", 0),
            # every valid pixel masked (--mask): written masked, without the model
            **({"masked_skipped": counts.get("masked", 0) - previous.get("masked", 0)} if ctx.mask.active else {}),
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
    if ctx.mask.active:  # the pixels the mask kept from the model, and their share of the valid ones
        rec["masked"] = {**finished["masked"], "source": str(ctx.mask)}
    if finished.get("uncertainty"):  # --uncertainty: each cell's scores, for geoseg rank
        rec["outputs"]["uncertainty"] = finished["uncertainty"]
    rec["placement"] = placement  # which nodes ran each stage (node ids), so far in the job
    model = {**rec["model"], "bands": [plan.info.descriptions[b - 1] or f"band{b}" for b in plan.bands],
             "arch": ctx.meta.model.arch if ctx.meta else None}
    rec["outputs"]["stac_item"] = catalog.write_item(plan.out.prefix, plan.out.stem, catalog.scene_item(
        plan.out.stem, rec["outputs"], plan.info, ctx.classes, rec, model, rec.get("stac_item")))
    output.write_record(plan.out, rec)  # last: the scene is complete
    return rec


def _quicklooks(url: str, out: output.SceneOutput, classes: ClassScheme) -> dict[str, str]:
    """The scene's quicklook PNGs (from the input's and the COG's overviews: small reads), by
    the names the run record lists them under."""
    from geoseg.data.quicklook import write_predict_quicklooks

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
        from geoseg.data.catalog import quicklook_assets

        item = json.loads(storage.read_text(item_url))
        item["assets"].update(quicklook_assets(record["outputs"]))
        storage.write_text(item_url, json.dumps(item, indent=2))
    output.write_record(out, record)
    return True
