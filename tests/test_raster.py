"""TileReader: tiles assembled from cached cells of whole blocks equal plain window reads."""

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.data.raster import TileReader
from geoseg.data.tiling import ReadOrder, TileGrid, read_ranges


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
    assert reader.peak_bytes <= 256 * 2**20  # bounded cache
    ch, cw = reader.cell
    assert reader.decoded == -(-height // ch) * -(-width // cw)  # every cell decoded exactly once
    as_float, _ = TileReader(str(tmp_path / "r.tif"), [3, 1]).read_tiles(tiles[:3], "float32")
    assert as_float.dtype == np.float32
    np.testing.assert_array_equal(as_float, np.stack([g[0] for g in got[:3]]).astype(np.float32))
    # a single tile read agrees with the batched one
    image, valid = TileReader(str(tmp_path / "r.tif"), [3, 1]).read(tiles[7])
    np.testing.assert_array_equal(image, got[7][0])


def _read_in_order(url, grid, order, per=None):
    """Every tile read range by range in ``order`` by one reader, checked against the raster."""
    reader = TileReader(url, [2])
    ranges = read_ranges(order, per or len(grid))
    images = {}
    for rg in ranges:
        ids = order.tiles(rg["lo"], rg["hi"])
        tiles = [grid[grid.index(int(t))] for t in ids]
        for i in range(0, len(tiles), 4):
            got, _ = reader.read_tiles(tiles[i : i + 4], order=order)
            images.update(zip(ids[i : i + 4].tolist(), got))
    return reader, images


def test_reader_memory_is_flat_in_the_raster_width_and_each_cell_decoded_once_in_a_strip(tmp_path):
    """Tiles read down strips (tiling.ReadOrder): the cache holds about one strip-row of cells,
    the same for a raster twice as wide; in row order a cell passed by the tile row keeps only
    the rows the next row reads, and no cell is decoded twice."""
    peaks = {}
    for width in (1024, 2048):
        height = 640
        data = _raster(tmp_path / f"w{width}.tif", height, width, block=128)
        grid = TileGrid(height, width, core=128, halo=16)
        for strip in (2, grid.shape[1]):
            reader, images = _read_in_order(str(tmp_path / f"w{width}.tif"), grid, ReadOrder(grid, strip))
            assert sorted(images) == list(range(len(grid)))
            for t, image in images.items():
                tile = grid[grid.index(t)]
                np.testing.assert_array_equal(image[0], data[1][tile.read.slices])
            cells = -(-height // reader.cell[0]) * -(-width // reader.cell[1])
            if strip == grid.shape[1]:  # row order, one range: each cell decoded exactly once
                assert reader.decoded == cells
            else:  # strips: only the cells under two strips' halos are decoded twice
                assert reader.decoded <= cells + (grid.shape[1] // strip - 1) * 2 * -(-height // reader.cell[0])
            peaks[width, strip] = reader.peak_bytes
    cell_bytes = reader.cell[0] * reader.cell[1] * (2 + 1)  # 256-px cells of one uint16 band, and validity
    # strips of 2 tiles (256 px and halos: 3 cells wide): at most two cell rows of them, whatever the width
    assert peaks[1024, 2] == peaks[2048, 2] <= 2 * 3 * cell_bytes
    # row order: about one row of whole cells (4, 8 a row here) and halo strips, not three rows
    assert peaks[1024, 8] <= 1.5 * 4 * cell_bytes and peaks[2048, 16] <= 1.5 * 8 * cell_bytes
