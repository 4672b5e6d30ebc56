"""geoseg submit: a geoseg command as a Ray job on a cluster."""

from __future__ import annotations

import argparse

from geoseg.cli.args import command
from geoseg.execution.submit import submit


def add(sub) -> None:
    sb = command(sub, "submit", "run a geoseg command as a Ray job on a cluster",
             "geoseg submit --address http://127.0.0.1:8265 -- predict s3://b/x.tif --out s3://b/out/ --model index")
    sb.add_argument("--address", help="Ray dashboard / Jobs API URL (default RAY_ADDRESS or http://127.0.0.1:8265)")
    sb.add_argument("--working-dir", default=".", help="folder uploaded with the job (default: .)")
    sb.add_argument("--no-follow", action="store_true", help="return after submitting")
    sb.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                    help="how long to wait for a head that is starting (not reachable yet, or no job agent yet)")
    sb.add_argument("job_args", nargs=argparse.REMAINDER, help="-- then a geoseg command and its arguments")
    sb.set_defaults(run=run)


def run(a) -> int:
    args = a.job_args[1:] if a.job_args[:1] == ["--"] else a.job_args
    return submit(a.address, args, a.working_dir, follow=not a.no_follow, wait=a.wait)
