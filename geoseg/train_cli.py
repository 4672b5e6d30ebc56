"""``geoseg train`` on the command line: flags and/or ``--config train.yaml``."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train a segmentation model with Ray Train")
    t.add_argument("--config", help="YAML file of training options (flags override it)")
    t.add_argument("--image", action="append", dest="images", help="image raster (repeat for more scenes)")
    t.add_argument("--label", action="append", dest="labels", help="label raster, one per --image")
    t.add_argument("--out", help="run folder or s3:// URL (rerun with the same --out to resume)")
    t.add_argument("--arch", help="unet, unet++, deeplabv3plus, fpn, pspnet, fcn, ... (default unet)")
    t.add_argument("--encoder", help="encoder name, e.g. resnet18, resnet34, efficientnet-b0")
    t.add_argument("--encoder-weights", help="local encoder weights file (nothing is downloaded)")
    t.add_argument("--freeze-encoder", action="store_true", default=None)
    t.add_argument("--bands", type=lambda s: [int(x) for x in s.split(",")], help="1-based band numbers, e.g. 1,2,3,4")
    t.add_argument("--num-classes", type=int)
    t.add_argument("--chip-size", type=int)
    t.add_argument("--block-size", type=int, help="side of the blocks of the spatial train/val split")
    t.add_argument("--val-fraction", type=float)
    t.add_argument("--balanced", action=argparse.BooleanOptionalAction, default=None,
                   help="draw training chips towards rare classes (default: on)")
    t.add_argument("--chips-per-epoch", type=int)
    t.add_argument("--epochs", type=int)
    t.add_argument("--max-minutes", type=float, help="stop after the epoch that would pass this budget")
    t.add_argument("--batch-size", type=int, help="global batch, split across the workers (default 16)")
    t.add_argument("--lr", type=float)
    t.add_argument("--loss", help="ce, dice, focal or ce+dice")
    t.add_argument("--workers", type=int, help="Ray Train workers (default 2)")
    t.add_argument("--gpus", action="store_true", default=None, help="one GPU per worker")
    t.add_argument("--cpus-per-worker", type=float)
    t.add_argument("--num-to-keep", type=int)
    t.add_argument("--max-failures", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--address", help="Ray cluster address")


def cmd_train(a: argparse.Namespace) -> None:
    from geoseg.metrics import format_table  # noqa: F401
    from geoseg.trainer import TrainConfig, train

    keys = [
        "images", "labels", "out", "arch", "encoder", "encoder_weights", "freeze_encoder", "bands",
        "num_classes", "chip_size", "block_size", "val_fraction", "balanced", "chips_per_epoch", "epochs",
        "max_minutes", "batch_size", "lr", "loss", "workers", "gpus", "cpus_per_worker", "num_to_keep",
        "max_failures", "seed", "address",
    ]
    cfg = TrainConfig.from_sources(a.config, {k: getattr(a, k) for k in keys})
    summary = train(cfg)
    best = summary["best"]
    print(
        f"best validation mIoU {best.get('val_miou', float('nan')):.3f} (epoch {best.get('epoch')})\n"
        f"checkpoint: {summary['best_checkpoint']}\n"
        f"predict with: geoseg predict SCENE --out OUT --checkpoint {cfg.out}"
    )


COMMANDS = {"train": cmd_train}
