"""``geoseg submit``: run a geoseg command as a Ray job on a cluster (Ray Jobs SDK)."""

from __future__ import annotations

import os
import shlex
import sys
import time
import uuid

from geoseg.data import storage
from geoseg.errors import InputError

EXCLUDES = [".venv", ".git", "geoseg-demo", "**/__pycache__", ".pytest_cache", ".hypothesis", "*.tif", "*.zarr"]


class Patience:
    """Waiting for a Ray head that has just started (its dashboard not listening yet, or its job agent
    not registered: "No available agent to submit job"), for at most ``wait`` seconds, with one
    progress line; :meth:`again` says whether to try once more."""

    def __init__(self, address: str, wait: float):
        self.address, self.wait, self.deadline, self.said = address, wait, time.time() + wait, False

    @staticmethod
    def passing(exc: BaseException) -> bool:
        """A head that is starting: not reachable yet, no job agent yet, or a 5xx answer."""
        text = str(exc)
        return isinstance(exc, ConnectionError) or "No available agent" in text or "status code 5" in text

    def again(self, exc: BaseException) -> bool:
        if not self.passing(exc) or time.time() >= self.deadline:
            return False
        if not self.said:
            print(f"waiting up to {self.wait:g} s (--wait) for the Ray head at {self.address} to take jobs: "
                  f"{str(exc).splitlines()[0][:120]}", flush=True)
            self.said = True
        time.sleep(2)
        return True


def submit(address: str | None, args: list[str], working_dir: str = ".", follow: bool = True,
           wait: float = 60.0) -> int:
    """Submit ``geoseg ARGS`` as a Ray job; print its id and dashboard URL; return its exit code. A head
    that is starting is waited for, at most ``wait`` seconds (:class:`Patience`)."""
    if not os.environ.get("RAY_AUTH_MODE") and os.path.exists(os.path.expanduser("~/.ray/auth_token")):
        os.environ["RAY_AUTH_MODE"] = "token"  # clusters started by `ray start --head` use token auth
    from ray.job_submission import JobStatus, JobSubmissionClient  # reads RAY_AUTH_MODE on import

    if not args:
        raise InputError("nothing to submit: give a geoseg command after --, e.g. -- predict scene.tif ...")
    if args[0] in ("submit", "demo"):
        raise InputError(f"geoseg {args[0]} cannot be submitted as a job")
    address = address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    if "://" not in address:
        address = f"http://{address}"
    patience = Patience(address, wait)
    while True:
        try:
            client = JobSubmissionClient(address)
            break
        except Exception as exc:  # noqa: BLE001 - connection problems are the user's to fix
            if patience.again(exc):
                continue
            waited = f"; waited {wait:g} s" if patience.said else ""
            raise InputError(f"--address {address}: cannot reach the Ray Jobs API "
                             f"({str(exc).splitlines()[0]}{waited})") from None
    job_id = f"geoseg-{args[0]}-{uuid.uuid4().hex[:8]}"
    entrypoint = f"python -m geoseg {shlex.join(args)}"
    while True:
        try:
            client.submit_job(
                entrypoint=entrypoint,
                submission_id=job_id,
                runtime_env={"working_dir": working_dir, "excludes": EXCLUDES, "env_vars": storage.worker_env()},
            )
            break
        except (RuntimeError, ConnectionError) as exc:
            if patience.again(exc):  # a freshly started head answers 500 until its job agent is up
                continue
            raise InputError(f"--address {address}: job not accepted ({str(exc).splitlines()[0]})") from None
    print(f"submitted {job_id}: {entrypoint}\ndashboard: {address}/#/jobs/{job_id}", flush=True)
    if not follow:
        return 0
    seen = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if len(logs) > seen:
            sys.stdout.write(logs[seen:])
            sys.stdout.flush()
            seen = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            print(f"job {job_id}: {status.value}")
            return 0 if status == JobStatus.SUCCEEDED else 1
        time.sleep(1.0)
