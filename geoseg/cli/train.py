"""geoseg train: a segmentation model trained with Ray Train."""

from __future__ import annotations

import argparse

from geoseg.data.bands import parse_bands
from geoseg.cli.args import BANDS_HELP, add_stack_flags, command, stack_options
from geoseg.train import TrainConfig, train


TRAIN_FLAGS = (
    "images", "labels", "out", "arch", "encoder", "encoder_weights", "freeze_encoder", "bands",
    "num_classes", "classes", "chip_size", "block_size", "val_fraction", "balanced", "chips_per_epoch", "epochs",
    "max_minutes", "batch_size", "lr", "loss", "workers", "gpus", "cpus_per_worker", "num_to_keep",
    "max_failures", "seed", "address", "allow_no_crs", "resolution", "chip_cache", "prefetch_batches",
    "label_vectors", "class_field", "instances", "mask", "init",
)


def add(sub) -> None:
    t = command(sub, "train", "train a segmentation model with Ray Train",
            "geoseg train --image data/scene.tif --label data/labels.tif --out runs/unet --max-minutes 30")
    t.add_argument("--config", help="YAML file of training options (flags override it)")
    t.add_argument("--image", action="append", dest="images", help="image raster (repeat for more scenes)")
    t.add_argument("--label", action="append", dest="labels", help="label raster, one per --image")
    t.add_argument("--out", help="run folder or s3:// URL (rerun with the same --out to resume)")
    t.add_argument("--arch", help="unet, unet++, deeplabv3plus, fpn, pspnet, fcn, ... (default unet)")
    t.add_argument("--encoder", help="encoder name, e.g. resnet18, resnet34, efficientnet-b0")
    t.add_argument("--encoder-weights", help="local encoder weights file (nothing is downloaded)")
    t.add_argument("--freeze-encoder", action="store_true", default=None)
    t.add_argument("--bands", help=BANDS_HELP + " (default: blue, green, red, nir by band description, else all)")
    t.add_argument("--num-classes", type=int, help="the labels' number of classes (declares them: values 0..N-1)")
    t.add_argument("--classes", help="the labels' classes by name, for values 0, 1, ... (e.g. "
                                     "bare,vegetation,water,built); declares them, as a CLASS_NAMES tag does")
    t.add_argument("--chip-size", type=int)
    t.add_argument("--block-size", type=int, help="side of the blocks of the spatial train/validation split")
    t.add_argument("--val-fraction", type=float)
    t.add_argument("--balanced", action=argparse.BooleanOptionalAction, default=None,
                   help="draw training chips towards rare classes (default: on)")
    t.add_argument("--chips-per-epoch", type=int)
    t.add_argument("--epochs", type=int)
    t.add_argument("--max-minutes", type=float, help="time budget: whole epochs, then one cut short to end with it; "
                                                             "the learning rate decays to its end")
    t.add_argument("--batch-size", type=int, help="global batch, split across the workers (default 16; 16 per GPU "
                                                                  "with --gpus)")
    t.add_argument("--lr", type=float)
    t.add_argument("--loss", help="ce, dice, focal or ce+dice")
    t.add_argument("--workers", type=int, help="Ray Train workers (default: one per GPU with --gpus, else one per "
                                                          "node, its cores as threads)")
    t.add_argument("--gpus", action="store_true", default=None, help="one GPU per worker")
    t.add_argument("--cpus-per-worker", type=float)
    t.add_argument("--num-to-keep", type=int)
    t.add_argument("--max-failures", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--address", help="Ray cluster address")
    t.add_argument("--allow-no-crs", action="store_true", default=None, help="accept rasters without a CRS")
    t.add_argument("--label-vectors", metavar="FILE",
                   help="labels as polygons (GeoParquet, GeoJSON, FlatGeobuf, GeoPackage, ...; a glob or comma-separated "
                        "list for several, e.g. geoseg rank's chips/*.gpkg), rasterized onto each image's grid "
                        "(RUN_DIR/labels); pixels no polygon covers are left out of the loss; with --class-field, "
                        "or --instances")
    t.add_argument("--init", metavar="RUN_DIR",
                   help="start from an earlier run's weights (its best checkpoint): fine-tuning; the model, bands, "
                        "classes and normalisation are the earlier run's")
    t.add_argument("--class-field", help="the --label-vectors field holding class numbers or names")
    t.add_argument("--instances", action="store_true", default=None,
                   help="field delineation: --label instance-id rasters (or --label-vectors, one polygon per "
                        "instance) trained as background / field / boundary")
    t.add_argument("--chip-cache", metavar="URL|off",
                   help="where each block of the split is decoded once, for every epoch to cut chips from "
                        "(default RUN_DIR/chips; off: read every chip from the rasters)")
    t.add_argument("--mask", metavar="SOURCE",
                   help="a mask band of each image (scl, qa_pixel, ASSET:VALUES, ASSET:bits=BITS, as for predict): "
                        "masked pixels are left out of the loss and the statistics, chips mostly masked are "
                        "not drawn")
    t.add_argument("--prefetch-batches", type=int, help="batches read ahead of each step (default 4 on a GPU, 2 on CPU)")
    add_stack_flags(t)
    t.set_defaults(run=run)


def run(a) -> None:
    flags = {k: getattr(a, k) for k in TRAIN_FLAGS}
    flags["bands"] = parse_bands(a.bands) if a.bands else None
    stack = stack_options(a)
    if stack:
        flags["assets"] = list(stack.assets) if stack.assets else None
        flags["resampling"] = stack.resampling
    cfg = TrainConfig.from_sources(a.config, flags)
    summary = train(cfg)
    best = summary["best"]
    print(
        f"best validation mIoU {best.get('val_miou', float('nan')):.3f} (epoch {best.get('epoch')})\n"
        f"checkpoint: {summary['best_checkpoint']}\n"
        f"predict with: geoseg predict SCENE --out OUT --checkpoint {cfg.out}"
    )
