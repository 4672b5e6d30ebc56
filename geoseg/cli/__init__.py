"""The ``geoseg`` command line: dispatch and errors only.

Each command is a module of this package (``sample``, ``predict``, ``composite``, ``mosaic``, ``vectorize``, ``rank``,
``train``, ``export``, ``quantize``, ``evaluate``, ``view``, ``quicklook``, ``demo``, ``submit``):
its ``add(sub)`` declares its flags (beside the package it drives; defaults and an example in its
``--help``), its ``run(args)`` calls that package. Here: the parser of them all, and :func:`main`,
which prints a user error, a storage fault or an interrupt as one line and returns the exit code.
``docs/cli.md`` is generated from this parser (``scripts/cli_docs.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import signal
import sys

from geoseg.version import __version__
from geoseg.data import storage
from geoseg.execution import runtime
from geoseg.cli.args import Sub
from geoseg.console import filtered_stderr
from geoseg import errors
from geoseg.errors import GeosegError, StorageError, one_line

COMMANDS = ("sample", "predict", "composite", "mosaic", "vectorize", "rank", "train", "export", "quantize",
            "evaluate", "view", "quicklook", "demo", "submit")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geoseg", description="Segment satellite imagery at scale with Ray.")
    p.add_argument("--version", action="version", version=f"geoseg {__version__}")
    sub = Sub(p.add_subparsers(dest="command", required=True))
    for name in COMMANDS:
        importlib.import_module(f"geoseg.cli.{name}").add(sub)
    return p


# a geoseg error as a worker's traceback names it (Ray Data wraps a UDF's error in its own, and
# the worker's exception reaches the driver only as that traceback's text)
_REMOTE = re.compile(r"^geoseg\.errors\.(\w+): (.+)$", re.M)


def _user_error(exc: BaseException) -> GeosegError | None:
    """The GeosegError behind an exception, also when Ray wrapped it in a task error."""
    seen, texts = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts.append(str(exc))
        cause = getattr(exc, "cause", None)  # a Ray task error: the worker's own exception
        if isinstance(cause, BaseException):
            exc = cause
            continue
        if isinstance(exc, GeosegError):
            return exc
        exc = exc.__cause__ or exc.__context__
    for text in texts:
        found = _REMOTE.findall(text)
        if found:
            name, message = found[0]
            kind = getattr(errors, name, GeosegError)
            return kind(message) if isinstance(kind, type) and issubclass(kind, GeosegError) else GeosegError(message)
    return None


def _storage_fault(exc: BaseException) -> GeosegError | None:
    """A storage fault that reached the command without geoseg naming its URL (an outage, a full
    disk inside a library): still one line, with the path where the fault names one."""
    reason = storage.fault_reason(exc)
    return StorageError(f"storage failed: {reason}") if reason else None


def main(argv: list[str] | None = None, exiting: bool = False) -> int:
    """Run one command; a user error or an interrupt is one line on stderr, and the exit code.

    The line is printed before Ray is stopped: stopping Ray while Ray Data's threads still
    read (a job failing mid-way, a signal) can end the process from Ray's C++ core at once,
    and the line would be lost. ``exiting`` (the ``geoseg`` command): the process
    ends at once without stopping the local Ray it started, after a failure (so the exit code
    is the command's) and after success too (the outputs are complete, and Ray's own shutdown
    takes 1-2 s on a small machine): the reaper stops a local Ray's processes once the driver
    is gone. A cluster joined with ``--address`` is disconnected from as usual."""
    a = build_parser().parse_args(argv)
    if a.verbose:
        os.environ["GEOSEG_VERBOSE"] = "1"
    else:  # an object store's connection dropped mid-request: asyncio's own traceback of it is noise
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    if a.dashboard:
        os.environ["GEOSEG_DASHBOARD"] = "1"
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.nullcontext() if a.verbose or a.debug else filtered_stderr():
            return _run(a, exiting)
    finally:
        if not exiting:  # a library caller (or a test) keeps its own signal handlers
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def _run(a, exiting: bool) -> int:
    """The command, and its failure as one line (see :func:`main`)."""
    failure: tuple[str, int] | None = None
    try:
        code = a.run(a)
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, runtime.Terminated) else "interrupted"
        failure = (f"geoseg: {what}; rerun the same command to resume", 143 if what == "terminated" else 130)
    except Exception as exc:  # noqa: BLE001
        err = _user_error(exc) or _storage_fault(exc)
        if err is None or a.debug:
            if not exiting:
                _stop_quietly()
            raise
        failure = (f"geoseg: error: {one_line(err)}", 1)
    if failure is not None:
        _ignore_signals()
        print(failure[0], file=sys.stderr, flush=True)
    if not exiting or (failure is None and not runtime.owns_ray()):
        _stop_quietly()
    return failure[1] if failure is not None else int(code or 0)


def run() -> None:
    """The ``geoseg`` command: :func:`main`, then exit without tearing the interpreter down.

    Once the command is done (outputs and records written, output flushed; a local Ray is
    left to the reaper, a cluster disconnected from), the teardown of torch's and Ray's modules would only keep the
    user waiting, for seconds on a small machine.
    """
    code = main(exiting=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _ignore_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _stop_quietly() -> None:
    """Stop what geoseg started; a second Ctrl-C or SIGTERM meanwhile does not add a traceback."""
    _ignore_signals()
    if "ray" in sys.modules:
        runtime.shutdown()


if __name__ == "__main__":  # pragma: no cover
    run()
