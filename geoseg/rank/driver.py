"""The driver loop of ``geoseg rank``, shared by its runners (no Ray).

    plan.scenes_of                   the job's finished scenes (one listing, their records)
      -> scene_candidates (tasks)    each scene's cells -> its candidate chips
      select.scores, select.choose   the chips, best first, spaced and balanced across classes
      -> write_chip (tasks)          each chip's quicklook and labelling GeoPackage
      -> write_table, record         chips.parquet, rank.json (last)
"""

from __future__ import annotations

import datetime as dt
import json
import time

import numpy as np

from geoseg.data import storage
from geoseg.data.classes import ClassScheme
from geoseg.errors import InputError
from geoseg.rank import select, stages
from geoseg.rank.plan import STRATEGIES, RankOptions, excluded, scenes_of
from geoseg.version import __version__

# the CPUs each kind of task asks for (on Ray)
CPUS = {stages.scene_candidates: 0.5, stages.write_chip: 0.5}


def _spacing(opts: RankOptions, scenes) -> float:
    """``--min-distance``, or 1.5 chip sides in metres (at the first scene's pixel size)."""
    if opts.min_distance is not None:
        return float(opts.min_distance)
    from rasterio.crs import CRS

    res = abs(scenes[0].transform[0])
    if scenes[0].crs and CRS.from_user_input(scenes[0].crs).is_geographic:
        res *= 111_320.0
    return 1.5 * opts.chip * res


def drive(opts: RankOptions, start, log=print) -> dict:
    """Rank the chips of ``opts.prefix``'s scenes on the runner ``start()`` gives; returns the record."""
    t0 = time.perf_counter()
    scenes = scenes_of(opts.prefix)
    folder = opts.folder
    record_url = storage.join(folder, "rank.json")
    if storage.exists(record_url) and not opts.overwrite:
        raise InputError(f"{folder}: holds a ranking already ({record_url}); pass --overwrite to replace it, or --out")
    storage.check_writable(folder)
    tasks = start()
    found = tasks.gather([tasks.submit(stages.scene_candidates, s, opts.strategy, opts.chip) for s in scenes])
    earlier = excluded(opts.exclude)
    found = [select.without(f, earlier.get(s.stem, []), opts.chip) for f, s in zip(found, scenes)]
    keys = ("row_off", "col_off", "valid", "entropy", "margin", "disagreement", "cls", "lon", "lat")
    cands = {k: np.concatenate([np.asarray(f[k], float) for f in found]) for k in keys}
    cands["scene"] = np.concatenate([np.full(len(f["lon"]), i) for i, f in enumerate(found)])
    if not len(cands["lon"]):
        raise InputError(f"{opts.prefix}: no {opts.chip} px chip with {int(select.MIN_VALID * 100)} % of its "
                         "pixels classified; try a smaller --chip")
    score = select.scores(cands, opts.strategy, opts.seed)
    spacing = _spacing(opts, scenes)
    picked = select.choose(cands, score, opts.top, spacing, opts.balance)
    names = ClassScheme.from_dict(scenes[0].classes).names
    chips = []
    for rank, i in enumerate(picked, start=1):
        c = {"rank": rank, "scene": int(cands["scene"][i]), "row_off": int(cands["row_off"][i]),
             "col_off": int(cands["col_off"][i]), "size": opts.chip, "score": float(score[i]),
             "valid": float(cands["valid"][i]), "class": int(cands["cls"][i]),
             "class_name": str(names[int(cands["cls"][i])]) if int(cands["cls"][i]) < len(names) else "",
             **{f: (None if np.isnan(cands[f][i]) else float(cands[f][i])) for f in select.FIELDS}}
        chips.append(c)
    handles = [tasks.submit(stages.write_chip, scenes[c["scene"]], c, folder) for c in chips]
    for c, files in zip(chips, tasks.gather(handles)):
        c.update(files)
    table = stages.write_table(folder, scenes, chips)
    classes = {str(names[k]) if k < len(names) else str(k): sum(c["class"] == k for c in chips)
               for k in sorted({c["class"] for c in chips})}
    record = {"status": "complete", "prefix": storage.absolute(opts.prefix), "strategy": opts.strategy,
              "meaning": STRATEGIES[opts.strategy], "top": opts.top, "chosen": len(chips), "chip": opts.chip,
              "min_distance_m": spacing, "balance": opts.balance, "seed": opts.seed, "scenes": len(scenes),
              "candidates": int(len(score)), "classes": classes, "chips": table, "excluded": list(opts.exclude),
              "seconds": round(time.perf_counter() - t0, 3),
              "finished": dt.datetime.now(dt.timezone.utc).isoformat(), "versions": {"geoseg": __version__}}
    storage.write_text(record_url, json.dumps(record, indent=1))
    log(f"rank: {len(chips)} of {len(score)} candidate chips of {len(scenes)} scenes by {opts.strategy} "
        f"(at least {spacing:.0f} m apart; by class: {', '.join(f'{k} {v}' for k, v in classes.items())}): {table}")
    log(f"  label them in QGIS: {storage.join(folder, 'chips')}/*.gpkg (layer 'labels', field 'class'), then "
        f"geoseg train ... --label-vectors '{storage.join(folder, 'chips')}/*.gpkg' --class-field class --init RUN_DIR")
    return record
