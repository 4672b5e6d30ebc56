"""geoseg view: the page, the map's summary and tiles served on 127.0.0.1, and a real headless
Chromium's screenshot showing the class colours where the class map has them."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import urllib.request

import numpy as np
import pytest
from PIL import Image

from geoseg.data.classes import LANDCOVER


@pytest.fixture(scope="module")
def served(sample_dir, tmp_path_factory):
    from geoseg.predict import PredictOptions, predict
    from geoseg.execution.runtime import init_ray
    from geoseg.view import serve

    init_ray(None)
    out = tmp_path_factory.mktemp("view")
    predict([str(sample_dir / "scene.tif")], str(out), PredictOptions(model="index", tile_size=320, halo=16),
            log=lambda *_: None)
    server = serve(str(out), port=0, background=True, log=lambda *_: None)
    yield f"http://127.0.0.1:{server.server_address[1]}", out
    server.shutdown()
    server.server_close()


def _get(url: str) -> tuple[int, bytes, str]:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.status, r.read(), r.headers["Content-Type"]


def test_page_summary_and_tiles(served):
    base, out = served
    status, body, kind = _get(base + "/")
    assert status == 200 and kind.startswith("text/html") and b"/static/leaflet/leaflet.js" in body
    assert b"//unpkg" not in body and b"cdn" not in body.lower()  # nothing from elsewhere
    assert _get(base + "/static/leaflet/leaflet.js")[0] == 200
    info = json.loads(_get(base + "/api/map")[1])
    (scene,) = info["scenes"]
    assert scene["name"] == "scene" and scene["input"]
    (s, w), (n, e) = scene["bounds"]
    assert 12 < w < e < 17 and 52 < s < n < 54  # the sample: UTM 33N, about 13.5°E, 53°N
    rec = json.loads((out / "scene.json").read_text())
    assert [c["name"] for c in info["classes"]] == list(LANDCOVER.names)
    assert info["classes"][1]["area_ha"] == pytest.approx(rec["classes"]["vegetation"]["area_ha"])
    # a tile over the scene: class colours, and transparent where the class map is nodata
    import morecantile

    t = morecantile.tms.get("WebMercatorQuad").tile((w + e) / 2, (s + n) / 2, 14)
    status, png, kind = _get(f"{base}/tiles/classes/scene/{t.z}/{t.x}/{t.y}.png")
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
    assert status == 200 and kind == "image/png" and img.shape == (256, 256, 4)
    colours = {tuple(c) for c in img[img[..., 3] == 255][:, :3].tolist()}
    assert colours and colours <= {tuple(c) for c in LANDCOVER.colors}
    status, png, _ = _get(f"{base}/tiles/input/scene/{t.z}/{t.x}/{t.y}.png")
    assert status == 200 and np.asarray(Image.open(io.BytesIO(png))).std() > 5  # a picture, not a blank
    with pytest.raises(urllib.error.HTTPError):
        _get(f"{base}/tiles/classes/nope/{t.z}/{t.x}/{t.y}.png")
    with pytest.raises(urllib.error.HTTPError):
        _get(f"{base}/static/../../__init__.py")


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.slow
def test_a_real_browser_shows_the_class_colours(served, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (scripts/setup.sh installs it where apt-get can)")
    base, _ = served
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1000,700", "--virtual-time-budget=15000", f"--screenshot={shot}",
                    f"{base}/?input=0&opacity=1"], capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB"))[:, :700]  # the map, left of the panel
    pixels = img.reshape(-1, 3)
    share = {name: float((np.abs(pixels.astype(int) - c).sum(1) <= 6).mean())
             for name, c in zip(LANDCOVER.names, LANDCOVER.colors)}
    assert share["vegetation"] > 0.05 and share["bare_soil"] > 0.01, share  # the class map, drawn


def test_a_fresh_server_serves_concurrent_first_requests(sample_dir, tmp_path):
    """``geoseg view`` in a process of its own, its input without overviews: 16 tile requests at once,
    the server's very first, all answered 200, and nothing of rio-tiler's on the console."""
    import os
    import re
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import morecantile
    import rasterio

    from geoseg.predict import PredictOptions, predict

    with rasterio.open(sample_dir / "scene.tif") as src:  # a plain tiled GeoTIFF: no overviews
        prof, data, names = src.profile, src.read(), src.descriptions
    prof.update(driver="GTiff", tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(tmp_path / "plain.tif", "w", **prof) as dst:
        dst.write(data)
        dst.descriptions = names
    out = tmp_path / "out"
    predict([str(tmp_path / "plain.tif")], str(out), PredictOptions(model="index", tile_size=320, halo=16),
            log=lambda *_: None)
    proc = subprocess.Popen([sys.executable, "-m", "geoseg", "view", str(out), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        base = re.search(r"(http://127\.0\.0\.1:\d+)/", line).group(1)
        with rasterio.open(tmp_path / "plain.tif") as src:
            from rasterio.warp import transform_bounds

            w, s, e, n = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        tms = morecantile.tms.get("WebMercatorQuad")
        tiles = list(tms.tiles(w, s, e, n, [14]))[:8]
        urls = [f"{base}/tiles/{layer}/plain/{t.z}/{t.x}/{t.y}.png" for t in tiles for layer in ("classes", "input")]
        assert len(urls) == 16

        def get(url):
            try:
                return _get(url)[0]
            except urllib.error.HTTPError as exc:
                return exc.code

        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(get, urls))
        assert codes == [200] * 16
    finally:
        proc.terminate()
        console = proc.communicate(timeout=30)[0]
    assert "Warning" not in console and "rio_tiler" not in console, console


def test_readers_are_reused_per_file_and_the_least_recent_closed(served, sample_dir):
    """A file's reader serves its next request (not reopened); past the capacity the least recently
    used file's reader is closed; capacity 0 opens one per request (what geoseg view did before)."""
    from geoseg.view.server import Readers

    _, out = served
    urls = [str(out / "scene.tif"), str(sample_dir / "scene.tif"), str(sample_dir / "labels.tif")]
    pool = Readers(capacity=2)
    with pool.lend(urls[0]) as first:
        pass
    with pool.lend(urls[0]) as again:
        assert again is first and pool.opened == 1  # the same open dataset, lent again
    with pool.lend(urls[0]) as a, pool.lend(urls[0]) as b:  # two requests at once: two readers
        assert a is not b
    assert pool.held() == {urls[0]: 2} and pool.opened == 2
    with pool.lend(urls[1]):
        pass
    with pool.lend(urls[2]):
        pass
    assert pool.held() == {urls[1]: 1, urls[2]: 1}  # capacity 2: the least recent file's readers closed
    assert first.dataset.closed
    with pool.lend(urls[1]):  # urls[1] is now the most recent, urls[2] the least
        pass
    with pool.lend(urls[0]):
        pass
    assert list(pool.held()) == [urls[1], urls[0]]
    pool.close()
    assert pool.held() == {}
    none = Readers(capacity=0)
    for _ in range(3):
        with none.lend(urls[0]) as r:
            pass
        assert r.dataset.closed
    assert none.opened == 3
