"""A continent job end to end, each stage against its primitive, measured in one run (not a test).

N scenes of ``--side``² px (tiled from a held-out sample scene), half in UTM zone 32N and half in
33N, on either side of the zone boundary; a U-Net/resnet18 trained ``--train-minutes`` on another
sample scene and quantized to INT8 with ``geoseg quantize`` (``--model index``: the spectral index,
no training). Per stage, in MPix/s per core (the machine's cores: said in the first line):

  predict     ``geoseg predict`` of the N scenes in one job (whole process, Ray Data) against one
              scene alone (whole process; one scene on CPU starts no Ray): per-pixel ratio; with a
              deep model also the plain rasterio -> torch loop (fp32, benchmarks/plain_loop.py);
              for each ``--precisions`` entry
  mosaic      ``geoseg.mosaic.mosaic`` of the N class maps onto one grid (``--grid``, default the
              equal-area EPSG:6933 at 10 m: every scene crosses CRSs) on a warm local Ray, level 0
              (the record's ``mpix_per_s``), and in this process (``mosaic_here``, one core); peer:
              GDAL's nearest-neighbour warp of the same COGs onto the same grid
              (``rasterio.warp.reproject``, as many threads as cores)
  vectorize   the job's N class maps to GeoParquet (``vectorize PREFIX``, seams merged), in this
              process (one core) and on the warm Ray; peer: ``rasterio.features.shapes`` over the
              same maps (one core)

and the core-hours each would take for 3 x 10^11 px (Africa at 10 m).

    python benchmarks/continent.py [--scenes 4] [--side 2048] [--precisions int8 fp32]
                                   [--train-minutes 1] [--model index] [--work DIR]
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predict_throughput import mosaic as tile_scene  # noqa: E402
from predict_throughput import timed_process  # noqa: E402

CONTINENT_PX = 3e11
GEOSEG = [sys.executable, "-m", "geoseg"]


def place(url: str, i: int, n: int, side: int) -> None:
    """Scene ``i`` of ``n``: the first half in EPSG:32632 west of 12°E, the rest in EPSG:32633 east of it."""
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS

    half = max(1, n // 2)
    k = i % half
    span = side * 10.0
    if i < half:
        crs, x0 = CRS.from_epsg(32632), 795000.0 - (k + 1) * span
    else:
        crs, x0 = CRS.from_epsg(32633), 300000.0 + k * span
    with rasterio.open(url, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as dst:
        dst.crs, dst.transform = crs, Affine(10.0, 0, x0, 0, -10.0, 5900040.0)


def model_files(work: str, minutes: float, precisions: list[str]) -> dict[str, str]:
    from geoseg.data.sample import write_sample

    train = write_sample(os.path.join(work, "train"), size=1024, seed=0)
    run = os.path.join(work, "run")
    subprocess.run([*GEOSEG, "train", "--image", train["scene"], "--label", train["labels"], "--out", run,
                    "--arch", "unet", "--encoder", "resnet18", "--epochs", "1000", "--max-minutes", str(minutes),
                    "--chips-per-epoch", "64"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = {"fp32": run}
    if "int8" in precisions:
        subprocess.run([*GEOSEG, "quantize", run, "--precision", "int8", "--max-miou-drop", "1"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out["int8"] = os.path.join(run, "model.int8.onnx")
    return out


def predict_rows(scenes: list[str], models: dict[str, str], work: str, side: int, cores: int,
                 run: str | None) -> tuple[str, str]:
    """Whole processes: one scene alone, then the N scenes in one job, per model; the plain loop."""
    px = side * side
    last = None
    for name, model in models.items():
        flag = ["--model", "index"] if model == "index" else ["--checkpoint", model]
        one = timed_process([*GEOSEG, "predict", scenes[0], "--out", os.path.join(work, f"one-{name}"), *flag])
        out = os.path.join(work, f"many-{name}")
        many = timed_process([*GEOSEG, "predict", *scenes, "--out", out, *flag])
        r1, rn = px / one / 1e6, len(scenes) * px / many / 1e6
        print(f"predict {name:5s}  one scene {one:6.1f}s = {r1:6.2f} MPix/s; {len(scenes)} scenes in one job "
              f"{many:6.1f}s = {rn:6.2f} MPix/s ({rn / cores:.2f} per core): {rn / r1:.2f}x one scene's per-pixel rate"
              f"; {CONTINENT_PX / (rn * 1e6) * cores / 3600:.0f} core-hours for 3e11 px")
        last = out
    if run:
        here = os.path.dirname(os.path.abspath(__file__))
        plain = timed_process([sys.executable, os.path.join(here, "plain_loop.py"), scenes[0], run,
                               os.path.join(work, "plain.tif")])
        print(f"predict plain loop (fp32, one scene, whole process) {plain:6.1f}s = {px / plain / 1e6:6.2f} MPix/s")
    return last, name


def mosaic_rows(prefix: str, grid: str, work: str, cores: int) -> None:
    import rasterio
    from rasterio.warp import Resampling, reproject

    from geoseg.mosaic import mosaic
    from geoseg.mosaic.local import mosaic_here

    quiet = lambda *_: None  # noqa: E731
    mosaic(prefix, grid, out=os.path.join(work, "m-warm"), log=quiet)  # Ray started and warmed
    (rec,) = mosaic(prefix, grid, out=os.path.join(work, "m-ray"), log=quiet)
    t0 = time.perf_counter()
    (here,) = mosaic_here(prefix, grid, out=os.path.join(work, "m-here"), log=quiet)
    t_here = time.perf_counter() - t0
    h, w = rec["shape"]
    dst = np.full((h, w), 255, np.uint8)
    maps = sorted(glob.glob(os.path.join(prefix, "*.tif")))
    t0 = time.perf_counter()
    for url in maps:
        with rasterio.open(url) as src:
            reproject(rasterio.band(src, 1), dst, dst_transform=rasterio.Affine(*rec["transform"][:6]),
                      dst_crs=rec["crs"], resampling=Resampling.nearest, src_nodata=255, dst_nodata=255,
                      init_dest_nodata=False, num_threads=cores)
    t_gdal = time.perf_counter() - t0
    mpx = h * w / 1e6
    ray_rate = rec["mpix_per_s"]
    here_rate = here["mpix_per_s"]
    gdal = mpx / t_gdal
    print(f"mosaic {len(maps)} maps onto {grid} ({h}x{w} px): on Ray {ray_rate:.2f} MPix/s ({ray_rate / cores:.2f} "
          f"per core), in process {here_rate:.2f} MPix/s (one core; {t_here:.1f}s whole); GDAL warp {cores} threads "
          f"{gdal:.2f} MPix/s ({gdal / cores:.2f} per core): {ray_rate / gdal:.2f}x GDAL on Ray, "
          f"{here_rate / (gdal / cores):.2f}x per core in process; "
          f"{CONTINENT_PX / (ray_rate * 1e6) * cores / 3600:.0f} core-hours for 3e11 px (GDAL "
          f"{CONTINENT_PX / (gdal * 1e6) * cores / 3600:.0f})")
    import zarr

    got = np.asarray(zarr.open_array(os.path.join(work, "m-ray", "mosaic.zarr"), path="classes", mode="r")[:])
    both = (got != 255) & (dst != 255)
    print(f"  geoseg's exact nearest pixel vs GDAL's approximate warp: {float((got == dst)[both].mean()):.5f} agree")


def vectorize_rows(prefix: str, maps: list[str], work: str, cores: int) -> None:
    """The job's class maps (``vectorize PREFIX``: the maps' tasks overlap), in this process and on Ray."""
    import rasterio
    import rasterio.features

    from geoseg.vectorize import VectorizeOptions, vectorize
    from geoseg.vectorize.local import vectorize_here

    opts = VectorizeOptions(formats=("parquet",))
    quiet = lambda *_: None  # noqa: E731
    vectorize_here(maps[0], opts, out=os.path.join(work, "v-warm"), log=quiet)  # imports
    px, t_shapes, n = 0, 0.0, 0
    for url in maps:
        with rasterio.open(url) as src:
            a = src.read(1)
        px += a.size
        t0 = time.perf_counter()
        for _ in rasterio.features.shapes(a, mask=a != 255, connectivity=4):
            n += 1
        t_shapes += time.perf_counter() - t0
    t0 = time.perf_counter()
    vectorize_here(prefix, opts, log=quiet)
    t_here = time.perf_counter() - t0
    vectorize(maps[0], opts, out=os.path.join(work, "v-ray-warm"), log=quiet)
    t0 = time.perf_counter()
    vectorize(prefix, opts, log=quiet)
    t_ray = time.perf_counter() - t0
    shapes, here, ray = px / t_shapes / 1e6, px / t_here / 1e6, px / t_ray / 1e6
    print(f"vectorize {len(maps)} maps ({n} polygons): in process {here:.2f} MPix/s (one core), on Ray {ray:.2f} "
          f"MPix/s ({ray / cores:.2f} per core); rasterio.features.shapes {shapes:.2f} MPix/s (one core): "
          f"{here / shapes:.2f}x per core in process, {ray / cores / shapes:.2f}x per core on Ray; "
          f"{CONTINENT_PX / (here * 1e6) / 3600:.0f} core-hours for 3e11 px (shapes "
          f"{CONTINENT_PX / (shapes * 1e6) / 3600:.0f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--precisions", nargs="+", default=["int8", "fp32"], choices=["int8", "fp32"])
    ap.add_argument("--train-minutes", type=float, default=1.0)
    ap.add_argument("--model", choices=["unet", "index"], default="unet")
    ap.add_argument("--grid", default="EPSG:6933:10")
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    a = ap.parse_args()
    from geoseg.data.sample import write_sample
    from geoseg.execution.tasks import machine_cpus
    from geoseg.models.predictor import cpu_flags

    cores = machine_cpus()
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"})
    print(f"machine: {cores} cores, {' '.join(flags) or 'no AVX2'}; {a.scenes} scenes of {a.side}² in EPSG:32632 "
          f"and EPSG:32633")
    work = a.work or tempfile.mkdtemp(prefix="geoseg-continent-")
    held = write_sample(os.path.join(work, "held"), size=min(a.side, 2048), seed=1)
    scenes = []
    for i in range(a.scenes):
        url = os.path.join(work, "scenes", f"s{i:03d}.tif")
        os.makedirs(os.path.dirname(url), exist_ok=True)
        tile_scene(held["scene"], url, a.side)
        place(url, i, a.scenes, a.side)
        scenes.append(url)
    models = {"index": "index"} if a.model == "index" else model_files(work, a.train_minutes, a.precisions)
    run = models.get("fp32") if a.model != "index" else None
    if a.model != "index" and "fp32" not in a.precisions:
        models.pop("fp32")
    prefix, _ = predict_rows(scenes, models, work, a.side, cores, run)
    maps = sorted(glob.glob(os.path.join(prefix, "*.tif")))
    mosaic_rows(prefix, a.grid, work, cores)
    vectorize_rows(prefix, maps, work, cores)


if __name__ == "__main__":
    main()
