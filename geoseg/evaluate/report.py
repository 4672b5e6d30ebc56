"""What ``geoseg evaluate`` reports: the terminal table, ``metrics.json``, ``metrics.md``
and ``confusion_matrix.png``, overall and per scene, with class areas in hectares."""

from __future__ import annotations

import json

import numpy as np

from geoseg.data import storage
from geoseg.data.area import hectares
from geoseg.evaluate.plan import ScenePlan
from geoseg.evaluate.stages import Counts
from geoseg.models.metrics import format_table, report


def scores(counts: Counts, names: tuple[str, ...], with_areas: bool) -> dict:
    """:func:`geoseg.models.metrics.report` of the sums, plus class areas (ha) and ignored pixels."""
    rep = report(counts.confusion, names)
    for i, name in enumerate(names):
        rep["per_class"][name]["label_area_ha"] = round(hectares(counts.label_m2[i]), 4) if with_areas else None
        rep["per_class"][name]["predicted_area_ha"] = (round(hectares(counts.predicted_m2[i]), 4)
                                                       if with_areas else None)
    rep["ignored_pixels"] = {k: int(v) for k, v in counts.ignored.items()}
    return rep


def build(plans: list[ScenePlan], counts: list[Counts], seconds: float = 0.0) -> dict:
    """The whole report: overall scores (top level), then each scene's under ``scenes``."""
    names = plans[0].names
    total = Counts.zeros(len(names))
    for c in counts:
        total += c
    with_areas = all(p.area is not None for p in plans)
    rep = scores(total, names, with_areas)
    rep["area_unit"] = "ha" if with_areas else None
    rep["scene_count"] = len(plans)
    rep["seconds"] = round(seconds, 3)
    rep["scenes"] = {}
    for plan, c in zip(plans, counts):
        rep["scenes"][plan.pair.name] = {"prediction": plan.pair.prediction, "labels": plan.pair.labels,
                                         **scores(c, names, plan.area is not None)}
    return rep


def terminal(rep: dict, worst: int = 10) -> str:
    """The overall table; with several scenes, how many and the lowest-scoring ones."""
    lines = [format_table(rep)]
    ignored = rep["ignored_pixels"]
    if any(ignored.values()):
        lines.append(f"ignored pixels: {ignored['label_nodata']:,} without labels, "
                     f"{ignored['prediction_nodata']:,} labelled but not predicted (nodata)")
    if rep["scene_count"] > 1:
        ranked = sorted(rep["scenes"].items(), key=lambda kv: -1 if kv[1]["miou"] is None else kv[1]["miou"])
        lines.append(f"{rep['scene_count']} scenes; lowest mIoU first:")
        for name, s in ranked[:worst]:
            miou = "-" if s["miou"] is None else f"{s['miou']:.3f}"
            acc = "-" if s["pixel_accuracy"] is None else f"{s['pixel_accuracy']:.3f}"
            lines.append(f"  {name:<30} mIoU {miou}  pixel accuracy {acc}  ({s['pixels']:,} px)")
    return "\n".join(lines)


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def markdown(rep: dict, error_maps: dict[str, str] | None = None) -> str:
    """``metrics.md``: the tables of the report, for a pull request or a wiki."""
    areas = rep["area_unit"] == "ha"
    out = ["# Evaluation", "",
           f"{rep['scene_count']} scene(s), {rep['pixels']:,} scored pixels. "
           f"**mIoU {_f(rep['miou'])}**, pixel accuracy {_f(rep['pixel_accuracy'])}, "
           f"mean Dice {_f(rep['mean_dice'])}.", "",
           "| class | IoU | Dice | precision | recall | support (px) |"
           + (" labelled (ha) | predicted (ha) |" if areas else ""),
           "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if areas else "")]
    for name, c in rep["per_class"].items():
        if c["absent"]:
            row = f"| {name} | absent | | | | 0 |"
        else:
            row = (f"| {name} | {_f(c['iou'])} | {_f(c['dice'])} | {_f(c['precision'])} | {_f(c['recall'])} "
                   f"| {c['support']:,} |")
        if areas:
            row += f" {c['label_area_ha']:,.2f} | {c['predicted_area_ha']:,.2f} |"
        out.append(row)
    names = list(rep["per_class"])
    if rep["absent"]:
        out += ["", "Absent classes (neither labelled nor predicted) are left out of the means."]
    out += ["", "## Confusion matrix (pixels; rows: labels, columns: prediction)", "",
            "| label \\ predicted | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for name, row in zip(names, rep["confusion"]):
        out.append(f"| {name} | " + " | ".join(f"{v:,}" for v in row) + " |")
    out += ["", "![confusion matrix](confusion_matrix.png)", "", "## Scenes", "",
            "| scene | mIoU | pixel accuracy | pixels |" + (" error map |" if error_maps else ""),
            "|---|---:|---:|---:|" + ("---|" if error_maps else "")]
    for name, s in rep["scenes"].items():
        link = f" [png]({error_maps[name]}) |" if error_maps and name in error_maps else (" |" if error_maps else "")
        out.append(f"| {name} | {_f(s['miou'])} | {_f(s['pixel_accuracy'])} | {s['pixels']:,} |{link}")
    return "\n".join(out) + "\n"


def write(rep: dict, out: str, error_maps: dict[str, str] | None = None) -> dict[str, str]:
    """``metrics.json``, ``metrics.md`` and ``confusion_matrix.png`` under ``out``; their URLs.
    ``error_maps``: each scene's error map, as a path relative to ``out``."""
    from geoseg.data.plots import confusion_matrix_png

    urls = {name: storage.join(out, name) for name in ("metrics.json", "metrics.md", "confusion_matrix.png")}
    storage.write_bytes(urls["confusion_matrix.png"],
                        confusion_matrix_png(np.asarray(rep["confusion"]), list(rep["per_class"]),
                                             f"confusion matrix, {rep['scene_count']} scene(s), "
                                             f"mIoU {_f(rep['miou'])}"))
    storage.write_text(urls["metrics.md"], markdown(rep, error_maps))
    storage.write_text(urls["metrics.json"], json.dumps({**rep, "error_maps": error_maps or {}}, indent=2))
    return urls
