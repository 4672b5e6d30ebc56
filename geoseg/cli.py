"""The ``geoseg`` command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys

from geoseg import __version__, runtime, storage
from geoseg.bands import parse_bands
from geoseg.console import filtered_stderr
from geoseg.demo import run_demo
from geoseg.errors import GeosegError, InputError, StorageError, one_line
from geoseg.predict import PredictOptions, predict
from geoseg.sample import write_sample
from geoseg.submit import submit
from geoseg.train import TrainConfig, train


def _int(name: str, minimum: int):
    """An argparse type: an integer >= ``minimum``, with a one-line error naming the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < minimum:
            rule = "positive" if minimum == 1 else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"{name} must be {rule}, got {value}")
        return value

    return parse


def _positive(name: str):
    return _int(name, 1)


def _workers(text: str) -> int | tuple[int, int]:
    """``--workers N`` or ``--workers MIN,MAX`` (an autoscaling actor pool)."""
    parts = text.split(",")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"--workers must be N or MIN,MAX, got {text!r}")
    values = [_positive("--workers")(p.strip()) for p in parts]
    if len(values) == 1:
        return values[0]
    if values[0] > values[1]:
        raise argparse.ArgumentTypeError(f"--workers MIN,MAX needs MIN <= MAX, got {text!r}")
    return (values[0], values[1])


def _nonneg(name: str):
    return _int(name, 0)


def _common() -> argparse.ArgumentParser:
    """Flags every command takes."""
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--verbose", action="store_true", help="also show Ray's own logs, warnings and progress bars")
    c.add_argument("--debug", action="store_true", help="show the traceback of errors")
    c.add_argument("--dashboard", action="store_true",
                   help="with a local Ray: also start Ray's dashboard (http://127.0.0.1:8265) to watch the job; "
                        "off by default, it adds seconds of start-up (a cluster has its own)")
    return c


