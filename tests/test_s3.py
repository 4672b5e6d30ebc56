"""Object storage through a real S3 HTTP endpoint (moto server on 127.0.0.1)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import xarray as xr

from geoseg import storage
from geoseg.errors import StorageError
from geoseg.pipeline import PredictOptions, predict


def _upload(s3, path, key):
    s3.upload_file(str(path), "geoseg", key)
    return f"s3://geoseg/{key}"


def test_predict_from_s3_to_s3(ray_local, s3, sample_dir, tmp_path):
    scene = _upload(s3, sample_dir / "scene.tif", "in/scene.tif")
    (rec,) = predict([scene], "s3://geoseg/out/", PredictOptions(model="index", tile_size=320))
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="geoseg", Prefix="out/")["Contents"]}
    assert {"out/scene.tif", "out/scene.json", "out/scene.zarr/zarr.json"} <= keys
    assert not any(k.startswith("out/.geoseg/") for k in keys)  # progress log cleaned up
    record = json.loads(s3.get_object(Bucket="geoseg", Key="out/scene.json")["Body"].read())
    assert record["status"] == "complete" and record["input"] == scene
    assert "testing" not in json.dumps(record)  # no secrets in the run record
    s3.download_file("geoseg", "out/scene.tif", str(tmp_path / "cog.tif"))
    with rasterio.open(tmp_path / "cog.tif") as cog, rasterio.open(sample_dir / "scene.tif") as src:
        assert cog.crs == src.crs and cog.transform == src.transform and cog.shape == src.shape
        classes = cog.read(1)
    ds = xr.open_zarr(storage.zarr_store("s3://geoseg/out/scene.zarr", read_only=True))
    np.testing.assert_array_equal(ds["classes"].values, classes)


def test_missing_key_bucket_and_denied_access_name_the_url(s3, tmp_path):
    with pytest.raises(StorageError, match=r"s3://geoseg/nope.tif: not found"):
        from geoseg.raster import read_info

        read_info("s3://geoseg/nope.tif")
    with pytest.raises(StorageError, match=r"s3://no-such-bucket/x.json"):
        storage.read_text("s3://no-such-bucket/x.json")
    res = subprocess.run(
        [sys.executable, "-m", "geoseg", "predict", "s3://no-such-bucket/scene.tif", "--out", str(tmp_path / "o"),
         "--model", "index"],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 1 and "s3://no-such-bucket/scene.tif" in res.stderr and "Traceback" not in res.stderr


def test_train_checkpoints_on_s3(ray_local, s3, sample_dir):
    from geoseg import checkpoint
    from geoseg.trainer import TrainConfig, train

    image = _upload(s3, sample_dir / "scene.tif", "train/scene.tif")
    labels = _upload(s3, sample_dir / "labels.tif", "train/labels.tif")
    summary = train(TrainConfig(images=[image], labels=[labels], out="s3://geoseg/runs/tiny", arch="tinyfcn",
                                epochs=1, chip_size=64, block_size=128, chips_per_epoch=32, batch_size=8, workers=2))
    assert summary["best_checkpoint"] == "s3://geoseg/runs/tiny/best"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="geoseg", Prefix="runs/tiny/")["Contents"]}
    assert "runs/tiny/best/model.safetensors" in keys and "runs/tiny/run.json" in keys
    assert any(k.startswith("runs/tiny/checkpoint_") for k in keys)
    model, meta = checkpoint.load("s3://geoseg/runs/tiny")
    assert meta.model.arch == "tinyfcn"
