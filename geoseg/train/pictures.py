"""Pictures of a training run, written into its folder by the driver when it ends:

* ``curves.png``: training loss, validation mIoU / pixel accuracy and per-class
  validation IoU by epoch (the history kept in the checkpoints, so a resumed run
  has its whole history);
* ``val_quicklook.png``: the best checkpoint on one validation block (never seen
  in training): the input in true colour, labels, prediction and errors.
"""

from __future__ import annotations

import numpy as np

from geoseg.data import quicklook, storage
from geoseg.data.classes import NODATA, ClassScheme
from geoseg.data.plots import training_curves_png
from geoseg.data.raster import tile_reader
from geoseg.data.tiling import Window
from geoseg.models.runfolder import RunFolder

MAX_QUICKLOOK = 1024  # largest side of the validation window, in pixels


def write_curves(run_dir: str, history: list[dict], classes: ClassScheme) -> str | None:
    if not history:
        return None
    url = RunFolder(run_dir).curves
    storage.write_bytes(url, training_curves_png(history, classes.names, classes.colors))
    return url


def validation_window(plan, pair: int = 0) -> Window | None:
    """The validation block of ``pair`` that holds its first validation chip (at most
    ``MAX_QUICKLOOK`` a side), or None without validation chips there."""
    chips = plan.val_chips[plan.val_chips[:, 0] == pair] if len(plan.val_chips) else []
    if len(chips) == 0:
        return None
    block = int(plan.info.get("block") or plan.chip)
    info = plan.pairs[pair].image
    r0, c0 = (int(chips[0][1]) // block) * block, (int(chips[0][2]) // block) * block
    side = min(block, MAX_QUICKLOOK)
    return Window(r0, c0, min(side, info.height - r0), min(side, info.width - c0))


def write_val_quicklook(run_dir: str, plan, best_checkpoint: str) -> str | None:
    """``val_quicklook.png`` of the best checkpoint on a validation block (CPU is enough:
    one window of at most 1024 px a side)."""
    from geoseg.models.predictor import TorchPredictor

    win = validation_window(plan)
    if win is None:
        return None
    pair = plan.pairs[0]
    image, valid = tile_reader(pair.image.url, pair.bands).read_window(win)
    labels, _ = tile_reader(pair.label.url, [1]).read_window(win)
    labels = labels[0].copy()
    if pair.label.nodata is not None:
        labels[labels == pair.label.nodata] = NODATA
    labels[~valid] = NODATA
    predictor = TorchPredictor.from_checkpoint(best_checkpoint, device="cpu", precision="fp32")
    pad = [(0, 0), (0, -win.height % 32), (0, -win.width % 32)]  # encoders want sides divisible by 32
    padded = np.pad(image, pad, mode="reflect") if any(p[1] for p in pad) else image
    pred = predictor.predict(padded[None])[0][: win.height, : win.width].copy()
    pred[~valid] = NODATA
    k = len(plan.classes)
    colours = quicklook.colours_of(plan.classes, k)
    rgb = quicklook.rgb_bands(pair.image.url, tuple(plan.band_roles or ()), len(image))  # of the model's bands
    shown = quicklook.true_colour(image[[b - 1 for b in rgb]].astype(np.float32), valid)
    panels = [("input (true colour)", shown),
              ("labels", quicklook.class_colours(labels, colours)),
              ("best checkpoint", quicklook.class_colours(pred, colours)),
              ("errors", quicklook.error_colours(labels, pred, colours))]
    entries = quicklook.class_entries(plan.classes.names, colours) + quicklook.ERROR_LEGEND
    url = RunFolder(run_dir).val_quicklook
    quicklook.write_png(url, quicklook.compose(panels, entries))
    return url
