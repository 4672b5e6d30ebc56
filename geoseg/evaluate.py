"""Compare a predicted class map with labels, window by window (flat memory)."""

from __future__ import annotations

import numpy as np

from geoseg import storage
from geoseg.classes import NODATA, ClassScheme
from geoseg.errors import RasterError
from geoseg.metrics import confusion, scores
from geoseg.raster import iter_windows, open_raster, read_info


def evaluate(pred_url: str, labels_url: str, num_classes: int | None = None, block: int = 1024) -> dict:
    """Confusion matrix and scores of ``pred_url`` against ``labels_url``.

    Both rasters must share CRS, transform and size. Label pixels equal to the
    labels' nodata (or 255) are ignored; predicted nodata on a labelled pixel
    counts as an error (it is outside every class).
    """
    pred_info, lab_info = read_info(pred_url), read_info(labels_url)
    if not pred_info.same_grid(lab_info):
        raise RasterError(
            f"{pred_url} and {labels_url} are on different grids "
            f"({pred_info.width}x{pred_info.height} vs {lab_info.width}x{lab_info.height}, or CRS/transform differ)"
        )
    scheme = ClassScheme.from_tags(lab_info.tags) or ClassScheme.from_tags(pred_info.tags)
    k = num_classes or (len(scheme) if scheme else None)
    if k is None:
        raise RasterError(f"{labels_url}: no CLASS_NAMES tag; pass --num-classes")
    ignore = int(lab_info.nodata) if lab_info.nodata is not None else NODATA
    cm = np.zeros((k, k), dtype=np.int64)
    missed = 0
    with storage.gdal_env(), open_raster(pred_url) as p, open_raster(labels_url) as lab:
        for w in iter_windows(lab_info.height, lab_info.width, block):
            truth = lab.read(1, window=w.to_rasterio())
            pred = p.read(1, window=w.to_rasterio())
            cm += confusion(truth, pred, k, ignore=ignore)
            labelled = (truth != ignore) & (truth < k)
            missed += int(np.count_nonzero(labelled & (pred >= k)))
    result = scores(cm)
    labelled_total = result["pixels"] + missed
    result["pixel_accuracy"] = float(np.trace(cm) / labelled_total) if labelled_total else float("nan")
    result["unpredicted_pixels"] = missed
    result["confusion"] = cm.tolist()
    result["class_names"] = list(scheme.names) if scheme else [str(i) for i in range(k)]
    return result
