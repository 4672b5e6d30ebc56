"""Training data: image/label raster pairs cut into chips, with a spatial split.

Each scene is divided into square blocks; a seeded hash sends each block to
training or validation, so validation pixels are never next to (or inside)
training chips of the same block. Training chips are drawn at random inside
training blocks (optionally weighted towards rare classes); validation chips
lie on a grid inside validation blocks. Normalisation statistics and class
frequencies come from decimated reads (overviews), and the class histogram from the
labels' whole scan (:mod:`geoseg.train.labels`). Chips are cut by Ray Data tasks out of
the chip cache (:mod:`geoseg.train.cache`: each block decoded once per run), or read
window by window from the rasters (``--chip-cache off``). Chips keep the image's pixel
type (the raster's dtype, float32 where bands declare a scale) until the training
step converts them on its device; labels are uint8.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geoseg.data.classes import MASKED, NODATA, ClassScheme
from geoseg.data.masks import MaskSpec, mask_band
from geoseg.errors import InputError, RasterError
from geoseg.data.raster import (RasterInfo, check_class_map, check_image, grid_difference, read_decimated, read_info,
                           tile_reader)
from geoseg.data.tiling import Window
from geoseg.train.labels import scan_labels


@dataclass(frozen=True)
class Pair:
    image: RasterInfo
    label: RasterInfo
    bands: list[int]
    mask_band: int | None = None  # the image's band holding its validity mask (--mask), or None
    mask: MaskSpec | None = None



def read_image(url: str, bands, window: Window, mask_band: int | None = None, mask: MaskSpec | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(image (C, h, w), valid (h, w), masked (h, w) or None)`` of ``window``: the mask band
    (``--mask``) read in the same read as the image's bands, decoded."""
    if mask_band is None:
        image, valid = tile_reader(url, list(bands)).read_window(window)
        return image, valid, None
    data, valid = tile_reader(url, [*bands, mask_band], len(bands)).read_window(window)
    return data[: len(bands)], valid, mask.decode(data[len(bands)])


MAX_MASKED = 0.5  # a training chip with more of its labelled pixels masked is drawn again


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
    val_blocks: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))  # (k, 4) like train_blocks
    band_roles: list[str] | None = None
    info: dict = field(default_factory=dict)