class _Sub:
    """``add_parser`` with the common flags on every command."""

    def __init__(self, sub):
        self.sub, self.common = sub, _common()

    def add_parser(self, name: str, **kwargs):
        return self.sub.add_parser(name, parents=[self.common], **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geoseg", description="Segment satellite imagery at scale with Ray.")
    p.add_argument("--version", action="version", version=f"geoseg {__version__}")
    sub = _Sub(p.add_subparsers(dest="command", required=True))
    for add in (add_sample, add_predict, add_mosaic, add_vectorize, add_train, add_export, add_quantize, add_evaluate,
                add_view, add_quicklook, add_demo, add_submit):
        add(sub)
    return p


# Each command: ``add_X`` declares its flags and sets ``run`` to ``cmd_X``.

BANDS_HELP = "bands the model reads: band numbers in the model's order (1,2,3,4) or roles (blue=1,green=2,red=3,nir=4)"


def add_sample(sub) -> None:
    s = sub.add_parser("sample", help="write a synthetic agricultural scene (scene.tif, labels.tif)")
    s.add_argument("outdir")
    s.add_argument("--size", type=_positive("--size"), default=2048, help="side in pixels (default 2048)")
    s.add_argument("--seed", type=_nonneg("--seed"), default=0)
    s.add_argument("--instances", action="store_true",
                   help="also instances.tif: each field parcel's instance id (the field-delineation recipe)")
    s.add_argument("--stac", action="store_true", help="also a Sentinel-2-like STAC item (item.json): one COG per "
                                                       "band, B8A at 20 m, scale in raster:bands")
    s.set_defaults(run=cmd_sample)


def cmd_sample(a) -> None:
    urls = write_sample(a.outdir, size=a.size, seed=a.seed, stac=a.stac, instances=a.instances)
    print(f"scene:  {urls['scene']}\nlabels: {urls['labels']}" + (f"\nitem:   {urls['item']}" if a.stac else "")
          + (f"\ninstances: {urls['instances']}" if a.instances else ""))


def add_stack_flags(p) -> None:
    p.add_argument("--assets", help="STAC items with one asset per band: the bands to stack, by asset key or "
                                    "common name (e.g. blue,green,red,nir; default: the model's bands)")
    p.add_argument("--resolution", type=float, help="pixel size of the stack, in CRS units (default: the finest band's)")
    p.add_argument("--resampling", help="per band, e.g. scl=nearest,nir08=average (default: bilinear; nearest for "
                                        "categorical bands)")


def stack_options(a):
    from geoseg.stac import StackOptions, parse_assets, parse_resampling

    if a.resolution is not None and a.resolution <= 0:
        raise InputError(f"--resolution must be > 0, got {a.resolution}")
    if not (a.assets or a.resolution or a.resampling):
        return None
    return StackOptions(parse_assets(a.assets), a.resolution, parse_resampling(a.resampling))


def search_options(a):
    from geoseg.stac import Search

    if not a.stac_api:
        used = [f for f in ("collections", "bbox", "datetime", "filter", "query", "max_items") if getattr(a, f)]
        if used:
            raise InputError(f"--{used[0].replace('_', '-')} needs --stac-api URL")
        return None
    return Search.parse(a.stac_api, a.collections, a.bbox, a.datetime, a.filter, a.query, a.max_items)


def add_predict(sub) -> None:
    pr = sub.add_parser("predict", help="segment rasters with a Ray Data pipeline")
    pr.add_argument("inputs", nargs="*", help="rasters: paths, URLs, globs, .txt lists, STAC item JSON")
    pr.add_argument("--out", required=True, help="output prefix (folder or s3:// URL)")
    m = pr.add_mutually_exclusive_group(required=True)
    m.add_argument("--model", help="built-in model: index (fixed thresholds) or index-otsu")
    m.add_argument("--checkpoint", help="trained checkpoint or training run folder")
    pr.add_argument("--tile-size", type=_positive("--tile-size"), default=512,
                    help="side of a tile's core, the pixels it writes (one output chunk; default 512)")
    pr.add_argument("--halo", type=_nonneg("--halo"), default=32,
                    help="pixels of context read around each core (default 32)")
    pr.add_argument("--stitch", choices=["crop", "hann"], default="crop",
                    help="crop: each pixel from the tile whose core holds it (default); "
                         "hann: raised-cosine blend of overlapping tiles (two passes, scratch storage)")
    pr.add_argument("--batch-size", type=_positive("--batch-size"), default=8)
    pr.add_argument("--bands", help=BANDS_HELP)
    pr.add_argument("--workers", type=_workers,
                    help="model actors, N or MIN,MAX for a pool that grows and shrinks with the work "
                         "(default: one per GPU; on CPU one per 8 cores, each running one single-threaded call per "
                         "core; on geoseg's own local Ray without a GPU, none: the driver runs the model)")
    pr.add_argument("--gpus-per-worker", type=float, default=0.0)
    pr.add_argument("--probabilities", action="store_true", help="also write per-class probabilities")
    pr.add_argument("--tta", action="store_true", help="average predictions over flips")
    pr.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    pr.add_argument("--compile", action="store_true", help="torch.compile the model")
    pr.add_argument("--asset", help="STAC asset key to read (an item's one multi-band asset)")
    add_stack_flags(pr)
    se = pr.add_argument_group("searching a STAC API (each item found is predicted)")
    se.add_argument("--stac-api", help="STAC API root URL")
    se.add_argument("--collections", help="collection ids, comma-separated")
    se.add_argument("--bbox", help="W,S,E,N in degrees")
    se.add_argument("--datetime", help="a date-time or an interval A/B (RFC 3339; .. for open ends)")
    se.add_argument("--filter", help="CQL2 filter, as text or JSON")
    se.add_argument("--query", help="query-extension JSON, e.g. '{\"eo:cloud_cover\": {\"lt\": 20}}'")
    se.add_argument("--max-items", type=_positive("--max-items"), help="at most this many items")
    pr.add_argument("--overwrite", action="store_true", help="replace outputs made with other settings")
    pr.add_argument("--skip-bad-tiles", action="store_true",
                    help="tiles whose input cannot be read (corrupt blocks) are written as nodata and listed in the "
                         "run record, instead of failing the job")
    pr.add_argument("--allow-no-crs", action="store_true", help="accept input rasters without a CRS")
    pr.add_argument("--quicklook", action="store_true",
                    help="small PNGs beside each output: <stem>.rgb.png (input, true colour), <stem>.classes.png "
                         "(class map, legend), <stem>.quicklook.png (both side by side)")
    pr.add_argument("--fail-fast", action="store_true",
                    help="stop the job at the first scene that fails (default: list it in PREFIX/_job.json, "
                         "finish the others, exit 1; a rerun retries it)")
    pr.add_argument("--vectors", action="store_true",
                    help="once every scene is done, its polygons too (PREFIX/<stem>.vectors.parquet / .fgb); "
                         "see geoseg vectorize")
    pr.add_argument("--mosaic", metavar="GRID",
                    help="once every scene is done, mosaic them into PREFIX/mosaic.zarr on GRID: CRS:RESOLUTION "
                         "(EPSG:6933:10, EPSG:4326:0.0001) or utm:RESOLUTION (a store per UTM zone); "
                         "see geoseg mosaic")
    pr.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    pr.set_defaults(run=cmd_predict)


def add_vectorize(sub) -> None:
    v = sub.add_parser("vectorize", help="polygons of class maps (GeoParquet, FlatGeobuf), merged exactly across "
                                         "chunks")
    v.add_argument("target", help="a predict job's prefix (every finished scene) or one class map (COG, GeoTIFF, "
                                  "predict's Zarr, a mosaic store)")
    v.add_argument("--classes", help="class names or numbers to keep, comma-separated (default: every class)")
    v.add_argument("--simplify", type=float, default=0.0, metavar="M",
                   help="simplification tolerance in the map's CRS units, edges shared by two polygons simplified "
                        "alike (default 0: exact pixel outlines)")
    v.add_argument("--min-area", type=float, default=0.0, metavar="HA", help="drop polygons smaller than this (ha)")
    v.add_argument("--instances", action=argparse.BooleanOptionalAction, default=None,
                   help="one polygon per field instance (a connected interior grown over its boundary) of a "
                        "background/field/boundary map (default: on for such maps)")
    v.add_argument("--format", nargs="+", default=["parquet", "fgb"], choices=["parquet", "fgb"],
                   help="files to write (default both)")
    v.add_argument("--out", help="base name of the files for one class map (default beside it: "
                                 "<stem>.vectors.parquet / .fgb)")
    v.add_argument("--chunk", type=_int("--chunk", 16), default=2048, help="chunk side in pixels (default 2048)")
    v.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    v.set_defaults(run=cmd_vectorize)


def cmd_vectorize(a) -> None:
    from geoseg.vectorize import VectorizeOptions, vectorize

    opts = VectorizeOptions(classes=tuple(c.strip() for c in a.classes.split(",")) if a.classes else None,
                            instances=a.instances,
                            simplify=a.simplify, min_area_ha=a.min_area, chunk=a.chunk, formats=tuple(a.format),
                            address=a.address)
    vectorize(a.target, opts, out=a.out)


def add_mosaic(sub) -> None:
    mo = sub.add_parser("mosaic", help="mosaic a finished predict job's scenes into one Zarr on a common grid")
    mo.add_argument("prefix", help="the predict job's output prefix (folder or s3:// URL)")
    mo.add_argument("--grid", required=True,
                    help="CRS:RESOLUTION, e.g. EPSG:6933:10 (equal-area, metres), EPSG:4326:0.0001 (degrees); "
                         "or utm:RESOLUTION for one store per UTM zone")
    mo.add_argument("--out", help="where the store(s) go (default: the prefix)")
    mo.add_argument("--name", default="mosaic", help="store name: NAME.zarr, NAME.json, NAME.collection.json")
    mo.add_argument("--chunk", type=_int("--chunk", 64), default=1024, help="chunk side in pixels (default 1024)")
    mo.add_argument("--merge", choices=["auto", "confidence", "latest"], default="auto",
                    help="overlapping scenes: confidence (the most confident prediction, needs --probabilities), "
                         "latest (the latest scene's valid pixel), auto (confidence where every scene has "
                         "probabilities, else latest; default)")
    mo.add_argument("--overwrite", action="store_true", help="replace a mosaic made with other settings or scenes")
    mo.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    mo.set_defaults(run=cmd_mosaic)


def cmd_mosaic(a) -> None:
    from geoseg.mosaic.job import mosaic

    mosaic(a.prefix, a.grid, out=a.out, name=a.name, chunk=a.chunk, rule=a.merge, overwrite=a.overwrite,
           address=a.address)


def predict_options(a):
    return PredictOptions(
        model=a.model,
        checkpoint=a.checkpoint,
        tile_size=a.tile_size,
        halo=a.halo,
        stitch=a.stitch,
        batch_size=a.batch_size,
        bands=parse_bands(a.bands) if a.bands else None,
        workers=a.workers,
        gpus_per_worker=a.gpus_per_worker,
        probabilities=a.probabilities,
        tta=a.tta,
        precision=a.precision,
        compile=a.compile,
        overwrite=a.overwrite,
        asset=a.asset,
        stack=stack_options(a),
        search=search_options(a),
        address=a.address,
        skip_bad_tiles=a.skip_bad_tiles,
        allow_no_crs=a.allow_no_crs,
        quicklook=a.quicklook,
        fail_fast=a.fail_fast,
        mosaic=a.mosaic,
        vectors=a.vectors,
    )


def cmd_predict(a) -> None:
    opts = predict_options(a)
    if not a.inputs and not opts.search:
        raise InputError("give rasters or STAC items to predict, or search a STAC API with --stac-api URL")
    records = predict(a.inputs, a.out, opts)
    if len(records) > 20:  # a line per scene is the job summary's
        tiles = sum(r["tiles"]["predicted"] for r in records)
        print(f"{len(records)} scenes predicted ({tiles} tiles); every scene in "
              f"{storage.join(a.out, '_job.json')}, STAC catalog {storage.join(a.out, 'catalog.json')}")
        return
    for rec in records:
        t = rec["tiles"]
        bad = f", {t['bad']} UNREADABLE (left nodata, listed in the record)" if t.get("bad") else ""
        print(
            f"{rec['input']}: {t['predicted']} tiles predicted, {t['nodata_skipped']} nodata, "
            f"{t['resumed']} resumed{bad} in {rec['timings_s']['total']:.1f}s\n"
            f"  zarr:   {rec['outputs']['zarr']}\n  cog:    {rec['outputs']['cog']}\n"
            f"  record: {rec['outputs']['record']}"
            + (f"\n  quicklook: {rec['outputs']['quicklook']}" if rec["outputs"].get("quicklook") else "")
        )


TRAIN_FLAGS = (
    "images", "labels", "out", "arch", "encoder", "encoder_weights", "freeze_encoder", "bands",
    "num_classes", "chip_size", "block_size", "val_fraction", "balanced", "chips_per_epoch", "epochs",
    "max_minutes", "batch_size", "lr", "loss", "workers", "gpus", "cpus_per_worker", "num_to_keep",
    "max_failures", "seed", "address", "allow_no_crs", "resolution", "chip_cache", "prefetch_batches",
    "label_vectors", "class_field", "instances",
)


def add_train(sub) -> None:
    t = sub.add_parser("train", help="train a segmentation model with Ray Train")
    t.add_argument("--config", help="YAML file of training options (flags override it)")
    t.add_argument("--image", action="append", dest="images", help="image raster (repeat for more scenes)")
    t.add_argument("--label", action="append", dest="labels", help="label raster, one per --image")
    t.add_argument("--out", help="run folder or s3:// URL (rerun with the same --out to resume)")
    t.add_argument("--arch", help="unet, unet++, deeplabv3plus, fpn, pspnet, fcn, ... (default unet)")
    t.add_argument("--encoder", help="encoder name, e.g. resnet18, resnet34, efficientnet-b0")
    t.add_argument("--encoder-weights", help="local encoder weights file (nothing is downloaded)")
    t.add_argument("--freeze-encoder", action="store_true", default=None)
    t.add_argument("--bands", help=BANDS_HELP + " (default: blue, green, red, nir by band description, else all)")
    t.add_argument("--num-classes", type=int)
    t.add_argument("--chip-size", type=int)
    t.add_argument("--block-size", type=int, help="side of the blocks of the spatial train/validation split")
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
    t.add_argument("--allow-no-crs", action="store_true", default=None, help="accept rasters without a CRS")
    t.add_argument("--label-vectors", metavar="FILE",
                   help="labels as polygons (GeoParquet, GeoJSON, FlatGeobuf, ...), rasterized onto each image's grid "
                        "(RUN_DIR/labels); with --class-field, or --instances")
    t.add_argument("--class-field", help="the --label-vectors field holding class numbers or names")
    t.add_argument("--instances", action="store_true", default=None,
                   help="field delineation: --label instance-id rasters (or --label-vectors, one polygon per "
                        "instance) trained as background / field / boundary")
    t.add_argument("--chip-cache", metavar="URL|off",
                   help="where each block of the split is decoded once, for every epoch to cut chips from "
                        "(default RUN_DIR/chips; off: read every chip from the rasters)")
    t.add_argument("--prefetch-batches", type=int, help="batches read ahead of each step (default 4 on a GPU, 2 on CPU)")
    add_stack_flags(t)
    t.set_defaults(run=cmd_train)


def cmd_train(a) -> None:
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


def add_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="score class maps against labels, many scenes in parallel on Ray")
    ev.add_argument("predictions", nargs="+",
                    help="class rasters or Zarr stores, globs, .txt lists, predict run records, STAC items or "
                         "predict's output catalog / folder; PREDICTION LABELS (two rasters) is one pair")
    ev.add_argument("--labels", action="extend", nargs="+",
                    help="a folder of label rasters named as the predictions, or label rasters / globs / lists "
                         "paired in order (default: the items' label asset)")
    ev.add_argument("--label-asset", default="labels",
                    help="STAC asset key of the labels, in the item or the input item it came from (default labels)")
    ev.add_argument("--num-classes", type=_positive("--num-classes"),
                    help="classes to score (default: the label raster's class names)")
    ev.add_argument("--out", help="report folder: metrics.json, metrics.md, confusion_matrix.png, errors/<scene>.png")
    ev.add_argument("--no-error-maps", action="store_true", help="no per-scene error map PNGs under --out")
    ev.add_argument("--instances", nargs="+", metavar="REF",
                    help="reference instances (an instance-id raster or a vector file, one per scene, in order): "
                         "the instance polygons beside each prediction scored at IoU >= 0.5 (precision, recall, F1)")
    ev.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    ev.set_defaults(run=cmd_evaluate)


