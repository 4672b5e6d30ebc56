"""Low-priority I/O threads: where readers and writers run beside the model (no Ray).

Readers and writers share nodes with the model. A reader that preempts one of torch's
intra-op threads stalls the whole parallel region; on a thread of lower priority (Linux nice,
``GEOSEG_IO_NICE``, 10) it runs in the gaps the model leaves instead. Only these threads are
lowered (nice is per thread), so a worker process later reused for other work keeps its
normal priority.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

_IO_THREAD: ThreadPoolExecutor | None = None
_IO_THREADS = 1  # how many low-priority I/O threads this process has (io_threads)


def low_priority(fn, *args, **kwargs):
    """Run ``fn`` on this process's low-priority I/O thread (nice ``GEOSEG_IO_NICE``, 10).

    Readers and writers share nodes with the model actors. A reader that preempts
    one of torch's intra-op threads stalls the whole parallel region; at a lower
    priority it runs in the gaps the model leaves instead. Only that one thread is
    lowered (Linux nice is per thread), so a worker process later reused for
    other work keeps its normal priority.
    """
    global _IO_THREAD
    if _IO_THREAD is None:
        _IO_THREAD = ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="geoseg-io", initializer=_lower_this_thread)
    return _IO_THREAD.submit(fn, *args, **kwargs).result()


def io_threads(n: int) -> None:
    """At least ``n`` low-priority I/O threads in this process: a job without Ray reads with
    several reader threads in the driver, as a Ray job reads in several read tasks."""
    global _IO_THREAD, _IO_THREADS
    if n > _IO_THREADS:
        _IO_THREADS = n
        if _IO_THREAD is not None:
            old, _IO_THREAD = _IO_THREAD, None
            old.shutdown(wait=False)


def _lower_this_thread() -> None:
    nice = int(os.environ.get("GEOSEG_IO_NICE", "10"))
    if nice > 0 and sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError:
            pass
