"""Cluster definitions parse and name entrypoints that exist."""

import importlib
import pathlib
import shlex

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _entry_module(cmd: str) -> str:
    args = shlex.split(cmd)
    assert args[:2] == ["python", "-m"], cmd
    return args[2]


def test_launcher_yaml():
    cfg = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert any("geoseg" in c for c in cfg["setup_commands"])
    assert cfg["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_kuberay_manifests_name_real_entrypoints():
    cluster = yaml.safe_load((ROOT / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["workerGroupSpecs"]
    for name in ("predict", "train"):
        job = yaml.safe_load((ROOT / "cluster" / "kuberay" / f"rayjob-{name}.yaml").read_text())
        assert job["kind"] == "RayJob"
        module = _entry_module(job["spec"]["entrypoint"])
        assert module == f"workflows.{name}"
        assert importlib.util.find_spec(module) is not None
        assert job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]


def test_workflow_entrypoints_run_the_cli(tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "workflows.evaluate", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 0 and "prediction" in res.stdout
