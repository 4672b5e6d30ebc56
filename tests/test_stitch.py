"""Stitching: tiled inference equals whole-image inference when the halo covers the
receptive field, for centre crop and for Hann blending; the blend maths on its own."""

import numpy as np
import pytest
import rasterio
import torch

from geoseg.data import stitch
from geoseg.models import checkpoint
from geoseg.models.checkpoint import CheckpointMeta
from geoseg.data.classes import LANDCOVER, NODATA
from geoseg.models.zoo import ModelConfig, build_model
from geoseg.predict import PredictOptions, predict
from geoseg.models.predictor import TorchPredictor
from geoseg.data.tiling import TileGrid


@pytest.mark.parametrize("where", ["driver", "actors"])
@pytest.mark.parametrize("how", ["crop", "hann"])
def test_tiled_fcn_equals_whole_image(ray_local, sample_dir, tmp_path, how, where):
    """On geoseg's own local Ray the model runs in the driver; --workers asks for model actors."""
    torch.manual_seed(0)
    cfg = ModelConfig("tinyfcn", in_channels=4, num_classes=4)
    model = build_model(cfg)
    with torch.no_grad():  # make the random net's classes vary across the scene
        for p in model.parameters():
            p.mul_(3.0)
    ckpt = tmp_path / "ckpt"
    checkpoint.save(str(ckpt), model, CheckpointMeta(cfg, LANDCOVER, [900.0, 1000.0, 900.0, 2500.0], [400.0] * 4))
    halo = 8  # TinyFCN sees 4 px on each side
    threads = torch.get_num_threads()
    (rec,) = predict([str(sample_dir / "scene.tif")], str(tmp_path / "out"),
                     PredictOptions(checkpoint=str(ckpt), tile_size=96, halo=halo, batch_size=5, stitch=how,
                                    workers=1 if where == "actors" else None))
    assert rec["placement"]["model"] == where
    assert torch.get_num_threads() == threads  # the driver's single-threaded calls left torch as it was
    with rasterio.open(tmp_path / "out" / "scene.tif") as cog:
        stitched = cog.read(1)
    with rasterio.open(sample_dir / "scene.tif") as src:
        image = src.read().astype(np.float32)
    # plain whole-image inference: edge tiles slide inside the raster, so the model
    # meets the raster's edges exactly where it does here
    whole = TorchPredictor.from_checkpoint(str(ckpt)).predict(image[None])[0]
    whole[np.all(image == 0, axis=0)] = NODATA
    assert len(np.unique(whole[whole != NODATA])) > 1
    np.testing.assert_array_equal(stitched, whole)
    assert rec["tiles"]["total"] == 49 and rec["parameters"]["stitch"] == how
    assert not (tmp_path / "out" / ".geoseg" / "scene").exists()  # progress log and scratch softmax gone


def test_tapers_of_neighbours_sum_to_one():
    grid = TileGrid(300, 260, core=64, halo=10)
    a, b = grid[1, 1], grid[1, 2]  # horizontal neighbours, both with a full halo
    _, wa = stitch.tile_weights(grid, a)
    _, wb = stitch.tile_weights(grid, b)
    overlap = range(b.read.col_off, a.read.col_off + a.read.width)
    assert len(overlap) == 2 * grid.halo
    total = [wa[x - a.read.col_off] + wb[x - b.read.col_off] for x in overlap]
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    # the outer halo/2 pixels lack context: no weight; the core is at least 1/2, its middle 1
    assert (wa[: grid.halo // 2] == 0).all() and (wa[-(grid.halo // 2) :] == 0).all()
    assert wa[a.crop.col_off : a.crop.col_off + 64].min() >= 0.5
    assert wa[a.crop.col_off + grid.halo : a.crop.col_off + 64 - grid.halo].min() == 1.0
    # the raster's edge is no seam: no taper there
    wy0, wx0 = stitch.tile_weights(grid, grid[0, 0])
    assert wy0[0] == 1.0 and wx0[0] == 1.0 and wx0[-1] == 0.0


def test_blend_mixes_neighbours_at_seams_only_and_masks_nodata():
    grid = TileGrid(250, 300, core=48, halo=8)  # asymmetric: 6 x 7 tiles, clipped edge cores
    k, size = 3, grid.input_size
    softmax = {}
    for tile in grid:  # every tile votes for one class everywhere in its input
        w = np.full((k, size, size), 0.0, np.float32)
        w[(tile.iy + 2 * tile.ix) % k] = 1.0
        softmax[tile.iy, tile.ix] = w
    softmax[2, 1][:, grid[2, 1].crop.row_off, grid[2, 1].crop.col_off] = np.nan  # one nodata pixel
    for tile in grid:
        probs, valid, _ = stitch.blend_core(grid, tile, lambda iy, ix: softmax[iy, ix])
        assert probs.shape == (k, tile.core.height, tile.core.width)
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
        own = (tile.iy + 2 * tile.ix) % k
        h = grid.halo
        ny, nx = grid.shape
        regular = 2 <= tile.iy < ny - 2 and 2 <= tile.ix < nx - 2  # (edge read windows slide inwards, deeper)
        if regular:
            inner = probs[own, h : tile.core.height - h, h : tile.core.width - h]
            np.testing.assert_array_equal(inner, 1.0)  # away from seams: the tile alone
            # right seam: the right neighbour's share grows from 0 (its outer h/2 pixels
            # lack context) to about 0.4 at the seam
            right = (tile.iy + 2 * tile.ix + 2) % k
            row = probs[right, tile.core.height // 2, tile.core.width - h :]
            assert (row[: h // 2] == 0).all() and 0.35 < row[-1] < 0.5 and np.all(np.diff(row) >= 0)
        assert valid.sum() == valid.size - ((tile.iy, tile.ix) == (2, 1))
    # a missing neighbour (no softmax stored) simply does not count
    probs, valid, _ = stitch.blend_core(grid, grid[1, 1], lambda iy, ix: None if (iy, ix) != (1, 1) else softmax[1, 1])
    np.testing.assert_array_equal(probs[(1 + 2) % k], 1.0)
    assert valid.all()
