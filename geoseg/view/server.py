"""``geoseg view PREFIX``: a job's inputs and class maps on a web map, served from this machine.

A small threaded HTTP server (127.0.0.1 by default; nothing is fetched from anywhere else):

    /                                   the page: Leaflet (served from geoseg's own files, no CDN),
                                        the input in true colour, the class map over it with an
                                        opacity slider, the legend and each class's area
    /api/map                            the scenes (bounds, input), the classes (names, colours, areas)
    /tiles/{classes|input}/{scene}/{z}/{x}/{y}.png
                                        Web Mercator tiles cut from the COGs (or a mosaic store) by
                                        rio-tiler: class colours (nodata transparent), or the input's
                                        red, green and blue stretched by the scene's 2-98 percentiles

The page takes ``?input=0`` (no input layer), ``?opacity=0.7`` and ``?scene=NAME``.
"""

from __future__ import annotations

import json
import mimetypes
import os
import threading
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import numpy as np

from geoseg.data import storage
from geoseg.errors import InputError

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


class MapSource:
    """What a prefix (or one class map) shows: its scenes' class maps, inputs, classes and areas."""

    def __init__(self, target: str):
        from geoseg.data.classmap import scene_maps

        self.scenes: dict[str, dict] = {}
        if storage.isdir(target) and not target.rstrip("/").endswith(".zarr"):
            for stem, _, rec in scene_maps(target):
                self.scenes[stem] = {"classes": rec["outputs"]["cog"], "input": rec.get("input"),
                                     "areas": rec.get("classes") or {}}
            if not self.scenes:
                raise InputError(f"{target}: no finished scene to show (no run record of a complete scene)")
        else:
            if not storage.exists(target) and not storage.exists(storage.join(target, "zarr.json")):
                raise InputError(f"{target}: not found")
            self.scenes[storage.stem(target.rstrip("/").removesuffix(".zarr"))] = {"classes": target, "input": None,
                                                                                      "areas": {}}
        first = next(iter(self.scenes.values()))["classes"]
        from geoseg.data.classmap import open_class_map

        info = open_class_map(first).info
        from geoseg.data.classes import ClassScheme

        self.scheme = ClassScheme.from_tags(info.tags)
        self.readers = Readers()

    def summary(self) -> dict:
        from rasterio.warp import transform_bounds

        from geoseg.data.classmap import open_class_map

        scenes = []
        for name, s in self.scenes.items():
            info = open_class_map(s["classes"]).info
            a = info.affine
            x0, y0 = a * (0, 0)
            x1, y1 = a * (info.width, info.height)
            w, so, e, n = transform_bounds(info.crs, "EPSG:4326", min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            scenes.append({"name": name, "bounds": [[so, w], [n, e]], "input": bool(s["input"])})
        totals: dict[str, float] = {}
        for s in self.scenes.values():
            for cname, c in s["areas"].items():
                if c.get("area_ha") is not None:
                    totals[cname] = totals.get(cname, 0.0) + c["area_ha"]
        classes = [{"name": n, "color": "#%02x%02x%02x" % tuple(c), "area_ha": totals.get(n)}
                   for n, c in zip(self.scheme.names, self.scheme.colors)] if self.scheme else []
        return {"scenes": scenes, "classes": classes}


def load() -> None:
    """Import what a tile request uses, once, before the server takes requests: an import that
    several request threads run at once can see a module half made (rio-tiler's ``io``). Also keeps
    rio-tiler's warnings (a COG without overviews: one per tile) out of the console."""
    import morecantile  # noqa: F401
    import rio_tiler.errors
    import rio_tiler.io  # noqa: F401
    import rio_tiler.models  # noqa: F401
    import rio_tiler.utils  # noqa: F401

    from geoseg.view import lazy  # noqa: F401 - Zarr class maps

    warnings.filterwarnings("ignore", category=rio_tiler.errors.NoOverviewWarning)
    warnings.filterwarnings("ignore", module=r"rio_tiler(\..*)?$")


class Readers:
    """Open rio-tiler readers (datasets) by URL, each lent to one request at a time (a dataset is not
    safe across threads) and kept open for the next request of its file: a pool per URL that grows
    to the number of requests the file serves at once, and at most ``capacity`` readers in all,
    the least recently used files' closed first (``capacity`` 0: every request opens its own)."""

    CAPACITY = 64

    def __init__(self, capacity: int = CAPACITY):
        self.capacity = capacity
        self._free: OrderedDict[str, list] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self.opened = 0  # readers opened so far (what the pool saves)

    @contextmanager
    def lend(self, url: str):
        with self._lock:
            free = self._free.get(url)
            reader = free.pop() if free else None
            if url in self._free:
                self._free.move_to_end(url)
            if reader is None:
                self.opened += 1
        if reader is None:
            reader = _reader(url)
        from rio_tiler.errors import TileOutsideBounds

        keep = False
        try:
            yield reader
            keep = True
        except TileOutsideBounds:
            keep = True  # a tile outside the map leaves the reader as it was; any other error drops it
            raise
        finally:
            self._give_back(url, reader, keep)

    def _give_back(self, url: str, reader, keep: bool) -> None:
        closing = [] if keep and self.capacity else [reader]
        with self._lock:
            if keep and self.capacity:
                self._free.setdefault(url, []).append(reader)
                self._free.move_to_end(url)
                held = sum(len(v) for v in self._free.values())
                while held > self.capacity:
                    oldest, readers = next(iter(self._free.items()))
                    if not readers:
                        del self._free[oldest]
                        continue
                    closing.append(readers.pop(0))
                    held -= 1
        for r in closing:  # outside the lock: closing a dataset may take a while
            getattr(r, "close", lambda: None)()

    def held(self) -> dict[str, int]:
        """Open readers per URL, least recently used first."""
        with self._lock:
            return {u: len(v) for u, v in self._free.items() if v}

    def close(self) -> None:
        with self._lock:
            readers = [r for free in self._free.values() for r in free]
            self._free.clear()
        for reader in readers:
            getattr(reader, "close", lambda: None)()


def _reader(url: str):
    from rio_tiler.io import Reader

    from geoseg.data.classmap import is_zarr

    if is_zarr(url):
        from rio_tiler.io import XarrayReader

        from geoseg.view.lazy import open_map

        return XarrayReader(open_map(url)["classes"])
    return Reader(url)


@lru_cache(maxsize=64)
def _stretch(url: str, bands: tuple[int, ...]) -> list[tuple[float, float]]:
    """2-98 percentile range of each band, from an overview (the scene's stretch for every tile)."""
    from geoseg.data.raster import read_decimated

    data, _, nodata = read_decimated(url, list(bands), 512, "nearest")
    out = []
    for band in data.astype(np.float64):
        valid = band[band != nodata] if nodata is not None else band.ravel()
        lo, hi = np.percentile(valid, [2, 98]) if valid.size else (0.0, 1.0)
        out.append((float(lo), float(max(hi, lo + 1e-6))))
    return out


@lru_cache(maxsize=64)
def _rgb(url: str) -> tuple[int, ...]:
    from geoseg.data.quicklook import rgb_bands
    from geoseg.data.raster import read_info

    info = read_info(url)
    return tuple(rgb_bands(url, info.descriptions, info.count))


def _empty_png() -> bytes:
    from rio_tiler.utils import render

    return render(np.zeros((1, 256, 256), np.uint8), np.zeros((256, 256), np.uint8), img_format="PNG")


def tile(source: MapSource, layer: str, scene: str, z: int, x: int, y: int) -> bytes:
    """One 256 px Web Mercator tile of a scene's class map (class colours) or input (true colour)."""
    from rio_tiler.errors import TileOutsideBounds

    s = source.scenes.get(scene)
    if s is None or layer not in ("classes", "input") or (layer == "input" and not s["input"]):
        raise KeyError(scene)
    url = s[layer]
    try:
        with storage.gdal_env(), source.readers.lend(url) as src:
            if layer == "classes":
                img = src.tile(x, y, z, resampling_method="nearest", **({} if url.endswith(".zarr") else
                                                                        {"indexes": 1}))
                cmap = {i: (*c, 255) for i, c in enumerate(source.scheme.colors)} if source.scheme else None
                return img.render(img_format="PNG", colormap=cmap)
            bands = _rgb(url)
            img = src.tile(x, y, z, indexes=bands, resampling_method="bilinear")
            img.rescale(in_range=_stretch(url, bands))
            return img.render(img_format="PNG")
    except TileOutsideBounds:
        return _empty_png()


class _Handler(BaseHTTPRequestHandler):
    source: MapSource

    def log_message(self, *args) -> None:  # quiet: the console is geoseg's
        pass

    def _send(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = urlparse(self.path).path
        try:
            if path in ("/", "/index.html"):
                return self._static("index.html")
            if path.startswith("/static/"):
                return self._static(path[len("/static/"):])
            if path == "/api/map":
                return self._send(200, json.dumps(self.source.summary()).encode(), "application/json")
            parts = path.strip("/").split("/")
            if len(parts) == 6 and parts[0] == "tiles" and parts[5].endswith(".png"):
                _, layer, scene, z, x, y = parts
                return self._send(200, tile(self.source, layer, scene, int(z), int(x), int(y[:-4])), "image/png")
            self._send(404, b"not found", "text/plain")
        except KeyError:
            self._send(404, b"no such layer or scene", "text/plain")
        except Exception as exc:  # noqa: BLE001 - a tile that fails is one error response, not a dead server
            self._send(500, str(exc).splitlines()[0].encode()[:300] if str(exc) else b"error", "text/plain")

    def _static(self, name: str) -> None:
        full = os.path.realpath(os.path.join(STATIC, name))
        if not full.startswith(os.path.realpath(STATIC) + os.sep) or not os.path.isfile(full):
            return self._send(404, b"not found", "text/plain")
        with open(full, "rb") as f:
            self._send(200, f.read(), mimetypes.guess_type(full)[0] or "application/octet-stream")


def serve(target: str, host: str = "127.0.0.1", port: int = 8765, background: bool = False, log=print):
    """Serve ``target``'s map at ``http://host:port/``; until Ctrl-C, or with ``background`` on a thread
    (returns the server: ``server.shutdown()`` stops it)."""
    load()
    source = MapSource(target)
    handler = type("Handler", (_Handler,), {"source": source})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise InputError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror})") from None
    server.daemon_threads = True
    log(f"geoseg view: http://{host}:{server.server_address[1]}/ ({len(source.scenes)} scene(s); Ctrl-C stops)")
    if background:
        threading.Thread(target=server.serve_forever, name="geoseg-view", daemon=True).start()
        return server
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return None
