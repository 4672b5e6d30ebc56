"""geoseg demo: sample -> train -> predict -> evaluate, end to end."""

from __future__ import annotations

from geoseg.cli.args import command, positive
from geoseg.demo import run_demo


def add(sub) -> None:
    d = command(sub, "demo", "sample scene -> predict -> evaluate, end to end",
            "geoseg demo --out geoseg-demo --size 2048 --train-minutes 5")
    d.add_argument("--out", default="geoseg-demo", help="demo folder (default ./geoseg-demo)")
    d.add_argument("--size", type=positive("--size"), default=2048)
    d.add_argument("--train-minutes", type=float, default=5.0, help="CPU minutes for the demo U-Net (0: skip)")
    d.add_argument("--address", help="Ray cluster address")
    d.set_defaults(run=run)


def run(a) -> None:
    run_demo(a.out, a.size, a.train_minutes, a.address)
