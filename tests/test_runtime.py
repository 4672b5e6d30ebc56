"""Ray connection and driver failures: a local Ray whatever the machine's address file says,
nothing left running after the driver ends (even by SIGKILL), SIGTERM as one line, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import rasterio


def _processes_of(tmp: str) -> list[psutil.Process]:
    """Processes started for a geoseg run whose Ray temp folder is ``tmp`` (they inherit its environment)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("RAY_TMPDIR") == tmp and p.pid != os.getpid():
                found.append(p)
        except psutil.Error:
            pass
    return found


def _wait_gone(tmp: str, timeout: float = 30) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = _processes_of(tmp)
        if not left:
            return []
        time.sleep(0.5)
    return _processes_of(tmp)


def _geoseg(args, tmp, **kw):
    env = {**os.environ, "RAY_TMPDIR": tmp, "GEOSEG_PROGRESS_S": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "geoseg", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _dead_address_file(tmp: str) -> None:
    """What a killed ``ray start --head`` leaves: an address file naming a cluster that is gone."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.makedirs(os.path.join(tmp, "ray"), exist_ok=True)
    with open(os.path.join(tmp, "ray", "ray_current_cluster"), "w") as f:
        f.write(f"127.0.0.1:{port}")


def _wait_for_tiles(out, stem: str, proc, n: int = 1, timeout: float = 180) -> None:
    progress = out / ".geoseg" / stem
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists() and sum(n.startswith("done-") for n in os.listdir(progress)) >= n:
            return
        time.sleep(0.1)
    err = proc.stderr.read() if proc.poll() is not None else ""
    raise AssertionError(f"no tiles written (exit {proc.poll()}): {err}")


PREDICT = ["--model", "index", "--tile-size", "64", "--halo", "8", "--batch-size", "2"]


def test_ray_address_env_unreachable_fails_fast(sample_dir, tmp_path, ray_tmp):
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9", "RAY_TMPDIR": ray_tmp}
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "geoseg", "predict", str(sample_dir / "scene.tif"), "--out",
                          str(tmp_path / "o"), "--model", "index"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1 and time.monotonic() - t0 < 60
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert "Ray cluster at 127.0.0.1:9 is not reachable" in res.stderr
    assert not (tmp_path / "o").exists()  # refused before any output


def test_sigkill_mid_predict_leaves_nothing_running_and_rerun_resumes(ray_local, sample_dir, tmp_path, ray_tmp):
    """With a dead cluster in the machine's address file (what a killed ``ray start`` leaves),
    geoseg runs on its own local Ray; SIGKILLed mid-job, it leaves no Ray process behind,
    and the rerun resumes to the output of a clean run, quietly."""
    from geoseg.predict import PredictOptions, predict

    scene = str(sample_dir / "scene.tif")
    predict([scene], str(tmp_path / "clean"), PredictOptions(model="index", tile_size=64, halo=8, batch_size=2))
    _dead_address_file(ray_tmp)

    args = ["predict", scene, "--out", str(tmp_path / "o"), *PREDICT]
    proc = _geoseg(args, ray_tmp)
    _wait_for_tiles(tmp_path / "o", "scene", proc)
    started = [p for p in _processes_of(ray_tmp) if p.pid != proc.pid]
    assert any("raylet" in " ".join(p.cmdline()) for p in started)
    proc.kill()  # SIGKILL: no handler runs in the driver
    proc.wait(timeout=30)
    assert _wait_gone(ray_tmp) == []  # the reaper stopped Ray's processes, agents included
    assert not (tmp_path / "o" / "scene.json").exists()  # never marked complete

    t0 = time.monotonic()
    rerun = _geoseg(args, ray_tmp)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert time.monotonic() - t0 < 150  # a plain ray.init() would try the dead address for minutes
    rec = json.loads((tmp_path / "o" / "scene.json").read_text())
    assert rec["status"] == "complete" and rec["tiles"]["resumed"] > 0 and "resuming" in out
    with rasterio.open(tmp_path / "clean" / "scene.tif") as a, rasterio.open(tmp_path / "o" / "scene.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert "Traceback" not in err and "core_worker.cc" not in err and "WARNING" not in err  # no Ray noise
    assert "tiles (100%)" in err  # the progress display, as plain lines in a log
    assert _wait_gone(ray_tmp) == []


def test_sigterm_is_one_line_and_stops_ray(sample_dir, tmp_path, ray_tmp):
    proc = _geoseg(["predict", str(sample_dir / "scene.tif"), "--out", str(tmp_path / "o"), *PREDICT], ray_tmp)
    _wait_for_tiles(tmp_path / "o", "scene", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "geoseg: terminated; rerun the same command to resume"
    assert "Traceback" not in err and "SIGTERM" not in err  # no Ray C++ signal dump
    assert not (tmp_path / "o" / "scene.json").exists()
    assert _wait_gone(ray_tmp) == []


def _registered_checkpoints(run_dir) -> int:
    """Checkpoints Ray Train has recorded in the run's snapshot (what a rerun restores from)."""
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return 0
    return len(snap.get("checkpoint_results") or [])


@pytest.mark.slow
def test_sigterm_mid_train_is_one_line_then_rerun_finishes_from_checkpoint(sample_dir, tmp_path, ray_tmp):
    """SIGTERM to ``geoseg train`` (a scheduler stopping the job): one line, exit 143, nothing of Ray
    left running; the rerun says where it resumes and finishes the run (SIGINT: test_midjob_faults)."""
    run_dir = tmp_path / "run"
    args = ["train", "--image", str(sample_dir / "scene.tif"), "--label", str(sample_dir / "labels.tif"),
            "--out", str(run_dir), "--arch", "tinyfcn", "--epochs", "4", "--chip-size", "64", "--block-size", "128",
            "--chips-per-epoch", "24", "--batch-size", "8", "--workers", "1"]
    proc = _geoseg(args, ray_tmp)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if _registered_checkpoints(run_dir):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "geoseg: terminated; rerun the same command to resume", err
    assert "Traceback" not in err
    assert _wait_gone(ray_tmp) == []
    assert not (run_dir / "run.json").exists()

    rerun = _geoseg(args, ray_tmp)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    resumed = [ln for ln in out.splitlines() if ln.startswith("resuming from the checkpoint of epoch")]
    assert len(resumed) == 1, out
    assert "RayTrainWorker" not in out + err  # geoseg's lines, without Ray's prefixes
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["last"]["epoch"] == 3 and summary["resumed"]["epoch"] >= 0
    assert f"epoch {summary['resumed']['epoch']} " in resumed[0]
    cache = summary["input"]["chip_cache"]  # the first run's chip cache serves the rerun: nothing decoded again
    assert cache["reused"] == cache["blocks"] > 0 and cache["built"] == 0
    from geoseg.models import checkpoint

    latest = sorted(p for p in os.listdir(run_dir) if p.startswith("checkpoint_") and (run_dir / p).is_dir())[-1]
    _, meta, state = checkpoint.load(str(run_dir / latest), with_state=True)
    assert meta.epoch == 3 and meta.extra["resumed_at"] >= 1
    assert [h["epoch"] for h in json.loads(state["history"])] == [0, 1, 2, 3]  # what curves.png plots
    # pictures of the whole run (the history survives the resume), written into the run folder
    from PIL import Image

    assert summary["pictures"] == {"curves": str(run_dir / "curves.png"),
                                   "val_quicklook": str(run_dir / "val_quicklook.png")}
    with Image.open(run_dir / "curves.png") as png:
        assert png.size == (1500, 420)
    with Image.open(run_dir / "val_quicklook.png") as png:
        quick = np.asarray(png.convert("RGB"))
    # four panels of one validation block (--block-size 128) side by side, then the legend
    assert quick.shape[0] == 128 + 32 and quick.shape[1] > 4 * 128
    assert len(np.unique(quick.reshape(-1, 3), axis=0)) > 20  # a picture, not a blank


def test_rays_worker_count_warning_is_not_shown_without_verbose(ray_local, capfd):
    """The raylet's words reach the driver two ways, both Ray's own: its log lines through Ray's
    dispatcher, and the errors it publishes through ``listen_error_messages``, which calls
    ``print_to_stdstream`` (the warning about many worker processes that train and the demo showed).
    That warning is dropped either way; a worker killed for memory is still said."""
    from ray._private import worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from geoseg.execution import runtime

    many = ("WARNING: 8 PYTHON worker processes have been started on node: abc with address: 127.0.0.1, which is "
            "4x the maximum expected startup concurrency (2).")
    oom = "A worker died or was killed while executing a task by an unexpected system error (out of memory)"
    base = {"ip": "127.0.0.1", "pid": "raylet", "task_name": None, "actor_name": None, "job": "01000000"}
    try:
        runtime._filter_worker_lines(verbose=False)
        dispatcher.emit({**base, "is_err": True, "lines": [many]})
        dispatcher.emit({**base, "is_err": True, "lines": [oom]})
        ray_worker.print_to_stdstream({"lines": [many], "pid": "raylet", "is_err": False}, ignore_prefix=False)
        ray_worker.print_to_stdstream({"lines": [oom + " again"], "pid": "raylet", "is_err": False},
                                      ignore_prefix=False)
        err = capfd.readouterr()
        shown = err.out + err.err
        assert "out of memory" in shown and "out of memory) again" in shown
        assert "PYTHON worker processes" not in shown
        runtime._filter_worker_lines(verbose=True)  # --verbose: everything
        ray_worker.print_to_stdstream({"lines": [many.replace("8 PYTHON", "9 PYTHON")], "pid": "raylet",
                                       "is_err": False}, ignore_prefix=False)
        err = capfd.readouterr()
        assert "9 PYTHON worker processes" in err.out + err.err
    finally:
        runtime._filter_worker_lines(verbose=False)
