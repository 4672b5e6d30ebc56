"""The chip cache: every block of a run's spatial split decoded once, kept uncompressed (Ray-free).

A random chip read from a COG decodes every compressed raster block it touches,
up to four for a 512² chip on 512² blocks, and every epoch draws new chips: the
readers then deliver ~25 random 512² chips/s per core, a GPU wants ~480. The
cache decodes each split block (``--block-size`` square, training and validation)
of the image and its labels once per run, into one uncompressed file per block
under ``RUN_DIR/chips/`` (``--chip-cache URL``: elsewhere); epochs cut their
random chips out of these files (memory-mapped locally, byte ranges on object
storage): a copy, no decoding. Sampling is unchanged: the same blocks, the same
weights (balance by class), the same uniform offsets inside a block.

A block file ``<pair>/<row>_<col>_<size>.chip`` holds the image rows ``(size,
bands, size)`` in the reader's dtype (the raster's own, float32 where bands
declare a scale), then the labels ``(size, size)`` uint8, the ignore value
(255) where the label is nodata or the image has no data. Rows first: a chip's
rows are one byte range of each array. Files are written whole (a rename, one
PUT), so a file that is there is complete; the manifest ``cache.json`` names
the rasters (with their signatures), bands, dtypes and block size, and is
rewritten when the cache is complete. A rerun with the same rasters and block
size reuses the files it finds and writes only the missing ones (the build is
resumable block by block); other rasters or another block size start a new cache.
The manifest also keeps the labels' whole scan (their class histograms), so a
resumed run does not scan them again.

The Ray layer (:func:`geoseg.train.job.build_chip_cache`) runs :func:`build_blocks`
as tasks; :func:`build` runs them here (tests, a machine without Ray).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from geoseg.data import storage
from geoseg.data.classes import MASKED, NODATA
from geoseg.errors import InputError, StorageError
from geoseg.data.raster import tile_reader
from geoseg.data.tiling import Window
from geoseg.models.runfolder import RunFolder

FORMAT = 1
MANIFEST = "cache.json"
STRIP_PIXELS = 4 << 20  # pixels decoded at a time while a block is built: flat memory for any --block-size
OFF = ("off", "none", "no", "false")


@dataclass(frozen=True)
class PairLayout:
    """How one image/label pair's blocks are stored."""

    image: str
    label: str
    bands: tuple[int, ...]
    dtype: str  # what the image reader returns: the raster's dtype, or float32 when scaled
    label_nodata: float | None
    mask_band: int | None = None  # --mask: labelled pixels it masks are stored as MASKED
    mask: object = None  # its MaskSpec

    @property
    def count(self) -> int:
        return len(self.bands)


