"""Faults that arrive while a job runs get one line too, and the rerun resumes to the clean output:
an S3 endpoint that stops answering, credentials revoked mid-job, a disk that fills up or turns
read-only (a real tmpfs in a mount namespace of the job's own), sizes that cannot fit, and
Ctrl-C / SIGTERM to ``geoseg train``."""

from __future__ import annotations

import errno
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import rasterio
from commands import free_ports, geoseg_env, start_geoseg

from geoseg.data import storage

PREDICT = ["--model", "index", "--tile-size", "64", "--halo", "8", "--batch-size", "2"]


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("geoseg: error: "), err
    return last


def _same_classes(a, b) -> None:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        np.testing.assert_array_equal(x.read(), y.read())


@pytest.fixture(scope="module")
def clean(sample_dir, tmp_path_factory):
    """The index model's class map of the sample scene from a run without faults."""
    out = tmp_path_factory.mktemp("clean")
    d = tempfile.mkdtemp(prefix="gs", dir="/tmp")
    try:
        res = subprocess.run([sys.executable, "-m", "geoseg", "predict", str(sample_dir / "scene.tif"), "--out",
                              str(out), *PREDICT], env=geoseg_env(d), capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert res.returncode == 0, res.stderr
    return out / "scene.tif"


# --- what the storage layer says ---------------------------------------------------------------


def test_storage_faults_are_named_in_words():
    """The exceptions object-storage clients and the OS raise (real botocore / OS exception objects)."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    def client(code):
        return ClientError({"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": 503}},
                           "PutObject")

    assert "throttling requests (SlowDown), still after" in storage.fault_reason(client("SlowDown"))
    assert "refused the credentials (ExpiredToken" in storage.fault_reason(client("ExpiredToken"))
    assert storage.fault_reason(client("AccessDenied")) == "access denied"
    assert "credentials" in storage.fault_reason(NoCredentialsError())
    down = EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket/key.json")
    assert storage.fault_reason(down).startswith("the storage endpoint http://127.0.0.1:9 is not reachable")
    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/scene.zarr/c/0/1")
    assert storage.fault_reason(full) == "no space left on the device (/data/out/scene.zarr/c/0/1)"
    assert storage.fault_reason(OSError(errno.EROFS, "Read-only file system")) == "read-only file system"
    try:  # s3fs's translation keeps the service's code behind it
        raise PermissionError("denied") from client("InvalidAccessKeyId")
    except PermissionError as exc:
        assert "refused the credentials (InvalidAccessKeyId" in storage.fault_reason(exc)
    assert storage.fault_reason(ValueError("a bug")) is None
    with pytest.raises(Exception) as err, storage.faults("s3://b/out.zarr", "writing a tile's chunk"):
        raise full
    assert str(err.value) == ("s3://b/out.zarr: writing a tile's chunk: no space left on the device "
                              "(/data/out/scene.zarr/c/0/1)")
    with pytest.raises(ValueError), storage.faults("s3://b/x"):
        raise ValueError("not a storage fault: unchanged")


# --- object storage ----------------------------------------------------------------------------


def _wait_for_keys(client, bucket: str, prefix: str, proc, n: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
        if sum("/done-" in k for k in keys) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"no tiles written (exit {proc.poll()}): {proc.stderr.read() if proc.poll() else ''}")


@pytest.mark.slow
def test_endpoint_lost_mid_predict_is_one_line_and_the_rerun_resumes(sample_dir, clean, tmp_path, ray_tmp):
    """The S3 endpoint holding the outputs stops answering mid-job (a real server stopped): one line
    naming the URL and the endpoint, after botocore's retries; outputs not complete; once it is back,
    the same command resumes to the clean class map."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_ports(1)[0]
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="outage")
    env = geoseg_env(ray_tmp, AWS_ENDPOINT_URL=endpoint, GEOSEG_S3_ATTEMPTS="2")
    args = ["predict", str(sample_dir / "scene.tif"), "--out", "s3://outage/o", *PREDICT]
    try:
        proc = start_geoseg(args, env)
        _wait_for_keys(client, "outage", "o/.geoseg/scene/", proc, 3)
        server.stop()  # the endpoint is gone mid-job
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err
        line = _one_error_line(err)
        assert "s3://outage/o" in line and f"the storage endpoint {endpoint} is not reachable" in line, line
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()  # back (moto keeps its objects in this process)
        assert "o/scene.json" not in {o["Key"] for o in client.list_objects_v2(Bucket="outage")["Contents"]}
        rerun = start_geoseg(args, env)
        out, err = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, err
        record = json.loads(client.get_object(Bucket="outage", Key="o/scene.json")["Body"].read())
        assert record["status"] == "complete" and record["tiles"]["resumed"] > 0
        client.download_file("outage", "o/scene.tif", str(tmp_path / "scene.tif"))
        _same_classes(clean, tmp_path / "scene.tif")
    finally:
        server.stop()


