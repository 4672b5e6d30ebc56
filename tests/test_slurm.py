"""cluster/slurm/geoseg.sbatch on a real SLURM: Debian's slurmctld and two slurmd (and munged for
their authentication), two nodes of this machine on loopback, started by a fixture. A predict job of
two nodes submitted with sbatch runs through the script's Ray head and its worker node and writes
its map; a cancelled job stops its Ray and leaves no output that looks complete."""

from __future__ import annotations

import getpass
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import rasterio

from commands import free_ports

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cluster" / "slurm" / "geoseg.sbatch"
DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")


def _until(check, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def slurm():
    """munged, slurmctld and two slurmd (nodes gs1 and gs2, both this machine on 127.0.0.1), in a
    folder of their own with free ports; the environment that points sbatch, squeue and scancel at them."""
    missing = [d for d in DAEMONS if not os.path.exists(d)]
    if missing or os.geteuid() != 0:
        pytest.skip(f"SLURM needs Debian's slurm-wlm and munge, installed by scripts/setup.sh as root "
                    f"(missing: {', '.join(missing) or 'root'})")
    d = pathlib.Path(tempfile.mkdtemp(prefix="sl", dir="/tmp"))
    for sub in ("state", "spool", "log"):
        (d / sub).mkdir()
    (d / "munge.key").write_bytes(os.urandom(1024))
    os.chmod(d / "munge.key", 0o600)
    sock = d / "munge.sock"
    subprocess.run(["/usr/sbin/munged", "--force", f"--socket={sock}", f"--key-file={d / 'munge.key'}",
                    f"--log-file={d / 'log' / 'munged.log'}", f"--pid-file={d / 'munged.pid'}",
                    f"--seed-file={d / 'munged.seed'}"], check=True, timeout=30)
    host = socket.gethostname().split(".")[0]
    ctld, port1, port2 = free_ports(3)
    user = getpass.getuser()
    (d / "slurm.conf").write_text(f"""ClusterName=geosegtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
SlurmctldPort={ctld}
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d / 'spool'}/%n
SlurmctldPidFile={d / 'slurmctld.pid'}
SlurmdPidFile={d / 'slurmd-%n.pid'}
SlurmctldLogFile={d / 'log' / 'slurmctld.log'}
SlurmdLogFile={d / 'log' / 'slurmd-%n.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=30
NodeName=gs1 NodeHostname={host} NodeAddr=127.0.0.1 Port={port1} CPUs={os.cpu_count()} RealMemory=2000 State=UNKNOWN
NodeName=gs2 NodeHostname={host} NodeAddr=127.0.0.1 Port={port2} CPUs={os.cpu_count()} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=gs1,gs2 Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(d / "slurm.conf")}
    env.pop("RAY_ADDRESS", None)
    subprocess.run(["/usr/sbin/slurmctld", "-i"], check=True, timeout=30, env=env)
    for node in ("gs1", "gs2"):
        (d / "spool" / node).mkdir(parents=True)
        subprocess.run(["/usr/sbin/slurmd", "-N", node], check=True, timeout=30, env=env)
    try:
        _until(lambda: subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True,
                                      env=env).stdout.split() == ["idle", "idle"], 60, "the two nodes to be idle")
        yield env, d
    finally:
        for pidfile in ("slurmd-gs1.pid", "slurmd-gs2.pid", "slurmctld.pid", "munged.pid"):
            try:
                os.kill(int((d / pidfile).read_text().split()[0]), 15)
            except (OSError, ValueError):
                pass
        time.sleep(1)
        shutil.rmtree(d, ignore_errors=True)


def _job_env(env: dict, tmp: pathlib.Path, ray_tmp: str) -> dict:
    """The script's settings: free loopback ports for the head's services (a worker node's are Ray's
    own choice; both nodes share this machine), a Ray folder of the test's."""
    gcs, dash, client, mport, agent, agent_grpc, rt_agent = free_ports(7)
    return {**env, "GEOSEG": str(pathlib.Path(sys.executable).with_name("geoseg")), "GEOSEG_HEAD_IP": "127.0.0.1",
            "GEOSEG_RAY_PORT": str(gcs), "GEOSEG_DASHBOARD_PORT": str(dash), "GEOSEG_RAY_TMP": ray_tmp,
            "GEOSEG_NODES_WAIT": "120", "GEOSEG_RAY_ARGS": "--object-store-memory=200000000",
            "GEOSEG_RAY_HEAD_ARGS": f"--ray-client-server-port={client} --metrics-export-port={mport} "
                                    f"--dashboard-agent-listen-port={agent} --dashboard-agent-grpc-port={agent_grpc} "
                                    f"--runtime-env-agent-port={rt_agent}"}


def _ray_processes(ray_tmp: str) -> list[str]:
    return subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True).stdout.split()


@pytest.mark.slow
def test_sbatch_runs_a_predict_job_on_two_nodes_through_its_ray_head(slurm, sample_dir, tmp_path):
    env, _ = slurm
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    os.rmdir(ray_tmp)  # the script's Ray makes it, and removes it at the end
    job = _job_env(env, tmp_path, ray_tmp)
    out = tmp_path / "maps"
    res = subprocess.run(["sbatch", "--parsable", "--wait", "--nodes=2", f"--output={tmp_path}/job-%j.out", str(SCRIPT),
                          "predict", str(sample_dir / "scene.tif"), "--out", str(out), "--model", "index",
                          "--tile-size", "320"], capture_output=True, text=True, timeout=400, env=job, cwd=tmp_path)
    job_id = res.stdout.strip().split(";")[0]
    log = (tmp_path / f"job-{job_id}.out").read_text() if job_id else ""
    assert res.returncode == 0, (res.stderr, log[-3000:])
    assert "2 Ray node(s) up" in log and f"geoseg predict {sample_dir / 'scene.tif'}" in log
    assert "geoseg exited with 0" in log and "Ray stopped on 2 node(s)" in log
    with rasterio.open(out / "scene.tif") as cog:  # the map, whole
        assert cog.shape == (640, 640) and cog.read(1).max() > 0
    assert (out / "scene.json").exists()
    assert not _ray_processes(ray_tmp) and not os.path.exists(ray_tmp)  # Ray gone with the job


@pytest.mark.slow
def test_scancel_stops_the_job_and_its_ray(slurm, tmp_path):
    """A job cancelled while it predicts: its Ray processes are gone, and the scene has no record
    (an output never looks complete when it is not)."""
    from geoseg.data.sample import write_sample

    env, _ = slurm
    scene = write_sample(str(tmp_path / "big"), size=2560, seed=2)["scene"]
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    os.rmdir(ray_tmp)
    job = _job_env(env, tmp_path, ray_tmp)
    res = subprocess.run(["sbatch", "--parsable", "--nodes=1", f"--output={tmp_path}/job-%j.out", str(SCRIPT),
                          "predict", scene,
                          "--out", str(tmp_path / "maps"), "--model", "index", "--tile-size", "128", "--halo", "32"],
                         capture_output=True, text=True, timeout=60, env=job, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip().split(";")[0]
    log = tmp_path / f"job-{job_id}.out"
    _until(lambda: log.exists() and "geoseg predict" in log.read_text(), 180, "the job to start geoseg")
    assert _ray_processes(ray_tmp)
    time.sleep(3)
    subprocess.run(["scancel", job_id], check=True, timeout=30, env=env)
    _until(lambda: not subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True,
                                      env=env).stdout.strip(), 120, "the job to leave the queue")
    _until(lambda: not _ray_processes(ray_tmp), 60, "the job's Ray processes to stop")
    text = log.read_text()
    assert "Ray stopped on 1 node(s)" in text, text[-3000:]
    assert not (tmp_path / "maps" / "scene.json").exists()  # not complete: no record
