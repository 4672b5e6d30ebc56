"""Predict throughput and memory, measured in one run (not a test).

Prints, for a deep model on CPU:
  * MPix/s of the bare predictor on the scene's tiles held in memory (same threads),
  * MPix/s of ``geoseg.predict.predict`` end to end on a warm local Ray,
  * the ratio of the two;
  * as whole processes: ``geoseg predict`` on the command line (one scene on CPU: no Ray)
    against a plain single-process rasterio -> torch -> GeoTIFF loop (``plain_loop.py``, same
    model and tiles);
and the peak RSS of every process of ``geoseg predict`` (driver, raylet, Ray workers) for growing
scenes, with the index model (on Ray) and a small deep model (no Ray), to show that memory is flat.

    python benchmarks/predict_throughput.py [--size 2048] [--tile 512] [--mem-sizes 2048 8192 16384]
                                            [--quantized MINUTES]

With ``--quantized MINUTES``: a U-Net trained MINUTES on a sample scene, quantized to INT8 (and
bf16 where the CPU has it) with ``geoseg quantize``, and each model file timed by ``geoseg
predict`` on the ``--size`` scene against the fp32 plain loop, with its class-map agreement and
its mIoU on the held-out sample scene.

Scenes above 2048^2 are tiled from a 2048^2 sample. The in-process runs use
the local Ray that ``predict`` starts (as a library user gets it), warmed on a
small scene first. On that Ray, with the model on CPU, the driver runs the model
(no model actor); ``--workers N`` times the model actors instead (each starts anew
in the timed run, as in every job).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def _private_kb(pid: int) -> tuple[str, int]:
    """Process name and its private resident memory (RssAnon + RssFile, in kB).

    Shared memory (RssShmem: Ray's object store pages mapped into workers) is left
    out: it is one store per node, bounded by its configured size, and counted in
    every process that maps it.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        name = fields.get("Name", "?").strip()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        if "ray::" in cmd:
            name = "ray worker" if "IDLE" in cmd or "MapWorker" not in cmd else "model actor"
        kb = int(fields.get("RssAnon", "0 kB").split()[0]) + int(fields.get("RssFile", "0 kB").split()[0])
        return name, kb
    except OSError:
        return "?", 0


def peak_rss(cmd: list[str]) -> tuple[float, dict[str, int]]:
    """Run ``cmd``; return (seconds, {process kind: max peak RSS in kB})."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peaks: dict[int, tuple[str, int]] = {}
    t0 = time.perf_counter()

    def poll():
        while proc.poll() is None:
            for pid in _descendants(proc.pid):
                name, kb = _private_kb(pid)
                if kb and kb > peaks.get(pid, ("", 0))[1]:
                    peaks[pid] = (name if pid != proc.pid else "driver", kb)
            time.sleep(0.2)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    proc.wait()
    th.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    by_kind: dict[str, int] = {}
    for name, kb in peaks.values():
        by_kind[name] = max(by_kind.get(name, 0), kb)
    return time.perf_counter() - t0, by_kind


def throughput(size: int, tile: int, halo: int, batch: int, arch: str, encoder: str, work: str,
               workers: int | None = None) -> None:
    import torch

    from geoseg.models import checkpoint
    from geoseg.execution import runtime
    from geoseg.models.checkpoint import CheckpointMeta
    from geoseg.data.classes import LANDCOVER
    from geoseg.models.zoo import ModelConfig, build_model
    from geoseg.predict import PredictOptions, predict
    from geoseg.models.predictor import TorchPredictor
    from geoseg.data.raster import read_info, tile_reader
    from geoseg.data.sample import write_sample
    from geoseg.data.tiling import TileGrid

    base = write_sample(os.path.join(work, "tp"), size=min(size, 2048), seed=5)
    urls = dict(base)
    if size > 2048:  # larger scenes are tiled from the 2048^2 sample (the generator is slow)
        urls["scene"] = os.path.join(work, "tp", f"scene{size}.tif")
        mosaic(base["scene"], urls["scene"], size)
    cfg = ModelConfig(arch, encoder, 4, 4)
    ckpt = os.path.join(work, "ckpt")
    checkpoint.save(ckpt, build_model(cfg), CheckpointMeta(cfg, LANDCOVER, [1000.0] * 4, [500.0] * 4))
    threads = os.cpu_count() or 1

    # bare predictor: every tile in memory first, then only the model is timed
    info = read_info(urls["scene"])
    grid = TileGrid(info.height, info.width, tile, halo)
    reader = tile_reader(urls["scene"], [1, 2, 3, 4])
    tiles = np.stack([reader.read(t)[0] for t in grid]).astype(np.float32)
    pred = TorchPredictor.from_checkpoint(ckpt, threads=threads)
    pred.predict(tiles[:batch])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(tiles), batch):
        pred.predict(tiles[i : i + batch])
    bare_s = time.perf_counter() - t0
    px = info.height * info.width
    del tiles

    # whole processes, as a user runs them: the plain loop, then `geoseg predict` (one scene: no Ray)
    here = os.path.dirname(os.path.abspath(__file__))
    plain_s = timed_process([sys.executable, os.path.join(here, "plain_loop.py"), urls["scene"], ckpt,
                             os.path.join(work, "plain.tif"), "--tile", str(tile), "--halo", str(halo)])
    cli_s = timed_process([sys.executable, "-m", "geoseg", "predict", urls["scene"], "--out", os.path.join(work, "cli"),
                           "--checkpoint", ckpt, "--tile-size", str(tile), "--halo", str(halo),
                           "--batch-size", str(batch), *(["--workers", str(workers)] if workers else [])])

    opts = PredictOptions(checkpoint=ckpt, tile_size=tile, halo=halo, batch_size=batch, overwrite=True,
                          workers=workers)
    small = write_sample(os.path.join(work, "small"), size=512, seed=5)["scene"]
    # the first call starts geoseg's own local Ray and warms its workers (model actors start anew in every job)
    predict([small], os.path.join(work, "warm"), opts, log=lambda *_: None)
    t0 = time.perf_counter()
    (rec,) = predict([urls["scene"]], os.path.join(work, "out"), opts, log=lambda *_: None)
    e2e_s = time.perf_counter() - t0
    runtime.shutdown()
    print(f"model {arch}/{encoder}, scene {size}x{size}, tile {tile}+{halo} halo, batch {batch}, "
          f"{threads} torch threads, torch {torch.__version__}")
    print(f"  bare predictor (tiles in memory): {px / bare_s / 1e6:8.3f} MPix/s  ({bare_s:.1f}s)")
    print(f"  geoseg predict end to end:        {px / e2e_s / 1e6:8.3f} MPix/s  ({e2e_s:.1f}s, "
          f"pipeline {rec['timings_s']['pipeline']:.1f}s, COG {rec['timings_s']['finish']:.1f}s, "
          f"model in: {rec['placement']['model']})")
    print(f"  ratio end-to-end / bare:          {bare_s / e2e_s:8.3f}")
    print("whole processes (start-up and imports included; a job of one scene on CPU starts no Ray):")
    print(f"  plain rasterio->torch loop:       {px / plain_s / 1e6:8.3f} MPix/s  ({plain_s:.1f}s)")
    print(f"  geoseg predict (command line):    {px / cli_s / 1e6:8.3f} MPix/s  ({cli_s:.1f}s)")
    print(f"  ratio geoseg predict / plain loop:{plain_s / cli_s:8.3f}")


def timed_process(cmd: list[str]) -> float:
    """Wall seconds of a whole process (start-up and imports included)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def mosaic(src_url: str, dst_url: str, size: int) -> None:
    """A ``size``-square scene tiled from copies of a smaller sample (window by window,
    flat memory): the sample generator itself takes minutes per 4096^2."""
    import rasterio

    from geoseg.data.cog import CogWriter
    from geoseg.data.tiling import iter_windows

    with rasterio.open(src_url) as src:
        block = src.height
        with CogWriter(dst_url, height=size, width=size, count=src.count, dtype=src.dtypes[0], crs=src.crs,
                       transform=src.transform, nodata=src.nodata, descriptions=list(src.descriptions),
                       resampling="AVERAGE") as out:
            for w in iter_windows(size, size, block):
                out.write(w, src.read(window=((0, w.height), (0, w.width))))


def memory(sizes: list[int], work: str) -> None:
    """Peak RSS of every process of ``geoseg predict`` for growing scenes: the index model (on a
    local Ray: driver, raylet, read tasks) and a small deep model (TinyFCN; a job of one scene on
    the machine's CPUs, which starts no Ray: the one process)."""
    from geoseg.models import checkpoint
    from geoseg.models.checkpoint import CheckpointMeta
    from geoseg.data.classes import LANDCOVER
    from geoseg.models.zoo import ModelConfig, build_model
    from geoseg.data.sample import write_sample

    cfg = ModelConfig("tinyfcn", in_channels=4, num_classes=4)
    ckpt = os.path.join(work, "mem-ckpt")
    checkpoint.save(ckpt, build_model(cfg), CheckpointMeta(cfg, LANDCOVER, [1000.0] * 4, [500.0] * 4))
    models = {"geoseg predict --model index": ["--model", "index"],
              "geoseg predict --checkpoint (TinyFCN, no Ray)": ["--checkpoint", ckpt]}
    rows: dict[str, list] = {k: [] for k in models}
    base = write_sample(os.path.join(work, "base"), size=min(sizes), seed=9)["scene"]
    for size in sizes:
        d = os.path.join(work, f"m{size}")
        os.makedirs(d, exist_ok=True)
        urls = {"scene": os.path.join(d, "scene.tif")}
        mosaic(base, urls["scene"], size)
        for what, args in models.items():
            secs, peaks = peak_rss(
                [sys.executable, "-m", "geoseg", "predict", urls["scene"], "--out", os.path.join(d, "out"), *args,
                 "--batch-size", "8", "--overwrite"]
            )
            rows[what].append((size, secs, peaks))
        os.remove(urls["scene"])
    for what, got in rows.items():
        print_peaks(what, got, 8)


def print_peaks(what: str, rows: list[tuple[int, float, dict[str, int]]], top: int = 6) -> None:
    """The table of peak RSS by process kind for each scene size: ``rows`` of
    ``(side in pixels, wall seconds, {process kind: peak kB})``, and the ratio last / first."""
    kinds = sorted({k for *_, p in rows for k in p}, key=lambda k: -max(r[2].get(k, 0) for r in rows))[:top]
    print(f"\npeak private RSS (MiB, object-store shared memory excluded) of {what}:")
    print(f"{'process':<42}" + "".join(f"{s:>10}" for s, *_ in rows))
    for k in kinds:
        print(f"{k:<42}" + "".join(f"{r[2].get(k, 0) / 1024:>10.0f}" for r in rows))
    print(f"{'max over processes':<42}" + "".join(f"{max(r[2].values()) / 1024:>10.0f}" for r in rows))
    print(f"{'scene MPix':<42}" + "".join(f"{r[0] ** 2 / 1e6:>10.1f}" for r in rows))
    print(f"{'wall s (whole command, Ray start)':<42}" + "".join(f"{r[1]:>10.1f}" for r in rows))
    first, last = max(rows[0][2].values()), max(rows[-1][2].values())
    print(f"ratio of max peak RSS {rows[-1][0]}^2 / {rows[0][0]}^2: {last / first:.2f} "
          f"for {rows[-1][0] ** 2 / rows[0][0] ** 2:.0f}x the pixels")


def quantized(work: str, minutes: float, size: int, tile: int, halo: int, batch: int) -> None:
    """INT8 and bf16 model files of a trained U-Net against fp32, as a user gets them: ``geoseg
    train`` (``minutes`` on a sample scene), ``geoseg quantize``, then whole processes on a ``size``²
    scene tiled from a held-out sample: the fp32 plain loop, ``geoseg predict`` with the fp32
    checkpoint and with each model file; class-map agreement with the plain loop's fp32 map, and
    each one's mIoU on the held-out sample scene against its labels."""
    import rasterio

    from geoseg.evaluate import evaluate
    from geoseg.models.predictor import cpu_flags
    from geoseg.data.sample import write_sample

    train = write_sample(os.path.join(work, "q-train"), size=2048, seed=0)
    held = write_sample(os.path.join(work, "q-held"), size=2048, seed=1)
    scene = os.path.join(work, "q-held", f"scene{size}.tif")
    mosaic(held["scene"], scene, size)
    run = os.path.join(work, "q-run")
    geoseg = [sys.executable, "-m", "geoseg"]
    train_s = timed_process([*geoseg, "train", "--image", train["scene"], "--label", train["labels"], "--out", run,
                             "--arch", "unet", "--encoder", "resnet18", "--epochs", "1000", "--max-minutes",
                             str(minutes), "--chips-per-epoch", "256"])
    models = {"fp32": run}
    quant_s = {}
    for precision in ("int8", "bf16"):
        if precision == "bf16" and not cpu_flags() & {"avx512_bf16", "amx_bf16"}:
            continue
        quant_s[precision] = timed_process([*geoseg, "quantize", run, "--precision", precision,
                                            "--max-miou-drop", "1"])
        models[precision] = os.path.join(run, f"model.{precision}.{'onnx' if precision == 'int8' else 'pt'}")
    here = os.path.dirname(os.path.abspath(__file__))
    plain_tif = os.path.join(work, "q-plain.tif")
    plain_s = timed_process([sys.executable, os.path.join(here, "plain_loop.py"), scene, run, plain_tif,
                             "--tile", str(tile), "--halo", str(halo)])
    with rasterio.open(plain_tif) as src:
        plain_map = src.read(1)
    rows = []
    for name, model in models.items():
        out = os.path.join(work, f"q-{name}")
        secs = timed_process([*geoseg, "predict", scene, "--out", out, "--checkpoint", model, "--tile-size", str(tile),
                              "--halo", str(halo), "--batch-size", str(batch)])
        with rasterio.open(os.path.join(out, f"scene{size}.tif")) as src:
            got = src.read(1)
            valid = got != 255  # geoseg leaves the input's nodata collar nodata; the plain loop classifies it
            agree = float((got == plain_map)[valid].mean())
        held_out = os.path.join(work, f"q-held-{name}")
        subprocess.run([*geoseg, "predict", held["scene"], "--out", held_out, "--checkpoint", model],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        miou = evaluate(os.path.join(held_out, "scene.tif"), held["labels"])["miou"]
        rows.append((name, secs, agree, miou))
    px = size * size
    print(f"\nquantized models: U-Net/resnet18 trained {minutes:g} min ({train_s:.0f}s wall), quantize "
          + ", ".join(f"{k} {v:.0f}s" for k, v in quant_s.items()) + f"; {size}² scene, whole processes")
    print(f"  {'':34}{'s':>8}{'MPix/s':>9}{'x plain':>9}{'agree':>9}{'mIoU':>8}")
    print(f"  {'plain rasterio->torch loop, fp32':34}{plain_s:8.1f}{px / plain_s / 1e6:9.3f}{1:9.2f}{1:9.4f}"
          f"{'':>8}")
    for name, secs, agree, miou in rows:
        print(f"  {'geoseg predict, ' + name:34}{secs:8.1f}{px / secs / 1e6:9.3f}{plain_s / secs:9.2f}{agree:9.4f}"
              f"{miou:8.4f}")
    print("  (agree: share of valid pixels equal to the plain loop's fp32 class map; mIoU: the held-out sample scene)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--halo", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--mem-sizes", type=int, nargs="*", default=[2048, 8192, 16384])
    ap.add_argument("--workers", type=int, help="model actors for the in-process and command-line runs "
                    "(default: none, the driver runs the model)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--quantized", type=float, metavar="MINUTES",
                    help="also INT8 / bf16 model files of a U-Net trained MINUTES on a sample (on a --size scene)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as work:
        if not a.skip_throughput:
            throughput(a.size, a.tile, a.halo, a.batch, a.arch, a.encoder, work, a.workers)
        if a.quantized:
            quantized(work, a.quantized, a.size, a.tile, a.halo, a.batch)
        if a.mem_sizes:
            memory(a.mem_sizes, work)


if __name__ == "__main__":
    main()
