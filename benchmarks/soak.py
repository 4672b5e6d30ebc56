"""Soak: many small scenes through ``geoseg predict`` on a multi-node local Ray while worker
nodes are killed at random; every output is compared with a clean run.

    python benchmarks/soak.py [--scenes 24] [--size 512] [--nodes 3] [--kill-every 6] [--seed 0]

The cluster is a ``ray.cluster_utils.Cluster`` (a head and ``--nodes`` worker nodes,
one CPU each, on this machine). The clean run goes first; then the same job runs
again while a thread removes a random worker node every ``--kill-every`` seconds
(with jitter) and adds a replacement, as an autoscaler would. If a job fails
anyway, it is rerun with the same command (it resumes), as a user would.

Prints one table: scenes completed, nodes killed, job reruns, and scenes whose
class maps (COG and Zarr) differ from the clean run, which must be zero.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=24)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--kill-every", type=float, default=6.0, help="seconds between node kills (mean)")
    ap.add_argument("--max-reruns", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import ray
    import rasterio
    import xarray as xr
    from ray.cluster_utils import Cluster

    from geoseg.predict import PredictOptions, predict
    from geoseg.data.sample import write_sample

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    work = tempfile.mkdtemp(prefix="geoseg-soak-")
    scenes = []
    for i in range(args.scenes):
        d = os.path.join(work, "in", f"s{i:03d}")
        url = write_sample(d, size=args.size, seed=args.seed + i)["scene"]
        named = os.path.join(work, "in", f"scene{i:03d}.tif")
        os.replace(url, named)
        scenes.append(named)
    opts = PredictOptions(model="index", tile_size=64, halo=8, batch_size=4, workers=(1, args.nodes))

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(args.nodes)]
    ray.init(address=cluster.address, logging_level="ERROR")
    cluster.wait_for_nodes()
    from geoseg.execution.runtime import quiet_ray

    quiet_ray(verbose=False)
    rng = random.Random(args.seed)
    kills, reruns = 0, 0
    try:
        t0 = time.perf_counter()
        predict(scenes, os.path.join(work, "clean"), opts, log=lambda *_: None)
        clean_s = time.perf_counter() - t0

        # The job runs in a thread; nodes are killed from the main thread (Ray's Node wants it).
        outcome: dict = {}

        def job() -> None:
            nonlocal reruns
            while True:
                try:
                    predict(scenes, os.path.join(work, "soak"), opts, log=lambda *_: None)
                    return
                except Exception as exc:  # noqa: BLE001 - a failed job is rerun, as a user would
                    reruns += 1
                    print(f"job failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); rerunning",
                          flush=True)
                    if reruns > args.max_reruns:
                        outcome["error"] = exc
                        return

        thread = threading.Thread(target=job, daemon=True)
        t1 = time.perf_counter()
        thread.start()
        while True:
            thread.join(timeout=rng.uniform(0.5, 1.5) * args.kill_every)
            if not thread.is_alive():
                break
            victim = workers.pop(rng.randrange(len(workers)))
            cluster.remove_node(victim)
            kills += 1
            print(f"{time.perf_counter() - t1:6.1f}s: worker node killed ({kills})", flush=True)
            workers.append(cluster.add_node(num_cpus=1, wait=False))  # the replacement joins while the job runs
        if "error" in outcome:
            raise outcome["error"]
        soak_s = time.perf_counter() - t1
    finally:
        ray.shutdown()
        cluster.shutdown()

    completed = mismatches = 0
    for url in scenes:
        stem = os.path.splitext(os.path.basename(url))[0]
        a, b = (os.path.join(work, run, stem) for run in ("clean", "soak"))
        if os.path.exists(b + ".json"):
            completed += 1
        with rasterio.open(a + ".tif") as ca, rasterio.open(b + ".tif") as cb:
            same = np.array_equal(ca.read(), cb.read())
        za, zb = xr.open_zarr(a + ".zarr"), xr.open_zarr(b + ".zarr")
        same = same and np.array_equal(za["classes"].values, zb["classes"].values)
        mismatches += not same

    rows = [
        ("scenes", args.scenes),
        ("scenes completed", completed),
        ("worker nodes killed", kills),
        ("job reruns (resumed)", reruns),
        ("scenes differing from the clean run", mismatches),
        ("clean run (s)", f"{clean_s:.1f}"),
        ("soak run (s)", f"{soak_s:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\nsoak: index model, {n} scenes of {s}^2, {w} worker nodes".format(n=args.scenes, s=args.size, w=args.nodes))
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    return 0 if mismatches == 0 and completed == args.scenes else 1


if __name__ == "__main__":
    sys.exit(main())
