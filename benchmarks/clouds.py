"""Clouds and time, measured: one clean map from a series of cloudy dates.

A synthetic series over one ground truth (geoseg's sample scene and its labels): every date is
the scene with a little radiometric noise, textured clouds that move from date to date, their
shadows, and an SCL-like band (9 cloud high, 8 medium, 3 shadow, 4 clear). Printed, in one run:

1. accuracy against the labels of the temporal mosaics (``--mask scl``, then ``--merge mode`` /
   ``mean-probability`` / ``latest-clear``) next to the clear-sky map (the same model on the scene
   without clouds), the best single date, and today's rule (no mask, ``--merge latest``);
2. the cost of masking per MPix (decoding an SCL band; ukis-csmask's cloud model) next to the
   segmentation model's (a U-Net/resnet18, and the index model);
3. the temporal mosaic's throughput and peak memory at 4, 16 and 64 observations per pixel (each
   mosaic in a fresh process, no Ray: the merge streams over the scenes of a chunk).

    python benchmarks/clouds.py [--dates 64] [--size 512]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def _fbm(rng, h, w):
    from scipy.ndimage import gaussian_filter

    out = np.zeros((h, w))
    for sigma, weight in ((48, 1.0), (16, 0.5), (6, 0.3), (2, 0.15)):
        n = gaussian_filter(rng.standard_normal((h, w)), sigma)
        out += weight * n / n.std()
    return out


def write_series(folder: str, dates: int, size: int, seed: int = 0) -> tuple[list[str], str, str]:
    """``(date rasters, clear raster, labels)``: the sample scene under moving clouds."""
    import rasterio

    from geoseg.data.sample import write_sample

    write_sample(folder, size=size, seed=seed)
    with rasterio.open(os.path.join(folder, "scene.tif")) as src:
        clear, prof, desc = src.read().astype(np.float64), src.profile, src.descriptions
    valid = (clear != (src.nodata or 0)).any(axis=0)
    rng = np.random.default_rng(seed)
    h, w = clear.shape[1:]
    yy, xx = np.mgrid[:h, :w]
    prof.update(count=5, dtype="uint16", tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    paths = []
    for d in range(dates):
        img = clear * (1 + 0.03 * rng.standard_normal(clear.shape))
        opacity = np.zeros((h, w))
        for _ in range(rng.integers(1, 4)):  # one to three cloud fields, anywhere
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.12, 0.3) * h
            opacity = np.maximum(opacity, np.exp(-(((yy - cy) / r) ** 2 + ((xx - cx) / (1.3 * r)) ** 2)))
        opacity = np.clip(opacity * (1.2 + 0.35 * _fbm(rng, h, w)), 0, 1)
        shadow = np.roll(opacity, (int(0.06 * h), int(0.08 * w)), axis=(0, 1)) > 0.3  # cast to the south-east
        img[:, shadow & (opacity < 0.1)] *= 0.35
        white = 5800 * (1 + 0.1 * _fbm(rng, h, w))
        img = img * (1 - opacity) + white * opacity
        scl = np.full((h, w), 4, np.uint16)
        scl[shadow & (opacity < 0.1)] = 3
        scl[opacity > 0.1] = 8
        scl[opacity > 0.4] = 9
        img[:, ~valid] = 0
        path = os.path.join(folder, f"d{d:02d}.tif")
        with rasterio.open(path, "w", **prof) as dst:
            dst.write(np.clip(img, 1, 65535).astype(np.uint16) * valid, [1, 2, 3, 4])
            dst.write(scl, 5)
            dst.descriptions = (*desc[:4], "scl")
            day = d % 28 + 1
            dst.update_tags(TIFFTAG_DATETIME=f"2025:{d // 28 + 1:02d}:{day:02d} 10:00:00")
        paths.append(path)
    return paths, os.path.join(folder, "scene.tif"), os.path.join(folder, "labels.tif")


def accuracy(map_url: str, labels_url: str, grid_from: str | None = None) -> tuple[float, float]:
    """``(accuracy over labelled pixels with a class, share of labelled pixels with a class)``."""
    import rasterio

    with rasterio.open(labels_url) as src:
        truth = src.read(1)
        lt = src.transform
    if map_url.endswith(".zarr"):  # a mosaic on the labels' CRS and resolution: the labels' window of it
        import xarray as xr

        ds = xr.open_zarr(map_url)
        x0 = int(round((lt.c - (float(ds.x[0]) - lt.a / 2)) / lt.a))
        y0 = int(round((lt.f - (float(ds.y[0]) - lt.e / 2)) / lt.e))
        pred = ds["classes"].values[y0 : y0 + truth.shape[0], x0 : x0 + truth.shape[1]]
    else:
        with rasterio.open(map_url) as src:
            pred = src.read(1)
    labelled = truth < 250
    classified = labelled & (pred < 250)
    return float((pred[classified] == truth[classified]).mean()), float(classified.sum() / labelled.sum())


def masking_costs(size: int = 2048) -> dict:
    """MPix/s of decoding an SCL band, of the cloud model (10 m input), of a U-Net/resnet18 and the
    index model, on this process's CPUs."""
    import torch

    from geoseg.data.masks import parse_mask
    from geoseg.models.cloud import CloudModel

    rng = np.random.default_rng(0)
    scl = rng.integers(0, 12, (size, size)).astype(np.uint8)
    spec = parse_mask("scl")
    t0 = time.perf_counter()
    for _ in range(5):
        spec.decode(scl)
    decode = 5 * size * size / 1e6 / (time.perf_counter() - t0)
    tiles = (rng.random((8, 4, 576, 576)) * 0.3).astype(np.float32)
    cloud = CloudModel("l2a")
    cloud.masked(tiles[:1], 1.0, 3)
    t0 = time.perf_counter()
    cloud.masked(tiles, 1.0, 3)
    cloud_mpix = 8 * 512 * 512 / 1e6 / (time.perf_counter() - t0)  # the cores written
    import segmentation_models_pytorch as smp

    net = smp.Unet("resnet18", encoder_weights=None, in_channels=4, classes=4).eval()
    x = torch.from_numpy(tiles)
    with torch.inference_mode():
        net(x[:1])
        t0 = time.perf_counter()
        net(x)
    unet = 8 * 512 * 512 / 1e6 / (time.perf_counter() - t0)
    from geoseg.models.predictor import IndexPredictor

    index = IndexPredictor()
    t0 = time.perf_counter()
    index.predict(tiles * 10000)
    idx = 8 * 512 * 512 / 1e6 / (time.perf_counter() - t0)
    return {"scl_decode": decode, "cloud_model": cloud_mpix, "unet_resnet18": unet, "index_model": idx}


