"""A job of one scene whose model runs on this machine's CPUs starts no Ray (geoseg.predict.local):
the same output as whole-image inference, a signal or a storage outage mid-job as one line, and
a rerun that resumes to the clean output."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
import pytest
import rasterio
from commands import geoseg_env, start_geoseg
import torch

from geoseg.models import checkpoint
from geoseg.models.checkpoint import CheckpointMeta
from geoseg.data.classes import LANDCOVER, NODATA
from geoseg.models.zoo import ModelConfig, build_model
from geoseg.models.predictor import TorchPredictor

MEAN, STD = [900.0, 1000.0, 900.0, 2500.0], [400.0] * 4


def _others(ray_tmp: str, pid: int) -> list[str]:
    """Processes other than ``pid`` (and this one) started with the run's environment: Ray's would be."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid not in (pid, os.getpid()) and p.environ().get("RAY_TMPDIR") == ray_tmp:
                found.append(" ".join(p.cmdline())[:80])
        except psutil.Error:
            pass
    return found


def _wait_for(done, proc, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if done():
            return
        time.sleep(0.05)
    raise AssertionError(f"no tiles written (exit {proc.poll()}): {proc.stderr.read() if proc.poll() else ''}")


def _done_tiles(progress) -> int:
    return sum(n.startswith("done-") for n in os.listdir(progress)) if os.path.isdir(progress) else 0


@pytest.fixture(scope="module")
def fcn(tmp_path_factory):
    """A random TinyFCN checkpoint whose classes vary across the sample scene (4 px of context a side)."""
    torch.manual_seed(0)
    cfg = ModelConfig("tinyfcn", in_channels=4, num_classes=4)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    path = str(tmp_path_factory.mktemp("fcn") / "ckpt")
    checkpoint.save(path, model, CheckpointMeta(cfg, LANDCOVER, MEAN, STD))
    return path


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    """A random U-Net (resnet18) checkpoint: slow enough on CPU to be stopped mid-job."""
    torch.manual_seed(0)
    cfg = ModelConfig("unet", "resnet18", in_channels=4, num_classes=4)
    path = str(tmp_path_factory.mktemp("unet") / "ckpt")
    checkpoint.save(path, build_model(cfg), CheckpointMeta(cfg, LANDCOVER, MEAN, STD))
    return path


UNET = ["--tile-size", "64", "--halo", "16", "--batch-size", "2"]


@pytest.fixture(scope="module")
def unet_clean(unet, sample_dir, tmp_path_factory):
    """The U-Net's class map of the sample scene from a run without faults."""
    out = tmp_path_factory.mktemp("clean")
    d = tempfile.mkdtemp(prefix="gs", dir="/tmp")
    try:
        res = subprocess.run([sys.executable, "-m", "geoseg", "predict", str(sample_dir / "scene.tif"), "--out",
                              str(out), "--checkpoint", unet, *UNET], env=geoseg_env(d), capture_output=True, text=True,
                             timeout=300)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert res.returncode == 0, res.stderr
    return out / "scene.tif"


@pytest.mark.parametrize("how", ["crop", "hann"])
def test_one_scene_starts_no_ray_and_equals_whole_image_inference(fcn, sample_dir, tmp_path, ray_tmp, how):
    scene = sample_dir / "scene.tif"
    proc = start_geoseg(["predict", str(scene), "--out", str(tmp_path / "o"), "--checkpoint", fcn, "--tile-size", "96",
                    "--halo", "8", "--batch-size", "5", "--stitch", how], geoseg_env(ray_tmp))
    seen: set[str] = set()
    while proc.poll() is None:  # nothing else starts: no raylet, no GCS, no worker, no reaper
        seen.update(_others(ray_tmp, proc.pid))
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert not seen, seen
    rec = json.loads((tmp_path / "o" / "scene.json").read_text())
    assert rec["placement"]["ray"] is False and rec["placement"]["model"] == "driver"
    assert rec["status"] == "complete" and rec["tiles"]["total"] == 49 and rec["parameters"]["stitch"] == how
    summary = json.loads((tmp_path / "o" / "_job.json").read_text())
    assert summary["status"] == "complete" and summary["counts"]["complete"] == 1
    with rasterio.open(tmp_path / "o" / "scene.tif") as cog, rasterio.open(scene) as src:
        stitched, image = cog.read(1), src.read().astype(np.float32)
    whole = TorchPredictor.from_checkpoint(fcn).predict(image[None])[0]
    whole[np.all(image == 0, axis=0)] = NODATA
    assert len(np.unique(whole[whole != NODATA])) > 1
    np.testing.assert_array_equal(stitched, whole)
    assert not (tmp_path / "o" / ".geoseg" / "scene").exists()  # progress log and scratch softmax gone


def test_sigterm_mid_job_without_ray_is_one_line_and_the_rerun_resumes(unet, unet_clean, sample_dir, tmp_path,
                                                                        ray_tmp):
    args = ["predict", str(sample_dir / "scene.tif"), "--out", str(tmp_path / "o"), "--checkpoint", unet, *UNET]
    proc = start_geoseg(args, geoseg_env(ray_tmp))
    _wait_for(lambda: _done_tiles(tmp_path / "o" / ".geoseg" / "scene") >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "geoseg: terminated; rerun the same command to resume"
    assert "Traceback" not in err
    assert not (tmp_path / "o" / "scene.json").exists() and not (tmp_path / "o" / "scene.tif").exists()

    rerun = start_geoseg(args, geoseg_env(ray_tmp))
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert "resuming" in out
    rec = json.loads((tmp_path / "o" / "scene.json").read_text())
    assert rec["status"] == "complete" and 0 < rec["tiles"]["resumed"] < rec["tiles"]["total"]
    with rasterio.open(unet_clean) as a, rasterio.open(tmp_path / "o" / "scene.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_endpoint_lost_mid_job_without_ray_is_one_line_and_the_rerun_resumes(unet, unet_clean, sample_dir,
                                                                               tmp_path, ray_tmp):
    """The S3 endpoint of the outputs stops answering mid-job (a real server stopped): one line naming
    the URL and the endpoint; once it is back, the same command resumes to the clean class map."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="outage-alone")
    env = geoseg_env(ray_tmp, AWS_ENDPOINT_URL=endpoint, GEOSEG_S3_ATTEMPTS="2")
    args = ["predict", str(sample_dir / "scene.tif"), "--out", "s3://outage-alone/o", "--checkpoint", unet, *UNET]

    def keys() -> set[str]:
        return {o["Key"] for o in client.list_objects_v2(Bucket="outage-alone").get("Contents", [])}

    try:
        proc = start_geoseg(args, env)
        _wait_for(lambda: sum("/done-" in k for k in keys()) >= 2, proc)
        server.stop()  # the endpoint is gone mid-job
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err
        assert "Traceback" not in err
        line = err.strip().splitlines()[-1]
        assert line.startswith("geoseg: error: s3://outage-alone/o"), err
        assert f"the storage endpoint {endpoint} is not reachable" in line, line
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()  # back (moto keeps its objects in this process)
        assert "o/scene.json" not in keys()
        rerun = start_geoseg(args, env)
        out, err = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, err
        record = json.loads(client.get_object(Bucket="outage-alone", Key="o/scene.json")["Body"].read())
        assert record["status"] == "complete" and record["tiles"]["resumed"] > 0
        client.download_file("outage-alone", "o/scene.tif", str(tmp_path / "scene.tif"))
        with rasterio.open(unet_clean) as a, rasterio.open(tmp_path / "scene.tif") as b:
            np.testing.assert_array_equal(a.read(), b.read())
    finally:
        server.stop()
