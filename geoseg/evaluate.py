"""Compare a predicted class map with labels, window by window (flat memory).

The prediction is a class-map GeoTIFF / COG, or the Zarr store that ``geoseg
predict`` wrote (its ``classes`` array, georeferenced by ``spatial_ref``).
"""

from __future__ import annotations


import numpy as np

from geoseg import storage
from geoseg.classes import NODATA, ClassScheme
from geoseg.errors import RasterError, StorageError
from geoseg.metrics import confusion, scores
from geoseg.raster import RasterInfo, check_class_map, iter_windows, open_raster, read_info
from geoseg.tiling import Window


class _RasterClassMap:
    """A single-band class raster read window by window."""

    def __init__(self, info: RasterInfo):
        self.info = info

    def __enter__(self):
        self._env = storage.gdal_env()
        self._env.__enter__()
        self._src = open_raster(self.info.url)
        return self

    def read(self, w: Window) -> np.ndarray:
        return self._src.read(1, window=w.to_rasterio())

    def __exit__(self, *exc) -> None:
        self._src.close()
        self._env.__exit__(*exc)


class _ZarrClassMap:
    """The ``classes`` array of a Zarr store written by ``geoseg predict``."""

    def __init__(self, url: str):
        import zarr

        self.url = url
        try:
            root = zarr.open_group(storage.zarr_store(url, read_only=True), mode="r")
            self._array = root["classes"]
            ref = dict(root["spatial_ref"].attrs)
        except (KeyError, FileNotFoundError, ValueError) as exc:
            raise RasterError(f"{url}: not a class map written by geoseg predict (no classes array: {exc})") from None
        record = url.rstrip("/")[: -len(".zarr")] + ".json"
        if not storage.exists(record):
            raise RasterError(f"{url}: incomplete (no run record {record}); rerun the predict command to finish it")
        c, a, b, f, d, e = (float(v) for v in ref["GeoTransform"].split())
        attrs = dict(self._array.attrs)
        names = attrs.get("class_names") or []
        tags = ClassScheme(tuple(names), tuple(tuple(x) for x in attrs["class_colors"])).to_tags() if names else {}
        h, w = self._array.shape
        self.info = RasterInfo(url=url, height=h, width=w, count=1, dtype=str(self._array.dtype),
                               crs=ref.get("crs_wkt"), transform=(a, b, c, d, e, f), nodata=NODATA,
                               descriptions=("classes",), tags=tags)

    def __enter__(self):
        return self

    def read(self, w: Window) -> np.ndarray:
        rows, cols = w.slices
        return self._array[rows, cols]

    def __exit__(self, *exc) -> None:
        pass


def open_class_map(url: str):
    """A class map to read: a Zarr store of ``geoseg predict`` or a single-band raster."""
    if url.rstrip("/").endswith(".zarr"):
        if not storage.exists(storage.join(url, "zarr.json")):
            raise StorageError(f"{url}: not found (no zarr.json)")
        return _ZarrClassMap(url)
    return _RasterClassMap(read_info(url))


def evaluate(pred_url: str, labels_url: str, num_classes: int | None = None, block: int = 1024) -> dict:
    """Confusion matrix and scores of ``pred_url`` against ``labels_url``.

    Both must share CRS, transform and size. Label pixels equal to the
    labels' nodata (or 255) are ignored; predicted nodata on a labelled pixel
    counts as an error (it is outside every class).
    """
    pred, labels = open_class_map(pred_url), open_class_map(labels_url)
    pred_info, lab_info = pred.info, labels.info
    check_class_map(pred_info)
    check_class_map(lab_info, "label raster")
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
    with pred as p, labels as lab:
        for w in iter_windows(lab_info.height, lab_info.width, block):
            truth = lab.read(w)
            guess = p.read(w)
            cm += confusion(truth, guess, k, ignore=ignore)
            labelled = (truth != ignore) & (truth < k)
            missed += int(np.count_nonzero(labelled & (guess >= k)))
    result = scores(cm)
    labelled_total = result["pixels"] + missed
    result["pixel_accuracy"] = float(np.trace(cm) / labelled_total) if labelled_total else float("nan")
    result["unpredicted_pixels"] = missed
    result["confusion"] = cm.tolist()
    result["class_names"] = list(scheme.names)[:k] if scheme and len(scheme) >= k else [str(i) for i in range(k)]
    return result



