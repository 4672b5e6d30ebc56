"""Segmentation metrics from a confusion matrix (rows: truth, cols: prediction).

The confusion matrix is additive, so it is accumulated per tile / per worker
and summed (all-reduced) before any ratio is taken.
"""

from __future__ import annotations

import numpy as np

from geoseg.classes import NODATA


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
    return {
        "iou": iou.tolist(),
        "dice": dice.tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mean_dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "pixels": int(total),
    }


def format_table(result: dict, names: list[str] | tuple[str, ...]) -> str:
    """A plain-text table of per-class scores and the means."""
    lines = [f"{'class':<16}{'IoU':>8}{'Dice':>8}{'Prec':>8}{'Recall':>8}"]
    for i, name in enumerate(names):
        row = [result[k][i] for k in ("iou", "dice", "precision", "recall")]
        lines.append(f"{name:<16}" + "".join(f"{v:>8.3f}" for v in row))
    lines.append(
        f"{'mean':<16}{result['miou']:>8.3f}{result['mean_dice']:>8.3f}"
        f"   pixel accuracy {result['pixel_accuracy']:.3f}"
    )
    return "\n".join(lines)