def cmd_evaluate(a) -> None:
    from geoseg.evaluate import report, run_evaluation

    rep = run_evaluation(a.predictions, a.labels, label_asset=a.label_asset, num_classes=a.num_classes, out=a.out,
                         address=a.address, error_maps=not a.no_error_maps, instances=a.instances)
    print(report.terminal(rep))
    if rep.get("instances"):
        i = rep["instances"]
        print(f"instances (IoU >= {i['iou_threshold']}): {i['tp']} matched of {i['predicted']} predicted and "
              f"{i['reference']} reference; precision {report._f(i['precision'])}, recall {report._f(i['recall'])}, "
              f"F1 {report._f(i['f1'])}")
    for name, url in (rep.get("outputs") or {}).items():
        print(f"  {name + ':':<22}{url}")
    if rep.get("outputs") and not a.no_error_maps:
        print(f"  {'error maps:':<22}{storage.join(a.out, 'errors')}/<scene>.png")


def add_export(sub) -> None:
    e = sub.add_parser("export", help="a trained model as one self-describing file (ONNX or TorchScript)")
    e.add_argument("run_dir", help="training run folder or checkpoint")
    e.add_argument("--format", default="onnx", choices=("onnx", "torchscript"), help="default onnx")
    e.add_argument("--out", help="model file (default RUN_DIR/model.onnx or model.pt)")
    e.set_defaults(run=cmd_export)