def open_pairs(images: list[str], labels: list[str], bands: list[int] | None = None,
               allow_no_crs: bool = False, mask: MaskSpec | None = None) -> list[Pair]:
    if len(images) != len(labels):
        raise InputError(f"{len(images)} --image but {len(labels)} --label: give one label per image")
    if not images:
        raise InputError("give at least one --image and --label")
    pairs = []
    for img_url, lab_url in zip(images, labels):
        img, lab = read_info(img_url), read_info(lab_url)
        check_image(img, allow_no_crs)
        check_class_map(lab, "label raster")
        diff = grid_difference(img, lab)
        if diff:
            raise RasterError(f"{img_url} and {lab_url} do not share a grid ({diff})")
        b = bands or list(range(1, img.count + 1))
        if max(b) > img.count:
            raise RasterError(f"{img_url}: band {max(b)} requested but it has {img.count} bands")
        if pairs and len(b) != len(pairs[0].bands):
            raise RasterError(f"{img_url}: {len(b)} bands, but {pairs[0].image.url} has {len(pairs[0].bands)}")
        active = mask is not None and mask.active
        pairs.append(Pair(img, lab, b, mask_band(img_url, img.descriptions, mask) if active else None,
                          mask if active else None))
    return pairs


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
    label_hists: list[np.ndarray] | None = None,
) -> TrainingPlan:
    """Split blocks, compute normalisation and class statistics, list validation chips.

    ``label_hists``: each label raster's class histogram from its whole scan
    (:mod:`geoseg.train.labels`, the Ray layer's tasks); None: scanned here."""
    if chip < 16:
        raise InputError(f"--chip-size must be >= 16, got {chip}")
    if not 0 < val_fraction < 1:
        raise InputError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    block = block or chip * 4
    if block < chip:
        raise InputError(f"--block-size ({block}) must be >= --chip-size ({chip})")
    if label_hists is None:
        k, source = declared_classes(pairs[0].label, num_classes)
        label_hists = scan_labels([p.label for p in pairs], k, source)
    hist_total = np.sum(label_hists, axis=0)  # every label pixel, at full resolution
    stats = _BandStats()
    recs, hists, is_val = [], [], []
    for p_i, pair in enumerate(pairs):
        lab, ignore, lscale = _decimated_scene(pair, stats)
        for rec, hist in _labelled_blocks(p_i, pair, lab, ignore, lscale, block, chip):
            recs.append(rec)
            hists.append(hist)
            is_val.append(_block_hash(seed, p_i, rec[1] // block, rec[2] // block) < val_fraction)
    if not num_classes and not ClassScheme.from_tags(pairs[0].label.tags):  # undeclared: no gaps taken at face value
        refuse_gaps(pairs[0].label.url, hist_total, recs, hists, block)
    classes = _class_scheme(pairs[0].label, hist_total, num_classes, class_names)
    k = len(classes)
    is_val, notes = stratify(np.array(hists, dtype=np.int64).reshape(-1, NODATA)[:, :k], np.array(is_val, bool),
                             classes.names, hist_total[:k], block)
    blocks = [r for r, v in zip(recs, is_val) if not v]
    weights_hist = [h for h, v in zip(hists, is_val) if not v]
    val_blocks = [r for r, v in zip(recs, is_val) if v]
    _ensure_both_sides(blocks, weights_hist, val_blocks, block)
    freq = hist_total[:k] / max(1, hist_total[:k].sum())
    mean, std = stats.mean_std()
    return TrainingPlan(
        pairs=pairs,
        chip=chip,
        classes=classes,
        mean=mean,
        std=std,
        class_freq=[float(x) for x in freq],
        train_blocks=np.array(blocks, dtype=np.int64),
        train_weights=_block_weights(np.array(weights_hist, dtype=np.float64)[:, :k], freq, balanced),
        val_chips=_val_chips(val_blocks, chip, max_val_chips, seed),
        val_blocks=np.array(val_blocks, dtype=np.int64).reshape(-1, 4),
        band_roles=band_roles,
        info={"block": block, "val_fraction": val_fraction, "seed": seed, "balanced": balanced,
              "split_notes": notes,
              "classes_from": ("--classes" if class_names else f"--num-classes {num_classes}" if num_classes else
                               "the CLASS_NAMES tag" if ClassScheme.from_tags(pairs[0].label.tags) else
                               "the label values (no CLASS_NAMES tag)"),
              "class_pixels": {name: int(n) for name, n in zip(classes.names, hist_total[:k])},
              **({"masked": {"source": str(pairs[0].mask), "fraction_of_labelled": {
                  p.image.url: round(f, 4) for p, f in zip(pairs, stats.masked)}}}
                 if pairs[0].mask is not None else {})},
    )


class _BandStats:
    """Running per-band sums for the normalisation (mean, std) over valid pixels."""

    def __init__(self):
        self.sums = self.sumsq = None
        self.count = 0
        self.masked: list[float] = []  # each scene's share of labelled pixels masked (--mask)

    def add(self, v: np.ndarray) -> None:
        """``v``: ``(bands, pixels)`` float64."""
        self.sums = v.sum(1) if self.sums is None else self.sums + v.sum(1)
        self.sumsq = (v**2).sum(1) if self.sumsq is None else self.sumsq + (v**2).sum(1)
        self.count += v.shape[1]

    def mean_std(self) -> tuple[list[float], list[float]]:
        mean = self.sums / max(self.count, 1)
        std = np.sqrt(np.maximum(self.sumsq / max(self.count, 1) - mean**2, 1e-12))
        return [float(x) for x in mean], [float(x) for x in std]


def _decimated_scene(pair: Pair, stats: _BandStats) -> tuple[np.ndarray, np.ndarray, float]:
    """Decimated labels ``(h, w)`` int64, their ignore mask and scale; band statistics added."""
    img, _, nodata = read_decimated(pair.image.url, pair.bands, 1024, "nearest")
    lab, lscale, lab_nodata = read_decimated(pair.label.url, [1], 1024, "nearest")
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
    masked = 0.0
    if pair.mask_band is not None:  # masked pixels: no statistics, no labels
        band, _, _ = read_decimated(pair.image.url, [pair.mask_band], 1024, "nearest")
        hidden = pair.mask.decode(band[0])
        if hidden.shape == ignore.shape:
            labelled = ~ignore
            masked = float((hidden & labelled).sum() / max(1, labelled.sum()))
            ignore |= hidden
        if hidden.shape == valid_px.shape:
            valid_px &= ~hidden
    stats.add(img[:, valid_px].astype(np.float64))
    stats.masked.append(masked)
    return lab, ignore, lscale


def _labelled_blocks(p_i: int, pair: Pair, lab, ignore, lscale: float, block: int, chip: int):
    """``((pair, row, col, size), class histogram)`` of each block of a scene with labels in it."""
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
            sub, sub_ign = lab[lr0:lr1, lc0:lc1], ignore[lr0:lr1, lc0:lc1]
            hist = np.bincount(sub[~sub_ign].ravel(), minlength=NODATA)[:NODATA]
            if hist.sum():  # no labelled pixel: useless for training and validation
                yield (p_i, r0, c0, min(size_r, size_c)), hist


def stratify(hist: np.ndarray, is_val: np.ndarray, names, pixels: np.ndarray, block: int
             ) -> tuple[np.ndarray, list[str]]:
    """The spatial split made to see every class: a class labelled in two blocks or more but on
    one side only gets a block on the other side (the one holding the least of it, so training
    keeps the most; rarest classes first, a block moved never takes the last of a class from its
    side). ``hist``: each block's class pixels; returns the new split and one line per class that
    cannot be on both sides (in one block only, or every block of it needed where it is)."""
    is_val = is_val.copy()
    notes = []
    present = hist > 0
    for c in np.argsort(pixels, kind="stable"):
        holders = np.flatnonzero(present[:, c])
        if not len(holders):
            continue
        sides = {bool(v) for v in is_val[holders]}
        if len(sides) == 2:
            continue
        if len(holders) < 2:
            side = "validation" if is_val[holders[0]] else "training"
            notes.append(f"class {names[c]}: its {int(pixels[c]):,} labelled pixels lie in one --block-size {block} "
                         f"block, so it is in {side} only (a smaller --block-size may split it)")
            continue
        src = bool(is_val[holders[0]])
        # a block may move where it takes no class's last block from its side
        side_counts = present[is_val == src].sum(0)
        movable = [b for b in holders if not np.any(present[b] & (side_counts <= 1))]
        if not movable:
            notes.append(f"class {names[c]}: {int(pixels[c]):,} labelled pixels, in "
                         f"{'validation' if src else 'training'} only (each of its blocks holds another class's "
                         f"last one there)")
            continue
        pick = min(movable, key=lambda b: (-hist[b, c] if src else hist[b, c], b))  # training gets the most
        is_val[pick] = not src
    return is_val, notes


def _ensure_both_sides(blocks: list, weights_hist: list, val_blocks: list, block: int) -> None:
    """Tiny datasets: make sure training and validation get at least one block each."""
    if blocks and val_blocks:
        return
    if len(blocks) + len(val_blocks) < 2:
        raise InputError(
            f"not enough labelled area for a train/validation split with --block-size {block}; use a smaller one"
        )
    if not val_blocks:
        val_blocks.append(blocks.pop())
        weights_hist.pop()
    else:
        blocks.append(val_blocks.pop())
        weights_hist.append(np.ones(NODATA, dtype=np.int64))


def declared_classes(label: RasterInfo, num_classes: int | None) -> tuple[int | None, str]:
    """The number of classes known before the labels are read (``--num-classes``, else the
    names of the label's CLASS_NAMES tag; None: the labels' own largest value decides),
    and what declares it (for errors)."""
    if num_classes:
        return num_classes, f"{num_classes} classes (--num-classes)"
    scheme = ClassScheme.from_tags(label.tags)
    return (len(scheme), "the classes named in its CLASS_NAMES tag") if scheme else (None, "")


def refuse_gaps(url: str, hist_total: np.ndarray, recs: list, hists: list, block: int) -> None:
    """Labels that declare no classes: values with a gap below them (0..3 and 7) are refused in one
    line naming them, their pixels and a block holding them, rather than becoming classes."""
    present = np.flatnonzero(hist_total[:NODATA])
    if not present.size or present[-1] + 1 == present.size:
        return
    first_gap = int(np.flatnonzero(np.bincount(present, minlength=present[-1] + 1) == 0)[0])
    odd = present[present > first_gap]
    where = next(((r, h) for r, h in zip(recs, hists) if np.any(np.asarray(h)[odd] > 0)), None)
    window = (f", e.g. in rows {where[0][1]}:{where[0][1] + block}, cols {where[0][2]}:{where[0][2] + block}"
              if where else "")
    shown = ", ".join(f"{int(v)} ({int(hist_total[v]):,} px)" for v in odd[:5]) + (", ..." if odd.size > 5 else "")
    raise RasterError(f"{url}: label value(s) {shown} leave a gap after {first_gap - 1} (no class declared: no "
                      f"CLASS_NAMES tag){window}; pass --classes NAME0,NAME1,... or --num-classes {int(odd.max()) + 1} "
                      "to train on them, or fix the labels")


def _class_scheme(label: RasterInfo, hist_total: np.ndarray, num_classes: int | None,
                  names_given: list[str] | None = None) -> ClassScheme:
    """Classes from the label raster's tags (names, colours), or numbered ones.

    Label values outside the declared classes (the tags' names, or ``--num-classes``)
    are refused, naming them, rather than silently widening the model.
    """
    scheme = ClassScheme.numbered(names_given) if names_given else ClassScheme.from_tags(label.tags)
    present = np.nonzero(hist_total)[0]
    k = num_classes or (len(scheme) if scheme else int(present.max()) + 1 if present.size else 2)
    outside_values(label.url, present, k, declared=scheme is not None and not num_classes)
    names = list(scheme.names[:k]) if scheme else []
    colors = list(scheme.colors[:k]) if scheme else []
    rng = np.random.default_rng(0)
    for i in range(len(names), k):
        names.append(f"class_{i}")
        colors.append(tuple(int(x) for x in rng.integers(0, 255, 3)))
    return ClassScheme(tuple(names), tuple(colors))


def outside_values(url: str, values: np.ndarray, k: int, declared: bool = False, where: str = "") -> None:
    """Refuse label values ``>= k`` (other than the ignore value), naming them."""
    values = np.asarray(values)
    bad = np.unique(values[((values >= k) & (values != NODATA)) | (values < 0)])
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        source = "the classes named in its CLASS_NAMES tag" if declared else f"{k} classes"
        raise RasterError(f"{url}{where}: label values {shown} are outside {source} (0..{k - 1}); "
                          f"pass --num-classes {int(bad.max()) + 1} to train on them")


def _block_weights(hist: np.ndarray, freq: np.ndarray, balanced: bool) -> np.ndarray:
    """Sampling weight of each training block: its labelled area, or (balanced) its
    pixels weighted by inverse class frequency, so rare classes are drawn more often."""
    if balanced:
        inv = np.where(freq > 0, 1.0 / np.maximum(freq, 1e-6), 0.0)
        w = (hist / np.maximum(hist.sum(1, keepdims=True), 1)) @ inv
    else:
        w = hist.sum(1)
    return w / w.sum()


def _val_chips(val_blocks: list, chip: int, max_val_chips: int, seed: int) -> np.ndarray:
    """Validation chips ``(m, 3)`` (pair, row, col) on a grid inside validation blocks."""
    chips = [
        (p_i, r, c)
        for p_i, r0, c0, size in val_blocks
        for r in range(r0, r0 + size - chip + 1, chip)
        for c in range(c0, c0 + size - chip + 1, chip)
    ]
    val = np.array(chips, dtype=np.int64)
    if len(val) > max_val_chips:
        rng = np.random.default_rng(seed)
        val = val[np.sort(rng.choice(len(val), max_val_chips, replace=False))]
    return val


def read_chip(pair: Pair, row: int, col: int, chip: int, k: int = NODATA) -> tuple[np.ndarray, np.ndarray]:
    """``(image (C, chip, chip) in the reader's dtype, label (chip, chip) uint8)`` read from the
    rasters; nodata -> ignore. Label values ``>= k`` are refused here too."""
    win = Window(row, col, chip, chip)
    image, valid, masked = read_image(pair.image.url, pair.bands, win, pair.mask_band, pair.mask)
    labels, _ = tile_reader(pair.label.url, [1]).read_window(win)
    labels = labels[0]
    lab_nodata = pair.label.nodata
    if lab_nodata is not None:
        labels = np.where(labels == lab_nodata, NODATA, labels)
    labels = np.where(valid, labels, NODATA)  # no image, no label
    outside_values(pair.label.url, labels, k, where=f" (window rows {row}:{row + chip}, cols {col}:{col + chip})")
    if masked is not None:  # a labelled pixel masked: MASKED until the chip is drawn, then ignored
        labels = np.where(masked & (labels != NODATA), MASKED, labels)
    return image, labels.astype(np.uint8)


def _read_chips(plan: TrainingPlan, picks: list[tuple[int, int, int, int, int, int]], cache=None) -> dict:
    """The chips at ``(pair, block row, block col, block size, row, col)``: cut from the chip
    cache (:class:`geoseg.train.cache.ChipCache`), else read from the rasters."""
    if cache is not None:
        return cache.crops(picks, plan.chip)
    dtype = np.result_type(*[np.dtype(p.image.pixel_dtype) for p in plan.pairs])
    images = np.empty((len(picks), len(plan.pairs[0].bands), plan.chip, plan.chip), dtype)
    labels = np.empty((len(picks), plan.chip, plan.chip), np.uint8)
    for i, (p_i, _, _, _, r, c) in enumerate(picks):
        images[i], labels[i] = read_chip(plan.pairs[p_i], r, c, plan.chip, len(plan.classes))
    return {"image": images, "label": labels}


def mostly_masked(labels: np.ndarray) -> np.ndarray:
    """Which chips ``(N, h, w)`` have more than :data:`MAX_MASKED` of their labelled pixels masked."""
    masked = (labels == MASKED).sum(axis=(1, 2))
    labelled = masked + ((labels != NODATA) & (labels != MASKED)).sum(axis=(1, 2))
    return masked > MAX_MASKED * np.maximum(labelled, 1)


def unmask(chips: dict) -> dict:
    """Masked labels become the ignore value: the loss and the metrics leave them out."""
    chips["label"][chips["label"] == MASKED] = NODATA
    return chips


def sample_train_chips(batch: dict, plan: TrainingPlan, cache=None) -> dict:
    """Ray Data UDF: one random training chip per input row (fresh randomness each epoch): a
    block drawn by its weight, a uniform offset inside it."""
    rng = np.random.default_rng()
    chips = _read_chips(plan, _draw(plan, rng, len(batch["id"])), cache)
    if plan.pairs[0].mask is not None:  # chips mostly masked are drawn again (a few times at most)
        for _ in range(4):
            redo = np.flatnonzero(mostly_masked(chips["label"]))
            if not len(redo):
                break
            again = _read_chips(plan, _draw(plan, rng, len(redo)), cache)
            chips["image"][redo], chips["label"][redo] = again["image"], again["label"]
    return unmask(chips)


def _draw(plan: TrainingPlan, rng, n: int) -> list[tuple[int, int, int, int, int, int]]:
    """``n`` random chips: a block drawn by its weight, a uniform offset inside it."""
    blocks = plan.train_blocks[rng.choice(len(plan.train_blocks), size=n, p=plan.train_weights)]
    picks = []
    for p_i, r0, c0, size in blocks.tolist():
        pair = plan.pairs[p_i]
        h = min(size, pair.image.height - r0)
        w = min(size, pair.image.width - c0)
        picks.append((p_i, r0, c0, size, r0 + int(rng.integers(0, h - plan.chip + 1)),
                      c0 + int(rng.integers(0, w - plan.chip + 1))))
    return picks


def read_val_chips(batch: dict, plan: TrainingPlan, cache=None) -> dict:
    """Ray Data UDF: validation chips at the grid positions given in the rows."""
    b = plan.info.get("block") or 1
    sizes = {(int(p), int(r), int(c)): int(s) for p, r, c, s in plan.val_blocks}
    picks = []
    for p_i, r, c in zip(batch["pair"].tolist(), batch["row"].tolist(), batch["col"].tolist()):
        r0, c0 = r // b * b, c // b * b
        picks.append((p_i, r0, c0, sizes.get((p_i, r0, c0), b), r, c))
    return unmask(_read_chips(plan, picks, cache))
