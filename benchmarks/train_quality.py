"""Training quality at a fixed CPU budget, measured in one run (not a test).

Trains a small U-Net with ``geoseg train`` (Ray Train, its default workers) on a sample
scene for ``--minutes``, then predicts a scene of another seed it never saw and
prints per-class IoU, mIoU and chips/s beside the index model's mIoU on the
same scene, and beside a plain single-process PyTorch loop (same model, loss,
chips and wall-clock budget, all cores) as a baseline. Also prints the share
of pixels where ``geoseg predict`` at default tiling equals whole-image inference
of the trained U-Net on the held-out scene (stitching agreement).

    python benchmarks/train_quality.py [--minutes 4] [--size 2048]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def selection(summary: dict, scene: str, labels: str, chip: int, seed: int) -> dict:
    """Which epoch ``best/`` is, and whether the last epoch scored better on the classes labelled in
    the run's validation split (re-planned with the same parameters, as the run planned it)."""
    from geoseg.data.classes import NODATA
    from geoseg.train.data import open_pairs, plan_training, read_val_chips

    plan = plan_training(open_pairs([scene], [labels]), chip=chip, seed=seed, balanced=True)
    rows = {"pair": plan.val_chips[:, 0], "row": plan.val_chips[:, 1], "col": plan.val_chips[:, 2]}
    present = [plan.classes.names[c] for c in np.unique(read_val_chips(rows, plan)["label"]) if c != NODATA]

    def labelled(m: dict) -> float:
        return float(np.mean([m.get(f"val_iou_{n}") or 0.0 for n in present]))

    best, last = summary["best"], summary["last"]
    return {"best_epoch": best["epoch"], "last_epoch": last["epoch"], "best": labelled(best), "last": labelled(last),
            "missing_in_validation": [n for n in plan.classes.names if n not in present]}


def plain_loop(train_urls: dict, minutes: float, chip: int, batch: int, lr: float, work: str,
               seed: int = 0) -> tuple[str, float]:
    """Baseline: a plain PyTorch loop in this process, same chips, loss and epoch
    function as geoseg's workers (constant LR, no Ray)."""
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)

    from geoseg.models import checkpoint
    from geoseg.train.augment import Augment
    from geoseg.models.checkpoint import CheckpointMeta
    from geoseg.train.losses import make_loss
    from geoseg.models.zoo import ModelConfig, build_model
    from geoseg.train.data import open_pairs, plan_training, sample_train_chips
    from geoseg.train.fit import train_epoch

    torch.set_num_threads(os.cpu_count() or 1)
    pairs = open_pairs([train_urls["scene"]], [train_urls["labels"]], [1, 2, 3, 4])
    plan = plan_training(pairs, chip=chip, val_fraction=0.2, band_roles=["blue", "green", "red", "nir"])
    cfg = ModelConfig("unet", "resnet18", 4, len(plan.classes))
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    mean = torch.tensor(plan.mean).view(1, -1, 1, 1)
    std = torch.tensor(plan.std).view(1, -1, 1, 1)

    def batches():  # random training chips until the budget is spent
        while time.perf_counter() - t0 < minutes * 60:
            b = sample_train_chips({"id": np.arange(batch)}, plan)
            yield {"image": torch.from_numpy(b["image"].astype(np.float32)), "label": torch.from_numpy(b["label"])}

    t0 = time.perf_counter()
    chips, *_ = train_epoch(model, batches(), opt=opt, loss_fn=make_loss("ce+dice"), augment=Augment(),
                              normalize=lambda x: (x - mean) / std, amp={"device_type": "cpu", "enabled": False})
    folder = os.path.join(work, f"plain{seed}")
    checkpoint.save(folder, model, CheckpointMeta(cfg, plan.classes, plan.mean, plan.std, ["blue", "green", "red", "nir"], [1, 2, 3, 4]))
    return folder, chips / (time.perf_counter() - t0)


