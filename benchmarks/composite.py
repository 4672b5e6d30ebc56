"""geoseg composite, measured in one run (not a test): throughput against odc-stac + xarray, memory as
the observations per tile grow, and a two-window model against a one-window model.

  throughput  ``--items`` cloudy Sentinel-2-like items of ``--side``² px (output tiles of 1024 px) (geoseg.data.seasons: blue,
              green, red, nir at 10 m, SCL at 20 m) composited to their median per pixel over the
              clear (SCL) looks, one window, on the items' own grid: ``composite_here`` (this process,
              writing the COG tiles, items and stacks) against ``odc.stac.load`` (nearest, one
              thread) then ``xarray``'s ``where(clear).median("time")`` in memory (nothing written).
              Rates in output MPix x observations per second, wall and per CPU second; the values
              of the two are compared too.
  memory      peak RSS of a process compositing one ``--mem-side``² tile from 4, 16 and 64 items
  seasons     a train and a held-out place (other fields, other clouds) of 14 dates from April to
              September; a spring and a late-summer window composited; a TinyFCN trained
              ``--train-minutes`` on the spring window alone and on both; held-out mIoU of each

    python benchmarks/composite.py [--items 16] [--side 2048] [--mem-side 1024] [--train-minutes 1]
                                   [--skip memory seasons] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

SPRING, SUMMER = "spring=2025-04-01/2025-05-31", "summer=2025-07-15/2025-09-30"


def dates(n: int) -> list[str]:
    import datetime as dt

    start, end = dt.date(2025, 4, 1), dt.date(2025, 9, 30)
    step = (end - start) / max(1, n - 1)
    return [(start + step * k).isoformat() for k in range(n)]


def options(items, out, side, windows=None, bands=("blue", "green", "red", "nir")):
    from geoseg.composite import CompositeOptions, parse_windows
    from geoseg.data.masks import parse_mask

    return CompositeOptions(tuple(items), out, "EPSG:32632:10", parse_windows(windows), "median", bands,
                            parse_mask("scl"), side)


ORIGIN = (491_520.0, 5_007_360.0)  # a corner of the tiles of 1024 and 2048 px at 10 m


def throughput(work: str, n: int, side: int) -> None:
    import odc.stac
    import pystac
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from geoseg.composite import composite_here
    from geoseg.data import seasons

    s = seasons.write_series(os.path.join(work, "tp"), dates(n), size=side, seed=1, origin=ORIGIN, cloud=0.3)
    out = os.path.join(work, "tp-out")
    shutil.rmtree(out, ignore_errors=True)
    c0, t0 = time.process_time(), time.perf_counter()
    composite_here(options([s["items"]], out, min(side, 1024)), log=lambda *_: None)
    ours_s, ours_cpu = time.perf_counter() - t0, time.process_time() - c0

    fc = json.load(open(s["items"]))
    items = [pystac.Item.from_dict(f) for f in fc["features"]]
    box = GeoBox((side, side), Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1]), "EPSG:32632")
    c0, t0 = time.process_time(), time.perf_counter()
    ds = odc.stac.load(items, bands=["blue", "green", "red", "nir", "scl"], geobox=box, resampling="nearest",
                       groupby="id", pool=None)
    clear = ~ds.scl.isin([0, 1, 3, 8, 9, 10]) & (ds.blue != 0)
    ref = ds[["blue", "green", "red", "nir"]].astype("float32").where(clear).median("time")
    ref = ref.compute()
    peer_s, peer_cpu = time.perf_counter() - t0, time.process_time() - c0

    import rasterio

    ours = np.zeros((side, side), np.float32)
    for tile in open(os.path.join(out, "stacks.txt")).read().split():
        with rasterio.open(tile) as src:
            col, row = round((src.transform.c - ORIGIN[0]) / 10), round((ORIGIN[1] - src.transform.f) / 10)
            ours[row : row + src.height, col : col + src.width] = src.read(3)  # red@all
    want = ref.red.values * seasons.SCALE
    has = ~np.isnan(want)
    agree = float(np.isclose(ours[has], want[has], rtol=1e-5).mean())
    work_units = side * side / 1e6 * n  # output MPix x observations
    print(f"throughput: {n} items of {side}² px, median of the clear looks, one window")
    print(f"  geoseg composite (in process, COGs + items written): {ours_s:.2f} s wall, {ours_cpu:.2f} CPU s -> "
          f"{work_units / ours_s:.1f} MPix·obs/s wall, {work_units / ours_cpu:.1f} per CPU s")
    print(f"  odc-stac load + xarray median (in memory, nothing written): {peer_s:.2f} s wall, {peer_cpu:.2f} CPU s -> "
          f"{work_units / peer_s:.1f} MPix·obs/s wall, {work_units / peer_cpu:.1f} per CPU s")
    print(f"  ratio geoseg / odc-stac: {peer_s / ours_s:.2f}x wall, {peer_cpu / ours_cpu:.2f}x per CPU second; "
          f"values equal on {agree:.4%} of the pixels with a clear look (count == 0 there: {int((~has).sum())} px)")


_CHILD = """
import sys, time
sys.path.insert(0, {bench!r})
from composite import options
from geoseg.composite import composite_here
t0 = time.perf_counter()
composite_here(options([{items!r}], {out!r}, {side}), log=lambda *_: None)
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]  # this process's own peak
print(time.perf_counter() - t0, int(hwm.split()[1]) / 1024)
"""


def memory(work: str, side: int) -> None:
    from geoseg.data import seasons

    print(f"memory: one {side}² tile (4 bands, median), peak RSS of the whole process")
    for n in (4, 16, 64):
        s = seasons.write_series(os.path.join(work, f"mem{n}"), dates(n), size=side, seed=2, origin=ORIGIN)
        shutil.rmtree(os.path.join(work, f"mem{n}-out"), ignore_errors=True)
        code = _CHILD.format(bench=os.path.dirname(os.path.abspath(__file__)), items=s["items"],
                             out=os.path.join(work, f"mem{n}-out"), side=side)
        got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        seconds, rss = (float(v) for v in got.stdout.split()[-2:])
        held = n * 4 * side * side * 4 / 2**20
        print(f"  {n:3d} items: peak RSS {rss:7.0f} MiB in {seconds:6.1f} s (the observations on the tile: {held:6.0f} MiB)")


def seasons_experiment(work: str, minutes: float) -> None:
    from geoseg.composite import composite_here
    from geoseg.data import seasons
    from geoseg.execution import runtime
    from geoseg.models.metrics import confusion, scores
    from geoseg.predict import PredictOptions, predict
    from geoseg.train import TrainConfig, train

    days = dates(14)
    places = {}
    for name, seed, origin in (("train", 10, ORIGIN), ("held-out", 11, (ORIGIN[0] + 20480, ORIGIN[1]))):
        s = seasons.write_series(os.path.join(work, name), days, size=1024, seed=seed, origin=origin, cloud=0.35)
        out = os.path.join(work, f"{name}-comp")
        shutil.rmtree(out, ignore_errors=True)
        composite_here(options([s["items"]], out, 1024, [SPRING, SUMMER]), log=lambda *_: None)
        places[name] = (open(os.path.join(out, "stacks.txt")).read().split()[0], s["labels"])
    import rasterio

    runtime.init_ray(None)
    print(f"seasons: {len(days)} dates {days[0]} to {days[-1]}, 35% cloud each; TinyFCN, {minutes:g} min each on "
          "the train place; held-out mIoU")
    for label, bands in (("one window (spring)", "red@spring,green@spring,blue@spring,nir@spring"),
                         ("two windows (spring + summer)", "red@spring,green@spring,blue@spring,nir@spring,"
                                                           "red@summer,green@summer,blue@summer,nir@summer")):
        run = os.path.join(work, f"run-{len(bands)}")
        stack, labels = places["train"]
        train(TrainConfig(images=[stack], labels=[labels], out=run, arch="tinyfcn", bands=bands.split(","),
                          max_minutes=minutes, epochs=1000, chip_size=128, block_size=256, batch_size=16,
                          classes=list(seasons.CLASSES), workers=1))
        stack, labels = places["held-out"]
        pred = os.path.join(work, f"pred-{len(bands)}")
        predict([stack], pred, PredictOptions(checkpoint=run), log=lambda *_: None)
        cog = [f for f in os.listdir(pred) if f.endswith(".tif")][0]
        got = rasterio.open(os.path.join(pred, cog)).read(1)
        want = rasterio.open(labels).read(1)
        ok = got < len(seasons.CLASSES)
        result = scores(confusion(want[ok], got[ok], len(seasons.CLASSES)))
        ious = ", ".join(f"{c} {v:.3f}" for c, v in zip(seasons.CLASSES, result["iou"]))
        print(f"  {label:32s} held-out mIoU {result['miou']:.3f} ({ious})")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--side", type=int, default=2048)
    p.add_argument("--mem-side", type=int, default=1024)
    p.add_argument("--train-minutes", type=float, default=1.0)
    p.add_argument("--skip", nargs="*", default=[])
    p.add_argument("--work")
    a = p.parse_args()
    from geoseg.execution.tasks import machine_cpus
    from geoseg.models.predictor import cpu_flags

    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"})
    print(f"machine: {machine_cpus()} cores, {' '.join(flags) or 'no AVX2'}")
    work = a.work or tempfile.mkdtemp(prefix="geoseg-composite-")
    if "throughput" not in a.skip:
        throughput(work, a.items, a.side)
    if "memory" not in a.skip:
        memory(work, a.mem_side)
    if "seasons" not in a.skip:
        seasons_experiment(work, a.train_minutes)


if __name__ == "__main__":
    main()
