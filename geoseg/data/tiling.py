"""Tile grids over rasters: pure arithmetic, no I/O and no Ray.

Axis order is explicit everywhere: ``row`` / ``col`` (= y / x) and shapes are
``(height, width)``. A :class:`TileGrid` cuts a raster of ``height x width``
pixels into cores of ``core x core`` pixels (``--tile-size`` is the core's side;
edge cores are clipped). Each :class:`Tile` is read with a ``halo`` of context on
every side, so every tile's model input has the same shape
``(input_size, input_size)`` with ``input_size = core + 2*halo``. At the raster's
edges the read window slides inwards instead of hanging over the edge: the
model then sees the raster edge where whole-image inference sees it (its own
convolution padding) and real pixels everywhere else. Only an axis shorter
than a tile is padded, by reflection at its end. Tile ``(iy, ix)``'s core is
exactly chunk ``(iy, ix)`` of an output chunked ``(core, core)``, so no two
tiles ever write the same output chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from geoseg.errors import InputError


@dataclass(frozen=True, slots=True)
class Window:
    """A rectangle of pixels: offsets and sizes in (row, col) order."""

    row_off: int
    col_off: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height < 0 or self.width < 0:
            raise ValueError(f"negative window size: {self}")

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(row slice, col slice)`` for indexing a ``(..., rows, cols)`` array."""
        return (
            slice(self.row_off, self.row_off + self.height),
            slice(self.col_off, self.col_off + self.width),
        )

    @property
    def size(self) -> int:
        return self.height * self.width

    def to_rasterio(self):
        from rasterio.windows import Window as RioWindow

        return RioWindow(self.col_off, self.row_off, self.width, self.height)


@dataclass(frozen=True, slots=True)
class Tile:
    """One tile of a grid.

    ``core``: the pixels this tile is responsible for (raster coordinates).
    ``read``: the raster window read for it: ``core`` grown by the halo, slid
    inside the raster at its edges.
    ``pad``: ``(top, bottom, left, right)`` pixels of padding that bring the read
    block up to the full tile shape (non-zero only where the raster is smaller
    than a tile).
    ``crop``: the core's place inside the tile's model input.
    """

    iy: int
    ix: int
    core: Window
    read: Window
    pad: tuple[int, int, int, int]
    crop: Window


@dataclass(frozen=True, slots=True)
class TileGrid:
    """A grid of ``core``-sized tiles with ``halo`` pixels of context."""

    height: int
    width: int
    core: int = 512
    halo: int = 32

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise InputError(f"raster size must be positive, got {self.height}x{self.width}")
        if self.core <= 0:
            raise InputError(f"--tile-size must be positive, got {self.core}")
        if self.halo < 0:
            raise InputError(f"--halo must be >= 0, got {self.halo}")

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tiles as ``(rows, cols)``."""
        return (-(-self.height // self.core), -(-self.width // self.core))

    @property
    def input_size(self) -> int:
        """Side of every tile's model input: ``core + 2 * halo``."""
        return self.core + 2 * self.halo

    def __len__(self) -> int:
        ny, nx = self.shape
        return ny * nx

    def index(self, i: int) -> tuple[int, int]:
        """Row-major tile number -> ``(iy, ix)``."""
        ny, nx = self.shape
        if not 0 <= i < ny * nx:
            raise IndexError(i)
        return divmod(i, nx)

    def __getitem__(self, key: tuple[int, int]) -> Tile:
        iy, ix = key
        ny, nx = self.shape
        if not (0 <= iy < ny and 0 <= ix < nx):
            raise IndexError(key)
        r0, c0 = iy * self.core, ix * self.core
        ch, cw = min(self.core, self.height - r0), min(self.core, self.width - c0)
        rr0, rh = self._span(r0, self.height)
        cc0, cw_ = self._span(c0, self.width)
        size = self.input_size
        return Tile(
            iy,
            ix,
            core=Window(r0, c0, ch, cw),
            read=Window(rr0, cc0, rh, cw_),
            pad=(0, size - rh, 0, size - cw_),
            crop=Window(r0 - rr0, c0 - cc0, ch, cw),
        )

    def _span(self, start: int, length: int) -> tuple[int, int]:
        """``(offset, size)`` of the read window along one axis for a core at ``start``."""
        size = self.input_size
        if length <= size:
            return 0, length
        return min(max(start - self.halo, 0), length - size), size

    def __iter__(self) -> Iterator[Tile]:
        ny, nx = self.shape
        for iy in range(ny):
            for ix in range(nx):
                yield self[iy, ix]


@dataclass(frozen=True, slots=True)
class ReadOrder:
    """The order read tasks take a grid's tiles in: vertical strips of ``strip`` tile columns
    (the last one narrower), left to right; each strip row by row, each row left to right.

    Read ranges (``{lo, hi}`` positions in this order, :func:`read_ranges`) lie inside one
    strip, so a reader holds about one strip-row of decoded blocks whatever the raster's width,
    and a range is a near-square of tiles: a block is decoded again only where the halos of two
    ranges overlap, along the perimeter of each range. ``strip`` = the grid's width is row order.
    """

    grid: TileGrid
    strip: int

    def __post_init__(self) -> None:
        if self.strip < 1:
            raise ValueError(f"strip must be >= 1, got {self.strip}")

    def _strip(self, k: int) -> tuple[int, int, int]:
        """``(first position, first tile column, width in tiles)`` of strip ``k``."""
        ny, nx = self.grid.shape
        c0 = k * self.strip
        return c0 * ny, c0, min(self.strip, nx - c0)

    @property
    def strips(self) -> list[tuple[int, int]]:
        """``(first position, number of tiles)`` of each strip."""
        ny, nx = self.grid.shape
        return [(self._strip(k)[0], self._strip(k)[2] * ny) for k in range(-(-nx // self.strip))]

    def tiles(self, lo: int, hi: int) -> np.ndarray:
        """Tile numbers (row-major, as :meth:`TileGrid.index` takes them) at positions ``lo..hi-1``."""
        ny, nx = self.grid.shape
        pos = np.arange(lo, hi, dtype=np.int64)
        k = np.minimum(pos // (self.strip * ny), (nx - 1) // self.strip)
        first, c0 = k * self.strip * ny, k * self.strip
        width = np.minimum(self.strip, nx - c0)
        iy, dx = np.divmod(pos - first, width)
        return iy * nx + c0 + dx

    def strip_columns(self, tile: Tile) -> tuple[int, int]:
        """``(first, end)`` raster columns that the read windows of ``tile``'s strip cover."""
        _, c0, w = self._strip(tile.ix // self.strip)
        return self.grid[tile.iy, c0].read.col_off, self.grid[tile.iy, c0 + w - 1].read.col_off + \
            self.grid[tile.iy, c0 + w - 1].read.width

    def row_done(self, tile: Tile) -> bool:
        """True for the last tile of its strip's row."""
        _, c0, w = self._strip(tile.ix // self.strip)
        return tile.ix == c0 + w - 1

    def next_row_top(self, tile: Tile) -> int:
        """The first raster row the read windows of the strip's next row start at (the raster's
        height after the last row)."""
        if tile.iy + 1 >= self.grid.shape[0]:
            return self.grid.height
        return self.grid[tile.iy + 1, tile.ix].read.row_off


def read_ranges(order: ReadOrder, per: int) -> list[dict]:
    """``{"lo", "hi"}`` ranges of positions in ``order``, about ``per`` tiles each, none
    crossing from one strip into the next (each strip cut into equal parts)."""
    out = []
    for first, n in order.strips:
        parts = max(1, -(-n // max(1, per)))
        bounds = [first + (n * i) // parts for i in range(parts + 1)]
        out += [{"lo": a, "hi": b} for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return out


def strip_for(grid: TileGrid, per: int) -> int:
    """Strip width (tile columns) that makes ranges of ``per`` tiles near-square: ``ceil(sqrt(per))``."""
    return max(1, min(grid.shape[1], int(np.ceil(np.sqrt(max(1, per))))))


def pad_tile(block: np.ndarray, tile: Tile) -> np.ndarray:
    """Pad a read block ``(..., rows, cols)`` to the full tile shape.

    Only rasters smaller than a tile need it. Reflection never repeats the edge
    pixel, so there is no artificial plateau; blocks too small to reflect fall
    back to edge replication.
    """
    top, bottom, left, right = tile.pad
    if not any(tile.pad):
        return block
    widths = [(0, 0)] * (block.ndim - 2) + [(top, bottom), (left, right)]
    mode = "reflect" if min(block.shape[-2:]) > 1 else "edge"
    return np.pad(block, widths, mode=mode)


def range_size(total: int, batch: int, cpus: float, max_tasks: int = 10_000) -> int:
    """Tiles per read task: a few tasks per CPU, at least a batch each, at most ``max_tasks``
    however many tiles."""
    tasks = min(total // batch + 1, int(4 * cpus) * max(1, total // (batch * 64)), max_tasks)
    return max(batch, -(-total // max(1, tasks)))


def tile_ranges(total: int, batch: int, cpus: float, max_tasks: int = 10_000) -> list[dict]:
    """Global tile numbers cut into ``{"lo", "hi"}`` ranges (the hann blend's tasks).

    The driver holds ranges, never a list of tiles. (Not ``ray.data.range``:
    its read task wants a whole CPU, which no node may have left beside the actors.)
    """
    per = range_size(total, batch, cpus, max_tasks)
    return [{"lo": lo, "hi": min(lo + per, total)} for lo in range(0, total, per)]


def iter_windows(height: int, width: int, block: int = 1024) -> Iterator[Window]:
    """Row-major windows of at most ``block x block`` pixels covering a raster."""
    for r in range(0, height, block):
        for c in range(0, width, block):
            yield Window(r, c, min(block, height - r), min(block, width - c))