@pytest.mark.slow
def test_credentials_revoked_mid_predict_is_one_line_and_new_ones_resume(s3, _moto_server, sample_dir, clean,
                                                                        tmp_path, ray_tmp):
    """The access key a job writes with is deleted mid-job (real IAM on the moto server): one line
    saying the credentials were refused; with a new key the same command resumes."""
    import boto3
    import requests

    iam = boto3.client("iam", endpoint_url=_moto_server)
    iam.create_user(UserName="writer")
    iam.put_user_policy(UserName="writer", PolicyName="rw", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": ["arn:aws:s3:::geoseg", "arn:aws:s3:::geoseg/*"]}],
    }))
    args = ["predict", str(sample_dir / "scene.tif"), "--out", "s3://geoseg/o", *PREDICT]

    def as_writer():
        key = iam.create_access_key(UserName="writer")["AccessKey"]
        env = geoseg_env(ray_tmp, AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"],
                   GEOSEG_S3_ATTEMPTS="2")
        return key, env, boto3.client("s3", endpoint_url=_moto_server, aws_access_key_id=key["AccessKeyId"],
                                      aws_secret_access_key=key["SecretAccessKey"])

    key, env, client = as_writer()
    requests.post(f"{_moto_server}/moto-api/reset-auth", data=b"0", timeout=10)  # IAM on from now
    try:
        proc = start_geoseg(args, env)
        _wait_for_keys(client, "geoseg", "o/.geoseg/scene/", proc, 3)
        requests.post(f"{_moto_server}/moto-api/reset-auth", data=b"inf", timeout=10)
        iam.delete_access_key(UserName="writer", AccessKeyId=key["AccessKeyId"])  # revoked
        new, env, client = as_writer()
        requests.post(f"{_moto_server}/moto-api/reset-auth", data=b"0", timeout=10)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err
        line = _one_error_line(err)
        assert "s3://geoseg/o" in line and "refused the credentials" in line, line
        assert key["SecretAccessKey"] not in err + out
        rerun = start_geoseg(args, env)
        out, err = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, err
        record = json.loads(client.get_object(Bucket="geoseg", Key="o/scene.json")["Body"].read())
        assert record["tiles"]["resumed"] > 0
        client.download_file("geoseg", "o/scene.tif", str(tmp_path / "scene.tif"))
        _same_classes(clean, tmp_path / "scene.tif")
    finally:
        requests.post(f"{_moto_server}/moto-api/reset-auth", data=b"inf", timeout=10)


# --- disks -----------------------------------------------------------------------------------


def _namespace() -> list[str]:
    """A command prefix that runs a script in a mount namespace of its own (root: ``unshare -m``;
    others: a user namespace too), or [] where the OS gives neither."""
    for prefix in (["unshare", "-m", "--propagation", "private"], ["unshare", "-r", "-m"]):
        try:
            ok = subprocess.run([*prefix, "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && "
                                 "umount $d && rmdir $d"], capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return prefix
    return []


DISK_SCRIPT = r"""
set -u
mount -t tmpfs -o size=${SIZE}k tmpfs "$DISK"
run() { "$PY" -m geoseg predict "$SCENE" --out "$DISK/o" $PREDICT > "$T/$1.out" 2> "$T/$1.err"; echo $? > "$T/$1.rc"; }
if [ "$FAULT" = full ]; then
  run first
else  # the disk turns read-only once some tiles are written
  "$PY" -m geoseg predict "$SCENE" --out "$DISK/o" $PREDICT > "$T/first.out" 2> "$T/first.err" &
  pid=$!
  for i in $(seq 1 1800); do
    [ "$(ls "$DISK/o/.geoseg/scene" 2>/dev/null | grep -c '^done-')" -ge 3 ] && break
    sleep 0.1
  done
  mount -o remount,ro "$DISK"
  wait $pid; echo $? > "$T/first.rc"
  mount -o remount,rw "$DISK"
fi
[ -e "$DISK/o/scene.json" ] && echo yes > "$T/complete_after_fault"
mount -o remount,size=262144k "$DISK"
run second
cp -r "$DISK/o" "$T/o"
umount "$DISK"
"""


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_disk_full_or_read_only_mid_predict_is_one_line_and_the_rerun_resumes(fault, sample_dir, clean,
                                                                             tmp_path, ray_tmp):
    """A real tmpfs under the outputs fills up (or is remounted read-only) mid-job: one line naming
    the path and what happened; with room again (writable again) the same command resumes to the
    clean class map."""
    prefix = _namespace()
    if not prefix:
        pytest.skip("this OS gives no mount namespace for a tmpfs of the test's own")
    disk = tmp_path / "disk"
    disk.mkdir()
    size = 256 if fault == "full" else 262144  # KiB: a full disk after a few dozen tiles' chunks
    env = geoseg_env(ray_tmp, PY=sys.executable, SCENE=str(sample_dir / "scene.tif"), DISK=str(disk), T=str(tmp_path),
               SIZE=str(size), FAULT=fault, PREDICT=" ".join(PREDICT))
    res = subprocess.run([*prefix, "bash", "-c", DISK_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    first_err = (tmp_path / "first.err").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "1", first_err
    line = _one_error_line(first_err)
    words = "no space left on the device" if fault == "full" else "read-only file system"
    assert words in line and str(disk / "o") in line, line
    assert not (tmp_path / "complete_after_fault").exists()  # nothing looks complete
    assert (tmp_path / "second.rc").read_text().strip() == "0", (tmp_path / "second.err").read_text()
    record = json.loads((tmp_path / "o" / "scene.json").read_text())
    assert record["status"] == "complete" and record["tiles"]["resumed"] > 0
    _same_classes(clean, tmp_path / "o" / "scene.tif")


# --- sizes ------------------------------------------------------------------------------------


def test_a_tile_larger_than_the_scene_is_clamped_and_recorded(ray_local, sample_dir, tmp_path):
    from geoseg.predict import PredictOptions, predict

    scene = str(sample_dir / "scene.tif")
    (rec,) = predict([scene], str(tmp_path / "huge"), PredictOptions(model="index", tile_size=100_000, halo=16))
    assert rec["parameters"]["tile_size"] == 100_000 and rec["parameters"]["tile_size_used"] == 640
    (ref,) = predict([scene], str(tmp_path / "ref"), PredictOptions(model="index", tile_size=640, halo=16))
    assert "tile_size_used" not in ref["parameters"]
    _same_classes(tmp_path / "ref" / "scene.tif", tmp_path / "huge" / "scene.tif")


def test_a_batch_that_cannot_fit_is_refused_at_planning(sample_dir, tmp_path):
    from geoseg.cli import main

    err = subprocess.run([sys.executable, "-m", "geoseg", "predict", str(sample_dir / "scene.tif"), "--out",
                          str(tmp_path / "o"), "--model", "index", "--tile-size", "512", "--batch-size", "100000"],
                         capture_output=True, text=True, timeout=120)
    assert err.returncode == 1
    line = _one_error_line(err.stderr)
    assert "--batch-size 100000" in line and "GiB" in line and "this machine's" in line
    assert not (tmp_path / "o" / "scene.zarr").exists()  # refused before any output
    code = main(["train", "--image", str(sample_dir / "scene.tif"), "--label", str(sample_dir / "labels.tif"),
                 "--out", str(tmp_path / "r"), "--chip-size", "512", "--batch-size", "100000"])
    assert code == 1


# --- interrupts --------------------------------------------------------------------------------


def _registered_checkpoints(run_dir) -> int:
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return 0
    return len(snap.get("checkpoint_results") or [])


@pytest.mark.slow
def test_train_interrupted_is_one_line(sample_dir, tmp_path, ray_tmp):
    """Ctrl-C (SIGINT) to ``geoseg train``: one line, exit 130, no run record; SIGTERM's counterpart,
    with the rerun that resumes and finishes, is tests/test_runtime.py's."""
    sig = signal.SIGINT
    run_dir = tmp_path / "run"
    args = ["train", "--image", str(sample_dir / "scene.tif"), "--label", str(sample_dir / "labels.tif"),
            "--out", str(run_dir), "--arch", "tinyfcn", "--epochs", "4", "--chip-size", "64", "--block-size", "128",
            "--chips-per-epoch", "16", "--batch-size", "8", "--workers", "1"]
    env = geoseg_env(ray_tmp)
    # as from a shell: SIGINT not ignored (a process inherits an ignored SIGINT, and Python then keeps it so)
    proc = start_geoseg(args, env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not _registered_checkpoints(run_dir):
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    what = "interrupted" if sig == signal.SIGINT else "terminated"
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    assert err.strip().splitlines()[-1] == f"geoseg: {what}; rerun the same command to resume", err
    assert "Traceback" not in err
    assert not (run_dir / "run.json").exists()
