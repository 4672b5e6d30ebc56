"""Raster I/O with rasterio: metadata, windowed tile reads and streaming COG writes.

Nothing here ever reads or writes a whole raster: reads are per window, and
COGs are built window by window into a tiled GeoTIFF which GDAL's COG driver
then copies (with overviews) block by block.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from geoseg.data import storage
from geoseg.errors import RasterError, ReadError, StorageError
from geoseg.data.tiling import Tile, Window, pad_tile


@dataclass(frozen=True)
class RasterInfo:
    """What geoseg needs to know of a raster, without its pixels."""

    url: str
    height: int
    width: int
    count: int
    dtype: str
    crs: str | None  # WKT
    transform: tuple[float, ...]  # affine a, b, c, d, e, f
    nodata: float | None
    descriptions: tuple[str | None, ...]
    tags: dict[str, str] = field(default_factory=dict, compare=False)
    scales: tuple[float, ...] = ()  # per band (GDAL / STAC scale): readers return raw * scale + offset
    offsets: tuple[float, ...] = ()

    @property
    def scaled(self) -> bool:
        """True when some band has a scale or offset: pixels are then read as float32 values."""
        return any(s != 1 for s in self.scales) or any(o != 0 for o in self.offsets)

    @property
    def pixel_dtype(self) -> str:
        """The dtype geoseg's readers return (the raster's own, or float32 when scaled)."""
        return "float32" if self.scaled else self.dtype

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def affine(self):
        from affine import Affine

        return Affine(*self.transform[:6])

    def same_grid(self, other: "RasterInfo") -> bool:
        return not grid_difference(self, other)


def grid_difference(a: RasterInfo, b: RasterInfo) -> str:
    """What differs between two rasters' grids, for an error message (``""``: the same grid)."""
    what = []
    if a.shape != b.shape:
        what.append(f"size {a.width}x{a.height} vs {b.width}x{b.height}")
    if not same_crs(a.crs, b.crs):
        what.append("CRS")
    if not np.allclose(a.transform, b.transform, atol=1e-6, rtol=0):
        what.append("transform")
    return ", ".join(what)


def same_crs(a: str | None, b: str | None) -> bool:
    """The same CRS, however its WKT is written (a VRT's and a GeoTIFF's WKT of EPSG:32633 differ in text)."""
    if a == b:
        return True
    if a is None or b is None:
        return False
    from rasterio.crs import CRS

    return CRS.from_user_input(a) == CRS.from_user_input(b)


def open_raster(url: str):
    """``rasterio.open(url)`` with one-line errors naming the URL (call inside :func:`storage.gdal_env`)."""
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        return rasterio.open(url)
    except RasterioIOError as exc:
        msg = str(exc).splitlines()[0]
        if "No such file" in msg or "does not exist" in msg or "404" in msg:
            raise StorageError(f"{url}: not found") from exc
        if "403" in msg or "Access Denied" in msg or "denied" in msg.lower():
            raise StorageError(f"{url}: access denied") from exc
        reason = storage.fault_reason(exc)
        if reason is not None:
            raise StorageError(f"{url}: cannot open: {reason}") from exc
        raise StorageError(f"{url}: cannot open as a raster ({msg})") from exc


def read_info(url: str) -> RasterInfo:
    """Open a raster (local or URL) and describe it."""
    with storage.gdal_env():
        with open_raster(url) as src:
            return RasterInfo(
                url=str(url),
                height=src.height,
                width=src.width,
                count=src.count,
                dtype=src.dtypes[0],
                crs=src.crs.to_wkt() if src.crs else None,
                transform=tuple(src.transform)[:6],
                nodata=src.nodata,
                descriptions=tuple(src.descriptions),
                tags=dict(src.tags()),
                scales=tuple(float(v) for v in src.scales),
                offsets=tuple(float(v) for v in src.offsets),
            )


# Pixel types geoseg reads as imagery (complex and 64-bit unsigned rasters are refused).
IMAGE_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "float16", "float32", "float64")
LABEL_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32")  # class numbers