def cmd_export(a) -> None:
    from geoseg.export import FORMATS, export

    export(a.run_dir, a.format, a.out or storage.join(a.run_dir, f"model{FORMATS[a.format]}"))


def add_quantize(sub) -> None:
    q = sub.add_parser("quantize", help="an INT8 (or bf16) model file, scored against fp32 on the run's validation "
                                        "blocks")
    q.add_argument("run_dir", help="training run folder (its run.json names the rasters and the split)")
    q.add_argument("--precision", default="int8", choices=("int8", "bf16"), help="default int8 (ONNX Runtime)")
    q.add_argument("--calibration", nargs="+", metavar="IMG",
                   help="rasters to calibrate activation ranges on (default: training chips of the run)")
    q.add_argument("--calibration-chips", type=_positive("--calibration-chips"), default=64,
                   help="calibration inputs (default 64)")
    q.add_argument("--max-miou-drop", type=float, default=0.01,
                   help="refuse the model when its validation mIoU is lower than fp32's by more (default 0.01)")
    q.add_argument("--out", help="model file (default RUN_DIR/model.int8.onnx or model.bf16.pt)")
    q.set_defaults(run=cmd_quantize)


def cmd_quantize(a) -> None:
    from geoseg.quantize import quantize

    quantize(a.run_dir, a.precision, a.calibration, a.max_miou_drop, a.out, a.calibration_chips)


