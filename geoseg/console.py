"""What a geoseg command shows: its own lines, a progress display, and no noise.

* :class:`Progress`: tiles done, MPix/s and ETA, updated in place on a terminal
  and as a plain line every ``GEOSEG_PROGRESS_S`` seconds (10) in a log.
* :func:`filtered_stderr`: Ray's core worker writes some warnings straight to
  the process's stderr from C++, where no Python logging setting reaches them
  (the warning that every Ray Data actor has its constructor arguments in the
  object store, say). Without ``--verbose`` the command's stderr goes through
  a filter that drops those known lines; everything else passes unchanged.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time

# Lines of Ray's that tell a geoseg user nothing they can act on.
NOISE = (
    re.compile(r"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store"),
    re.compile(r"Set ray log level from environment variable"),
)
# Lines the raylet sends every driver that tell a geoseg user nothing they can act on (its other
# lines, workers killed for memory or requests no node can meet, are shown).
RAYLET_NOISE = (
    re.compile(r"PYTHON worker processes have been started"),  # many short tasks or actors: by design here
)


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


class Progress:
    """``tiles done/total, MPix/s, ETA``: in place on a terminal, periodic lines in a log."""

    def __init__(self, total: int, label: str = "tiles", stream=None, interval: float | None = None):
        self.total, self.label = max(0, int(total)), label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        default = 0.5 if self.tty else float(os.environ.get("GEOSEG_PROGRESS_S", "10"))
        self.interval = default if interval is None else interval
        self.done = self.pixels = 0
        self.t0 = time.perf_counter()
        self._last = -1e9
        self._shown = False

    def extend(self, tiles: int) -> None:
        """More tiles to do (a job's scenes are planned, so counted, while it runs)."""
        self.total += int(tiles)

    def update(self, tiles: int, pixels: int = 0) -> None:
        self.done += int(tiles)
        self.pixels += int(pixels)
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self._show(self.line())

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = self.pixels / 1e6 / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = _fmt_eta((self.total - self.done) * elapsed / self.done) if self.done else "?"
        return f"{self.done}/{self.total} {self.label} ({pct:.0f}%), {rate:.3g} MPix/s, ETA {eta}"

    def _show(self, text: str) -> None:
        if text == getattr(self, "_shown_text", None):
            return
        self._shown_text, self._shown_done = text, self.done
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._shown = True

    def close(self, complete: bool = False) -> None:
        """The final state (``complete``: every tile accounted for, nodata ones
        included), and a line end on a terminal."""
        if complete:
            self.done = max(self.done, self.total)
        if (self.total or self._shown) and self.done != getattr(self, "_shown_done", None):
            self._show(self.line())
        if self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()


@contextlib.contextmanager
def filtered_stderr(patterns=NOISE):
    """Route file descriptor 2 through a thread that drops lines matching ``patterns``."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_fd, write_fd = os.pipe()
    except OSError:
        yield
        return
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump() -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as src:
            pending = b""
            while True:
                chunk = src.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    text = line.decode("utf-8", "replace")
                    if not any(p.search(text) for p in patterns):
                        os.write(saved, line + b"\n")
            if pending:
                os.write(saved, pending)

    thread = threading.Thread(target=pump, name="geoseg-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)  # the pipe's last writer is gone: the pump drains it and ends
        thread.join(timeout=1)
        os.close(saved)


# --- lines from Ray workers -------------------------------------------------------

WORKER_MARK = "[geoseg] "


def worker_print(text: str) -> None:
    """Print from a Ray worker to the user's console (each line marked, flushed at once;
    in the driver, where no one reads the mark, as it is)."""
    mark = WORKER_MARK if _in_ray_worker() else ""
    print("\n".join(mark + line for line in str(text).splitlines()), flush=True)


def _in_ray_worker() -> bool:
    ray = sys.modules.get("ray")
    try:
        return ray is not None and ray._private.worker.global_worker.mode == ray.WORKER_MODE
    except AttributeError:
        return False
