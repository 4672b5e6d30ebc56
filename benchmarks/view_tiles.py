"""``geoseg view`` tiles per second with concurrent clients, readers reused against reopened (not a test).

A sample scene of ``--side``² px is predicted (the index model) into a prefix; ``geoseg view`` serves it
on loopback, and ``--clients`` threads request Web Mercator tiles (class map and input, zoom 13 to 16,
over the scene, in a shuffled order every client repeats) for ``--seconds`` each round. Two rounds
on the same server: readers opened for every tile (what geoseg view did before its pool), then the
pool of open readers per file (an LRU, ``Readers.CAPACITY``). Printed: tiles/s of each and the ratio.

    python benchmarks/view_tiles.py [--side 4096] [--clients 6] [--seconds 20] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
import urllib.request


def tiles_of(bounds, zooms=(13, 14, 15, 16)) -> list[tuple[int, int, int]]:
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    w, s, e, n = bounds
    return [(t.z, t.x, t.y) for z in zooms for t in tms.tiles(w, s, e, n, [z])]


def hammer(base: str, paths: list[str], clients: int, seconds: float) -> float:
    done, stop = [0] * clients, time.perf_counter() + seconds

    def client(i: int) -> None:
        order = paths[:]
        random.Random(i).shuffle(order)
        k = 0
        while time.perf_counter() < stop:
            with urllib.request.urlopen(base + order[k % len(order)], timeout=60) as r:
                r.read()
            done[i] += 1
            k += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=4096)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--work")
    a = ap.parse_args()
    from rasterio.warp import transform_bounds

    from geoseg.data.raster import read_info
    from geoseg.data.sample import write_sample
    from geoseg.execution.tasks import machine_cpus
    from geoseg.models.predictor import cpu_flags
    from geoseg.predict import PredictOptions, predict
    from geoseg.view import serve
    from geoseg.view.server import Readers

    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"})
    print(f"machine: {machine_cpus()} cores, {' '.join(flags) or 'no AVX2'}; {a.clients} clients, "
          f"{a.seconds:g} s a round")
    work = a.work or tempfile.mkdtemp(prefix="geoseg-view-")
    scene = write_sample(os.path.join(work, "s"), size=a.side, seed=1)["scene"]
    predict([scene], os.path.join(work, "out"), PredictOptions(model="index", tile_size=1024, halo=16),
            log=lambda *_: None)
    info = read_info(scene)
    from affine import Affine

    t = Affine(*info.transform[:6])
    bounds = transform_bounds(info.crs, "EPSG:4326", t.c, t.f + t.e * info.height, t.c + t.a * info.width, t.f)
    paths = [f"/tiles/{layer}/scene/{z}/{x}/{y}.png" for z, x, y in tiles_of(bounds) for layer in ("classes", "input")]
    server = serve(os.path.join(work, "out"), port=0, background=True, log=lambda *_: None)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    source = server.RequestHandlerClass.source
    hammer(base, paths[:20], a.clients, 3)  # warm: imports, stretch percentiles, the page cache
    rates = {}
    for name, capacity in (("reopened", 0), ("pooled", Readers.CAPACITY)):
        source.readers = Readers(capacity)
        rates[name] = hammer(base, paths, a.clients, a.seconds)
        print(f"{name:9s}: {rates[name]:7.1f} tiles/s ({source.readers.opened} readers opened, {len(paths)} tiles "
              f"in the set)")
    print(f"pooled readers: {rates['pooled'] / rates['reopened']:.2f}x the tiles/s of readers opened per tile")
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main()