@dataclass(frozen=True)
class ChipCache:
    """A chip cache's place and layout: small, shipped to every sampling task."""

    url: str
    block: int
    pairs: tuple[PairLayout, ...]

    @property
    def dtype(self) -> np.dtype:
        """The dtype of a batch of chips from any pair."""
        return np.result_type(*[np.dtype(p.dtype) for p in self.pairs])

    def block_url(self, pair: int, row: int, col: int, size: int) -> str:
        return storage.join(self.url, str(pair), block_name(row, col, size))

    def block_bytes(self, pair: int, size: int) -> int:
        p = self.pairs[pair]
        return size * size * (p.count * np.dtype(p.dtype).itemsize + 1)

    def crops(self, picks: list[tuple[int, int, int, int, int, int]], chip: int) -> dict:
        """``{"image" (N, bands, chip, chip), "label" (N, chip, chip) uint8}``: the chips at
        ``(pair, block row, block col, block size, row, col)`` (raster pixels), each copied
        out of its block's file."""
        images = np.empty((len(picks), self.pairs[0].count, chip, chip), self.dtype)
        labels = np.empty((len(picks), chip, chip), np.uint8)
        if storage.is_remote(self.url):
            self._remote_crops(picks, chip, images, labels)
            return {"image": images, "label": labels}
        for i, (p, r0, c0, size, r, c) in enumerate(picks):
            img, lab = _mapped(self.block_url(p, r0, c0, size), self.pairs[p], size)
            y, x = r - r0, c - c0
            images[i] = img[y : y + chip, :, x : x + chip].transpose(1, 0, 2)
            labels[i] = lab[y : y + chip, x : x + chip]
        return {"image": images, "label": labels}

    def _remote_crops(self, picks, chip: int, images: np.ndarray, labels: np.ndarray) -> None:
        """Object storage: two byte ranges per chip (its image rows, its label rows), all of a
        batch fetched at once."""
        fs, _ = storage.filesystem(self.url)
        paths, starts, ends = [], [], []
        for p, r0, c0, size, r, c in picks:
            layout = self.pairs[p]
            row_bytes = layout.count * size * np.dtype(layout.dtype).itemsize
            image_bytes = size * row_bytes
            path = storage.filesystem(self.block_url(p, r0, c0, size))[1]
            y = r - r0
            paths += [path, path]
            starts += [y * row_bytes, image_bytes + y * size]
            ends += [(y + chip) * row_bytes, image_bytes + (y + chip) * size]
        try:
            parts = fs.cat_ranges(paths, starts, ends)
        except Exception as exc:  # noqa: BLE001 - one line naming the cache
            raise StorageError(f"{self.url}: cannot read the chip cache ({one_reason(exc)})") from exc
        for i, (p, r0, c0, size, r, c) in enumerate(picks):
            layout = self.pairs[p]
            img = np.frombuffer(parts[2 * i], layout.dtype).reshape(chip, layout.count, size)
            lab = np.frombuffer(parts[2 * i + 1], np.uint8).reshape(chip, size)
            x = c - c0
            images[i] = img[:, :, x : x + chip].transpose(1, 0, 2)
            labels[i] = lab[:, x : x + chip]


def one_reason(exc: BaseException) -> str:
    return " ".join(str(exc).split("\n")[0].split()) or type(exc).__name__


def block_name(row: int, col: int, size: int) -> str:
    return f"{row}_{col}_{size}.chip"


def cache_url(out: str, chip_cache: str | None) -> str | None:
    """Where a run's chip cache lives: ``RUN_DIR/chips`` by default, ``--chip-cache URL``,
    or None (``--chip-cache off``: chips read from the rasters every epoch)."""
    if chip_cache is None or chip_cache == "":
        return RunFolder(out).chips
    return None if str(chip_cache).lower() in OFF else str(chip_cache)


def layout(url: str, block: int, pairs) -> ChipCache:
    """The cache of a plan's pairs (:class:`geoseg.train.data.Pair`) at ``url``."""
    return ChipCache(url, block, tuple(
        PairLayout(p.image.url, p.label.url, tuple(p.bands), p.image.pixel_dtype, p.label.nodata, p.mask_band, p.mask)
        for p in pairs))


def fingerprint(cache: ChipCache, signatures: dict[str, str]) -> dict:
    """What the block files depend on: the rasters (and their versions), bands, dtypes, block size."""
    return {"format": FORMAT, "block": cache.block,
            "pairs": [{"image": p.image, "image_signature": signatures[p.image], "label": p.label,
                       "label_signature": signatures[p.label], "bands": list(p.bands), "dtype": p.dtype,
                       **({"mask": str(p.mask), "mask_band": p.mask_band} if p.mask_band is not None else {})}
                      for p in cache.pairs]}


def signatures(urls) -> dict[str, str]:
    return {u: storage.signature(u) for u in dict.fromkeys(urls)}


def read_manifest(url: str) -> dict | None:
    try:
        return json.loads(storage.read_text(storage.join(url, MANIFEST)))
    except (StorageError, ValueError):
        return None


def scanned_histograms(url: str | None, labels: list[str], k: int | None) -> list[np.ndarray] | None:
    """The labels' class histograms a previous run of this cache kept, if the label rasters
    are the same files and the declared classes the same; else None (scan them)."""
    if url is None:
        return None
    man = read_manifest(url)
    scan = (man or {}).get("scan") or {}
    if not scan or scan.get("k") != k or [s["label"] for s in scan.get("labels", [])] != list(labels):
        return None
    sigs = signatures(labels)
    if any(s.get("signature") != sigs[s["label"]] for s in scan["labels"]):
        return None
    return [np.asarray(s["histogram"], np.int64) for s in scan["labels"]]


