"""geoseg view: a job's maps in the browser, served from this machine."""

from __future__ import annotations

from geoseg.cli.args import at_least, command


def add(sub) -> None:
    v = command(sub, "view", "a job's inputs and class maps on a web map in your browser (served locally)",
            "geoseg view out/ --port 8765")
    v.add_argument("target", help="a predict job's prefix, or one class map (COG, predict's Zarr, a mosaic store)")
    v.add_argument("--port", type=at_least("--port", 0), default=8765, help="port (default 8765; 0: any free one)")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    v.set_defaults(run=run)


def run(a) -> None:
    from geoseg.view import serve

    serve(a.target, a.host, a.port)
