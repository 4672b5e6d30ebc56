"""``geoseg submit`` against a real Ray head started with ``ray start --head`` on loopback."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import rasterio

from commands import free_ports

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture()
def ray_head():
    """A separate Ray head (dashboard + Jobs API) on free loopback ports, still starting when the test
    begins (``ray start`` runs in the background); only its own processes are stopped."""
    ray_bin = pathlib.Path(sys.executable).with_name("ray")
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dash, client, mport, agent, agent_grpc, runtime_env_agent = free_ports(7)
    cmd = [
        str(ray_bin), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
        f"--metrics-export-port={mport}", f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env_agent}", "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # jobs run `python -m geoseg ...` with the head's PATH: this environment's python
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["RAY_metrics_report_interval_ms"] = "1000"  # custom metrics reach the exporter within a second
    starting = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        yield f"http://127.0.0.1:{dash}", mport
        assert starting.wait(timeout=180) == 0, starting.stdout.read()[-2000:]
    finally:
        if starting.poll() is None:
            starting.kill()
        out = subprocess.run(["pgrep", "-f", temp], capture_output=True, text=True).stdout.split()
        for pid in out:
            try:
                os.kill(int(pid), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
        time.sleep(2)
        for pid in subprocess.run(["pgrep", "-f", temp], capture_output=True, text=True).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_submit_predict_job(ray_head, sample_dir, tmp_path):
    """Submitted while the head is still starting: one line says geoseg waits for it, then the job runs."""
    ray_head, metrics_port = ray_head
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run(
        [sys.executable, "-m", "geoseg", "submit", "--address", ray_head, "--wait", "180", "--",
         "predict", str(sample_dir / "scene.tif"), "--out", str(out), "--model", "index", "--tile-size", "320"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env,
    )
    assert res.returncode == 0, res.stdout[-1500:]
    waiting = [ln for ln in res.stdout.splitlines() if ln.startswith("waiting up to 180 s (--wait) for the Ray head")]
    assert len(waiting) == 1, res.stdout[:1500]  # the head was not up yet: waited for, said once
    assert "submitted geoseg-predict-" in res.stdout and f"{ray_head}/#/jobs/" in res.stdout
    assert "SUCCEEDED" in res.stdout
    with rasterio.open(out / "scene.tif") as cog:
        assert cog.shape == (640, 640)
    assert (out / "scene.json").exists()

    # geoseg's custom metrics reached the node's Prometheus exporter (what the dashboard graphs)
    import requests

    # (the MPix/s gauge is live only: Ray drops a gauge shortly after its job stops setting it)
    wanted = ("geoseg_tiles_written", "geoseg_pixels_written", "geoseg_scenes_done", "geoseg_model_batch_seconds")
    deadline, text = time.time() + 60, ""
    while time.time() < deadline:
        text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        if all(w in text for w in wanted):
            break
        time.sleep(2)
    missing = [w for w in wanted if w not in text]
    assert not missing, f"metrics not exported: {missing}"
    tiles = [line for line in text.splitlines() if "geoseg_tiles_written" in line and not line.startswith("#")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in tiles) == 4  # 640x640 in 320-px tiles
    pixels = [line for line in text.splitlines() if "geoseg_pixels_written" in line and not line.startswith("#")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in pixels) == 640 * 640
    # the names and the tag the Grafana dashboard (cluster/grafana) queries
    for name in ("ray_geoseg_tiles_written_total", "ray_geoseg_pixels_written_total", "ray_geoseg_scenes_done_total",
                 "ray_geoseg_model_batch_seconds_bucket"):
        assert any(line.startswith(name + "{") and 'geoseg_job="' in line for line in text.splitlines()), name
