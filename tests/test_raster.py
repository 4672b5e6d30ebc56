"""TileReader: tiles assembled from cached cells of whole blocks equal plain window reads."""

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.raster import TileReader
from geoseg.tiling import TileGrid


def _raster(path, height, width, block, nodata=0, tiled=True):
    rows, cols = np.mgrid[0:height, 0:width]
    data = np.stack([(rows * 7 + cols * 3 + b * 1000) % 60000 + 1 for b in range(3)]).astype(np.uint16)
    data[:, : height // 5, : width // 4] = nodata  # a nodata corner
    profile = dict(driver="GTiff", height=height, width=width, count=3, dtype="uint16", nodata=nodata,
                   crs="EPSG:32633", transform=Affine(10, 0, 0, 0, -10, 0), compress="DEFLATE")
    if tiled:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    else:
        profile.update(blockysize=1)  # one row per strip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return data


@pytest.mark.parametrize("tiled", [True, False])
def test_tiles_from_cells_equal_direct_reads(tmp_path, tiled):
    # asymmetric sizes, cores that do not match the blocks, clipped edge tiles
    height, width = 700, 1100
    data = _raster(tmp_path / "r.tif", height, width, block=256, tiled=tiled)
    grid = TileGrid(height, width, core=192, halo=24)
    reader = TileReader(str(tmp_path / "r.tif"), [3, 1])  # band order as asked
    tiles = list(grid)
    got = []
    for i in range(0, len(tiles), 5):  # batches that split tile rows, as read tasks do
        images, valids = reader.read_tiles(tiles[i : i + 5])
        assert images.shape == (len(valids), 2, grid.input_size, grid.input_size) and images.dtype == np.uint16
        got += zip(images, valids)
    for tile, (image, valid) in zip(tiles, got):
        r = tile.read
        np.testing.assert_array_equal(image[:, : r.height, : r.width], data[[2, 0]][(slice(None), *r.slices)])
        assert image.shape[-2:] == (grid.input_size, grid.input_size)
        np.testing.assert_array_equal(valid, (data[:, tile.core.slices[0], tile.core.slices[1]] != 0).any(0))
    assert len(reader._cells) <= reader._capacity  # bounded cache
    ch, cw = reader.cell
    assert reader.decoded == -(-height // ch) * -(-width // cw)  # every cell decoded exactly once
    as_float, _ = TileReader(str(tmp_path / "r.tif"), [3, 1]).read_tiles(tiles[:3], "float32")
    assert as_float.dtype == np.float32
    np.testing.assert_array_equal(as_float, np.stack([g[0] for g in got[:3]]).astype(np.float32))
    # a single tile read agrees with the batched one
    image, valid = TileReader(str(tmp_path / "r.tif"), [3, 1]).read(tiles[7])
    np.testing.assert_array_equal(image, got[7][0])
