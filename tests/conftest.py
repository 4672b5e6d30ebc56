"""Shared fixtures: a real local Ray, generated sample scenes, a real S3 endpoint."""

from __future__ import annotations

import os

import pytest

from commands import free_ports

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("RAY_ADDRESS", None)
# geoseg's cache (known model shapes) in a folder of this test session, inherited by Ray's
# workers: tests start cold and leave the user's ~/.cache alone
os.environ["GEOSEG_CACHE_DIR"] = __import__("tempfile").mkdtemp(prefix="geoseg-test-cache-")


# A real S3 HTTP endpoint (moto server) on loopback. The environment is set before
# any Ray starts, so Ray workers inherit it like a user's AWS_ENDPOINT_URL.
S3_PORT = free_ports(1)[0]
os.environ.update(
    {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
)
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_var, None)


@pytest.fixture(scope="session")
def _moto_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{S3_PORT}"
    server.stop()


@pytest.fixture()
def s3(_moto_server):
    """A boto3 S3 client on the moto server, with a fresh bucket ``geoseg``; state reset after."""
    import boto3
    import requests

    client = boto3.client("s3", endpoint_url=_moto_server)
    client.create_bucket(Bucket="geoseg")
    yield client
    requests.post(f"{_moto_server}/moto-api/reset", timeout=10)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """A small sample scene (scene.tif, labels.tif), made once per session."""
    from geoseg.data.sample import write_sample

    d = tmp_path_factory.mktemp("sample")
    write_sample(str(d), size=640, seed=3)
    return d


@pytest.fixture()
def ray_tmp():
    """A Ray temp folder of the test's own (short: Ray's socket paths must fit 107 bytes)."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="gs", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture()
def ray_local():
    """A real local Ray, started by geoseg as for a library user (never a stray cluster), shared by
    the tests that need one: a job's model runs in the driver on it unless actors are asked for."""
    import ray

    from geoseg.execution import runtime
    from geoseg.predict.job import PRELOAD

    if not runtime.owns_ray():
        runtime.shutdown()
        runtime.init_ray(None, preload=PRELOAD)
    yield ray


def _shutdown_ray() -> None:
    from geoseg.execution import runtime

    runtime.shutdown()  # geoseg's own local Ray too (its watchdog with it)


@pytest.fixture()
def ray_cluster():
    """A real 2-node Ray cluster (1 CPU per node) made with ray.cluster_utils.Cluster."""
    import ray
    from ray.cluster_utils import Cluster

    _shutdown_ray()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="ERROR")
    cluster.wait_for_nodes()
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture()
def multi_node():
    """A factory of multi-node local Rays: ``cluster, nodes = multi_node(head_cpus, workers)`` starts a
    ray.cluster_utils.Cluster (a head and ``workers`` one-CPU nodes) with the driver attached; torn down after."""
    import ray
    from ray.cluster_utils import Cluster

    made = []

    def make(head_cpus: float, workers: int):
        _shutdown_ray()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
        made.append(cluster)
        nodes = [cluster.add_node(num_cpus=1) for _ in range(workers)]
        ray.init(address=cluster.address, logging_level="ERROR")
        cluster.wait_for_nodes()
        return cluster, nodes

    yield make
    ray.shutdown()
    for cluster in made:
        cluster.shutdown()
