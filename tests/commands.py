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
