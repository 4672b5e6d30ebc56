"""Running the ``geoseg`` command as a user does, in tests: its own Ray temp folder, no cluster
address inherited, the progress line every second."""

from __future__ import annotations

import os
import subprocess
import sys


def geoseg_env(ray_tmp: str, **extra) -> dict:
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "GEOSEG_PROGRESS_S": "1", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def start_geoseg(args, env, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "geoseg", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on loopback (held open together while chosen, so all differ)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports
