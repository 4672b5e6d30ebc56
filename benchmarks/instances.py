"""Field delineation quality, measured in one run (not a test).

On geoseg's own sample (``geoseg sample --instances``): trains ``geoseg train --instances`` on a
scene of one seed for ``--minutes`` per run (``--repeats`` training seeds), predicts a scene of
another seed it never saw with ``--vectors`` and scores the field polygons with ``geoseg evaluate
--instances`` against that scene's parcels (object F1 at IoU >= 0.5). Beside it, the ceiling: the
held-out scene's own target (background / field / boundary made from its parcels) vectorized the
same way and scored the same way. Also checks that the polygons are disjoint and that ``pixels``
equals each polygon's area.

    python benchmarks/instances.py [--minutes 3] [--size 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time


def geoseg(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "geoseg", *args], check=True, stdout=subprocess.DEVNULL)


def polygons_check(parquet: str, pixel_m2: float) -> dict:
    import geopandas as gpd
    import numpy as np
    import shapely

    f = gpd.read_parquet(parquet)
    union = shapely.union_all(f.geometry.values).area if len(f) else 0.0
    return {"polygons": len(f), "overlap_m2": round(float(f.area.sum() - union), 3),
            "pixels_equal_area": bool(np.allclose(f.pixels * pixel_m2, f.area))}


def score(pred_map: str, reference: str, out: str) -> dict:
    from geoseg.evaluate import run_evaluation

    return run_evaluation([pred_map], [pred_map], out=out, instances=[reference])["instances"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--arch", default="unet")
    a = ap.parse_args()
    from geoseg.data.raster import read_info
    from geoseg.models.predictor import cpu_flags
    from geoseg.train.targets import from_instances
    from geoseg.vectorize import VectorizeOptions
    from geoseg.vectorize.local import vectorize_here

    work = tempfile.mkdtemp(prefix="geoseg-instances-")
    train, test = os.path.join(work, "train"), os.path.join(work, "test")
    geoseg("sample", train, "--size", str(a.size), "--seed", "11", "--instances")
    geoseg("sample", test, "--size", str(a.size), "--seed", "12", "--instances")
    ref = os.path.join(test, "instances.tif")
    flags = cpu_flags()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{'AVX-512 VNNI' if 'avx512_vnni' in flags else 'AVX2 only' if 'avx2' in flags else 'no AVX2'}")
    # the ceiling: the held-out scene's own target, vectorized and scored
    target = from_instances(ref, read_info(os.path.join(test, "scene.tif")), os.path.join(work, "target.tif"))
    (rec,) = vectorize_here(target, VectorizeOptions(), log=lambda *_: None)
    ceiling = score(target, ref, os.path.join(work, "eval-target"))
    check = polygons_check(rec["files"]["parquet"], 100.0)
    print(f"ceiling (the target vectorized): F1 {ceiling['f1']:.3f}, precision {ceiling['precision']:.3f}, "
          f"recall {ceiling['recall']:.3f}, {ceiling['reference']} parcels; {check}")
    rows = []
    for seed in range(a.repeats):
        run, pred = os.path.join(work, f"run{seed}"), os.path.join(work, f"pred{seed}")
        t0 = time.perf_counter()
        geoseg("train", "--image", os.path.join(train, "scene.tif"), "--label", os.path.join(train, "instances.tif"),
               "--instances", "--out", run, "--arch", a.arch, "--epochs", "1000", "--block-size", "256", "--max-minutes", str(a.minutes),
               "--seed", str(seed))
        took = time.perf_counter() - t0
        geoseg("predict", os.path.join(test, "scene.tif"), "--out", pred, "--checkpoint", run, "--vectors")
        s = score(os.path.join(pred, "scene.tif"), ref, os.path.join(work, f"eval{seed}"))
        check = polygons_check(os.path.join(pred, "scene.vectors.parquet"), 100.0)
        best = json.loads(open(os.path.join(run, "run.json")).read())["best"]
        rows.append(s["f1"])
        print(f"seed {seed}: F1 {s['f1']:.3f} (precision {s['precision'] or 0:.3f}, recall {s['recall'] or 0:.3f}, "
              f"{s['predicted']} polygons for {s['reference']} parcels), pixel mIoU {best.get('val_miou', 0):.3f} "
              f"in validation, trained {took / 60:.1f} min; {check}")
    mean = sum(rows) / len(rows)
    print(f"object F1 at IoU 0.5: mean {mean:.3f} over {len(rows)} seeds (min {min(rows):.3f}, max {max(rows):.3f}), "
          f"{mean / ceiling['f1']:.2f}x the ceiling {ceiling['f1']:.3f}")


if __name__ == "__main__":
    main()