def stitch_agreement(ckpt: str, scene: str, out: str) -> float:
    """Share of pixels where ``geoseg predict`` at default tiling equals whole-image inference."""
    import rasterio

    from geoseg.predict import PredictOptions, predict
    from geoseg.models.predictor import TorchPredictor

    (rec,) = predict([scene], out, PredictOptions(checkpoint=ckpt, overwrite=True), log=lambda *_: None)
    pred = TorchPredictor.from_checkpoint(ckpt, threads=os.cpu_count())
    with rasterio.open(scene) as src, rasterio.open(rec["outputs"]["cog"]) as cog:
        bands = pred.meta.band_numbers or list(range(1, src.count + 1))
        whole = pred.predict(src.read(bands).astype(np.float32)[None])[0]
        tiled = cog.read(1)
        valid = src.read_masks(1) > 0
    return float((whole == tiled)[valid].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--chip", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--workers", type=int, help="Ray Train workers (default: geoseg train's, one per node on CPU)")
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument("--repeats", type=int, default=1,
                    help="train both again with other seeds (the rare class makes one run's mIoU noisy); "
                         "prints every run's mIoU and the means")
    ap.add_argument("--balanced", action=argparse.BooleanOptionalAction, default=True,
                    help="geoseg train's sampling towards rare classes (its default; the plain loop draws by area)")
    a = ap.parse_args()

    from geoseg.execution.runtime import init_ray, shutdown

    from geoseg.evaluate import evaluate
    from geoseg.models.metrics import format_table
    from geoseg.predict import PredictOptions, predict
    from geoseg.data.sample import write_sample
    from geoseg.train import TrainConfig, train

    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as work:
        train_urls = write_sample(os.path.join(work, "train"), size=a.size, seed=0)
        test_urls = write_sample(os.path.join(work, "test"), size=a.size // 2, seed=1)
        init_ray(None)  # geoseg's own local Ray, never a cluster the machine's address file names

        def score(pred_args: dict, name: str) -> dict:
            (rec,) = predict([test_urls["scene"]], os.path.join(work, name),
                             PredictOptions(overwrite=True, tile_size=256, batch_size=4, **pred_args), log=lambda *_: None)
            return evaluate(rec["outputs"]["cog"], test_urls["labels"])

        index = score({"model": "index"}, "index")
        t0 = time.perf_counter()
        summary = train(TrainConfig(
            images=[train_urls["scene"]], labels=[train_urls["labels"]], out=os.path.join(work, "run"),
            arch="unet", encoder="resnet18", chip_size=a.chip, batch_size=a.batch, chips_per_epoch=256,
            epochs=1000, max_minutes=a.minutes, lr=a.lr, workers=a.workers, balanced=a.balanced,
        ), log=lambda *_: None)
        train_s = time.perf_counter() - t0
        picks = [selection(summary, train_urls["scene"], train_urls["labels"], a.chip, 0)]
        unet = score({"checkpoint": os.path.join(work, "run")}, "unet")
        agreement = stitch_agreement(os.path.join(work, "run"), test_urls["scene"], os.path.join(work, "stitch"))
        shutdown()
        plain = plain_rate = None
        if not a.skip_plain:
            folder, plain_rate = plain_loop(train_urls, a.minutes, a.chip, a.batch, a.lr, work)
            init_ray(None)  # geoseg's own local Ray, never a cluster the machine's address file names
            plain = score({"checkpoint": folder}, "plain")
            shutdown()

        print(f"held-out scene: sample seed 1, {a.size // 2}x{a.size // 2}; training scene seed 0, {a.size}x{a.size}")
        print(f"\nU-Net (geoseg train, {summary['config']['workers']} Ray Train worker(s), {a.minutes:g} min budget, "
              f"{train_s:.0f}s wall incl. start-up, {summary['last']['epoch'] + 1} epochs, "
              f"{summary['last']['elapsed_s']:.0f}s of them training, {summary['last']['chips_per_s']:.1f} chips/s of {a.chip}^2, "
              f"{100 * summary['last'].get('data_wait', 0):.0f}% of the last epoch waiting for chips"
              + (f", chip cache built in {cache['seconds']:.1f}s" if (cache := (summary.get("input") or {})
                                                                      .get("chip_cache")) else "") + "):")
        print(format_table(unet))
        print("\nindex model (NDVI/NDWI thresholds):")
        print(format_table(index))
        if plain:
            print(f"\nplain PyTorch loop, 1 process, same budget ({plain_rate:.1f} chips/s):")
            print(format_table(plain))
        print(f"\nmIoU  geoseg U-Net {unet['miou']:.3f} | index {index['miou']:.3f}"
              + (f" | plain loop {plain['miou']:.3f}" if plain else ""))
        if a.repeats > 1:
            runs = [(unet["miou"], plain["miou"] if plain else float("nan"))]
            for seed in range(1, a.repeats):
                again = train(TrainConfig(
                    images=[train_urls["scene"]], labels=[train_urls["labels"]], out=os.path.join(work, f"run{seed}"),
                    arch="unet", encoder="resnet18", chip_size=a.chip, batch_size=a.batch, chips_per_epoch=256,
                    epochs=1000, max_minutes=a.minutes, lr=a.lr, workers=a.workers, balanced=a.balanced, seed=seed,
                ), log=lambda *_: None)
                picks.append(selection(again, train_urls["scene"], train_urls["labels"], a.chip, seed))
                g = score({"checkpoint": again["out"]}, f"unet{seed}")["miou"]
                shutdown()
                p = float("nan")
                if not a.skip_plain:
                    folder, _ = plain_loop(train_urls, a.minutes, a.chip, a.batch, a.lr, work, seed)
                    init_ray(None)
                    p = score({"checkpoint": folder}, f"plain{seed}")["miou"]
                    shutdown()
                runs.append((g, p))
            shutdown()
            print(f"\n{a.repeats} runs of {a.minutes:g} min, held-out mIoU (seed: geoseg | plain loop):")
            for seed, (g, p) in enumerate(runs):
                print(f"  {seed}: {g:.3f} | {p:.3f}")
            print(f"  mean: {np.mean([r[0] for r in runs]):.3f} | {np.mean([r[1] for r in runs]):.3f}; "
                  f"geoseg ahead in {sum(r[0] > r[1] for r in runs)} of {len(runs)}")
        print("\nmodel selection (validation mIoU over the classes labelled in each run's validation split):")
        for seed, s in enumerate(picks):
            print(f"  run {seed}: best/ is epoch {s['best_epoch']} of {s['last_epoch'] + 1}; labelled-class mIoU "
                  f"best/ {s['best']:.3f}, last {s['last']:.3f}; not in validation: {s['missing_in_validation'] or '-'}")
        worse = sum(s["best_epoch"] != s["last_epoch"] and s["last"] > s["best"] for s in picks)
        print(f"  runs where best/ is not the last epoch while the last is better on those classes: {worse} of "
              f"{len(picks)}")
        print(f"stitched (default --tile-size/--halo) vs whole-image U-Net inference on the held-out scene: "
              f"{agreement:.5f} of pixels agree")
        print(f"pixel accuracy  geoseg U-Net {unet['pixel_accuracy']:.3f} | index {index['pixel_accuracy']:.3f}"
              + (f" | plain loop {plain['pixel_accuracy']:.3f}" if plain else ""))


if __name__ == "__main__":
    main()
