"""Segmentation metrics from a confusion matrix (rows: truth, cols: prediction).

The confusion matrix is additive, so it is accumulated per tile / per worker
and summed (all-reduced) before any ratio is taken.
"""

from __future__ import annotations

import numpy as np

from geoseg.data.classes import NODATA


def confusion(truth: np.ndarray, pred: np.ndarray, num_classes: int, ignore: int = NODATA) -> np.ndarray:
    """``(K, K)`` int64 confusion matrix; pixels where ``truth == ignore`` or ``pred`` is
    outside ``[0, K)`` (e.g. nodata) do not count."""
    t = np.asarray(truth).ravel().astype(np.int64)
    p = np.asarray(pred).ravel().astype(np.int64)
    keep = (t != ignore) & (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    return np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.divide(a, b, out=np.full_like(a, np.nan), where=b > 0)


def scores(cm: np.ndarray) -> dict:
    """Per-class IoU, Dice/F1, precision, recall; mIoU, mean Dice, pixel accuracy.

    Classes absent from both truth and prediction get NaN and are left out of the means.
    ``miou_labelled`` is the mean over the classes with labelled pixels only: a class absent
    from the labels but predicted somewhere does not count as 0 there. It is the metric to
    compare two models on one validation split (model selection, int8 against fp32), where a
    few stray pixels of an unlabelled class would otherwise move the mean by 1/K.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    iou = _div(tp, tp + fp + fn)
    dice = _div(2 * tp, 2 * tp + fp + fn)
    precision = _div(tp, tp + fp)
    recall = _div(tp, tp + fn)
    total = cm.sum()
    labelled = iou[cm.sum(1) > 0]
    return {
        "iou": iou.tolist(),
        "dice": dice.tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "miou_labelled": float(labelled.mean()) if labelled.size else float("nan"),
        "support": cm.sum(1).astype(np.int64).tolist(),
        "mean_dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "pixels": int(total),
    }


def _value(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def report(cm: np.ndarray, names: list[str] | tuple[str, ...]) -> dict:
    """The scores of a confusion matrix by class name, as geoseg reports them (JSON-ready).

    ``per_class[name]``: ``iou``, ``dice`` (= F1), ``precision``, ``recall``, ``support``
    (labelled pixels), ``predicted`` (predicted pixels), ``absent`` (in neither the labels
    nor the prediction: its scores are ``None``, not 0, and it is left out of the means).
    A class only predicted has IoU 0 and no recall; one only labelled has IoU 0 and no
    precision. ``miou`` / ``mean_dice`` / ``pixel_accuracy`` are ``None`` when no pixel counts;
    ``miou_labelled`` (the mean over labelled classes) and ``unlabelled`` (classes without a
    labelled pixel) tell model selection what it may compare.
    """
    cm = np.asarray(cm, dtype=np.int64)
    if cm.shape != (len(names), len(names)):
        raise ValueError(f"confusion matrix {cm.shape} for {len(names)} classes")
    s = scores(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    per_class = {}
    for i, name in enumerate(names):
        per_class[str(name)] = {
            **{k: _value(s[k][i]) for k in ("iou", "dice", "precision", "recall")},
            "support": int(support[i]),
            "predicted": int(predicted[i]),
            "absent": bool(support[i] == 0 and predicted[i] == 0),
        }
    return {
        "miou": _value(s["miou"]),
        "miou_labelled": _value(s["miou_labelled"]),
        "mean_dice": _value(s["mean_dice"]),
        "pixel_accuracy": _value(s["pixel_accuracy"]),
        "pixels": s["pixels"],
        "classes": [str(n) for n in names],
        "absent": [str(n) for n in names if per_class[str(n)]["absent"]],
        "unlabelled": [str(n) for n in names if per_class[str(n)]["support"] == 0],
        "per_class": per_class,
        "confusion": cm.tolist(),
    }


def _cell(v: float | None) -> str:
    return f"{v:>8.3f}" if v is not None else f"{'-':>8}"


def format_table(rep: dict) -> str:
    """A plain-text table of a :func:`report`: per-class scores and support, then the means.
    Absent classes say so instead of showing scores. Class areas (``label_area_ha``,
    ``predicted_area_ha``) are columns where the report has them."""
    areas = all(c.get("label_area_ha") is not None for c in rep["per_class"].values())
    lines = [f"{'class':<16}{'IoU':>8}{'Dice':>8}{'Prec':>8}{'Recall':>8}{'support':>12}"
             + (f"{'labelled ha':>14}{'predicted ha':>14}" if areas else "")]
    for name, c in rep["per_class"].items():
        area = f"{c['label_area_ha']:>14,.1f}{c['predicted_area_ha']:>14,.1f}" if areas else ""
        if c["absent"]:
            lines.append(f"{name:<16}{'absent (neither labelled nor predicted)':>44}" + area)
            continue
        if c["support"] == 0:
            note = f"not labelled here (predicted on {c['predicted']:,} px)"
            lines.append(f"{name:<16}{note:>44}" + area)
            continue
        lines.append(f"{name:<16}" + "".join(_cell(c[k]) for k in ("iou", "dice", "precision", "recall"))
                     + f"{c['support']:>12,}" + area)
    lines.append(f"{'mean':<16}{_cell(rep['miou'])}{_cell(rep['mean_dice'])}"
                 f"   pixel accuracy {_cell(rep['pixel_accuracy']).strip()} over {rep['pixels']:,} pixels")
    if set(rep.get("unlabelled") or []) - set(rep.get("absent") or []) and rep.get("miou_labelled") is not None:
        lines.append(f"{'mean labelled':<16}{_cell(rep['miou_labelled'])}   over the classes labelled here "
                     f"(not {', '.join(rep['unlabelled'])})")
    return "\n".join(lines)
