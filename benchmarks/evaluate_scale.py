"""geoseg evaluate: memory as rasters grow, and speed on Ray against one process (not a test).

For each size it writes a label COG (tiled from the sample's labels) and a
prediction that differs from it in a fixed pattern, then runs
``geoseg evaluate PRED LABELS --out DIR`` as a whole process, recording the peak
private RSS of every process (driver, Ray workers) and the wall time; on the
largest size it also scores the pair in one process (``score_in_process``, the
plain windowed loop) and prints the ratio of the two speeds, both measured here.

    python benchmarks/evaluate_scale.py [--sizes 2048 8192 16384]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from predict_throughput import peak_rss, print_peaks  # noqa: E402


def write_pair(base_labels: str, folder: str, size: int) -> tuple[str, str]:
    """``size``-square labels tiled from the sample's, and a prediction wrong on a diagonal
    pattern (every 7th pixel taken for the next class): window by window, flat memory."""
    import rasterio

    from geoseg.data.classes import LANDCOVER
    from geoseg.data.cog import CogWriter
    from geoseg.data.tiling import iter_windows

    urls = (os.path.join(folder, "pred.tif"), os.path.join(folder, "labels.tif"))
    with rasterio.open(base_labels) as src:
        block = src.height
        meta = dict(height=size, width=size, count=1, dtype="uint8", crs=src.crs, transform=src.transform,
                    nodata=255, colormap=LANDCOVER.colormap(), tags=LANDCOVER.to_tags(), resampling="MODE")
        with CogWriter(urls[0], **meta) as pred, CogWriter(urls[1], **meta) as lab:
            for w in iter_windows(size, size, block):
                tile = src.read(1, window=((0, w.height), (0, w.width)))
                rows, cols = np.ogrid[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]
                wrong = ((rows + cols) % 7 == 0) & (tile != 255)
                lab.write(w, tile)
                pred.write(w, np.where(wrong, (tile + 1) % 4, tile).astype(np.uint8))
    return urls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 16384])
    a = ap.parse_args()

    from geoseg.evaluate import Pair, plan_scenes, score_in_process
    from geoseg.data.sample import write_sample

    rows = []
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as work:
        base = write_sample(os.path.join(work, "base"), size=min(2048, min(a.sizes)), seed=9)["labels"]
        for size in a.sizes:
            d = os.path.join(work, f"s{size}")
            os.makedirs(d)
            pred, labels = write_pair(base, d, size)
            secs, peaks = peak_rss([sys.executable, "-m", "geoseg", "evaluate", pred, labels, "--out",
                                    os.path.join(d, "report")])
            rows.append((size, secs, peaks))
            if size == max(a.sizes):
                t0 = time.perf_counter()
                ev = score_in_process(plan_scenes([Pair("s", pred, labels)]))
                one = time.perf_counter() - t0
                pixels = int(ev.counts[0].confusion.sum())
                # the Ray scoring alone, on a warm local Ray (the command's wall time includes Ray's start)
                import ray

                from geoseg.evaluate import run_evaluation

                ray.init(address="local", include_dashboard=False, logging_level="ERROR")
                run_evaluation([pred], [labels], error_maps=False)  # warm the workers
                t0 = time.perf_counter()
                rep = run_evaluation([pred], [labels], error_maps=False)
                on_ray = time.perf_counter() - t0
                ray.shutdown()
                assert rep["confusion"] == ev.counts[0].confusion.tolist()
            for f in (pred, labels):
                os.remove(f)
    print_peaks("geoseg evaluate PRED LABELS --out DIR", rows)
    mpix = max(a.sizes) ** 2 / 1e6
    print(f"\n{max(a.sizes)}^2 ({pixels / 1e6:.0f} MPix scored): one process {one:.1f} s ({mpix / one:.1f} MPix/s), "
          f"on a warm local Ray {on_ray:.1f} s ({mpix / on_ray:.1f} MPix/s): {one / on_ray:.2f}x, same numbers")


if __name__ == "__main__":
    main()