def plan_blocks(plan) -> list[tuple[int, int, int, int]]:
    """``(pair, row, col, size)`` of every block a plan's chips come from (training, then validation)."""
    blocks = [tuple(int(v) for v in b) for b in plan.train_blocks]
    blocks += [tuple(int(v) for v in b) for b in plan.val_blocks]
    return blocks


def prepare(cache: ChipCache, blocks: list[tuple[int, int, int, int]], sigs: dict[str, str],
            scan: dict | None = None) -> list[tuple[int, int, int, int]]:
    """Make the cache ready for ``blocks``: keep the files of a cache of the same rasters, start
    afresh otherwise; write the manifest (state ``building``). Returns the blocks still to build.
    Refuses, in one line, a local cache whose disk cannot hold them."""
    fp = fingerprint(cache, sigs)
    man = read_manifest(cache.url)
    if man is not None and man.get("fingerprint") != fp:
        storage.remove(cache.url, recursive=True)  # other rasters, bands or block size: new files
        man = None
    present = {}  # (pair, file name) -> bytes, of the files a previous build finished
    if man is not None:
        for p in {b[0] for b in blocks}:
            present.update({(p, name): n for name, n in storage.sizes(storage.join(cache.url, str(p))).items()})
    missing = [b for b in blocks if present.get((b[0], block_name(*b[1:]))) != cache.block_bytes(b[0], b[3])]
    need = sum(cache.block_bytes(b[0], b[3]) for b in missing)
    if missing and not storage.is_remote(cache.url):
        storage.makedirs(cache.url)
        free = shutil.disk_usage(storage.local_path(cache.url)).free
        if need > free * 0.95:
            raise InputError(f"{cache.url}: the chip cache needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB "
                             "are free there; give --chip-cache a folder with room, or --chip-cache off")
    write_manifest(cache, fp, "building" if missing else "complete", blocks, scan)
    return missing


def write_manifest(cache: ChipCache, fp: dict, state: str, blocks, scan: dict | None = None) -> None:
    old = read_manifest(cache.url) or {}
    body = {"fingerprint": fp, "state": state, "blocks": len(blocks),
            "bytes": int(sum(cache.block_bytes(b[0], b[3]) for b in blocks)),
            "scan": scan if scan is not None else old.get("scan")}
    storage.write_text(storage.join(cache.url, MANIFEST), json.dumps(body))


def scan_record(labels: list[str], hists: list[np.ndarray], k: int | None, sigs: dict[str, str]) -> dict:
    """What the manifest keeps of the labels' scan."""
    return {"k": k, "labels": [{"label": u, "signature": sigs[u], "histogram": [int(v) for v in h]}
                               for u, h in zip(labels, hists)]}


