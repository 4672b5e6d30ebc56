"""Raster I/O with rasterio: metadata, windowed tile reads and streaming COG writes.

Nothing here ever reads or writes a whole raster: reads are per window, and
COGs are built window by window into a tiled GeoTIFF which GDAL's COG driver
then copies (with overviews) block by block.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoseg import storage
from geoseg.errors import StorageError
from geoseg.tiling import Tile, Window, pad_tile


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

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def affine(self):
        from affine import Affine

        return Affine(*self.transform[:6])

    def same_grid(self, other: "RasterInfo") -> bool:
        return (
            self.shape == other.shape
            and self.crs == other.crs
            and np.allclose(self.transform, other.transform, rtol=0, atol=1e-6)
        )


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
            )


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
        return data, src.height / shape[1], src.nodata


class TileReader:
    """Reads padded tiles from one raster, keeping the dataset open between reads.

    One reader per worker process and raster: opening a COG on object storage
    costs round trips, reading a window costs only the blocks it touches.
    """

    def __init__(self, url: str, bands: list[int] | None = None):
        self.url = str(url)
        self._env = storage.gdal_env()
        self._env.__enter__()
        self._src = open_raster(self.url)
        self.bands = bands or list(range(1, self._src.count + 1))
        self.nodata = self._src.nodata
        from rasterio.enums import MaskFlags

        flags = self._src.mask_flag_enums[0] if self._src.count else []
        self._dataset_mask = self.nodata is None and (MaskFlags.per_dataset in flags)

    def read(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """``(image (bands, T, T), valid (core_h, core_w) bool)`` for one tile."""
        win = tile.read.to_rasterio()
        block = self._src.read(self.bands, window=win)
        valid_block = self._valid(block, win)
        r0 = tile.core.row_off - tile.read.row_off
        c0 = tile.core.col_off - tile.read.col_off
        valid = valid_block[r0 : r0 + tile.core.height, c0 : c0 + tile.core.width]
        return pad_tile(block, tile), valid

    def read_window(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """``(block (bands, h, w), valid (h, w) bool)`` for a window inside the raster."""
        win = window.to_rasterio()
        block = self._src.read(self.bands, window=win)
        return block, self._valid(block, win)

    def _valid(self, block: np.ndarray, win) -> np.ndarray:
        if self.nodata is not None:
            if np.isnan(self.nodata):
                return ~np.all(np.isnan(block), axis=0)
            return ~np.all(block == self.nodata, axis=0)
        if self._dataset_mask:
            return self._src.dataset_mask(window=win) > 0
        return np.ones(block.shape[-2:], dtype=bool)

    def close(self) -> None:
        self._src.close()
        self._env.__exit__(None, None, None)


_READERS: dict[tuple[str, tuple[int, ...] | None], TileReader] = {}


def tile_reader(url: str, bands: list[int] | None = None) -> TileReader:
    """A per-process cached :class:`TileReader` (few scenes open at a time)."""
    key = (str(url), tuple(bands) if bands else None)
    reader = _READERS.get(key)
    if reader is None:
        if len(_READERS) >= 8:
            _READERS.pop(next(iter(_READERS))).close()
        reader = _READERS[key] = TileReader(url, bands)
    return reader


def iter_windows(height: int, width: int, block: int = 1024) -> Iterator[Window]:
    """Row-major windows of at most ``block x block`` pixels covering a raster."""
    for r in range(0, height, block):
        for c in range(0, width, block):
            yield Window(r, c, min(block, height - r), min(block, width - c))


class CogWriter:
    """Stream windows into a Cloud-Optimized GeoTIFF at ``url``.

    Windows go into a tiled scratch GeoTIFF; on :meth:`close` GDAL's COG driver
    copies it (computing overviews with ``resampling``) block by block, and the
    result is moved or uploaded to ``url`` in one step, so a COG at ``url`` is
    always complete. Memory stays at a few blocks whatever the raster size.
    """

    def __init__(
        self,
        url: str,
        *,
        height: int,
        width: int,
        count: int,
        dtype: str,
        crs: Any,
        transform: Any,
        nodata: float | None,
        descriptions: list[str] | None = None,
        colormap: dict[int, tuple[int, int, int, int]] | None = None,
        tags: dict[str, str] | None = None,
        resampling: str = "NEAREST",
        blocksize: int = 512,
    ):
        import rasterio

        self.url, self.dtype, self.resampling, self.blocksize = url, dtype, resampling, blocksize
        self._staging = storage.staging_path(url, ".scratch.tif")
        self._scratch = self._staging.__enter__()
        self._env = storage.gdal_env()
        self._env.__enter__()
        self._dst = rasterio.open(
            self._scratch,
            "w",
            driver="GTiff",
            height=height,
            width=width,
            count=count,
            dtype=dtype,
            crs=crs,
            transform=transform,
            nodata=nodata,
            tiled=True,
            blockxsize=blocksize,
            blockysize=blocksize,
            compress="DEFLATE",
            BIGTIFF="IF_SAFER",
        )
        if descriptions:
            for i, d in enumerate(descriptions, start=1):
                self._dst.set_band_description(i, d)
        if colormap:
            self._dst.write_colormap(1, colormap)
        if tags:
            self._dst.update_tags(**tags)

    def write(self, window: Window, data: np.ndarray) -> None:
        """Write ``data`` of shape ``(count, h, w)`` (or ``(h, w)``) at ``window``."""
        if data.ndim == 2:
            data = data[None]
        self._dst.write(data, window=window.to_rasterio())

    def close(self, commit: bool = True) -> None:
        from rasterio.shutil import copy as rio_copy

        try:
            self._dst.close()
            if commit:
                cog = self._scratch[: -len(".scratch.tif")] + ".cog.tif"
                rio_copy(
                    self._scratch,
                    cog,
                    driver="COG",
                    COMPRESS="DEFLATE",
                    PREDICTOR="2" if np.dtype(self.dtype).kind in "iu" else "YES",
                    BLOCKSIZE=str(self.blocksize),
                    OVERVIEW_RESAMPLING=self.resampling,
                    RESAMPLING=self.resampling,
                    BIGTIFF="IF_SAFER",
                    NUM_THREADS="ALL_CPUS",  # compression on every core: this is a job's serial tail
                )
                storage.put_file(cog, self.url)
        finally:
            self._env.__exit__(None, None, None)
            self._staging.__exit__(None, None, None)

    def __enter__(self) -> "CogWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(commit=exc_type is None)
