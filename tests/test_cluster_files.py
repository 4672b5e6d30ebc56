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
    for name in ("predict", "train", "evaluate"):
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
    res = subprocess.run([sys.executable, "-m", "workflows.composite", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 0 and "--window" in res.stdout


def _exported_names() -> dict[str, list[str]]:
    """The Prometheus names of geoseg's Ray metrics, from their definitions in the code
    (Ray exports a Counter as ray_<name>_total, a Histogram as _bucket/_sum/_count)."""
    import re

    source = (ROOT / "geoseg" / "predict" / "job.py").read_text()
    suffixes = {"Counter": ["_total"], "Gauge": [""], "Histogram": ["_bucket", "_sum", "_count"]}
    return {name: [f"ray_{name}{s}" for s in suffixes[kind]]
            for kind, name in re.findall(r'\b(Counter|Gauge|Histogram)\(\s*"(geoseg_[a-z_]+)"', source)}


def test_grafana_dashboard_plots_every_geoseg_metric_and_real_ray_ones():
    import json
    import re

    import ray

    dash = json.loads((ROOT / "cluster" / "grafana" / "geoseg-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\bray_[a-z0-9_]+", e)}
    defined = _exported_names()
    assert len(defined) >= 6  # tiles, pixels, scenes done / failed, bad tiles, MPix/s, batch time
    for name, exported in defined.items():
        assert used & set(exported), f"{name} is not plotted"
    known = {n for names in defined.values() for n in names}
    assert {m for m in used if m.startswith("ray_geoseg_")} <= known
    assert all("$geoseg_job" in e for e in exprs if "ray_geoseg_" in e)
    # Ray's own metrics: names its bundled dashboards use in this Ray version
    ray_panels = pathlib.Path(ray.__file__).parent / "dashboard" / "modules" / "metrics" / "dashboards"
    ray_text = "".join(p.read_text() for p in ray_panels.glob("*.py"))
    for m in used - known:
        assert m in ray_text, f"{m}: not a metric Ray's dashboards know"
    assert {v["name"] for v in dash["templating"]["list"]} >= {"datasource", "geoseg_job", "SessionName"}
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for word in ("mpix/s", "tiles", "scenes", "batch time", "cpu", "gpu", "memory"):
        assert word in titles


def _images(spec) -> list[tuple[str, str]]:
    """``(group, image)`` of every container of a RayCluster spec."""
    out = [("head", c["image"]) for c in spec["headGroupSpec"]["template"]["spec"]["containers"]]
    for group in spec["workerGroupSpecs"]:
        out += [(group["groupName"], c["image"]) for c in group["template"]["spec"]["containers"]]
    return out


def test_image_pins_agree_across_dockerfile_constraints_manifests_and_launcher():
    """One Ray version, one Python, one torch, one geoseg version: the Dockerfile builds the tag the
    manifests and the launcher name, from constraints.txt's pins."""
    import re

    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)
    docker = (ROOT / "cluster" / "docker" / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", docker, re.M))
    assert args["RAY_VERSION"] == pins["ray"] and args["PYTHON"] == "py311"
    assert "-c constraints.txt" in docker and "USER ray" in docker  # the pins, and Ray's non-root user
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert re.search(r"torch>=[\d.]+,<=" + re.escape(pins["torch"]), (ROOT / "pyproject.toml").read_text())
    build = (ROOT / "scripts" / "build-image.sh").read_text()
    assert "cluster/docker/Dockerfile" in build
    want = {v: f"geoseg:{version}-ray{pins['ray']}-{args['PYTHON']}-{v}" for v in ("cpu", "gpu")}
    names = ["raycluster.yaml", "rayjob-predict.yaml", "rayjob-train.yaml", "rayjob-evaluate.yaml"]
    for name in names:
        doc = yaml.safe_load((ROOT / "cluster" / "kuberay" / name).read_text())
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        assert spec["rayVersion"] == pins["ray"], name
        for group, image in _images(spec):
            assert image == want["gpu" if group == "gpu" else "cpu"], (name, group, image)
    launcher = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    assert launcher["docker"]["image"] == want["gpu"] and launcher["docker"]["worker_image"] == want["gpu"]
    # the Python the image runs is the one the project installs for
    assert re.search(r'requires-python = ">=3\.11"', (ROOT / "pyproject.toml").read_text())
