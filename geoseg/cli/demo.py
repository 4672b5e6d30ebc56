"""geoseg demo: sample -> train -> predict -> evaluate, end to end (README's first command).

sample scenes (Sentinel-2-like STAC items: one COG per band) -> index model
predict -> U-Net training on Ray Train -> U-Net predict -> both scored on a
scene neither model saw.
"""

from __future__ import annotations

import shutil
import time

from geoseg.data import storage
from geoseg.evaluate import report, run_evaluation
from geoseg.predict import PredictOptions, predict
from geoseg.data.sample import write_sample
from geoseg.train import TrainConfig, train
from geoseg.cli.args import command, positive


def add(sub) -> None:
    d = command(sub, "demo", "sample scene -> predict -> evaluate, end to end",
            "geoseg demo --out geoseg-demo --size 2048 --train-minutes 5")
    d.add_argument("--out", default="geoseg-demo", help="demo folder (default ./geoseg-demo)")
    d.add_argument("--size", type=positive("--size"), default=2048)
    d.add_argument("--train-minutes", type=float, default=5.0, help="CPU minutes for the demo U-Net (0: skip)")
    d.add_argument("--address", help="Ray cluster address")
    d.set_defaults(run=run)


def run(a) -> None:
    run_demo(a.out, a.size, a.train_minutes, a.address)


def run_demo(out: str, size: int = 2048, train_minutes: float = 5.0, address: str | None = None) -> None:
    t0 = time.perf_counter()
    steps = 5 if train_minutes > 0 else 3
    train_dir, holdout_dir = storage.join(out, "sample"), storage.join(out, "holdout")
    print(f"[1/{steps}] writing sample scenes: {size}x{size} for training, {size // 2}x{size // 2} held out")
    train_urls = write_sample(train_dir, size=size, seed=0, stac=True)
    test_urls = write_sample(holdout_dir, size=max(256, size // 2), seed=1, stac=True)

    print(f"[2/{steps}] segmenting the held-out scene (its STAC item) with the NDVI/NDWI index model on Ray")
    opts = PredictOptions(model="index", address=address, overwrite=True, batch_size=16, quicklook=True)
    index_out = storage.join(out, "predictions", "index")
    (rec,) = predict([test_urls["item"]], index_out, opts)
    # the output catalog's item links to the input item, whose "labels" asset holds the labels
    index_scores = run_evaluation([index_out], out=storage.join(out, "evaluation", "index"), address=address)
    print(report.terminal(index_scores))
    records = {"index": rec}
    unet_scores = None

    if train_minutes > 0:
        run_dir = storage.join(out, "run")
        if not storage.is_remote(run_dir):
            shutil.rmtree(storage.local_path(run_dir), ignore_errors=True)
        print(f"[3/{steps}] training a U-Net on the training scene for ~{train_minutes:g} min with 2 Ray Train workers")
        cfg = TrainConfig(
            images=[train_urls["item"]],  # its blue, green, red and nir COGs, stacked on the fly
            assets=["blue", "green", "red", "nir"],
            labels=[train_urls["labels"]],
            out=run_dir,
            arch="unet",
            encoder="resnet18",
            chip_size=128,
            batch_size=8,
            chips_per_epoch=256,
            epochs=100,
            max_minutes=train_minutes,
            lr=2e-3,
            workers=2,
            address=address,
        )
        summary = train(cfg)
        print(f"[4/{steps}] segmenting the held-out scene with the U-Net checkpoint")
        opts = PredictOptions(checkpoint=run_dir, address=address, overwrite=True, batch_size=4, tile_size=256,
                              quicklook=True)
        unet_out = storage.join(out, "predictions", "unet")
        (rec,) = predict([test_urls["item"]], unet_out, opts)
        records["unet"] = rec
        print(f"[5/{steps}] scoring")
        unet_scores = run_evaluation([unet_out], out=storage.join(out, "evaluation", "unet"), address=address)
        print(report.terminal(unet_scores))
        print(f"U-Net validation mIoU during training: {summary['best'].get('val_miou', float('nan')):.3f}")

    print("\nheld-out scene (seed 1), never seen in training:")
    print(f"  index model  mIoU {index_scores['miou']:.3f}  pixel accuracy {index_scores['pixel_accuracy']:.3f}")
    if unet_scores:
        print(f"  U-Net        mIoU {unet_scores['miou']:.3f}  pixel accuracy {unet_scores['pixel_accuracy']:.3f}")
    print("outputs:")
    print(f"  training scene  {train_urls['item']} (one COG per band; labels.tif)")
    print(f"  held-out scene  {test_urls['item']} (one COG per band; labels.tif)")
    for name, r in records.items():
        print(f"  {name:<6} zarr {r['outputs']['zarr']}\n         cog  {r['outputs']['cog']}\n"
              f"         run record {r['outputs']['record']}\n         quicklook {r['outputs']['quicklook']}\n"
              f"         evaluation {storage.join(out, 'evaluation', name)} (metrics.json, metrics.md, "
              "confusion_matrix.png, errors/)")
    if train_minutes > 0:
        print(f"  U-Net run       {storage.join(out, 'run')} (best/ checkpoint, run.json, curves.png, "
              "val_quicklook.png)")
    print(f"demo finished in {time.perf_counter() - t0:.1f}s")
