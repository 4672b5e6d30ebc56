"""Writing Cloud-Optimized GeoTIFFs window by window: :class:`CogWriter` (flat memory)."""

from __future__ import annotations

from typing import Any

import numpy as np

from geoseg.data import storage
from geoseg.data.tiling import Window


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
        scratch_compress: str = "DEFLATE",
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
            compress=scratch_compress,  # NONE: a scratch read once, where disk is cheaper than compressing twice
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
