"""How sure a model is, cell by cell: the scores ``geoseg predict --uncertainty`` keeps and
``geoseg rank`` ranks (no Ray, no model).

A tile's core is cut into square **cells** of ``CELL`` px; each cell gets, over its valid pixels
(classified: not nodata, not masked):

* ``entropy``: the mean of ``-sum(p log p) / log K`` (0: sure, 1: every class alike);
* ``margin``: the mean difference between the top two class probabilities (small: unsure);
* ``disagreement`` (``--tta``): the mean share of the augmented passes (identity, horizontal and
  vertical flip) whose class differs from the averaged prediction's;
* the histogram of its predicted classes, and its number of valid pixels.

They are computed in the model's own pass from its float probabilities (nothing else is stored),
or afterwards from a job's stored ``--probabilities`` (:func:`from_probabilities`: the same
formulas on the stored uint8 values). A scene's cells are one table,
``PREFIX/<stem>.uncertainty.parquet`` (:func:`write_table`).
"""

from __future__ import annotations

import numpy as np

CELL = 32  # px: the side of a cell
SCORES = ("entropy", "margin", "disagreement")
COLUMNS = ("row_off", "col_off", "height", "width", "valid", *SCORES)  # then class_0, class_1, ...
SUFFIX = ".uncertainty.parquet"


