"""Jobs of many scenes, and the mosaic of them, measured in one run (not a test).

For each number of scenes N (small synthetic scenes, ``--side`` px square, side by side
on a UTM grid), as whole ``geoseg predict`` processes on their own local Ray:

  * planning time per scene: :func:`geoseg.predict.plan.plan_scene` (header, bands, grid,
    outputs: what a planning task does), timed in this process on up to 50 scenes;
  * time to the first tile written (``first_tile_s`` of the job summary, from the job's start);
  * whole-job MPix/s (job summary: pixels / seconds), against the same number of pixels as
    one big scene in the same run, and the ratio of the two;
  * the driver's peak private memory (RssAnon + RssFile, object store excluded);
  * the rerun of the finished job (whole command: Ray start included).

Then the mosaic (``geoseg mosaic PREFIX --grid EPSG:32633:10``) over the first 4 .. 64
scenes of a job: MPix/s of its level-0 pass (the record's ``mpix_per_s``) and the peak
private memory of every process.

    python benchmarks/many_scenes.py [--scenes 100 1000] [--side 256] [--mosaic 4 16 64]

The model is the spectral index (``--model index``): per-pixel work is light, so what
is measured is geoseg's own cost per scene (planning, outputs, finishing each scene).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predict_throughput import mosaic as tile_scene  # noqa: E402
from predict_throughput import peak_rss  # noqa: E402

PREDICT = ["--model", "index", "--batch-size", "8", "--halo", "16"]  # tiles of a scene's side: see job_row


def write_scenes(base: str, d: str, n: int, side: int) -> list[str]:
    """``n`` copies of ``base`` laid side by side (each its own transform), ``s00000.tif`` ..."""
    import rasterio
    from affine import Affine

    os.makedirs(d, exist_ok=True)
    with rasterio.open(base) as src:
        t = src.transform
    k = math.ceil(math.sqrt(n))
    urls = []
    for i in range(n):
        url = os.path.join(d, f"s{i:05d}.tif")
        shutil.copyfile(base, url)
        with rasterio.open(url, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as dst:
            dst.transform = Affine(t.a, 0, t.c + (i % k) * side * t.a, 0, t.e, t.f + (i // k) * side * t.e)
        urls.append(url)
    return urls


def planning_s(urls: list[str], work: str) -> float:
    """Mean seconds of planning one scene (what each planning task does), on up to 50 scenes."""
    from geoseg.predict import PredictOptions
    from geoseg.predict.plan import plan_job, plan_scene

    opts = PredictOptions(model="index", tile_size=512, halo=16, batch_size=8)
    job = plan_job(urls, os.path.join(work, "planned"), opts)
    sample = job.sources[1:51] or job.sources
    t0 = time.perf_counter()
    for src in sample:
        plan_scene(src, job.ctx, job.ctx.dtype)
    return (time.perf_counter() - t0) / len(sample)


def job_row(n: int, side: int, base: str, work: str) -> dict:
    d = os.path.join(work, f"n{n}")
    urls = write_scenes(base, os.path.join(d, "in"), n, side)
    plan = planning_s(urls, d)
    out = os.path.join(d, "out")
    cmd = [sys.executable, "-m", "geoseg", "predict", os.path.join(d, "in", "*.tif"), "--out", out, *PREDICT,
           "--tile-size", str(side)]  # one tile a scene, none of it padding; the big scene in the same tiles
    wall, peaks = peak_rss(cmd)
    summary = json.load(open(os.path.join(out, "_job.json")))
    assert summary["counts"]["complete"] == n, summary["counts"]
    rerun, _ = peak_rss(cmd)
    # the same pixels as one scene
    big = os.path.join(d, "big", "big.tif")
    os.makedirs(os.path.dirname(big))
    tile_scene(base, big, int(round(side * math.sqrt(n))))
    shutil.rmtree(os.path.join(d, "in"))
    big_wall, _ = peak_rss([sys.executable, "-m", "geoseg", "predict", big, "--out", os.path.join(d, "bigout"),
                            *PREDICT, "--tile-size", str(side)])
    one = json.load(open(os.path.join(d, "bigout", "_job.json")))
    rate = summary["pixels"] / summary["seconds"] / 1e6
    big_rate = one["pixels"] / one["seconds"] / 1e6
    row = {"scenes": n, "plan_ms": plan * 1e3, "first_tile_s": summary["first_tile_s"], "mpix_s": rate,
           "big_mpix_s": big_rate, "ratio": rate / big_rate, "driver_mib": peaks.get("driver", 0) / 1024,
           "wall_s": wall, "rerun_s": rerun, "big_wall_s": big_wall, "out": out}
    return row


def mosaic_row(m: int, side: int, base: str, work: str) -> dict:
    d = os.path.join(work, f"m{m}")
    write_scenes(base, os.path.join(d, "in"), m, side)
    prefix = os.path.join(d, "out")
    peak_rss([sys.executable, "-m", "geoseg", "predict", os.path.join(d, "in", "*.tif"), "--out", prefix, *PREDICT,
              "--tile-size", str(side)])
    wall, peaks = peak_rss([sys.executable, "-m", "geoseg", "mosaic", prefix, "--grid", "EPSG:32633:10"])
    (record,) = [p for p in glob.glob(os.path.join(prefix, "*.json"))
                 if json.load(open(p)).get("mpix_per_s") is not None]
    rec = json.load(open(record))
    return {"scenes": m, "mpix_s": rec["mpix_per_s"], "wall_s": wall, "max_mib": max(peaks.values()) / 1024,
            "driver_mib": peaks.get("driver", 0) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, nargs="*", default=[100, 1000])
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--mosaic", type=int, nargs="*", default=[4, 16, 64])
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    a = ap.parse_args()
    from geoseg.data.sample import write_sample

    work = tempfile.mkdtemp(prefix="geoseg-many-")
    try:
        base = write_sample(os.path.join(work, "base"), size=a.side, seed=4)["scene"]
        rows = []
        for n in a.scenes:
            rows.append(job_row(n, a.side, base, work))
            r = rows[-1]
            print(f"{n} scenes: plan {r['plan_ms']:.0f} ms/scene, first tile {r['first_tile_s']:.1f}s, "
                  f"{r['mpix_s']:.2f} MPix/s vs {r['big_mpix_s']:.2f} one scene, driver {r['driver_mib']:.0f} MiB, "
                  f"rerun {r['rerun_s']:.1f}s", flush=True)
        print(f"\njobs of {a.side}^2 scenes, geoseg predict --model index (whole processes, own local Ray):")
        print(f"{'scenes':>7} {'plan ms/scene':>14} {'first tile s':>13} {'MPix/s':>8} {'one scene':>10} "
              f"{'ratio':>6} {'driver MiB':>11} {'job s':>7} {'rerun s':>8}")
        for r in rows:
            print(f"{r['scenes']:>7} {r['plan_ms']:>14.1f} {r['first_tile_s']:>13.2f} {r['mpix_s']:>8.2f} "
                  f"{r['big_mpix_s']:>10.2f} {r['ratio']:>6.2f} {r['driver_mib']:>11.0f} {r['wall_s']:>7.1f} "
                  f"{r['rerun_s']:>8.1f}")
        if len(rows) > 1:
            print(f"driver peak memory {rows[-1]['scenes']} / {rows[0]['scenes']} scenes: "
                  f"{rows[-1]['driver_mib'] / rows[0]['driver_mib']:.2f}x")
        mos = [mosaic_row(m, a.side, base, work) for m in a.mosaic]
        if mos:
            print(f"\ngeoseg mosaic --grid EPSG:32633:10 over {a.side}^2 scenes:")
            print(f"{'scenes':>7} {'MPix/s':>8} {'wall s':>7} {'max MiB':>8} {'driver MiB':>11}")
            for r in mos:
                print(f"{r['scenes']:>7} {r['mpix_s']:>8.2f} {r['wall_s']:>7.1f} {r['max_mib']:>8.0f} "
                      f"{r['driver_mib']:>11.0f}")
            print(f"max peak memory {mos[-1]['scenes']} / {mos[0]['scenes']} scenes: "
                  f"{mos[-1]['max_mib'] / mos[0]['max_mib']:.2f}x")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
