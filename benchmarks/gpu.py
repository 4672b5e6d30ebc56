"""GPU (or CPU) ceilings of geoseg's Ray-free parts, measured in one run (not a test).

Runs on a machine with only torch, timm, segmentation-models-pytorch and
rasterio (no Ray, no zarr). Prints one table:

  * model alone: U-Net/<encoder> forward + argmax on tiles already on the device
    (normalised, channels-last), bf16 and fp32: the ceiling;
  * ``TorchPredictor.predict`` on numpy tiles in the raster's dtype (uint16), the
    same batch: what the model actor does; its ratio to the ceiling; class-map
    agreement with the softmax path (``predict_proba(...).argmax``);
  * ``TileReader`` MPix/s of tile cores with 1, 8 and all processes on a sample
    scene (DEFLATE COG);
  * a train step (``geoseg.train.fit.train_epoch``) in chips/s at 128^2 and 512^2.

MPix/s count output pixels (tile cores), so halos are overhead, as in a job.

    python benchmarks/gpu.py [--encoder resnet34] [--batch 32] [--scene 8192]

Without a GPU it runs the CPU rows at small sizes and says so.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, repeat: int) -> float:
    """Seconds per call: one warm-up (two with compile), then the mean of ``repeat`` calls."""
    fn()
    fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeat


def model_rows(encoder: str, batch: int, core: int, halo: int, device: str, repeat: int,
               compile_too: bool = False) -> list[tuple]:
    import torch

    from geoseg.models.zoo import ModelConfig, build_model
    from geoseg.models.predictor import TorchPredictor

    side = core + 2 * halo
    torch.manual_seed(0)
    model = build_model(ModelConfig("unet", encoder, 4, 4))
    rng = np.random.default_rng(0)
    tiles = rng.integers(200, 6000, size=(batch, 4, side, side), dtype=np.uint16)
    mean, std = [1000.0, 1100.0, 1200.0, 2500.0], [500.0, 500.0, 600.0, 900.0]
    px = batch * core * core
    rows = []
    for precision in ("bf16", "fp32") if device.startswith("cuda") else ("fp32",):
        pred = TorchPredictor(model, mean, std, device=device, precision=precision)
        x = ((torch.from_numpy(tiles.astype(np.float32)).to(device) - pred.mean) / pred.std)
        x = x.contiguous(memory_format=torch.channels_last)

        def bare():
            with torch.inference_mode(), torch.autocast(device_type=device.split(":")[0],
                                                        dtype=pred.amp_dtype or torch.float32,
                                                        enabled=pred.amp_dtype is not None):
                return pred.model(x).argmax(1).to(torch.uint8)

        t_model = _timed(bare, device, repeat)
        step = pred._step(batch, side)
        if step < batch:  # the model alone on the predictor's sub-batches, for reference
            xs = x[:step]
            with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=pred.amp_dtype or torch.float32,
                                                        enabled=pred.amp_dtype is not None):
                t_sub = _timed(lambda: pred.model(xs).argmax(1).to(torch.uint8), device, repeat) * batch / step
            rows.append((f"  model alone in sub-batches of {step}", px / t_sub / 1e6, ""))
        t_pred = _timed(lambda: pred.predict(tiles), device, repeat)
        subs = sorted({batch, batch // 2, batch // 4} - {step, 0}, reverse=True) if device.startswith("cuda") else []
        for sub in subs:
            other = TorchPredictor(model, mean, std, device=device, precision=precision, batch_size=sub)
            t_sub = _timed(lambda: other.predict(tiles), device, repeat)
            rows.append((f"  predictor in sub-batches of {sub}", px / t_sub / 1e6, f"{t_model / t_sub:.2f}x the model"))
        if device.startswith("cuda"):  # as the model actor runs: two calls at once, one copies while one computes
            from concurrent.futures import ThreadPoolExecutor

            other = rng.integers(200, 6000, size=tiles.shape, dtype=np.uint16)
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(pred.predict, [tiles, other]))  # warm-up: a pinned buffer per thread
                _sync(device)
                t0 = time.perf_counter()
                list(pool.map(lambda t: [pred.predict(t) for _ in range(repeat)], [tiles, other]))
                _sync(device)
                t_two = (time.perf_counter() - t0) / (2 * repeat)
            rows.append(("  predictor, 2 batches in flight (2 threads)", px / t_two / 1e6,
                         f"{t_model / t_two:.2f}x the model"))
        fast = pred.predict(tiles)
        reference = pred.predict_proba(tiles).argmax(1).astype(np.uint8)
        agree = float((fast == reference).mean())
        rows.append((f"model alone, U-Net/{encoder} {precision}, batch {batch}", px / t_model / 1e6, ""))
        rows.append((f"TorchPredictor.predict, uint16 numpy {precision}", px / t_pred / 1e6,
                     f"{t_model / t_pred:.2f}x the model; class maps = softmax path on {agree:.5%} of pixels"))
        if precision == "fp32" and device.startswith("cuda"):
            bf16 = TorchPredictor(model, mean, std, device=device, precision="bf16").predict(tiles)
            same = float((bf16 == fast).mean())
            rows.append(("  bf16 class maps vs fp32", float("nan"), f"{same:.5%} of pixels equal"))
        if compile_too:
            comp = TorchPredictor(model, mean, std, device=device, precision=precision, compile=True)
            t_c = time.perf_counter()
            comp.predict(tiles)
            first = time.perf_counter() - t_c
            t_comp = _timed(lambda: comp.predict(tiles), device, repeat)
            same = float((comp.predict(tiles) == fast).mean())
            short = tiles[: max(1, batch // 4)]  # the end of a read range: padded to the compiled shape
            t_c = time.perf_counter()
            comp.predict(short)
            _sync(device)
            t_short = time.perf_counter() - t_c
            rows.append((f"TorchPredictor.predict --compile {precision}", px / t_comp / 1e6,
                         f"{t_model / t_comp:.2f}x the eager model; first call (compiling) {first:.0f}s; "
                         f"class maps = eager on {same:.5%} of pixels; a batch of {len(short)} then took "
                         f"{t_short:.2f}s (padded, not compiled again)"))
    return rows


def _read_share(args) -> int:
    """Read tiles (in row-major runs, as a read task does) in this process; returns core pixels."""
    url, tiles, height, width, core, halo, batch = args
    from geoseg.data.raster import tile_reader
    from geoseg.data.tiling import TileGrid

    reader = tile_reader(url, [1, 2, 3, 4])
    grid = TileGrid(height, width, core, halo)
    px = 0
    for i in range(0, len(tiles), batch):
        run = [grid[grid.index(int(t))] for t in tiles[i : i + batch]]
        reader.read_tiles(run)
        px += sum(t.core.size for t in run)
    return px


def _codec_share(url: str) -> tuple[int, float]:
    """GDAL decoding every block of the raster once, in this process: the ceiling of any reader."""
    import rasterio
    from rasterio.windows import Window

    from geoseg.data import storage

    with storage.gdal_env(GDAL_NUM_THREADS="1"), rasterio.open(url) as src:
        (bh, bw), t0 = src.block_shapes[0], time.perf_counter()
        for r in range(0, src.height, bh):
            for c in range(0, src.width, bw):
                src.read(window=Window(c, r, min(bw, src.width - c), min(bh, src.height - r)))
        return src.height * src.width, time.perf_counter() - t0


def reader_rows(url: str, core: int, halo: int, procs: list[int], batch: int) -> list[tuple]:
    """Tile-core MPix/s of ``TileReader`` with ``p`` processes, each reading a contiguous
    range of tiles (as Ray Data's read tasks do)."""
    from geoseg.data.raster import read_info
    from geoseg.data.tiling import TileGrid

    info = read_info(url)
    n = len(TileGrid(info.height, info.width, core, halo))
    rows = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        pool.apply(_codec_share, (url,))  # start-up, not timed
        px, secs = pool.apply(_codec_share, (url,))
    codec = px / secs / 1e6
    rows.append((f"GDAL decoding each block once, 1 process, {info.width}x{info.height}", codec,
                 "the codec: the ceiling of any reader"))
    for p in procs:
        per = -(-n // p)
        shares = [(url, list(range(i * per, min(n, (i + 1) * per))), info.height, info.width, core, halo, batch)
                  for i in range(p)]
        with ctx.Pool(p) as pool:
            pool.map(_read_share, [(url, [0], info.height, info.width, core, halo, 1)] * p)  # start-up, not timed
            t0 = time.perf_counter()
            px = sum(pool.map(_read_share, shares))
            secs = time.perf_counter() - t0
        rows.append((f"TileReader, {p} process(es), {info.width}x{info.height} DEFLATE COG",
                     px / secs / 1e6, f"{px / secs / 1e6 / p:.1f} MPix/s per process"
                     + (f", {px / secs / 1e6 / codec:.2f}x the codec" if p == 1 else "")))
    return rows


def chip_rows(scene: str, labels: str, chip: int, n: int) -> list[tuple]:
    """Training chips one CPU core supplies (random chips from training blocks, as Ray Data does)."""
    from geoseg.train.data import open_pairs, plan_training, sample_train_chips

    plan = plan_training(open_pairs([scene], [labels], [1, 2, 3, 4]), chip=chip, block=max(chip * 2, 1024))
    sample_train_chips({"id": np.arange(2)}, plan)  # open the readers
    t0 = time.perf_counter()
    for _ in range(0, n, 8):
        sample_train_chips({"id": np.arange(8)}, plan)
    rate = n / (time.perf_counter() - t0)
    return [(f"training chips {chip}^2 read by 1 process", rate * chip * chip / 1e6, f"{rate:.1f} chips/s per core")]


def train_rows(encoder: str, device: str, sizes: list[tuple[int, int]], steps: int) -> list[tuple]:
    import torch

    from geoseg.train.augment import Augment
    from geoseg.train.losses import make_loss
    from geoseg.models.zoo import ModelConfig, build_model
    from geoseg.train.fit import train_epoch

    rows = []
    cuda = device.startswith("cuda")
    amp = dict(device_type="cuda", dtype=torch.bfloat16) if cuda else dict(device_type="cpu", enabled=False)
    for chip, batch in sizes:
        model = build_model(ModelConfig("unet", encoder, 4, 4)).to(device).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randn(batch, 4, chip, chip, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 4, (batch, chip, chip), device=device)
        batches = [{"image": x, "label": y}] * steps
        kw = dict(opt=opt, loss_fn=make_loss("ce+dice"), augment=Augment(), normalize=lambda t: t, amp=amp)
        train_epoch(model, batches[:2], **kw)
        _sync(device)
        t0 = time.perf_counter()
        chips, *_ = train_epoch(model, batches, **kw)
        _sync(device)
        rate = chips / (time.perf_counter() - t0)
        rows.append((f"train step U-Net/{encoder}, {chip}^2 chips, batch {batch}", rate * chip * chip / 1e6,
                     f"{rate:.0f} chips/s"))
    return rows


def _show(rows: list[tuple]) -> None:
    """Rows so far, as they come (a run cut short still reports)."""
    for what, rate, note in rows[getattr(_show, "done", 0):]:
        print(f"  {what}: {rate:.1f} MPix/s {note}", flush=True)
    _show.done = len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="resnet34")
    ap.add_argument("--batch", type=int, default=None, help="tiles per predictor call (default 32 on GPU, 2 on CPU)")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--halo", type=int, default=32)
    ap.add_argument("--scene", type=int, default=None, help="reader scene side (default 8192 on GPU, 4096 on CPU)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["model", "reader", "train"])
    ap.add_argument("--compile", action="store_true", help="also time the predictor with torch.compile")
    a = ap.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    batch = a.batch or (32 if cuda else 2)
    cores = os.cpu_count() or 1
    where = torch.cuda.get_device_name(0) if cuda else "no GPU: CPU rows only, at small sizes"
    print(f"device: {where}; {cores} CPU cores; torch {torch.__version__}", flush=True)
    rows: list[tuple] = []
    if "model" not in a.skip:
        rows += model_rows(a.encoder, batch, a.tile, a.halo, device, repeat=10 if cuda else 2, compile_too=a.compile)
        _show(rows)
    if "reader" not in a.skip:
        from benchmarks.predict_throughput import mosaic
        from geoseg.data.sample import write_sample

        with tempfile.TemporaryDirectory(prefix="geoseg-gpu-") as work:
            side = a.scene or (8192 if cuda else 4096)
            sample = write_sample(os.path.join(work, "s"), size=min(side, 2048), seed=5)
            if side > 2048:  # tiled from the 2048^2 sample (the generator is slow)
                for name in ("scene", "labels"):
                    big = os.path.join(work, f"{name}{side}.tif")
                    mosaic(sample[name], big, side)
                    sample[name] = big
            rows += reader_rows(sample["scene"], a.tile, a.halo, sorted({1, min(8, cores), cores}), max(batch, 8))
            rows += chip_rows(sample["scene"], sample["labels"], 512, 64 if cuda else 24)
        _show(rows)
    if "train" not in a.skip:
        sizes = [(128, 16), (512, 32)] if cuda else [(128, 4), (512, 1)]
        rows += train_rows(a.encoder, device, sizes, steps=20 if cuda else 2)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'what':<{width}}  {'MPix/s':>9}  note")
    for what, rate, note in rows:
        print(f"{what:<{width}}  {'' if rate != rate else f'{rate:.1f}':>9}  {note}")


if __name__ == "__main__":
    main()
