"""Connecting to Ray: an embedded local Ray that geoseg owns, or a cluster by address.

* No ``--address`` and no ``RAY_ADDRESS``: geoseg starts its own local Ray
  (``address="local"``), whatever address file an earlier ``ray start`` left in
  the temp folder (a plain ``ray.init()`` would join that cluster, or hang for
  minutes when it is dead).
* ``--address`` / ``RAY_ADDRESS``: geoseg joins that cluster, after checking
  within seconds that something listens there (one clear line otherwise).

A local Ray that geoseg started is stopped when the command ends, on SIGINT and
SIGTERM, and, after a SIGKILL of the driver, by a small watchdog process
(:mod:`geoseg.execution.reaper`) that stops every process the driver had started.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading

from geoseg.data import storage
from geoseg.execution.tasks import cause_of
from geoseg.console import RAYLET_NOISE, WORKER_MARK
from geoseg.errors import InputError

CONNECT_TIMEOUT_S = 5.0
# Without --verbose: no progress bars from Ray Data in the workers (training chips).
QUIET_WORKER_ENV = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
# Lines that geoseg's own code prints in Ray workers start with this mark. The
# driver shows them without Ray's "(RayTrainWorker pid=...)" prefix; without
# --verbose, the other lines workers write (Ray Train's and Ray Data's logs)
# stay in Ray's log files.
_state: dict = {"owned": None, "reaper": None}  # owned: the GCS address of the local Ray geoseg started


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so everything unwinds the same way."""


def requested_address(address: str | None) -> str | None:
    """The cluster to join: ``address``, else ``RAY_ADDRESS``; None for a local Ray."""
    address = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    return None if address in ("", "local") else address


def _host_port(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port``, ``ray://host:port`` or ``auto`` (the address file)."""
    if address == "auto":
        from ray._private.utils import read_ray_address

        found = read_ray_address()
        if not found:
            raise InputError("--address auto: no running Ray cluster is recorded on this machine")
        address = found
    rest = address.split("://", 1)[1] if "://" in address else address
    rest = rest.split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--address {address!r}: expected HOST:PORT or ray://HOST:PORT")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in one line, within ``timeout`` seconds, when nothing listens at ``address``."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"Ray cluster at {address} is not reachable ({reason}); "
                         "check --address / RAY_ADDRESS, or leave both unset for a local Ray") from None


def check_address(address: str | None) -> None:
    """Before any work: a cluster asked for (``--address`` / ``RAY_ADDRESS``) must be reachable."""
    target = requested_address(address)
    if target and not ray_connected():
        check_reachable(target)


def ray_connected() -> bool:
    """True once this process has started or joined Ray."""
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


IDLE_WORKER_MS = 30_000  # how long a local Ray keeps an idle worker beyond one per CPU


def init_ray(address: str | None = None, verbose: bool | None = None, preload: tuple[str, ...] = ()) -> None:
    """Join ``address`` / ``RAY_ADDRESS``, or start a local Ray that geoseg owns.

    On a cluster, storage settings (S3 endpoint, credentials from the environment)
    reach the workers through the job's ``runtime_env``. A local Ray's processes
    inherit this process's environment instead: with no ``runtime_env``, the
    workers that Ray starts while it starts up serve the job (a model actor starts
    on one at once), where a ``runtime_env`` would have Ray start new ones. Ray's
    dashboard is started with a local Ray only when asked (``--dashboard``): it
    costs seconds of start-up and CPU while the job runs. A local Ray's workers
    import the modules ``preload`` names as they start (Ray's
    ``preload_python_modules``), while Ray's start leaves the CPUs idle, instead of
    when the job's first task or actor lands on them; and a worker beyond one per CPU
    (fractional-CPU tasks: planning, reads, writes, scenes' completions) is kept for
    ``IDLE_WORKER_MS`` idle, not Ray's 1 s: else a job of many scenes starts workers, and
    imports geoseg, rasterio and zarr in each, over and over (measured: a job of 100 small
    scenes 20.4 s -> 15.9 s on 2 cores).
    """
    import ray

    if ray.is_initialized():
        return
    verbose = is_verbose() if verbose is None else verbose
    target = requested_address(address)
    quiet_ray(verbose)
    kwargs = dict(logging_level=logging.INFO if verbose else logging.ERROR, log_to_driver=True)
    if target:
        check_reachable(target)
        in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ  # a Ray job: its runtime_env is already set
        worker_env = {**storage.worker_env(), **({} if verbose else QUIET_WORKER_ENV),
                      **{k: os.environ[k] for k in ("GEOSEG_PROGRESS_S",) if k in os.environ}}
        env = {"env_vars": worker_env} if worker_env and not in_job else None
        ray.init(address=target, runtime_env=env, **kwargs)
    else:
        # its workers inherit this environment: quiet_ray's settings included
        config = {"idle_worker_killing_time_threshold_ms": IDLE_WORKER_MS}
        if preload:
            config["preload_python_modules"] = list(preload)
        ray.init(address="local", include_dashboard=wants_dashboard(), _system_config=config, **kwargs)
        _state["owned"] = ray.get_runtime_context().gcs_address
        _state["reaper"] = _start_reaper()
    quiet_ray(verbose)  # again: importing Ray Data configured its console handler
    _filter_worker_lines(verbose)
    handle_sigterm()


def owns_ray() -> bool:
    """True when geoseg started the Ray it runs on (a local one: no autoscaler will add nodes);
    False on any other, a cluster joined after geoseg's own was shut down by others included."""
    if not (_state["owned"] and ray_connected()):
        return False
    return sys.modules["ray"].get_runtime_context().gcs_address == _state["owned"]


