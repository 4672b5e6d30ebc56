import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.errors import InputError
from geoseg.tiling import TileGrid, Window, pad_tile

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
        assert arr.shape == (grid.tile_size, grid.tile_size)
        # the core sits at the crop window, unchanged
        np.testing.assert_array_equal(arr[tile.crop.slices], raster[tile.core.slices])
        # every padded pixel that lies inside the raster is the real raster pixel
        top, _, left, _ = tile.pad
        r0 = tile.read.row_off - top
        c0 = tile.read.col_off - left
        rr = np.arange(grid.tile_size) + r0
        cc = np.arange(grid.tile_size) + c0
        inside_r = (rr >= 0) & (rr < grid.height)
        inside_c = (cc >= 0) & (cc < grid.width)
        sub = arr[np.ix_(inside_r, inside_c)]
        np.testing.assert_array_equal(sub, raster[np.ix_(rr[inside_r], cc[inside_c])])


def test_edge_tiles_are_reflect_padded():
    grid = TileGrid(10, 7, core=4, halo=2)
    rows, cols = np.mgrid[0:10, 0:7]
    raster = rows * 100 + cols
    tile = grid[0, 0]
    arr = pad_tile(raster[tile.read.slices][None], tile)[0]
    # reflection about row 0 / col 0 without repeating the edge pixel
    assert arr[0, 2] == raster[2, 0] and arr[1, 2] == raster[1, 0]
    assert arr[2, 0] == raster[0, 2]
    last = grid[2, 1]  # bottom-right: core clipped to 2 x 3 pixels
    assert last.core == Window(8, 4, 2, 3)
    arr = pad_tile(raster[last.read.slices][None], last)[0]
    assert arr.shape == (8, 8)
    # row 10 does not exist: it reflects row 8
    assert arr[last.crop.row_off + 2, last.crop.col_off] == raster[8, 4]


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
