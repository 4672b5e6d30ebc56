"""geoseg's outputs and models as lazy xarray: open_map gives predict's class map back, dask-backed on
the store's chunks with its CRS; segment over an odc-stac-loaded item equals geoseg predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

import geoseg


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A U-Net checkpoint reading blue, green, red, nir by name (random weights: its class map is a
    function of the pixels all the same)."""
    import torch

    from geoseg.models import checkpoint
    from geoseg.models.checkpoint import CheckpointMeta
    from geoseg.data.classes import LANDCOVER
    from geoseg.models.zoo import ModelConfig, build_model

    torch.manual_seed(2)
    cfg = ModelConfig("unet", "resnet18", 4, 4)
    folder = tmp_path_factory.mktemp("ckpt")
    checkpoint.save(str(folder), build_model(cfg), CheckpointMeta(
        cfg, LANDCOVER, [700.0, 900.0, 800.0, 2500.0], [300.0, 300.0, 400.0, 900.0],
        ["blue", "green", "red", "nir"], None, extra={"inputs": {"scaled": False}}))
    return str(folder)


def test_open_map_is_predicts_class_map_lazily(ray_local, sample_dir, tmp_path):
    import dask.array as da

    from geoseg.predict import PredictOptions, predict

    (rec,) = predict([str(sample_dir / "scene.tif")], str(tmp_path / "o"),
                     PredictOptions(model="index", tile_size=128, halo=16, probabilities=True))
    ds = geoseg.open_map(str(tmp_path / "o"))
    assert isinstance(ds["classes"].data, da.Array) and ds["classes"].data.chunksize == (128, 128)
    with rasterio.open(rec["outputs"]["cog"]) as cog:
        np.testing.assert_array_equal(ds["classes"].values, cog.read(1))
        assert ds.rio.crs == cog.crs
        assert ds.rio.transform() == cog.transform
    assert ds.attrs["class_names"] == ["bare_soil", "vegetation", "water", "built_up"]
    p = ds["probabilities"].isel(x=slice(0, 64), y=slice(0, 64)).values
    assert ds["probabilities"].dims == ("class", "y", "x") and 0 <= p.min() and p.max() <= 1


@pytest.mark.slow
def test_segment_over_an_odc_stac_item_equals_geoseg_predict(ray_local, model, tmp_path):
    import odc.stac
    import pystac
    from odc.geo.geobox import GeoBox

    from geoseg.predict import PredictOptions, predict
    from geoseg.data.sample import write_sample
    from geoseg.data.stac import StackOptions

    urls = write_sample(str(tmp_path / "s"), size=384, seed=6, stac=True)
    item = json.loads(open(urls["item"]).read())
    for asset in item["assets"].values():  # digital numbers, no scale: the model was trained on them
        for band in asset.get("raster:bands", []) + asset.get("bands", []):
            band.pop("scale", None)
            band.pop("offset", None)
    plain = tmp_path / "s" / "plain-item.json"
    plain.write_text(json.dumps(item))
    (rec,) = predict([str(plain)], str(tmp_path / "o"),
                     PredictOptions(checkpoint=model, tile_size=128, halo=32, stack=StackOptions(
                         ("blue", "green", "red", "nir"))))
    with rasterio.open(rec["outputs"]["cog"]) as cog:
        want, box = cog.read(1), GeoBox(cog.shape, cog.transform, cog.crs)
    data = odc.stac.load([pystac.Item.from_file(str(plain))], bands=["blue", "green", "red", "nir"], geobox=box,
                         chunks={"x": 200, "y": 200}, resampling="nearest")
    image = data.isel(time=0).to_array("band")  # (band, y, x) of dask arrays
    image.attrs["nodata"] = 0
    classes = geoseg.segment(image, model, tile_size=128, halo=32)
    assert classes.dims == ("y", "x") and classes.shape == want.shape
    np.testing.assert_array_equal(classes.values, want)


def test_segment_leaves_dask_config_alone_and_runs_on_ray_per_call(ray_local, model):
    """segment() does not switch dask's global scheduler; geoseg.scheduler() is Ray's with Ray up,
    and computing with it per call gives the same class map as dask's threads."""
    import dask
    import xarray as xr
    from ray.util.dask import ray_dask_get

    rng = np.random.default_rng(3)
    image = xr.DataArray(rng.integers(200, 3000, (4, 160, 200), dtype=np.uint16), dims=("band", "y", "x"),
                         coords={"band": ["blue", "green", "red", "nir"]})
    before = dask.config.get("scheduler", None)
    classes = geoseg.segment(image, model, tile_size=64, halo=32)
    assert dask.config.get("scheduler", None) == before
    assert geoseg.scheduler() is ray_dask_get
    on_ray = classes.compute(scheduler=geoseg.scheduler()).values
    np.testing.assert_array_equal(on_ray, classes.compute(scheduler="threads").values)
    assert dask.config.get("scheduler", None) == before