def add_view(sub) -> None:
    v = sub.add_parser("view", help="a job's inputs and class maps on a web map in your browser (served locally)")
    v.add_argument("target", help="a predict job's prefix, or one class map (COG, predict's Zarr, a mosaic store)")
    v.add_argument("--port", type=_int("--port", 0), default=8765, help="port (default 8765; 0: any free one)")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    v.set_defaults(run=cmd_view)


def cmd_view(a) -> None:
    from geoseg.view import serve

    serve(a.target, a.host, a.port)


def add_quicklook(sub) -> None:
    q = sub.add_parser("quicklook", help="a small PNG of a raster geoseg wrote (class map, image, run record)")
    q.add_argument("raster", help="a class map (COG / Zarr), an image, a predict run record or output item")
    q.add_argument("--out", help="PNG path or URL (default: beside the raster, <stem>.quicklook.png)")
    q.add_argument("--max-side", type=_positive("--max-side"), default=1024,
                   help="largest side of each picture, in pixels (default 1024)")
    q.set_defaults(run=cmd_quicklook)


def cmd_quicklook(a) -> None:
    from geoseg.quicklook import quicklook

    print(quicklook(a.raster, a.out, a.max_side))


def add_demo(sub) -> None:
    d = sub.add_parser("demo", help="sample scene -> predict -> evaluate, end to end")
    d.add_argument("--out", default="geoseg-demo", help="demo folder (default ./geoseg-demo)")
    d.add_argument("--size", type=_positive("--size"), default=2048)
    d.add_argument("--train-minutes", type=float, default=5.0, help="CPU minutes for the demo U-Net (0: skip)")
    d.add_argument("--address", help="Ray cluster address")
    d.set_defaults(run=cmd_demo)