def check_image(info: RasterInfo, allow_no_crs: bool = False) -> None:
    """Refuse, in one line, a raster that cannot be imagery for a model."""
    if info.dtype not in IMAGE_DTYPES:
        raise RasterError(f"{info.url}: unsupported pixel type {info.dtype} (supported: {', '.join(IMAGE_DTYPES)})")
    if info.crs is None and not allow_no_crs:
        raise RasterError(f"{info.url}: has no CRS, so outputs could not be placed on a map; "
                          "fix the file or pass --allow-no-crs")


def check_class_map(info: RasterInfo, what: str = "class map") -> None:
    """Refuse, in one line, a raster that cannot hold class numbers (labels, predictions)."""
    if info.count != 1 or info.dtype not in LABEL_DTYPES:
        raise RasterError(f"{info.url}: not a {what} ({info.count} band(s) of {info.dtype}; "
                          f"expected 1 band of integer class numbers)")


def apply_scale(data: np.ndarray, src, bands: list[int], valid: np.ndarray | None = None) -> np.ndarray:
    """``raw * scale + offset`` per band (float32) where the raster declares them, else ``data`` as is.
    Pixels outside ``valid`` keep their raw value (nodata stays recognisable)."""
    scales = [float(src.scales[b - 1]) for b in bands]
    offsets = [float(src.offsets[b - 1]) for b in bands]
    if all(s == 1 for s in scales) and all(o == 0 for o in offsets):
        return data
    out = data.astype(np.float32)
    for i, (s, o) in enumerate(zip(scales, offsets)):
        band = out[i] * np.float32(s) + np.float32(o)
        out[i] = band if valid is None else np.where(valid, band, out[i])
    return out


