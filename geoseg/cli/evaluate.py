"""geoseg evaluate: class maps scored against labels."""

from __future__ import annotations

from geoseg.data import storage
from geoseg.cli.args import command, positive


def add(sub) -> None:
    ev = command(sub, "evaluate", "score class maps against labels, many scenes in parallel on Ray",
             "geoseg evaluate out/scene.tif data/labels.tif --out report/")
    ev.add_argument("predictions", nargs="+",
                    help="class rasters or Zarr stores, globs, .txt lists, predict run records, STAC items or "
                         "predict's output catalog / folder; PREDICTION LABELS (two rasters) is one pair")
    ev.add_argument("--labels", action="extend", nargs="+",
                    help="a folder of label rasters named as the predictions, or label rasters / globs / lists "
                         "paired in order (default: the items' label asset)")
    ev.add_argument("--label-asset", default="labels",
                    help="STAC asset key of the labels, in the item or the input item it came from (default labels)")
    ev.add_argument("--num-classes", type=positive("--num-classes"),
                    help="classes to score (default: the label raster's class names)")
    ev.add_argument("--out", help="report folder: metrics.json, metrics.md, confusion_matrix.png, errors/<scene>.png")
    ev.add_argument("--no-error-maps", action="store_true", help="no per-scene error map PNGs under --out")
    ev.add_argument("--instances", nargs="+", metavar="REF",
                    help="reference instances (an instance-id raster or a vector file, one per scene, in order): "
                         "the instance polygons beside each prediction scored at IoU >= 0.5 (precision, recall, F1)")
    ev.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    ev.set_defaults(run=run)


def run(a) -> None:
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
