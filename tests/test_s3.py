"""Object storage through a real S3 HTTP endpoint (moto server on 127.0.0.1)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import xarray as xr

from geoseg.data import storage
from geoseg.errors import StorageError
from geoseg.predict import PredictOptions, predict


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
        from geoseg.data.raster import read_info

        read_info("s3://geoseg/nope.tif")
    with pytest.raises(StorageError, match=r"s3://no-such-bucket/x.json"):
        storage.read_text("s3://no-such-bucket/x.json")
    res = subprocess.run(
        [sys.executable, "-m", "geoseg", "predict", "s3://no-such-bucket/scene.tif", "--out", str(tmp_path / "o"),
         "--model", "index"],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 1 and "s3://no-such-bucket/scene.tif" in res.stderr and "Traceback" not in res.stderr


def test_denied_access_names_the_url(s3, _moto_server, sample_dir, tmp_path):
    """A real IAM refusal: a user allowed only to list the bucket reads a scene."""
    import os

    import boto3
    import requests

    scene = _upload(s3, sample_dir / "scene.tif", "in/scene.tif")
    iam = boto3.client("iam", endpoint_url=_moto_server)
    iam.create_user(UserName="lister")
    iam.put_user_policy(UserName="lister", PolicyName="list-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::geoseg"}],
    }))
    key = iam.create_access_key(UserName="lister")["AccessKey"]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    requests.post(f"{_moto_server}/moto-api/reset-auth", data=b"0", timeout=10)  # IAM on from now
    try:
        code = ("import sys\nfrom geoseg.data import storage\nfrom geoseg.errors import StorageError\n"
                "try:\n    storage.read_text(sys.argv[1])\nexcept StorageError as e:\n    print(e)\n")
        res = subprocess.run([sys.executable, "-c", code, scene], env=env, capture_output=True, text=True, timeout=60)
        assert res.stdout.strip() == f"{scene}: access denied", res.stdout + res.stderr
        res = subprocess.run(
            [sys.executable, "-m", "geoseg", "predict", scene, "--out", str(tmp_path / "o"), "--model", "index"],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert f"{scene}: access denied" in res.stderr, res.stderr
        assert key["SecretAccessKey"] not in res.stderr + res.stdout  # secrets are never printed
        assert not (tmp_path / "o" / "scene.tif").exists()
    finally:
        requests.post(f"{_moto_server}/moto-api/reset-auth", data=b"inf", timeout=10)