def read_decimated(
    url: str, bands: list[int], max_side: int = 1024, resampling: str = "nearest"
) -> tuple[np.ndarray, float, float | None]:
    """``(data (bands, h, w), scale, nodata)``: the whole raster read at most ``max_side``
    pixels a side (GDAL takes overviews when the file has them), ``scale`` full-resolution
    pixels per decimated pixel. For statistics at planning time: never a full-resolution read."""
    from rasterio.enums import Resampling

    with storage.gdal_env(), open_raster(url) as src:
        scale = max(1, int(np.ceil(max(src.height, src.width) / max_side)))
        shape = (len(bands), max(1, src.height // scale), max(1, src.width // scale))
        data = src.read(bands, out_shape=shape, resampling=getattr(Resampling, resampling))
        valid = None if src.nodata is None else ~np.all(data == src.nodata, axis=0)
        return apply_scale(data, src, bands, valid), src.height / shape[1], src.nodata


class TileReader:
    """Reads padded tiles from one raster, keeping the dataset open between reads.

    One reader per worker process and raster: opening a COG on object storage
    costs round trips. Reads are planned along the raster's internal blocks:
    the raster is read in *cells* of whole blocks (one block of a tiled COG), each
    decoded once and kept in a small cache, and every tile is copied from cells
    straight into its batch (:meth:`read_tiles`). Tiles overlap by their halos,
    so without this a block would be decoded once for each tile (and each tile
    row) whose window reaches into it: up to 3x the work for 512-px cores with a
    32-px halo on 512-px blocks. (GDAL's own block cache does not help: its
    multi-block reads bypass it.)

    The cache holds only what the tiles still to come need. Given the tile grid,
    a cell that the current tile row has passed keeps only the rows from the top
    of the next tile row's read windows down (the next row's upper halo: 32 rows of
    a 512-row cell), and is dropped when no later row needs it; so, tiles coming in
    row order, the cache holds about one row of whole cells (the rows the next tile
    row reads as its cores) plus halo strips, at most ``GEOSEG_READ_CACHE_MB`` (256)
    in all. A window that needs rows already trimmed decodes its cell again.

    ``threads``: GDAL threads decoding the blocks of one read
    (``GEOSEG_READ_THREADS``, default 1: readers already run in parallel).
    """

    def __init__(self, url: str, bands: list[int] | None = None, threads: int | None = None,
                 valid_bands: int | None = None):
        from rasterio.enums import MaskFlags

        self.url = str(url)
        threads = threads or int(os.environ.get("GEOSEG_READ_THREADS", "1"))
        self._env = storage.gdal_env(GDAL_NUM_THREADS=str(threads))
        self._env.__enter__()
        self._src = open_raster(self.url)
        self.bands = bands or list(range(1, self._src.count + 1))
        self.valid_bands = valid_bands or len(self.bands)  # the first bands say which pixels are valid
        self.nodata = self._src.nodata
        flags = self._src.mask_flag_enums[0] if self._src.count else []
        self._dataset_mask = self.nodata is None and (MaskFlags.per_dataset in flags)
        bh, bw = self._src.block_shapes[0] if self._src.count else (256, 256)
        # cells of whole blocks, at least 256 px a side (strips of a striped TIFF are grouped)
        self.cell = (bh * -(-256 // bh), bw * -(-256 // bw))
        raw = self._src.dtypes[0] if self._src.count else "uint8"
        # what reads return: the raster's dtype, or float32 where bands declare a scale / offset
        self.dtype = np.dtype(apply_scale(np.zeros((len(self.bands), 1, 1), raw), self._src, self.bands).dtype)
        # (row, col) of a cell -> (data (bands, h, w), valid (h, w), first cell row kept): rows above it trimmed
        self._cells: OrderedDict = OrderedDict()
        self._budget = int(float(os.environ.get("GEOSEG_READ_CACHE_MB", "256")) * 2**20)
        self.cached_bytes = 0  # what the cells hold now
        self.peak_bytes = 0  # the most they held
        self.decoded = 0  # cells decoded so far (each once, when tiles come in row order)

    def read(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """``(image (bands, T, T), valid (core_h, core_w) bool)`` for one tile."""
        images, valids = self.read_tiles([tile])
        return images[0], valids[0]

    def read_tiles(self, tiles: list[Tile], dtype=None, order=None) -> tuple[np.ndarray, list[np.ndarray]]:
        """``(images (N, bands, T, T), [valid (core_h, core_w) bool, ...])`` for tiles of one grid,
        in row order as read tasks take them.

        Each tile is copied from the cached cells straight into its place in the
        batch (cast to ``dtype`` on the way, default :attr:`dtype`): one copy of
        each pixel between the decoder and the model's input, none for the
        windows in between. Only tiles of rasters smaller than a tile are padded.
        ``order``: the :class:`~geoseg.data.tiling.ReadOrder` the tiles come in; with it, cells are
        trimmed to what the next tile row of the strip needs as soon as the current row has
        passed them, and cells outside the strip are dropped.
        """
        if not tiles:
            return np.empty((0, len(self.bands), 0, 0), dtype or self.dtype), []
        t0 = tiles[0]
        size = (t0.read.height + t0.pad[0] + t0.pad[1], t0.read.width + t0.pad[2] + t0.pad[3])
        images = np.empty((len(tiles), len(self.bands), *size), dtype=dtype or self.dtype)
        valids = []
        for image, tile in zip(images, tiles):
            valids.append(self._visit(tile.core, valid=np.empty((tile.core.height, tile.core.width), bool)))
            if any(tile.pad):
                data, _ = self.read_window(tile.read)
                image[...] = pad_tile(data, tile)
            else:
                self._visit(tile.read, data=image)
            if order is not None:
                self._evict(tile.read, tile.core, order.next_row_top(tile), order.row_done(tile),
                            order.strip_columns(tile))
            else:
                self._evict(tile.read, tile.core)
        return images, valids

    def read_window(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """``(data (bands, h, w), valid (h, w) bool)`` for a window inside the raster,
        assembled from cached cells of whole blocks (a view where it lies in one cell)."""
        ch, cw = self.cell
        r0, c0 = window.row_off // ch, window.col_off // cw
        if (r0, c0) == ((window.row_off + window.height - 1) // ch, (window.col_off + window.width - 1) // cw):
            data, valid, top = self._cell(r0, c0, window.row_off - r0 * ch)
            rs, cs = window.row_off - r0 * ch - top, window.col_off - c0 * cw
            data, valid = (data[:, rs : rs + window.height, cs : cs + window.width],
                           valid[rs : rs + window.height, cs : cs + window.width])
        else:
            data = np.empty((len(self.bands), window.height, window.width), dtype=self.dtype)
            valid = np.empty((window.height, window.width), dtype=bool)
            self._visit(window, data, valid)
        self._evict(window)
        return data, valid

    def _visit(self, window: Window, data: np.ndarray | None = None, valid: np.ndarray | None = None):
        """Copy the window's pixels (into ``data`` (bands, h, w)) and validity (into ``valid``
        (h, w)) from the cells it covers, decoding the cells not yet cached; returns ``valid``."""
        ch, cw = self.cell
        r0, c0 = window.row_off // ch, window.col_off // cw
        r1, c1 = (window.row_off + window.height - 1) // ch, (window.col_off + window.width - 1) // cw
        for r in range(r0, r1 + 1):
            # the rows of cell row r inside the window, in window and in cell coordinates
            y0, y1 = max(window.row_off, r * ch), min(window.row_off + window.height, (r + 1) * ch)
            for c in range(c0, c1 + 1):
                cell_data, cell_valid, top = self._cell(r, c, y0 - r * ch)
                x0, x1 = max(window.col_off, c * cw), min(window.col_off + window.width, (c + 1) * cw)
                dst = (slice(y0 - window.row_off, y1 - window.row_off), slice(x0 - window.col_off, x1 - window.col_off))
                src = (slice(y0 - r * ch - top, y1 - r * ch - top), slice(x0 - c * cw, x1 - c * cw))
                if data is not None:
                    data[(slice(None), *dst)] = cell_data[(slice(None), *src)]
                if valid is not None:
                    valid[dst] = cell_valid[src]
        return valid

    def _evict(self, window: Window, core: Window | None = None, next_top: int | None = None,
               row_done: bool = False, columns: tuple[int, int] | None = None) -> None:
        """Drop or trim the cells no later window needs, windows coming in row order (tile rows
        top to bottom, each left to right): cell rows above the window are dropped; the cells
        left of the window, which the current tile row has passed, keep only the rows from
        ``next_top`` (the first row the next tile row reads) down, or (without it) when the
        window's top cell row only holds the upper halo of a tile (its ``core`` starts below
        it, so the next tile row does too), are dropped from that row. ``row_done``: the tile row
        has ended, every cell has been passed. ``columns``: the raster columns the tiles of the
        strip read (:class:`~geoseg.data.tiling.ReadOrder`); cells outside them are dropped."""
        ch, cw = self.cell
        r0, c0 = window.row_off // ch, window.col_off // cw
        first, end = (columns[0] // cw, (columns[1] - 1) // cw) if columns else (0, 1 << 62)
        for key in list(self._cells):
            r, c = key
            if r < r0 or not first <= c <= end:
                self._drop(key)
            elif (c < c0 or row_done) and next_top is not None:
                keep = next_top - r * ch  # first row of this cell that the next tile row reads
                data, valid, top = self._cells[key]
                if keep >= top + data.shape[1]:
                    self._drop(key)
                elif keep > top:  # a copy: the whole cell's memory is freed
                    self.cached_bytes -= data.nbytes + valid.nbytes
                    data, valid = data[:, keep - top :].copy(), valid[keep - top :].copy()
                    self._cells[key] = (data, valid, keep)
                    self.cached_bytes += data.nbytes + valid.nbytes
            elif core is not None and r == r0 and c < c0 and core.row_off >= (r0 + 1) * ch:
                self._drop(key)

    def _drop(self, key) -> None:
        data, valid, _ = self._cells.pop(key)
        self.cached_bytes -= data.nbytes + valid.nbytes

    def _cell(self, r: int, c: int, first: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
        """``(data, valid, top)`` of cell ``(r, c)`` from its row ``top`` down (``top`` <= ``first``,
        the first cell row the caller needs): cached, or decoded (again, where rows it needs were
        trimmed)."""
        key = (r, c)
        hit = self._cells.get(key)
        if hit is not None and hit[2] <= first:
            self._cells.move_to_end(key)
            return hit
        if hit is not None:
            self._drop(key)
        ch, cw = self.cell
        win = Window(r * ch, c * cw, min(ch, self._src.height - r * ch), min(cw, self._src.width - c * cw))
        rio_win = win.to_rasterio()
        try:
            data = self._src.read(self.bands, window=rio_win)
            valid = self._valid(data, rio_win)
            data = apply_scale(data, self._src, self.bands)
        except Exception as exc:  # noqa: BLE001 - GDAL's errors: storage, or a corrupt or truncated file
            where = (f"{self.url}: cannot read window rows {win.row_off}:{win.row_off + win.height}, "
                     f"cols {win.col_off}:{win.col_off + win.width}")
            reason = storage.fault_reason(exc)
            if reason is not None:  # the storage failed, not the file: no tile is lost as "bad"
                raise StorageError(f"{where}: {reason}") from exc
            raise ReadError(f"{where}: corrupt or truncated file ({_root_message(exc)})") from exc
        self._cells[key] = (data, valid, 0)
        self.cached_bytes += data.nbytes + valid.nbytes
        self.peak_bytes = max(self.peak_bytes, self.cached_bytes)
        self.decoded += 1
        while self.cached_bytes > self._budget and len(self._cells) > 4:
            self._drop(next(iter(self._cells)))
        return self._cells[key]

    def _valid(self, block: np.ndarray, win) -> np.ndarray:
        block = block[: self.valid_bands]  # bands read for a mask do not make a pixel valid
        if self.nodata is not None:
            if np.isnan(self.nodata):
                return ~np.all(np.isnan(block), axis=0)
            nodata = np.asarray(self.nodata).astype(block.dtype) if self._nodata_fits(block.dtype) else None
            if nodata is None:  # a nodata value the dtype cannot hold: no pixel is nodata
                return np.ones(block.shape[-2:], dtype=bool)
            valid = block[0] != nodata  # compared in the raster's dtype: no float upcast
            for band in block[1:]:
                valid |= band != nodata
            return valid
        if self._dataset_mask:
            return self._src.dataset_mask(window=win) > 0
        return np.ones(block.shape[-2:], dtype=bool)

    def _nodata_fits(self, dtype) -> bool:
        dtype = np.dtype(dtype)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            return float(self.nodata).is_integer() and info.min <= self.nodata <= info.max
        return True

    def close(self) -> None:
        self._src.close()
        try:
            self._env.__exit__(None, None, None)
        except Exception:  # noqa: BLE001 - rasterio's environments are per thread: closed from another
            pass


def _root_message(exc: BaseException) -> str:
    """The first line of the innermost cause: GDAL's own words (\"TIFFFillTile: Read error...\")."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return " ".join(str(exc).split())[:200] or type(exc).__name__


_READERS: dict[tuple[str, tuple[int, ...] | None], TileReader] = {}


def tile_reader(url: str, bands: list[int] | None = None, valid_bands: int | None = None) -> TileReader:
    """A per-process cached :class:`TileReader` (few scenes open at a time); ``valid_bands``: how
    many of ``bands`` say which pixels are valid (the others are read for a mask)."""
    key = (str(url), tuple(bands) if bands else None, valid_bands)
    reader = _READERS.get(key)
    if reader is None:
        if len(_READERS) >= 8:
            _READERS.pop(next(iter(_READERS))).close()
        reader = _READERS[key] = TileReader(url, bands, valid_bands=valid_bands)
    return reader