def require_gpus(asked: float, what: str) -> None:
    """A local Ray without GPUs would wait for one forever: refuse in one line instead."""
    if asked > 0 and owns_ray() and cluster_gpus() == 0:
        raise InputError(f"{what} asks for GPUs, but this machine's Ray sees none (no CUDA device); "
                         "drop it, or run on a cluster with GPU nodes (--address)")


def shutdown() -> None:
    """Stop the local Ray that geoseg started (a joined cluster is only disconnected)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    reaper = _state.get("reaper")
    if reaper is not None:
        try:
            reaper.stdin.close()  # the reaper stops whatever is left, then exits
        except OSError:
            pass
        _state["reaper"] = None
    _state["owned"] = None


def is_verbose() -> bool:
    return os.environ.get("GEOSEG_VERBOSE", "") not in ("", "0")


def wants_dashboard() -> bool:
    """``--dashboard`` / ``GEOSEG_DASHBOARD=1``: a local Ray also starts Ray's dashboard."""
    return os.environ.get("GEOSEG_DASHBOARD", "") not in ("", "0")


def quiet_ray(verbose: bool) -> None:
    """Ray's own warnings only where they mean something to the user.

    Ray Data's progress bars are replaced by geoseg's progress line; its
    execution logs, the actor-restart warnings and Ray Train's reporter go to
    Ray's log files (``--verbose`` shows them here too). Colour codes only on a
    terminal.
    """
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        os.environ.setdefault("NO_COLOR", "1")
    if verbose:
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    try:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    except Exception:  # noqa: BLE001 - older Ray: defaults stay
        pass
    for name in ("ray", "ray.data", "ray.train", "ray.tune", "ray.util"):
        log = logging.getLogger(name)
        for handler in log.handlers:  # console handlers only: Ray's log files keep everything
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                # a failed job is reported by geoseg, in one line: not by Ray Data's traceback too
                handler.setLevel(logging.CRITICAL if name == "ray.data" else logging.ERROR)
        if name != "ray.data":  # Ray Data's file handler wants its records
            log.setLevel(logging.ERROR)


def _filter_worker_lines(verbose: bool) -> None:
    """Worker output on the driver's console: geoseg's marked lines, unprefixed; the rest only with
    --verbose. The raylet's words reach the driver two ways, its log lines (Ray's dispatcher) and the
    errors it publishes (``listen_error_messages`` -> ``print_to_stdstream``, such as the warning about
    many worker processes): both pass :data:`~geoseg.console.RAYLET_NOISE` first."""
    try:
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # another Ray: its default printing stays
        return
    printer = getattr(ray_worker.print_to_stdstream, "__wrapped__", ray_worker.print_to_stdstream)

    def quiet(lines: list) -> list:
        return lines if verbose else [ln for ln in lines if not any(p.search(str(ln)) for p in RAYLET_NOISE)]

    def to_console(data: dict, ignore_prefix: bool) -> None:
        if data.get("pid") in ("autoscaler", "raylet"):
            data = {**data, "lines": quiet(list(data.get("lines", [])))}
            if not data["lines"]:
                return
        printer(data, ignore_prefix)

    to_console.__wrapped__ = printer
    ray_worker.print_to_stdstream = to_console  # what listen_error_messages calls

    def show(data: dict) -> None:
        # worker_print writes to stdout; Ray Train also copies a worker's stdout to its stderr: shown once
        ours = [ln[len(WORKER_MARK):] for ln in data.get("lines", [])
                if ln.startswith(WORKER_MARK) and not data.get("is_err")]
        if ours:
            printer({**data, "lines": ours}, ignore_prefix=True)
        if verbose or data.get("pid") in ("autoscaler", "raylet"):
            # Ray's own words that matter to a user: unschedulable requests, workers killed for memory
            rest = [ln for ln in data.get("lines", []) if not ln.startswith(WORKER_MARK)]
            if rest:
                to_console({**data, "lines": rest}, ignore_prefix=False)

    try:
        dispatcher.remove_handler("ray_print_logs")
    except Exception:  # noqa: BLE001 - not there (log_to_driver off): nothing to replace
        return
    dispatcher.add_handler("ray_print_logs", show)


def _raise_terminated(signum, frame):  # noqa: ARG001
    raise Terminated()


def handle_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C (Ray's own handler would dump C++ stacks)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def _start_reaper():
    """The watchdog of a local Ray: it stops the driver's processes once the driver is gone."""
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "geoseg.execution.reaper", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # not hit by the terminal's Ctrl-C, outlives a killed driver
        )
    except OSError:
        return None


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


def cpu_nodes() -> int:
    """How many live nodes of the cluster have CPUs to run work (a head started with none does not count)."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0)


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def dask_scheduler():
    """Ray's dask scheduler (``ray.util.dask.ray_dask_get``: each block a Ray task) when this
    process has started or joined Ray, else None. For one call's ``scheduler=``: dask's global
    configuration is never changed."""
    if not ray_connected():
        return None
    from ray.util.dask import ray_dask_get

    return ray_dask_get


class RayTasks:
    """Tasks as Ray tasks: ``cpus`` maps each function to the CPUs its tasks ask for."""

    def __init__(self, cpus: dict):
        import ray

        self._remote = {fn: ray.remote(num_cpus=n)(fn) for fn, n in cpus.items()}

    def submit(self, fn, *args):
        return self._remote[fn].remote(*args)

    def ready(self, refs: list, block: bool) -> list:
        import ray

        ready, _ = ray.wait(refs, num_returns=1 if block else len(refs), timeout=None if block else 0)
        return ready

    def get(self, ref):
        import ray

        return ray.get(ref)

    def gather(self, refs: list) -> list:
        import ray

        return ray.get(list(refs))

    def put(self, value):
        import ray

        return ray.put(value)

    cause = staticmethod(cause_of)
