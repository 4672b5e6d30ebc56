"""Stitched tiles equal whole-image inference when the halo covers the receptive field."""

import numpy as np
import rasterio
import torch

from geoseg import checkpoint
from geoseg.checkpoint import CheckpointMeta
from geoseg.classes import LANDCOVER, NODATA
from geoseg.models.zoo import ModelConfig, build_model
from geoseg.pipeline import PredictOptions, predict
from geoseg.predictor import TorchPredictor


def test_tiled_fcn_equals_whole_image(ray_local, sample_dir, tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig("tinyfcn", in_channels=4, num_classes=4)
    model = build_model(cfg)
    with torch.no_grad():  # make the random net's classes vary across the scene
        for p in model.parameters():
            p.mul_(3.0)
    ckpt = tmp_path / "ckpt"
    checkpoint.save(str(ckpt), model, CheckpointMeta(cfg, LANDCOVER, [900.0, 1000.0, 900.0, 2500.0], [400.0] * 4))
    halo = 8  # TinyFCN sees 4 px on each side
    (rec,) = predict([str(sample_dir / "scene.tif")], str(tmp_path / "out"),
                     PredictOptions(checkpoint=str(ckpt), tile_size=96, halo=halo, batch_size=5))
    with rasterio.open(tmp_path / "out" / "scene.tif") as cog:
        stitched = cog.read(1)
    with rasterio.open(sample_dir / "scene.tif") as src:
        image = src.read().astype(np.float32)
    # whole-image inference with the same edge handling (reflection beyond the raster)
    padded = np.pad(image, ((0, 0), (halo, halo), (halo, halo)), mode="reflect")
    whole = TorchPredictor.from_checkpoint(str(ckpt)).predict(padded[None])[0][halo:-halo, halo:-halo]
    whole[np.all(image == 0, axis=0)] = NODATA
    assert len(np.unique(whole[whole != NODATA])) > 1
    np.testing.assert_array_equal(stitched, whole)
    assert rec["tiles"]["total"] == 49