def pixel_scores(proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(entropy, margin)`` of every pixel of probabilities ``(N, K, h, w)`` (float)."""
    p = np.asarray(proba, np.float32)
    k = p.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(p > 0, np.log(np.maximum(p, 1e-30)), 0)
    entropy = -(p * logs).sum(axis=1) / np.float32(np.log(k) if k > 1 else 1.0)
    if k > 1:
        top2 = np.partition(p, k - 2, axis=1)[:, k - 2 :]
        margin = top2[:, 1] - top2[:, 0]
    else:
        margin = np.ones(entropy.shape, np.float32)
    return entropy.astype(np.float32), margin.astype(np.float32)


def cells_of(core: int, cell: int = CELL) -> int:
    return -(-core // cell)


def cell_scores(proba: np.ndarray, classes: np.ndarray, valid: np.ndarray, k: int,
                disagreement: np.ndarray | None = None, cell: int = CELL) -> np.ndarray:
    """Per cell of each core: ``(N, nc, nc, 4 + k)`` float32 = valid pixels, entropy, margin,
    disagreement (NaN without ``--tta``), then the count of each class. ``proba`` ``(N, K, c, c)``,
    ``classes`` and ``valid`` ``(N, c, c)``, ``disagreement`` ``(N, c, c)`` or None; means over
    valid pixels (NaN where a cell has none)."""
    n, _, c, _ = proba.shape
    nc = cells_of(c, cell)
    pad = nc * cell - c
    entropy, margin = pixel_scores(proba)
    fields = [entropy, margin, disagreement if disagreement is not None else np.zeros_like(entropy)]
    v = np.asarray(valid, bool)

    def blocks(a, dtype=np.float64):  # (N, c, c) -> sums over cells (N, nc, nc)
        a = np.pad(np.asarray(a, dtype), ((0, 0), (0, pad), (0, pad)))
        return a.reshape(n, nc, cell, nc, cell).sum(axis=(2, 4))

    count = blocks(v)
    out = np.empty((n, nc, nc, 4 + k), np.float32)
    out[..., 0] = count
    with np.errstate(invalid="ignore", divide="ignore"):
        for j, f in enumerate(fields, start=1):
            out[..., j] = blocks(np.where(v, f, 0)) / count
    if disagreement is None:
        out[..., 3] = np.nan
    cls = np.asarray(classes)
    for c_ in range(k):
        out[..., 4 + c_] = blocks(v & (cls == c_))
    return out


def tta_passes(predictor, images: np.ndarray, scenes=None) -> tuple[np.ndarray, np.ndarray]:
    """``(mean probabilities, disagreement)`` over the identity, horizontal and vertical flips
    (what ``--tta`` averages): the disagreement is each pixel's share of passes whose class is
    not the mean's."""
    was = getattr(predictor, "tta", False)
    predictor.tta = False
    try:
        passes = [np.asarray(predictor.predict_proba(images, scenes), np.float32),
                  np.asarray(predictor.predict_proba(np.ascontiguousarray(images[..., ::-1]), scenes))[..., ::-1],
                  np.asarray(predictor.predict_proba(np.ascontiguousarray(images[..., ::-1, :]), scenes))[..., ::-1, :]]
    finally:
        predictor.tta = was
    mean = (passes[0] + passes[1] + passes[2]) / 3
    final = mean.argmax(1)
    disagree = sum((p.argmax(1) != final).astype(np.float32) for p in passes) / 3
    return mean.astype(np.float32), disagree


def table(rows: list[tuple[int, int, int, int, np.ndarray]], k: int):
    """A scene's cells as a pyarrow Table: ``rows`` of ``(row_off, col_off, height, width,
    scores (4 + k,))``."""
    import pyarrow as pa

    arr = np.asarray([r[4] for r in rows], np.float32).reshape(-1, 4 + k)
    cols = {"row_off": pa.array([r[0] for r in rows], pa.int32()), "col_off": pa.array([r[1] for r in rows], pa.int32()),
            "height": pa.array([r[2] for r in rows], pa.int32()), "width": pa.array([r[3] for r in rows], pa.int32()),
            "valid": pa.array(arr[:, 0].astype(np.int32))}
    for j, name in enumerate(SCORES, start=1):
        cols[name] = pa.array(arr[:, j], pa.float32())
    for c in range(k):
        cols[f"class_{c}"] = pa.array(arr[:, 4 + c].astype(np.int32))
    return pa.table(cols)


def from_probabilities(zarr_url: str, k: int, cell: int = CELL, chunk: int = 2048):
    """A scene's cell table from its stored probabilities (uint8 / 255) and classes, the same
    formulas as in the model's pass; no disagreement (NaN)."""
    import zarr

    from geoseg.data import storage
    from geoseg.data.classes import MASKED, NODATA
    from geoseg.errors import InputError

    root = zarr.open_group(storage.zarr_store(zarr_url, read_only=True), mode="r")
    if "probabilities" not in root:
        raise InputError(f"{zarr_url}: holds no probabilities (predict --probabilities) and there is no "
                         "uncertainty table (predict --uncertainty): nothing to rank it by")
    probs, classes = root["probabilities"], root["classes"]
    h, w = classes.shape
    step = max(cell, chunk // cell * cell)
    rows = []
    for r0 in range(0, h, step):
        for c0 in range(0, w, step):
            r1, c1 = min(h, r0 + step), min(w, c0 + step)
            cls = np.asarray(classes[r0:r1, c0:c1])
            p = np.asarray(probs[:, r0:r1, c0:c1]).astype(np.float32) / 255.0
            side = max(r1 - r0, c1 - c0)
            full_p = np.zeros((1, p.shape[0], side, side), np.float32)
            full_p[0, :, : r1 - r0, : c1 - c0] = p
            full_c = np.full((1, side, side), NODATA, np.uint8)
            full_c[0, : r1 - r0, : c1 - c0] = cls
            valid = (full_c != NODATA) & (full_c != MASKED)
            scores = cell_scores(full_p, full_c, valid, k, None, cell)[0]
            for i in range(-(-(r1 - r0) // cell)):
                for j in range(-(-(c1 - c0) // cell)):
                    rr, cc = r0 + i * cell, c0 + j * cell
                    rows.append((rr, cc, min(cell, h - rr), min(cell, w - cc), scores[i, j]))
    return table(rows, k)


def write_table(url: str, tab) -> None:
    import io

    import pyarrow.parquet as pq

    from geoseg.data import storage

    buf = io.BytesIO()
    pq.write_table(tab, buf)
    storage.write_bytes(url, buf.getvalue())


def read_table(url: str):
    import pyarrow.parquet as pq

    from geoseg.data import storage

    path, fs = storage.arrow_filesystem(url)
    with storage.faults(url, "reading"):
        return pq.read_table(path, filesystem=fs)


# --- a job's parts: written with each batch's chunks, one table per scene at its end ---------------


def _parts(out) -> str:
    from geoseg.data import storage

    return storage.join(out.progress, "uncertainty")


def table_url(out) -> str:
    """``PREFIX/<stem>.uncertainty.parquet`` of a scene's outputs (``data.output.SceneOutput``)."""
    return out.record[: -len(".json")] + SUFFIX


def write_part(out, tiles: np.ndarray, cells: np.ndarray) -> None:
    """The cell scores of some tiles of a scene, kept until the scene is finished (before the tiles
    are logged done: a tile logged done has its scores)."""
    import io

    from geoseg.data import storage

    buf = io.BytesIO()
    np.savez(buf, tiles=np.asarray(tiles, np.int64), cells=np.asarray(cells, np.float32))
    storage.write_bytes(storage.join(_parts(out), f"{int(tiles[0])}-{len(tiles)}.npz"), buf.getvalue())


def assemble(out, grid, k: int) -> str | None:
    """The scene's table from its parts (a tile written twice, by a retried task, counted once):
    ``PREFIX/<stem>.uncertainty.parquet``, or None where the job kept no scores."""
    import io

    from geoseg.data import storage

    names = storage.listdir(_parts(out))
    if not names:
        return None
    seen: dict[int, np.ndarray] = {}
    for name in names:
        fs, path = storage.filesystem(storage.join(_parts(out), name))
        with storage.faults(path, "reading"), fs.open(path, "rb") as f:
            part = np.load(io.BytesIO(f.read()))
        for t, c in zip(part["tiles"], part["cells"]):
            seen[int(t)] = c
    rows = []
    for t in sorted(seen):
        core = grid[grid.index(t)].core
        cells, cell = seen[t], CELL
        for i in range(cells.shape[0]):
            for j in range(cells.shape[1]):
                h, w = min(cell, core.height - i * cell), min(cell, core.width - j * cell)
                if h > 0 and w > 0:
                    rows.append((core.row_off + i * cell, core.col_off + j * cell, h, w, cells[i, j]))
    url = table_url(out)
    write_table(url, table(rows, k))
    return url
