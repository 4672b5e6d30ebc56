"""Training data: image/label raster pairs cut into chips, with a spatial split.

Each scene is divided into square blocks; a seeded hash sends each block to
training or validation, so validation pixels are never next to (or inside)
training chips of the same block. Training chips are drawn at random inside
training blocks (optionally weighted towards rare classes); validation chips
lie on a grid inside validation blocks. Normalisation statistics and class
frequencies come from decimated reads (overviews), so planning never reads a
full raster. Chips are read window by window by Ray Data tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geoseg import storage
from geoseg.classes import NODATA, ClassScheme
from geoseg.errors import InputError, RasterError
from geoseg.raster import RasterInfo, _open, read_info, tile_reader
from geoseg.tiling import Window


@dataclass(frozen=True)
class Pair:
    image: RasterInfo
    label: RasterInfo
    bands: list[int]


@dataclass
class TrainingPlan:
    pairs: list[Pair]
    chip: int
    classes: ClassScheme
    mean: list[float]
    std: list[float]
    class_freq: list[float]
    train_blocks: np.ndarray  # (n, 4): pair, row_off, col_off, size
    train_weights: np.ndarray  # sampling weight of each train block
    val_chips: np.ndarray  # (m, 3): pair, row_off, col_off
    band_roles: list[str] | None = None
    info: dict = field(default_factory=dict)


def open_pairs(images: list[str], labels: list[str], bands: list[int] | None = None) -> list[Pair]:
    if len(images) != len(labels):
        raise InputError(f"{len(images)} --image but {len(labels)} --label: give one label per image")
    if not images:
        raise InputError("give at least one --image and --label")
    pairs = []
    for img_url, lab_url in zip(images, labels):
        img, lab = read_info(img_url), read_info(lab_url)
        if not img.same_grid(lab):
            what = []
            if img.shape != lab.shape:
                what.append(f"size {img.width}x{img.height} vs {lab.width}x{lab.height}")
            if img.crs != lab.crs:
                what.append("CRS")
            if not np.allclose(img.transform, lab.transform, atol=1e-6, rtol=0):
                what.append("transform")
            raise RasterError(f"{img_url} and {lab_url} do not share a grid ({', '.join(what)})")
        if lab.count != 1:
            raise RasterError(f"{lab_url}: a label raster needs 1 band, has {lab.count}")
        b = bands or list(range(1, img.count + 1))
        if max(b) > img.count:
            raise RasterError(f"{img_url}: band {max(b)} requested but it has {img.count} bands")
        if pairs and len(b) != len(pairs[0].bands):
            raise RasterError(f"{img_url}: {len(b)} bands, but {pairs[0].image.url} has {len(pairs[0].bands)}")
        pairs.append(Pair(img, lab, b))
    return pairs


def _decimated(url: str, bands: list[int], max_side: int, resampling: str) -> tuple[np.ndarray, float, float | None]:
    import rasterio  # noqa: F401
    from rasterio.enums import Resampling

    with storage.gdal_env(), _open(url) as src:
        scale = max(1, int(np.ceil(max(src.height, src.width) / max_side)))
        shape = (len(bands), max(1, src.height // scale), max(1, src.width // scale))
        data = src.read(bands, out_shape=shape, resampling=getattr(Resampling, resampling))
        return data, src.height / shape[1], src.nodata


def _block_hash(seed: int, pair: int, by: int, bx: int) -> float:
    h = (seed * 1000003 + pair * 9176 + by * 7919 + bx * 104729) & 0xFFFFFFFF
    h = (h ^ (h >> 16)) * 0x45D9F3B & 0xFFFFFFFF
    h = (h ^ (h >> 16)) * 0x45D9F3B & 0xFFFFFFFF
    return ((h ^ (h >> 16)) & 0xFFFFFF) / float(1 << 24)


def plan_training(
    pairs: list[Pair],
    chip: int = 128,
    block: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    balanced: bool = False,
    band_roles: list[str] | None = None,
    max_val_chips: int = 2048,
) -> TrainingPlan:
    """Split blocks, compute normalisation and class statistics, list validation chips."""
    if chip < 16:
        raise InputError(f"--chip-size must be >= 16, got {chip}")
    if not 0 < val_fraction < 1:
        raise InputError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    block = block or chip * 4
    if block < chip:
        raise InputError(f"--block-size ({block}) must be >= --chip-size ({chip})")
    scheme = ClassScheme.from_tags(pairs[0].label.tags)
    sums = sumsq = None
    count = 0
    hist_total = np.zeros(NODATA, dtype=np.int64)
    blocks, weights_hist, val_blocks = [], [], []
    for p_i, pair in enumerate(pairs):
        img, scale, nodata = _decimated(pair.image.url, pair.bands, 1024, "nearest")
        lab, lscale, lab_nodata = _decimated(pair.label.url, [1], 1024, "nearest")
        lab = lab[0].astype(np.int64)
        ignore = lab == NODATA
        if lab_nodata is not None:
            ignore |= lab == int(lab_nodata)
        if nodata is not None:
            valid_px = ~np.all(img == nodata, axis=0)
            if valid_px.shape == ignore.shape:
                ignore |= ~valid_px
        else:
            valid_px = np.ones(img.shape[1:], bool)
        v = img[:, valid_px].astype(np.float64)
        sums = v.sum(1) if sums is None else sums + v.sum(1)
        sumsq = (v**2).sum(1) if sumsq is None else sumsq + (v**2).sum(1)
        count += v.shape[1]
        hist_total += np.bincount(lab[~ignore].ravel(), minlength=NODATA)[:NODATA]
        H, W = pair.image.height, pair.image.width
        if H < chip or W < chip:
            raise RasterError(f"{pair.image.url}: {W}x{H} is smaller than one {chip}x{chip} chip")
        for by in range(H // block + (1 if H % block >= chip else 0)):
            for bx in range(W // block + (1 if W % block >= chip else 0)):
                r0, c0 = by * block, bx * block
                size_r, size_c = min(block, H - r0), min(block, W - c0)
                # class histogram of the block from the decimated labels
                lr0, lr1 = int(r0 / lscale), max(int(r0 / lscale) + 1, int((r0 + size_r) / lscale))
                lc0, lc1 = int(c0 / lscale), max(int(c0 / lscale) + 1, int((c0 + size_c) / lscale))
                sub = lab[lr0:lr1, lc0:lc1]
                sub_ign = ignore[lr0:lr1, lc0:lc1]
                bh = np.bincount(sub[~sub_ign].ravel(), minlength=NODATA)[:NODATA]
                if bh.sum() == 0:
                    continue  # no labelled pixel: useless for training and validation
                rec = (p_i, r0, c0, min(size_r, size_c))
                if _block_hash(seed, p_i, by, bx) < val_fraction:
                    val_blocks.append(rec)
                else:
                    blocks.append(rec)
                    weights_hist.append(bh)
    if not blocks or not val_blocks:
        if len(blocks) + len(val_blocks) < 2:
            raise InputError(
                f"not enough labelled area for a train/validation split with --block-size {block}; use a smaller one"
            )
        # tiny datasets: make sure both sides get at least one block
        if not val_blocks:
            val_blocks.append(blocks.pop())
            weights_hist.pop()
        else:
            blocks.append(val_blocks.pop())
            weights_hist.append(np.ones(NODATA, dtype=np.int64))
    present = np.nonzero(hist_total)[0]
    k = num_classes or (len(scheme) if scheme else int(present.max()) + 1 if present.size else 2)
    if present.size and present.max() >= k:
        raise RasterError(f"{pairs[0].label.url}: label value {present.max()} but only {k} classes")
    names = class_names or (list(scheme.names) if scheme and len(scheme) == k else [f"class_{i}" for i in range(k)])
    colors = list(scheme.colors) if scheme and len(scheme) == k else [
        tuple(int(x) for x in np.random.default_rng(i).integers(0, 255, 3)) for i in range(k)
    ]
    freq = hist_total[:k] / max(1, hist_total[:k].sum())
    hist = np.array(weights_hist, dtype=np.float64)[:, :k]
    if balanced:
        inv = np.where(freq > 0, 1.0 / np.maximum(freq, 1e-6), 0.0)
        w = (hist / np.maximum(hist.sum(1, keepdims=True), 1)) @ inv
    else:
        w = hist.sum(1)
    w = w / w.sum()
    val_chips = []
    for p_i, r0, c0, size in val_blocks:
        for r in range(r0, r0 + size - chip + 1, chip):
            for c in range(c0, c0 + size - chip + 1, chip):
                val_chips.append((p_i, r, c))
    rng = np.random.default_rng(seed)
    val = np.array(val_chips, dtype=np.int64)
    if len(val) > max_val_chips:
        val = val[np.sort(rng.choice(len(val), max_val_chips, replace=False))]
    mean = sums / max(count, 1)
    std = np.sqrt(np.maximum(sumsq / max(count, 1) - mean**2, 1e-12))
    return TrainingPlan(
        pairs=pairs,
        chip=chip,
        classes=ClassScheme(tuple(names), tuple(tuple(c) for c in colors)),
        mean=[float(x) for x in mean],
        std=[float(x) for x in std],
        class_freq=[float(x) for x in freq],
        train_blocks=np.array(blocks, dtype=np.int64),
        train_weights=w,
        val_chips=val,
        band_roles=band_roles,
        info={"block": block, "val_fraction": val_fraction, "seed": seed, "balanced": balanced},
    )


def read_chip(pair: Pair, row: int, col: int, chip: int) -> tuple[np.ndarray, np.ndarray]:
    """``(image (C, chip, chip) float32, label (chip, chip) uint8)``; nodata -> ignore."""
    win = Window(row, col, chip, chip)
    reader = tile_reader(pair.image.url, pair.bands)
    image, valid = reader.read_window(win)
    labels, _ = tile_reader(pair.label.url, [1]).read_window(win)
    labels = labels[0].astype(np.uint8)
    lab_nodata = pair.label.nodata
    if lab_nodata is not None and lab_nodata != NODATA and 0 <= lab_nodata < 256:
        labels[labels == int(lab_nodata)] = NODATA
    labels[~valid] = NODATA
    return image.astype(np.float32), labels


def sample_train_chips(batch: dict, plan: TrainingPlan) -> dict:
    """Ray Data UDF: one random training chip per input row (fresh randomness each epoch)."""
    n = len(batch["id"])
    rng = np.random.default_rng()
    picks = rng.choice(len(plan.train_blocks), size=n, p=plan.train_weights)
    images, labels = [], []
    for b in picks:
        p_i, r0, c0, size = (int(v) for v in plan.train_blocks[b])
        pair = plan.pairs[p_i]
        h = min(size, pair.image.height - r0)
        w = min(size, pair.image.width - c0)
        r = r0 + int(rng.integers(0, h - plan.chip + 1))
        c = c0 + int(rng.integers(0, w - plan.chip + 1))
        img, lab = read_chip(pair, r, c, plan.chip)
        images.append(img)
        labels.append(lab)
    return {"image": np.stack(images), "label": np.stack(labels)}


def read_val_chips(batch: dict, plan: TrainingPlan) -> dict:
    """Ray Data UDF: validation chips at the grid positions given in the rows."""
    images, labels = [], []
    for p_i, r, c in zip(batch["pair"], batch["row"], batch["col"]):
        img, lab = read_chip(plan.pairs[int(p_i)], int(r), int(c), plan.chip)
        images.append(img)
        labels.append(lab)
    return {"image": np.stack(images), "label": np.stack(labels)}
