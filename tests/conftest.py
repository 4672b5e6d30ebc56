"""Shared fixtures: a real local Ray, generated sample scenes, a real S3 endpoint."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """A small sample scene (scene.tif, labels.tif), made once per session."""
    from geoseg.sample import write_sample

    d = tmp_path_factory.mktemp("sample")
    write_sample(str(d), size=640, seed=3)
    return d


@pytest.fixture()
def ray_local():
    """A real local Ray (2 CPUs), shared by the tests that need one."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray


@pytest.fixture()
def ray_cluster():
    """A real 2-node Ray cluster (1 CPU per node) made with ray.cluster_utils.Cluster."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="ERROR")
    cluster.wait_for_nodes()
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()
