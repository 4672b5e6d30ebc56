"""Charts as PNG bytes (matplotlib, off-screen): the confusion matrix of an evaluation
and the curves of a training run."""

from __future__ import annotations

import io

import numpy as np


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display, whatever the environment says
    import matplotlib.pyplot as plt

    return plt, plt.subplots(*args, **kwargs)


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def normalised(cm: np.ndarray) -> np.ndarray:
    """Each row (a label class) divided by its support: the share of its pixels predicted as
    each class (rows without support stay NaN)."""
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(1, keepdims=True)
    return np.divide(cm, support, out=np.full_like(cm, np.nan), where=support > 0)


def confusion_matrix_png(cm: np.ndarray, names: list[str] | tuple[str, ...], title: str = "") -> bytes:
    """The confusion matrix normalised by label class, class names on both axes, each cell's
    share written in it (and the row's pixel count beside the row)."""
    k = len(names)
    side = max(4.5, 0.9 * k + 2.5)
    plt, (fig, ax) = _figure(figsize=(side + 1.5, side))
    share = normalised(cm)
    im = ax.imshow(np.nan_to_num(share, nan=0.0), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels=list(names), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=[f"{n} ({int(s):,} px)" for n, s in zip(names, np.asarray(cm).sum(1))])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("label class")
    ax.set_title(title or "confusion matrix (share of each label class)")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                v = share[i, j]
                ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if np.nan_to_num(v) > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _png(plt, fig)


def training_curves_png(history: list[dict], names: list[str] | tuple[str, ...], colours=None) -> bytes:
    """Loss, validation mIoU / pixel accuracy and per-class validation IoU by epoch (each class
    in its map colour, ``colours`` as RGB 0-255, where given)."""
    epochs = [h["epoch"] for h in history]
    plt, (fig, axes) = _figure(1, 3, figsize=(15, 4.2))
    axes[0].plot(epochs, [h["train_loss"] for h in history], marker="o", color="tab:red")
    axes[0].set_title("training loss")
    axes[1].plot(epochs, [h["val_miou"] for h in history], marker="o", label="mIoU")
    axes[1].plot(epochs, [h.get("val_pixel_accuracy", np.nan) for h in history], marker=".", label="pixel accuracy")
    best = int(np.argmax([h["val_miou"] for h in history]))
    axes[1].axvline(epochs[best], color="grey", linestyle=":", label=f"best (epoch {epochs[best]})")
    axes[1].set_title("validation")
    axes[1].set_ylim(0, 1)
    axes[1].legend(loc="lower right", fontsize=8)
    for i, name in enumerate(names):
        colour = tuple(v / 255 for v in colours[i]) if colours and i < len(colours) else None
        iou = [h.get(f"val_iou_{name}") for h in history]  # None: not labelled in validation
        axes[2].plot(epochs, [np.nan if v is None else v for v in iou], marker=".", label=str(name),
                     color=colour)
    axes[2].set_title("validation IoU per class")
    axes[2].set_ylim(0, 1)
    axes[2].legend(loc="lower right", fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(plt, fig)
