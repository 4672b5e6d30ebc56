"""The active-learning loop, simulated (not a test): uncertainty with diversity against random chips.

A pool scene and a held-out scene (``geoseg sample``, other seeds); a person labelling is stood in
for by the pool's reference labels, burnt into each chosen chip's GeoPackage. Per strategy and seed:

  round 0     ``--start`` random chips (the same for both strategies) labelled; a TinyFCN trained
  round k     ``geoseg predict --uncertainty`` of the pool with the last model, ``geoseg rank --top N``
              (``entropy``, spaced and balanced; or ``random``, spaced and balanced), earlier rounds'
              chips excluded, labelled; ``geoseg train --init`` the last round's model on every chip so
              far (``--epochs`` each round, a tenth of the chips for validation; each round's model is
              its last checkpoint)

and the held-out mIoU of every round's model against the number of labelled chips, as a table and a
PNG curve (mean over the seeds), and how many chips uncertainty needs to reach random's final mIoU.

    python benchmarks/active_learning.py [--rounds 4] [--per-round 8] [--start 8] [--chip 64]
                                         [--seeds 0 1 2] [--size 1024] [--epochs 6] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

QUIET = {"log": lambda *_: None}


def held_out_miou(run: str, scene: str, labels: str, work: str) -> float:
    import rasterio

    from geoseg.data.classes import LANDCOVER
    from geoseg.models.metrics import confusion, scores
    from geoseg.predict import PredictOptions, predict

    (rec,) = predict([scene], work, PredictOptions(checkpoint=run, tile_size=512, halo=32), **QUIET)
    got = rasterio.open(rec["outputs"]["cog"]).read(1)
    want = rasterio.open(labels).read(1)
    return float(scores(confusion(want, got, len(LANDCOVER)))["miou"])


def loop(strategy: str, seed: int, a, pool: dict, held: dict, work: str) -> list[tuple[int, float]]:
    from geoseg.data.classes import LANDCOVER
    from geoseg.predict import PredictOptions, predict
    from geoseg.rank import RankOptions, rank_here
    from geoseg.rank.stages import labels_from_raster
    from geoseg.train import TrainConfig, train

    base = os.path.join(work, f"{strategy}-{seed}")
    curve, chips_dirs, excluded, run, labelled = [], [], [], None, 0
    for k in range(a.rounds + 1):
        rdir = os.path.join(base, f"round{k}")
        if k == 0:  # the same random start for both strategies (one ranking per seed, labelled once)
            folder = os.path.join(work, f"start-{seed}")
            chips = os.path.join(folder, "chips.parquet")
            if not os.path.exists(chips):
                rank_here(RankOptions(pool["prefix0"], folder, top=a.start, chip=a.chip, strategy="random",
                                      seed=seed), **QUIET)
            chips_dir = os.path.join(folder, "chips")
        else:
            pred = os.path.join(rdir, "pred")
            predict([pool["scene"]], pred, PredictOptions(checkpoint=run, tile_size=512, halo=32, uncertainty=True),
                    **QUIET)
            rec = rank_here(RankOptions(pred, os.path.join(rdir, "rank"), top=a.per_round, chip=a.chip,
                                        strategy=strategy, seed=seed * 100 + k, exclude=tuple(excluded)), **QUIET)
            chips, chips_dir = rec["chips"], os.path.join(rdir, "rank", "chips")
        labels_from_raster(chips, pool["labels"])  # the person, simulated by the reference labels
        excluded.append(chips)
        chips_dirs.append(os.path.join(chips_dir, "*.gpkg"))
        labelled += len(__import__("geopandas").read_parquet(chips))
        out = os.path.join(rdir, "run")
        summary = train(TrainConfig(images=[pool["scene"]], labels=[], out=out, label_vectors=",".join(chips_dirs),
                          class_field="class", arch="tinyfcn", init=run, epochs=a.epochs, chips_per_epoch=128,
                          chip_size=a.chip, block_size=a.chip, batch_size=16, workers=1, val_fraction=0.1,
                          seed=seed, classes=None if run else list(LANDCOVER.names)), **QUIET)
        # the round's last checkpoint: "best" by a handful of validation chips would add its own noise
        run = summary["latest_checkpoint"] or out
        miou = held_out_miou(run, held["scene"], held["labels"], os.path.join(rdir, "held"))
        curve.append((labelled, miou))
        print(f"  {strategy:8s} seed {seed} round {k}: {labelled:3d} chips, held-out mIoU {miou:.3f}", flush=True)
    return curve


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--per-round", type=int, default=8)
    p.add_argument("--start", type=int, default=8)
    p.add_argument("--chip", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--work")
    a = p.parse_args()
    from geoseg.data.classes import LANDCOVER
    from geoseg.data.sample import write_sample
    from geoseg.execution import runtime
    from geoseg.execution.tasks import machine_cpus
    from geoseg.models.predictor import cpu_flags
    from geoseg.predict import PredictOptions, predict

    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"})
    print(f"machine: {machine_cpus()} cores, {' '.join(flags) or 'no AVX2'}; pool {a.size}², held-out {a.size}², "
          f"chips of {a.chip} px: {a.start} to start, then {a.rounds} rounds of {a.per_round}; TinyFCN, "
          f"{a.epochs} epochs of 128 chips per round (--init the last round's); seeds {a.seeds}")
    work = a.work or tempfile.mkdtemp(prefix="geoseg-al-")
    pool = write_sample(os.path.join(work, "pool"), size=a.size, seed=21)
    held = write_sample(os.path.join(work, "held"), size=a.size, seed=22)
    runtime.init_ray(None)
    # the pool as a first prediction (any model: the random start only needs the scene's grid)
    import torch

    from geoseg.models import checkpoint
    from geoseg.models.checkpoint import CheckpointMeta
    from geoseg.models.zoo import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig("tinyfcn", "none", 4, len(LANDCOVER))
    blank = os.path.join(work, "blank")
    checkpoint.save(os.path.join(blank, "best"), build_model(cfg), CheckpointMeta(cfg, LANDCOVER, [0.0] * 4, [1.0] * 4))
    pool["prefix0"] = os.path.join(work, "pool-pred")
    predict([pool["scene"]], pool["prefix0"], PredictOptions(checkpoint=blank, tile_size=512, halo=32,
                                                             uncertainty=True), **QUIET)
    t0 = time.time()
    curves = {s: [loop(s, seed, a, pool, held, work) for seed in a.seeds] for s in ("entropy", "random")}
    mean = {s: np.mean([[m for _, m in c] for c in cs], axis=0) for s, cs in curves.items()}
    chips = [n for n, _ in curves["entropy"][0]]
    print(f"\nheld-out mIoU, mean of {len(a.seeds)} seeds ({time.time() - t0:.0f} s)")
    print("| labelled chips | " + " | ".join(str(n) for n in chips) + " |")
    print("|---|" + "---|" * len(chips))
    for s in ("entropy", "random"):
        print(f"| {s} (spaced, balanced) | " + " | ".join(f"{m:.3f}" for m in mean[s]) + " |")
    target = mean["random"][-1]
    reach = next((n for n, m in zip(chips, mean["entropy"]) if m >= target), None)
    if reach is None:
        print(f"uncertainty did not reach random's final mIoU {target:.3f} within {chips[-1]} chips")
    else:
        k = chips.index(reach)  # between rounds: linear in the mean curve
        m0, m1 = (mean["entropy"][k - 1], mean["entropy"][k]) if k else (0.0, mean["entropy"][0])
        between = chips[k - 1] + (chips[k] - chips[k - 1]) * (target - m0) / (m1 - m0) if k and m1 > m0 else reach
        print(f"uncertainty reaches random's final mIoU {target:.3f} ({chips[-1]} chips) with {reach} chips: "
              f"{100 * (1 - reach / chips[-1]):.0f} % fewer (between rounds, linearly: {between:.1f} chips, "
              f"{100 * (1 - between / chips[-1]):.0f} % fewer)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for s, colour in (("entropy", "tab:blue"), ("random", "tab:grey")):
        for c in curves[s]:
            ax.plot([n for n, _ in c], [m for _, m in c], color=colour, alpha=0.25)
        ax.plot(chips, mean[s], color=colour, marker="o", label=f"{s} (mean of {len(a.seeds)} seeds)")
    ax.set_xlabel(f"labelled chips ({a.chip} px)")
    ax.set_ylabel("held-out mIoU")
    ax.legend()
    fig.tight_layout()
    png = os.path.join(work, "active_learning.png")
    fig.savefig(png, dpi=120)
    json.dump({s: curves[s] for s in curves}, open(os.path.join(work, "curves.json"), "w"))
    print(f"curve: {png}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
