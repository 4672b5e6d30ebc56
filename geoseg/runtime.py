"""Connecting to Ray: an embedded local Ray, or a cluster by address."""

from __future__ import annotations

import logging
import os

from geoseg import storage


def init_ray(address: str | None = None) -> None:
    """Attach to ``address`` / ``RAY_ADDRESS``, or start a local Ray.

    Storage settings (S3 endpoint, credentials from the environment) reach the
    workers through the job's ``runtime_env``.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ  # a Ray job: its runtime_env is already set
    env = {"env_vars": storage.worker_env()} if storage.worker_env() and not in_job else None
    kwargs = dict(runtime_env=env, logging_level=logging.WARNING, log_to_driver=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(**kwargs)


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))
