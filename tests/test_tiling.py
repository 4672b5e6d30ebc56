import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.errors import InputError
from geoseg.data.tiling import TileGrid, Window, pad_tile

grids = st.builds(
    TileGrid,
    height=st.integers(1, 160),
    width=st.integers(1, 160),
    core=st.integers(4, 64),
    halo=st.integers(0, 40),
)


@given(grids)
@settings(max_examples=150, deadline=None)
def test_every_pixel_in_exactly_one_core(grid):
    count = np.zeros((grid.height, grid.width), dtype=np.int32)
    for tile in grid:
        count[tile.core.slices] += 1
        # each core is exactly one output chunk (chunk shape = core x core)
        assert tile.core.row_off == tile.iy * grid.core and tile.core.col_off == tile.ix * grid.core
    assert (count == 1).all()
    assert len(list(grid)) == len(grid) == grid.shape[0] * grid.shape[1]


@given(grids)
@settings(max_examples=100, deadline=None)
def test_tiles_have_one_shape_and_halos_match_the_raster(grid):
    # asymmetric data: value encodes (row, col), so any x/y swap or offset fails
    rows, cols = np.mgrid[0 : grid.height, 0 : grid.width]
    raster = (rows * 1000 + cols).astype(np.int64)
    for tile in grid:
        block = raster[tile.read.slices]
        arr = pad_tile(block[None], tile)[0]
        assert arr.shape == (grid.input_size, grid.input_size)
        # the core sits at the crop window, unchanged
        np.testing.assert_array_equal(arr[tile.crop.slices], raster[tile.core.slices])
        # every padded pixel that lies inside the raster is the real raster pixel
        top, _, left, _ = tile.pad
        r0 = tile.read.row_off - top
        c0 = tile.read.col_off - left
        rr = np.arange(grid.input_size) + r0
        cc = np.arange(grid.input_size) + c0
        inside_r = (rr >= 0) & (rr < grid.height)
        inside_c = (cc >= 0) & (cc < grid.width)
        sub = arr[np.ix_(inside_r, inside_c)]
        np.testing.assert_array_equal(sub, raster[np.ix_(rr[inside_r], cc[inside_c])])
        # the core has a full halo of real pixels on every side that is not the raster's edge
        for off, size, crop_off, crop_size, length in (
            (tile.core.row_off, tile.core.height, tile.crop.row_off, tile.crop.height, grid.height),
            (tile.core.col_off, tile.core.width, tile.crop.col_off, tile.crop.width, grid.width),
        ):
            assert crop_size == size
            assert crop_off >= min(grid.halo, off)
            if length >= grid.input_size:  # no padding: the window lies inside the raster
                assert grid.input_size - crop_off - size >= min(grid.halo, length - off - size)


def test_edge_tiles_slide_inside_the_raster():
    grid = TileGrid(10, 7, core=4, halo=2)  # tiles are 8 x 8: rows fit, columns do not
    rows, cols = np.mgrid[0:10, 0:7]
    raster = rows * 100 + cols
    first = grid[0, 0]
    assert first.read == Window(0, 0, 8, 7) and first.pad == (0, 0, 0, 1) and first.crop == Window(0, 0, 4, 4)
    mid = grid[1, 0]  # core rows 4..8: the full halo fits on both sides
    assert mid.read.row_off == 2 and mid.crop.row_off == 2
    last = grid[2, 1]  # bottom-right: core clipped to 2 x 3 pixels, window slid up to end at row 10
    assert last.core == Window(8, 4, 2, 3)
    assert last.read == Window(2, 0, 8, 7) and last.crop == Window(6, 4, 2, 3)
    arr = pad_tile(raster[last.read.slices][None], last)[0]
    assert arr.shape == (8, 8)
    np.testing.assert_array_equal(arr[last.crop.slices], raster[8:10, 4:7])
    # column 7 does not exist: it reflects column 5 (the edge pixel is not repeated)
    assert arr[0, 7] == raster[2, 5]


def test_grid_validation_and_indexing():
    with pytest.raises(InputError):
        TileGrid(10, 10, core=0)
    with pytest.raises(InputError):
        TileGrid(10, 10, core=4, halo=-1)
    grid = TileGrid(10, 21, core=4)
    assert grid.shape == (3, 6)
    assert grid.index(7) == (1, 1)
    with pytest.raises(IndexError):
        grid[3, 0]
    with pytest.raises(IndexError):
        grid.index(18)


def test_reading_order_is_a_permutation_in_near_square_ranges_inside_strips():
    from geoseg.data.tiling import ReadOrder, read_ranges, strip_for

    grid = TileGrid(1000, 3100, core=100, halo=10)  # 10 x 31 tiles: the last strip is narrower
    per = 16
    order = ReadOrder(grid, strip_for(grid, per))
    assert order.strip == 4
    assert sorted(order.tiles(0, len(grid)).tolist()) == list(range(len(grid)))
    ranges = read_ranges(order, per)
    assert ranges[0]["lo"] == 0 and ranges[-1]["hi"] == len(grid)
    assert all(a["hi"] == b["lo"] for a, b in zip(ranges, ranges[1:]))
    for rg in ranges:
        iy, ix = np.divmod(order.tiles(rg["lo"], rg["hi"]), grid.shape[1])
        assert len(set((ix // order.strip).tolist())) == 1  # one strip
        assert ix.max() - ix.min() < 4 and iy.max() - iy.min() <= 4  # near-square
        assert rg["hi"] - rg["lo"] <= per
    # strip order: a strip's rows left to right, then the next row; the last strip is 3 wide
    assert order.tiles(0, 6).tolist() == [0, 1, 2, 3, 31, 32]
    last = order.tiles(28 * 10, 28 * 10 + 4).tolist()
    assert last == [28, 29, 30, 31 + 28]
    tile = grid[3, 29]
    assert order.row_done(grid[3, 30]) and not order.row_done(tile) and order.row_done(grid[3, 3])
    assert order.strip_columns(tile) == (2800 - 10, 3100) and order.next_row_top(tile) == 400 - 10
    assert order.next_row_top(grid[9, 0]) == 1000
    assert ReadOrder(grid, 31).tiles(0, 40).tolist() == list(range(40))  # one strip: row order
