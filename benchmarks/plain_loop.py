"""The baseline a user would write: one process, rasterio windows -> torch -> GeoTIFF.

    python benchmarks/plain_loop.py SCENE CHECKPOINT OUT.tif [--tile 512] [--halo 32]

Same model, tiles and halo as ``geoseg predict`` (edge windows slide inside the
raster, the core of each tile is kept), one tile per forward call, torch's default
threads, no Ray. ``benchmarks/predict_throughput.py`` times it as a whole process
(imports included) against ``geoseg predict`` on the command line.
"""

from __future__ import annotations

import argparse
import time

t_start = time.perf_counter()

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import torch  # noqa: E402

from geoseg.models import checkpoint  # noqa: E402
from geoseg.data.tiling import TileGrid  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scene")
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--halo", type=int, default=32)
    a = ap.parse_args()
    model, meta = checkpoint.load(a.checkpoint)
    model.eval()
    mean = torch.tensor(meta.mean).view(1, -1, 1, 1)
    std = torch.tensor(meta.std).view(1, -1, 1, 1)
    with rasterio.open(a.scene) as src:
        profile = dict(driver="GTiff", height=src.height, width=src.width, count=1, dtype="uint8", crs=src.crs,
                       transform=src.transform, tiled=True, blockxsize=512, blockysize=512, compress="DEFLATE")
        grid = TileGrid(src.height, src.width, a.tile, a.halo)
        with rasterio.open(a.out, "w", **profile) as dst, torch.inference_mode():
            for t in grid:
                r, c, core = t.read, t.crop, t.core
                x = torch.from_numpy(src.read(window=((r.row_off, r.row_off + r.height),
                                                      (r.col_off, r.col_off + r.width))).astype(np.float32))
                classes = model((x[None] - mean) / std).argmax(1)[0].numpy().astype(np.uint8)
                dst.write(classes[c.row_off : c.row_off + c.height, c.col_off : c.col_off + c.width][None],
                          window=((core.row_off, core.row_off + core.height),
                                  (core.col_off, core.col_off + core.width)))
    print(f"plain loop: {time.perf_counter() - t_start:.1f}s")


if __name__ == "__main__":
    main()