def cmd_demo(a) -> None:
    run_demo(a.out, a.size, a.train_minutes, a.address)


def add_submit(sub) -> None:
    sb = sub.add_parser("submit", help="run a geoseg command as a Ray job on a cluster")
    sb.add_argument("--address", help="Ray dashboard / Jobs API URL (default RAY_ADDRESS or http://127.0.0.1:8265)")
    sb.add_argument("--working-dir", default=".", help="folder uploaded with the job (default: .)")
    sb.add_argument("--no-follow", action="store_true", help="return after submitting")
    sb.add_argument("job_args", nargs=argparse.REMAINDER, help="-- then a geoseg command and its arguments")
    sb.set_defaults(run=cmd_submit)


def cmd_submit(a) -> int:
    args = a.job_args[1:] if a.job_args[:1] == ["--"] else a.job_args
    return submit(a.address, args, a.working_dir, follow=not a.no_follow)


def _user_error(exc: BaseException) -> GeosegError | None:
    """The GeosegError behind an exception, also when Ray wrapped it in a task error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)  # a Ray task error: the worker's own exception
        if isinstance(cause, BaseException):
            exc = cause
            continue
        if isinstance(exc, GeosegError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _storage_fault(exc: BaseException) -> GeosegError | None:
    """A storage fault that reached the command without geoseg naming its URL (an outage, a full
    disk inside a library): still one line, with the path where the fault names one."""
    reason = storage.fault_reason(exc)
    return StorageError(f"storage failed: {reason}") if reason else None


def main(argv: list[str] | None = None, exiting: bool = False) -> int:
    """Run one command; a user error or an interrupt is one line on stderr, and the exit code.

    The line is printed before Ray is stopped: stopping Ray while Ray Data's threads still
    read (a job failing mid-way, a signal) can end the process from Ray's C++ core at once,
    and the line would be lost. ``exiting`` (the ``geoseg`` command): after a failure the
    process ends at once without stopping Ray (the reaper stops a local Ray's processes when
    the driver is gone), so the exit code is the command's."""
    a = build_parser().parse_args(argv)
    if a.verbose:
        os.environ["GEOSEG_VERBOSE"] = "1"
    else:  # an object store's connection dropped mid-request: asyncio's own traceback of it is noise
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    if a.dashboard:
        os.environ["GEOSEG_DASHBOARD"] = "1"
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.nullcontext() if a.verbose or a.debug else filtered_stderr():
            return _run(a, exiting)
    finally:
        if not exiting:  # a library caller (or a test) keeps its own signal handlers
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def _run(a, exiting: bool) -> int:
    """The command, and its failure as one line (see :func:`main`)."""
    failure: tuple[str, int] | None = None
    try:
        code = a.run(a)
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, runtime.Terminated) else "interrupted"
        failure = (f"geoseg: {what}; rerun the same command to resume", 143 if what == "terminated" else 130)
    except Exception as exc:  # noqa: BLE001
        err = _user_error(exc) or _storage_fault(exc)
        if err is None or a.debug:
            if not exiting:
                _stop_quietly()
            raise
        failure = (f"geoseg: error: {one_line(err)}", 1)
    if failure is not None:
        _ignore_signals()
        print(failure[0], file=sys.stderr, flush=True)
    if failure is None or not exiting:
        _stop_quietly()
    return failure[1] if failure is not None else int(code or 0)


def run() -> None:
    """The ``geoseg`` command: :func:`main`, then exit without tearing the interpreter down.

    Once the command is done (outputs and records written, a local Ray stopped,
    output flushed), the teardown of torch's and Ray's modules would only keep the
    user waiting, for seconds on a small machine.
    """
    code = main(exiting=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _ignore_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _stop_quietly() -> None:
    """Stop what geoseg started; a second Ctrl-C or SIGTERM meanwhile does not add a traceback."""
    _ignore_signals()
    if "ray" in sys.modules:
        runtime.shutdown()


if __name__ == "__main__":  # pragma: no cover
    run()
