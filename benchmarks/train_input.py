"""Training input: random chips per second per core, measured in one run (not a test).

On a sample scene (``--size`` px square, 4 x uint16 DEFLATE COG in 512² blocks, as
``geoseg sample`` writes it), for ``--chip`` px chips from ``--block`` px split blocks:

  * the codec: GDAL decoding every block of the image once (1 process), in MPix/s and as
    the chips/s it would give if every chip's pixels were decoded exactly once;
  * chips read from the rasters (``--chip-cache off``: each chip decodes the raster blocks
    it touches, every epoch), 1 process;
  * the chip cache's build (each split block of image and labels decoded once), 1 process,
    MPix/s and its ratio to the codec;
  * chips cut from the chip cache, 1 process (chips/s per core), and its ratio to the codec;
  * the same through Ray Data on all the box's cores (``geoseg.train.job.chip_datasets``:
    what a train worker's dataset shard iterates; its second epoch, the first one starts
    Ray's workers), chips/s and chips/s per core (the consumer, this process, included);
  * the peak private memory (USS) of the sampling process.

    python benchmarks/train_input.py [--size 4096] [--chip 512] [--block 2048] [--seconds 10]

A chip is image (bands, chip, chip) in the raster's dtype plus labels (chip, chip) uint8,
as a train worker receives it (it converts on its device).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def codec_rate(url: str) -> float:
    """MPix/s of GDAL decoding each block of the raster once, this process, one thread."""
    import rasterio
    from rasterio.windows import Window

    from geoseg.data import storage

    with storage.gdal_env(GDAL_NUM_THREADS="1"), rasterio.open(url) as src:
        (bh, bw) = src.block_shapes[0]
        src.read(window=Window(0, 0, bw, bh))
        t0 = time.perf_counter()
        for r in range(0, src.height, bh):
            for c in range(0, src.width, bw):
                src.read(window=Window(c, r, min(bw, src.width - c), min(bh, src.height - r)))
        return src.height * src.width / (time.perf_counter() - t0) / 1e6


def chips_per_s(plan, cache, seconds: float, batch: int = 32) -> float:
    from geoseg.train.data import sample_train_chips

    sample_train_chips({"id": np.arange(2)}, plan, cache)  # readers open / files mapped
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sample_train_chips({"id": np.arange(batch)}, plan, cache)
        n += batch
    return n / (time.perf_counter() - t0)


def uss_mib() -> float:
    import psutil

    return psutil.Process().memory_full_info().uss / 2**20


def ray_rate(plan, cache, chips: int, cores: int) -> float:
    """Chips/s of the training dataset as a train worker iterates it (all cores' read tasks)."""
    from geoseg.execution.runtime import init_ray, shutdown
    from geoseg.train.config import TrainConfig
    from geoseg.train.job import chip_datasets

    init_ray(None)
    try:
        cfg = TrainConfig(images=["x"], labels=["x"], out="x", chips_per_epoch=chips, chip_size=plan.chip)
        ds = chip_datasets(cfg, plan, cache)["train"]
        for _ in ds.iter_batches(batch_size=16, batch_format="numpy", prefetch_batches=4):
            pass  # a first epoch: Ray's workers started, files mapped (as from a run's second epoch on)
        t0, n = time.perf_counter(), 0
        for b in ds.iter_batches(batch_size=16, batch_format="numpy", prefetch_batches=4):
            n += len(b["label"])
        return n / (time.perf_counter() - t0)
    finally:
        shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--chip", type=int, default=512)
    ap.add_argument("--block", type=int, help="split block side (default 4 chips, as geoseg train)")
    ap.add_argument("--seconds", type=float, default=10.0, help="per single-process measurement")
    ap.add_argument("--ray-chips", type=int, default=2048, help="chips drawn through Ray Data (0: skip)")
    ap.add_argument("--work", help="folder for the sample and the cache (default: a temp folder)")
    a = ap.parse_args()

    from geoseg.data.sample import write_sample
    from geoseg.train import cache as chip_cache
    from geoseg.train.data import open_pairs, plan_training

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-", dir=a.work) as work:
        urls = write_sample(os.path.join(work, "sample"), size=a.size, seed=0)
        pairs = open_pairs([urls["scene"]], [urls["labels"]], [1, 2, 3, 4])
        plan = plan_training(pairs, chip=a.chip, block=a.block or a.chip * 4)
        k = len(plan.classes)
        mpix_chip = a.chip * a.chip / 1e6

        codec = codec_rate(urls["scene"])
        direct = chips_per_s(plan, None, a.seconds)
        cache = chip_cache.layout(os.path.join(work, "chips"), plan.info["block"], plan.pairs)
        blocks = chip_cache.plan_blocks(plan)
        t0 = time.perf_counter()
        chip_cache.build(cache, plan, k)
        build_s = time.perf_counter() - t0
        built_mpix = sum(b[3] * b[3] for b in blocks) / 1e6
        uss0 = uss_mib()
        cached = chips_per_s(plan, cache, a.seconds)
        uss1 = uss_mib()
        via_ray = ray_rate(plan, cache, a.ray_chips, cores) if a.ray_chips else None

        print(f"sample {a.size}x{a.size}, 4 x uint16 DEFLATE COG (512² blocks); {a.chip}² chips from "
              f"{plan.info['block']}² blocks ({len(plan.train_blocks)} train, {len(plan.val_blocks)} validation); "
              f"{cores} cores")
        print(f"{'':58} {'chips/s':>9} {'per core':>9} {'x codec':>8}")
        at_codec = codec / mpix_chip
        rows = [
            (f"codec: GDAL decoding each block once ({codec:.1f} MPix/s)", at_codec, at_codec, 1.0),
            ("chips read from the rasters (--chip-cache off), 1 process", direct, direct, direct / at_codec),
            ("chips cut from the chip cache, 1 process", cached, cached, cached / at_codec),
        ]
        if via_ray:
            rows.append((f"chips cut from the chip cache, Ray Data, {cores} cores", via_ray, via_ray / cores,
                         via_ray / cores / at_codec))
        for name, rate, per_core, ratio in rows:
            print(f"{name:58} {rate:9.1f} {per_core:9.1f} {ratio:7.2f}x")
        print(f"chip cache build: {built_mpix:.1f} MPix of image + labels decoded once in {build_s:.1f} s, 1 process "
              f"({built_mpix / build_s:.1f} MPix/s, {built_mpix / build_s / codec:.2f}x the codec); "
              f"{cache.block_bytes(0, plan.info['block']) * len(blocks) / 2**20:.0f} MiB on disk")
        print(f"cache vs rasters: {cached / direct:.1f}x; sampling process private memory (USS) "
              f"{uss0:.0f} -> {uss1:.0f} MiB")


if __name__ == "__main__":
    main()