def build_blocks(cache: ChipCache, blocks: list[tuple[int, int, int, int]], k: int) -> int:
    """Decode ``blocks`` of the image and labels and write their files; returns bytes written.

    Each block is read in strips of rows (flat memory for any block size) through the
    per-process :class:`geoseg.data.raster.TileReader`, so raster blocks shared by two split
    blocks are decoded once when neighbours are built by the same task."""
    from geoseg.train.data import outside_values, read_image

    written = 0
    for p, r0, c0, size in blocks:
        layout = cache.pairs[p]
        labels = tile_reader(layout.label, [1])
        dtype = np.dtype(layout.dtype)
        row_bytes = layout.count * size * dtype.itemsize
        url = cache.block_url(p, r0, c0, size)
        with _staged(url) as (f, path):
            f.truncate(size * row_bytes + size * size)
            strip = max(1, min(size, STRIP_PIXELS // size))
            for y in range(0, size, strip):
                h = min(strip, size - y)
                win = Window(r0 + y, c0, h, size)
                data, valid, hidden = read_image(layout.image, layout.bands, win, layout.mask_band, layout.mask)
                lab = labels.read_window(win)[0][0]
                if layout.label_nodata is not None:
                    lab = np.where(lab == layout.label_nodata, NODATA, lab)
                lab = np.where(valid, lab, NODATA)
                outside_values(layout.label, lab, k, where=f" (window rows {win.row_off}:{win.row_off + h}, "
                                                          f"cols {c0}:{c0 + size})")
                if hidden is not None:
                    lab = np.where(hidden & (lab != NODATA), MASKED, lab)
                f.seek(y * row_bytes)
                f.write(np.ascontiguousarray(data.astype(dtype, copy=False).transpose(1, 0, 2)).data)
                f.seek(size * row_bytes + y * size)
                f.write(np.ascontiguousarray(lab, np.uint8).data)
        written += size * row_bytes + size * size
    return written


class _staged:
    """A block file written whole: locally a scratch file renamed into place, on object storage
    a scratch file put in one request."""

    def __init__(self, url: str):
        self.url = url

    def __enter__(self):
        if storage.is_remote(self.url):
            self.dir = tempfile.mkdtemp(prefix="geoseg-chip-")
            self.path = os.path.join(self.dir, "block")
        else:
            final = storage.local_path(self.url)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            self.dir, self.path = None, f"{final}.tmp-{os.getpid()}"
        try:
            self.f = open(self.path, "wb")
        except OSError as exc:
            raise StorageError(f"{self.url}: cannot write the chip cache ({exc.strerror})") from None
        return self.f, self.path

    def __exit__(self, exc_type, exc, tb):
        try:
            self.f.close()
            if exc_type is None:
                if self.dir is None:
                    os.replace(self.path, storage.local_path(self.url))
                else:
                    storage.put_file(self.path, self.url)
        except OSError as err:
            if isinstance(err, StorageError):
                raise
            raise StorageError(f"{self.url}: cannot write the chip cache ({err.strerror or one_reason(err)})") \
                from None
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
            elif exc_type is not None and os.path.exists(self.path):
                os.remove(self.path)
        return False


def groups(blocks: list[tuple[int, int, int, int]], pixels: int = 16 << 20) -> list[list]:
    """Blocks cut into tasks of about ``pixels`` each, neighbours together (row order within a pair)."""
    out, cur, n = [], [], 0
    for b in sorted(blocks):
        if cur and (n + b[3] * b[3] > pixels or cur[-1][0] != b[0]):
            out.append(cur)
            cur, n = [], 0
        cur.append(b)
        n += b[3] * b[3]
    return out + ([cur] if cur else [])


def build(cache: ChipCache, plan, k: int, sigs: dict[str, str] | None = None) -> ChipCache:
    """The whole cache of a plan built here, block after block (no Ray)."""
    blocks = plan_blocks(plan)
    sigs = sigs or signatures([u for p in cache.pairs for u in (p.image, p.label)])
    missing = prepare(cache, blocks, sigs)
    for group in groups(missing):
        build_blocks(cache, group, k)
    write_manifest(cache, fingerprint(cache, sigs), "complete", blocks)
    return cache


# --- reading ----------------------------------------------------------------------

_MAPS: OrderedDict = OrderedDict()  # this process's open block files (memory-mapped: page cache, not private)
MAX_MAPS = 256


def _mapped(url: str, layout: PairLayout, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(image (size, bands, size), labels (size, size))`` views of a local block file."""
    hit = _MAPS.get(url)
    if hit is not None:
        _MAPS.move_to_end(url)
        return hit
    path = storage.local_path(url)
    n_img = layout.count * size * size * np.dtype(layout.dtype).itemsize
    try:
        mm = np.memmap(path, np.uint8, "r")
    except (OSError, ValueError) as exc:
        raise StorageError(f"{url}: chip cache block unreadable ({getattr(exc, 'strerror', None) or exc}); "
                           "delete it and rerun the same command to rebuild it") from None
    if mm.size != n_img + size * size:
        raise StorageError(f"{url}: chip cache block has {mm.size} bytes, expected {n_img + size * size}; "
                           "rerun the same command to rebuild it")
    hit = (mm[:n_img].view(layout.dtype).reshape(size, layout.count, size), mm[n_img:].reshape(size, size))
    _MAPS[url] = hit
    while len(_MAPS) > MAX_MAPS:
        _MAPS.popitem(last=False)
    return hit