MOSAIC = """
import json, sys, time
from geoseg.mosaic import Period
from geoseg.mosaic.local import mosaic_here
prefix, name, until = sys.argv[1:4]
t0 = time.perf_counter()
(rec,) = mosaic_here(prefix, "utm:10", name=name, chunk=512, rule="mode", period=Period(None, until),
                     log=lambda *_: None, overwrite=True)
# VmHWM: this process's peak RSS (ru_maxrss would carry the parent's peak across fork and exec)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"s": time.perf_counter() - t0, "rss_mb": hwm / 1024,
                  "pixels": rec["shape"][0] * rec["shape"][1], "scenes": len(rec["scenes"]),
                  "chunks_s": rec["timings_s"]["chunks"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dates", type=int, default=64)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--accuracy-dates", type=int, default=12)
    a = ap.parse_args()
    from geoseg.data.masks import parse_mask
    from geoseg.mosaic.job import mosaic
    from geoseg.models.predictor import cpu_flags
    from geoseg.predict import PredictOptions, predict

    quiet = {"log": lambda *_: None}
    flags = cpu_flags()
    isa = "AVX-512 VNNI" if "avx512_vnni" in flags else ("AVX-512" if "avx512f" in flags else
                                                         ("AVX2" if "avx2" in flags else "no AVX2"))
    print(f"machine: {os.cpu_count()} CPUs, {isa}")
    with tempfile.TemporaryDirectory() as tmp:
        dates, clear, labels = write_series(tmp, a.dates, a.size)
        first = dates[: a.accuracy_dates]
        import rasterio

        with rasterio.open(labels) as src:
            grid = f"EPSG:{src.crs.to_epsg()}:{abs(src.transform.a):g}"
        base = PredictOptions(model="index", tile_size=256, halo=16, probabilities=True)
        from dataclasses import replace

        t0 = time.perf_counter()
        predict(dates, os.path.join(tmp, "masked"), replace(base, mask=parse_mask("scl")), **quiet)
        t_masked = time.perf_counter() - t0
        predict(first, os.path.join(tmp, "plain"), base, **quiet)
        predict([clear], os.path.join(tmp, "clear"), base, **quiet)
        sub = os.path.join(tmp, "series")  # the accuracy series: its first dates, masked
        predict(first, sub, replace(base, mask=parse_mask("scl")), **quiet)
        print(f"\n1. accuracy against the labels, {len(first)} dates of {a.size}x{a.size} px "
              "(share of labelled pixels classified)")
        acc, cov = accuracy(os.path.join(tmp, "clear", "scene.tif"), labels)
        print(f"   clear-sky map (no clouds at all)     {acc:.4f}  ({cov:.3f})")
        singles = [accuracy(os.path.join(tmp, "plain", os.path.basename(d)), labels)[0] for d in first]
        print(f"   best single date (no mask)           {max(singles):.4f}  (median date {np.median(singles):.4f})")
        for prefix, rule, what in ((os.path.join(tmp, "plain"), "latest", "today: no mask, --merge latest"),
                                   (sub, "latest-clear", "--mask scl, --merge latest-clear"),
                                   (sub, "mode", "--mask scl, --merge mode"),
                                   (sub, "mean-probability", "--mask scl, --merge mean-probability")):
            (rec,) = mosaic(prefix, grid, name=rule, chunk=512, rule=rule, **quiet)
            acc, cov = accuracy(rec["zarr"], labels)
            print(f"   {what:<37}{acc:.4f}  ({cov:.3f})")
        costs = masking_costs()
        print("\n2. MPix/s on this machine's CPUs: masking next to the model")
        for k, v in costs.items():
            print(f"   {k:<16}{v:10.2f}")
        print(f"   (predict of {len(dates)} masked dates, index model: {len(dates) * a.size ** 2 / 1e6 / t_masked:.2f} "
              "MPix/s whole job)")
        print("\n3. temporal mosaic (mode), no Ray, a fresh process each")
        prefix = os.path.join(tmp, "masked")
        recs = sorted(json.loads(open(os.path.join(prefix, f"{os.path.basename(d)[:-4]}.json")).read())["acquired"]
                      for d in dates)
        for n in (4, 16, 64):
            if n > len(recs):
                break
            out = subprocess.run([sys.executable, "-c", MOSAIC, prefix, f"m{n}", recs[n - 1]], capture_output=True,
                                 text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"   {r['scenes']:3d} observations/pixel: {r['pixels'] / 1e6 / r['chunks_s']:6.2f} MPix/s of map, "
                  f"{r['pixels'] * r['scenes'] / 1e6 / r['chunks_s']:7.2f} MPix/s of observations, "
                  f"peak RSS {r['rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
