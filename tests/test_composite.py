"""geoseg composite: every statistic equal to numpy's over the clear observations, read back from the
COGs with rasterio; items in two CRSs; windows by date; the STAC items and collection read by pystac;
a killed run resumed equal to a clean one; memory flat beyond the budget (a scratch file); a two-window
model trained and predicted end to end, and refusing a one-window input in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_points

from geoseg.composite import CompositeOptions, composite_here, parse_statistic, parse_windows
from geoseg.composite.stages import ObservationStack
from geoseg.composite.stats import reduce
from geoseg.data import seasons
from geoseg.data.masks import SCL_MASKED, parse_mask
from geoseg.errors import InputError

QUIET = {"log": lambda *_: None}
SPRING, SUMMER = "spring=2025-03-01/2025-05-31", "summer=2025-07-01/2025-09-30"
DATES = ["2025-04-01", "2025-04-21", "2025-05-11", "2025-06-15", "2025-07-20", "2025-08-10", "2025-09-01"]
ORIGIN = (499_200.0, 5_002_240.0)  # a corner of the 1280 m tiles of a 128 px grid at 10 m


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    return seasons.write_series(str(tmp_path_factory.mktemp("series")), DATES, size=256, seed=3, origin=ORIGIN)


def _options(inputs, out, **kw) -> CompositeOptions:
    base = dict(windows=parse_windows([SPRING, SUMMER]), statistic="median", bands=("blue", "green", "red", "nir"),
                mask=parse_mask("scl"), side=128)
    return CompositeOptions(tuple(inputs), str(out), kw.pop("grid", "EPSG:32632:10"), **{**base, **kw})


def _observations(series, dates) -> np.ndarray:
    """``(n, 4, 256, 256)`` reflectance of the items of ``dates``, NaN where SCL masks or nodata."""
    folder = os.path.dirname(series["items"])
    out = []
    for date in dates:
        item = os.path.join(folder, f"s2_{date}")
        bands = np.stack([rasterio.open(os.path.join(item, f"{b}.tif")).read(1) for b in seasons.BANDS])
        scl = rasterio.open(os.path.join(item, "scl.tif")).read(1).repeat(2, 0).repeat(2, 1)  # 20 m: nearest
        v = bands.astype(np.float32) * np.float32(seasons.SCALE)
        v[:, np.isin(scl, SCL_MASKED) | (bands == 0).any(0)] = np.nan
        out.append(v)
    return np.stack(out)


def _mosaic(out, window, plan_tiles=None) -> tuple[np.ndarray, list[str]]:
    """The composite's tiles of ``window`` read back into one array over the series' 256 x 256 px."""
    full = None
    for name in sorted(os.listdir(out / "tiles")):
        with rasterio.open(out / "tiles" / name / f"{name}_{window}.tif") as src:
            data, names = src.read(), list(src.descriptions)
            col, row = int(round((src.transform.c - ORIGIN[0]) / 10)), int(round((ORIGIN[1] - src.transform.f) / 10))
        if full is None:
            full = np.zeros((data.shape[0], 256, 256), np.float32)
        full[:, row : row + 128, col : col + 128] = data
    return full, names


@pytest.mark.parametrize("statistic", ["median", "mean", "p25"])
def test_each_statistic_is_numpys_over_the_clear_observations(series, tmp_path, statistic):
    rec = composite_here(_options([series["items"]], tmp_path, statistic=parse_statistic(statistic)), **QUIET)
    assert rec["status"] == "complete" and rec["tiles"] == 4 and rec["statistic"] == statistic
    for window, dates in (("spring", DATES[:3]), ("summer", DATES[4:])):
        stack = _observations(series, dates)
        got, names = _mosaic(tmp_path, window)
        assert names == [f"{b}@{window}" for b in seasons.BANDS] + [f"count@{window}"]
        count = (~np.isnan(stack[:, 0])).sum(0)
        np.testing.assert_array_equal(got[-1], count)
        assert 0 < (count == 0).sum() < count.size  # some pixels are never clear: nodata there
        with np.errstate(all="ignore"):
            import warnings

            warnings.simplefilter("ignore", RuntimeWarning)
            want = {"median": np.nanmedian(stack, axis=0), "mean": np.nanmean(stack, axis=0),
                    "p25": np.nanpercentile(stack, 25, axis=0)}[statistic]
        has = count > 0
        np.testing.assert_allclose(got[:4][:, has], want[:, has], rtol=2e-6, atol=1e-7)
        assert (got[:4][:, ~has] == 0).all()


def test_stats_of_random_stacks_match_numpy():
    rng = np.random.default_rng(0)
    stack = rng.random((9, 2, 5, 7)).astype(np.float32)
    stack = np.where(rng.random((9, 1, 5, 7)) < 0.5, np.float32(np.nan), stack)  # per observation and pixel
    import warnings

    warnings.simplefilter("ignore", RuntimeWarning)
    for stat, fn in (("median", np.nanmedian), ("mean", np.nanmean), ("p90", lambda s, axis: np.nanpercentile(s, 90, axis=axis)),
                     ("p0", lambda s, axis: np.nanmin(s, axis=axis)), ("p100", lambda s, axis: np.nanmax(s, axis=axis))):
        got, count = reduce(stack, stat)
        want = fn(stack, axis=0)
        has = count > 0
        np.testing.assert_allclose(got[:, has], want[:, has], rtol=1e-6)
        np.testing.assert_array_equal(count, (~np.isnan(stack[:, 0])).sum(0))


def test_a_stack_beyond_its_budget_spills_to_a_scratch_file_and_reads_back_the_same():
    rng = np.random.default_rng(1)
    obs = rng.random((6, 3, 40, 50)).astype(np.float32)
    small, big = ObservationStack(6, 3, 40, 50, budget=4000), ObservationStack(6, 3, 40, 50)
    assert small.data is None and small.fd is not None and big.data is not None
    assert small.rows < 40  # strips of rows that fit the budget
    for k in range(6):
        small.put(k, obs[k])
        big.put(k, obs[k])
    for r0 in range(0, 40, small.rows):
        np.testing.assert_array_equal(small.strip(r0, min(40, r0 + small.rows)), obs[:, :, r0 : r0 + small.rows])
    small.close()
    big.close()


def test_items_in_two_crss_reach_one_tile_by_nearest_neighbour(tmp_path):
    """Items in UTM 32 and UTM 33 over one place: each composite pixel is the statistic of the source
    pixels that the exact transform of its centre falls in (nearest neighbour, documented)."""
    a = seasons.write_series(str(tmp_path / "a"), DATES[:2], size=128, seed=5, origin=ORIGIN, stem="a")
    (x33,), (y33,) = warp_points("EPSG:32632", "EPSG:32633", [ORIGIN[0] + 300], [ORIGIN[1] - 200])
    b = seasons.write_series(str(tmp_path / "b"), DATES[2:3], size=128, seed=6, crs="EPSG:32633",
                             origin=(round(x33), round(y33)), stem="b")
    out = tmp_path / "out"
    composite_here(_options([a["items"], b["items"]], out, windows=parse_windows(None), statistic="mean",
                            mask=parse_mask("none")), **QUIET)
    tile = f"x{int(ORIGIN[0] // 1280)}_y{int(ORIGIN[1] // 1280) - 1}"  # the tile series a covers
    with rasterio.open(out / "tiles" / tile / f"{tile}_all.tif") as src:
        got, t = src.read(), src.transform
        assert src.crs.to_epsg() == 32632 and src.descriptions[-1] == "count@all"
    rows, cols = np.mgrid[0:128, 0:128]
    xs, ys = t.c + (cols + 0.5) * t.a, t.f + (rows + 0.5) * t.e
    values = []
    for series, crs, stem in ((a, "EPSG:32632", "a"), (b, "EPSG:32633", "b")):
        folder = os.path.dirname(series["items"])
        for date in json.load(open(series["items"]))["features"]:
            ident = date["id"]
            with rasterio.open(os.path.join(folder, ident, "red.tif")) as src:
                red, inv = src.read(1).astype(np.float32) * np.float32(seasons.SCALE), ~src.transform
                sx, sy = (np.asarray(v) for v in warp_points("EPSG:32632", crs, xs.ravel(), ys.ravel()))
                c, r = inv.a * sx + inv.b * sy + inv.c, inv.d * sx + inv.e * sy + inv.f
                c, r = np.floor(c).astype(int).reshape(128, 128), np.floor(r).astype(int).reshape(128, 128)
                ok = (r >= 0) & (r < src.height) & (c >= 0) & (c < src.width)
                v = np.full((128, 128), np.nan, np.float32)
                v[ok] = red[r[ok], c[ok]]
                values.append(v)
    stack = np.stack(values)
    count = (~np.isnan(stack)).sum(0)
    np.testing.assert_array_equal(got[-1], count)
    assert (count == 3).any() and (count == 2).any()  # the UTM 33 item covers part of the tile
    has = count > 0
    import warnings

    warnings.simplefilter("ignore", RuntimeWarning)
    np.testing.assert_allclose(got[2][has], np.nanmean(stack, axis=0)[has], rtol=2e-6)


def test_windows_select_by_date_and_name_the_bands(series, tmp_path):
    rec = composite_here(_options([series["items"]], tmp_path, windows=parse_windows(
        ["2025-04-01/2025-04-30", "2025-08-01/2025-09-01"])), **QUIET)
    assert [(w["name"], w["observations"]) for w in rec["windows"]] == [("2025-04", 2), ("2025-08", 2)]
    stack = _observations(series, ["2025-08-10", "2025-09-01"])
    got, names = _mosaic(tmp_path, "2025-08")
    assert names[0] == "blue@2025-08"
    np.testing.assert_array_equal(got[-1], (~np.isnan(stack[:, 0])).sum(0))
    import pystac

    collection = pystac.Collection.from_file(str(tmp_path / "collection.json"))
    items = [pystac.Item.from_file(link.absolute_href) for link in collection.get_links("item")]
    assert len(items) == 4 * 2 and {i.properties["geoseg:window"] for i in items} == {"2025-04", "2025-08"}
    first = items[0]
    assert first.properties["start_datetime"].startswith("2025-04-01")
    assert [b["name"] for b in first.assets["composite"].extra_fields["bands"]][-1].startswith("count@")
    with rasterio.open(open(tmp_path / "stacks.txt").read().split()[0]) as vrt:
        assert vrt.descriptions == tuple(f"{b}@{w}" for w in ("2025-04", "2025-08") for b in (*seasons.BANDS, "count"))


def test_bad_windows_statistics_and_bands_are_one_line():
    for texts, words in ((["2025-05-01/2025-04-01"], "starts after it ends"), (["2025-13-01/2025-12-01"], "not a date"),
                         (["spring"], "START/END"), (["a b=2025-01-01/2025-02-01"], "name"),
                         (["2025-04-01/2025-04-10", "2025-04-05/2025-04-20"], None)):
        if words is None:  # two windows starting in one month: named by their dates
            assert [w.name for w in parse_windows(texts)] == ["2025-04-01", "2025-04-05"]
            continue
        with pytest.raises(InputError, match=words):
            parse_windows(texts)
    for bad in ("p101", "mode", "pxx"):
        with pytest.raises(InputError, match="--statistic"):
            parse_statistic(bad)
    with pytest.raises(InputError, match="count"):
        CompositeOptions(("x",), "o", "EPSG:32632:10", bands=("red", "count"))
    with pytest.raises(InputError, match="--grid"):
        CompositeOptions(("x",), "o", "EPSG:32632")


def test_no_observation_in_any_window_is_one_line(series, tmp_path):
    with pytest.raises(InputError, match="none of the 7 observations falls in a window"):
        composite_here(_options([series["items"]], tmp_path, windows=parse_windows(["2024-01-01/2024-02-01"])),
                       **QUIET)


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "geoseg", *args], capture_output=True, text=True, **kw)


def test_a_killed_composite_resumes_and_equals_a_clean_run(series, tmp_path):
    code = ("import sys; from geoseg.composite import composite_here; from tests.test_composite import _options; "
            "import geoseg.composite.stages as s, time; orig = s.composite_tile\n"
            "def slow(plan, i):\n    time.sleep(0.6); return orig(plan, i)\n"
            "s.composite_tile = slow; import geoseg.composite.driver as d; d.stages.composite_tile = slow\n"
            f"composite_here(_options([{series['items']!r}], sys.argv[1]))")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    killed = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "killed")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stacks = tmp_path / "killed" / "stacks"
    deadline = time.time() + 120
    while time.time() < deadline and not (stacks.exists() and len(os.listdir(stacks)) >= 1):
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    done = len(os.listdir(stacks))
    assert 1 <= done < 4 and not (tmp_path / "killed" / "composite.json").exists()
    lines = []
    composite_here(_options([series["items"]], tmp_path / "killed"), log=lines.append)
    assert any(f"resuming, {done} of 4 tiles done already" in line for line in lines)
    composite_here(_options([series["items"]], tmp_path / "clean"), **QUIET)
    for window in ("spring", "summer"):
        np.testing.assert_array_equal(_mosaic(tmp_path / "killed", window)[0], _mosaic(tmp_path / "clean", window)[0])
    again = []
    composite_here(_options([series["items"]], tmp_path / "killed"), log=again.append)
    assert any("already complete" in line for line in again)


def test_a_two_window_model_trains_predicts_and_refuses_one_window_in_one_line(series, tmp_path, ray_local):
    from geoseg.composite import composite
    from geoseg.train import TrainConfig, train

    out = tmp_path / "comp"
    rec = composite(_options([series["items"]], out, side=256), **QUIET)  # on Ray
    assert rec["tiles"] == 1
    stack = open(out / "stacks.txt").read().split()[0]
    bands = "red@spring,nir@spring,red@summer,nir@summer"
    run = tmp_path / "run"
    train(TrainConfig(images=[stack], labels=[series["labels"]], out=str(run), arch="tinyfcn", bands=bands.split(","),
                      epochs=1, chip_size=64, block_size=128, chips_per_epoch=16, batch_size=4, workers=1,
                      classes=list(seasons.CLASSES)))
    meta = json.load(open(run / "best" / "geoseg.json"))
    assert meta["bands"]["roles"] == bands.split(",") and meta["bands"]["windows"] == ["spring", "summer"]
    assert meta["extra"]["inputs"]["windows"] == {"spring": "2025-03-01/2025-05-31", "summer": "2025-07-01/2025-09-30"}
    from geoseg.models import export, modelfile

    onnx = export.export(str(run), "onnx", str(tmp_path / "m.onnx"), log=lambda *_: None)
    assert modelfile.read_description(onnx)["bands"]["windows"] == ["spring", "summer"]  # the exported file too
    r = _run(["predict", stack, "--checkpoint", str(run), "--out", str(tmp_path / "pred")])
    assert r.returncode == 0, r.stderr[-2000:]
    tif = [f for f in os.listdir(tmp_path / "pred") if f.endswith(".tif")]
    with rasterio.open(tmp_path / "pred" / tif[0]) as src:
        assert src.shape == (256, 256) and set(np.unique(src.read(1))) <= {0, 1, 2, 255}
    one = tmp_path / "one"
    composite_here(_options([series["items"]], one, side=256, windows=parse_windows([SPRING])), **QUIET)
    r = _run(["predict", open(one / "stacks.txt").read().split()[0], "--checkpoint", str(run), "--out",
              str(tmp_path / "refused")])
    assert r.returncode != 0
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "time windows spring, summer" in err[0] and "no summer" in err[0], r.stderr
    assert not (tmp_path / "refused").exists() or not any(f.endswith(".tif") for f in os.listdir(tmp_path / "refused"))


def test_rasters_dated_by_their_tags_composite_like_the_items(series, tmp_path):
    """Plain multi-band rasters (band descriptions, scales, an SCL band, TIFFTAG_DATETIME) give the
    composite their items give."""
    folder = os.path.dirname(series["items"])
    rasters = []
    for date in DATES:
        item = os.path.join(folder, f"s2_{date}")
        bands = [rasterio.open(os.path.join(item, f"{b}.tif")).read(1) for b in seasons.BANDS]
        with rasterio.open(os.path.join(item, "blue.tif")) as src:
            profile = src.profile
        scl = rasterio.open(os.path.join(item, "scl.tif")).read(1).repeat(2, 0).repeat(2, 1)
        url = str(tmp_path / f"scene_{date}.tif")
        profile.update(count=5, driver="GTiff")
        with rasterio.open(url, "w", **profile) as dst:
            dst.write(np.stack([*bands, scl.astype(np.uint16)]))
            dst.descriptions = (*seasons.BANDS, "scl")
            dst.scales = (seasons.SCALE,) * 4 + (1.0,)
            dst.update_tags(TIFFTAG_DATETIME=f"{date.replace('-', ':')} 10:30:00")
        rasters.append(url)
    composite_here(_options(rasters, tmp_path / "rasters"), **QUIET)
    composite_here(_options([series["items"]], tmp_path / "items"), **QUIET)
    for window in ("spring", "summer"):
        a, b = _mosaic(tmp_path / "rasters", window)[0], _mosaic(tmp_path / "items", window)[0]
        np.testing.assert_array_equal(a[-1], b[-1])
        np.testing.assert_allclose(a, b, rtol=1e-6)
    undated = str(tmp_path / "undated.tif")
    with rasterio.open(rasters[0]) as src, rasterio.open(undated, "w", **src.profile) as dst:
        dst.write(src.read())
        dst.descriptions = src.descriptions
    with pytest.raises(InputError, match="none of the 1 observations falls in a window"):
        composite_here(_options([undated], tmp_path / "undated"), **QUIET)


def test_items_and_composites_on_s3(s3, series, tmp_path):
    """Items whose band assets are s3:// COGs, composited into s3://: the tiles equal the local ones."""
    remote = seasons.write_series("s3://geoseg/series", DATES, size=256, seed=3, origin=ORIGIN)
    assert remote["items"].startswith("s3://geoseg/")
    composite_here(_options([remote["items"]], "s3://geoseg/comp", statistic="p75"), **QUIET)
    composite_here(_options([series["items"]], tmp_path / "local", statistic="p75"), **QUIET)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="geoseg", Prefix="comp/")["Contents"]}
    assert {"comp/composite.json", "comp/collection.json", "comp/stacks.txt"} <= keys
    tiles = sorted(os.listdir(tmp_path / "local" / "tiles"))
    assert sum(k.endswith(".vrt") for k in keys) == len(tiles) == 4
    from geoseg.data import storage

    for tile in tiles:
        with storage.gdal_env(), rasterio.open(f"s3://geoseg/comp/tiles/{tile}/{tile}_summer.tif") as src:
            got = src.read()
        with rasterio.open(tmp_path / "local" / "tiles" / tile / f"{tile}_summer.tif") as src:
            np.testing.assert_array_equal(got, src.read())
    lines = []
    composite_here(_options([remote["items"]], "s3://geoseg/comp", statistic="p75"), log=lines.append)
    assert any("already complete" in line for line in lines)


def test_the_cloud_model_masks_a_cloudy_date_out_of_the_composite(tmp_path):
    """--mask model (ukis-csmask's ONNX model): under a textured cloud on one of two dates, only the
    clear date counts; away from it both do."""
    from affine import Affine
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(1)
    h = w = 512

    def fbm():
        out = np.zeros((h, w))
        for sigma, weight in ((48, 1.0), (16, 0.5), (6, 0.3), (2, 0.15)):
            n = gaussian_filter(rng.standard_normal((h, w)), sigma)
            out += weight * n / n.std()
        return out

    spectra = np.array([[0.03, 0.06, 0.04, 0.30], [0.10, 0.14, 0.18, 0.26], [0.12, 0.13, 0.14, 0.20],
                        [0.05, 0.05, 0.03, 0.02]])
    land = rng.integers(0, 4, (h // 32, w // 32)).repeat(32, 0).repeat(32, 1)
    clear = spectra[land].transpose(2, 0, 1) * (1 + 0.15 * rng.standard_normal((4, h, w)))
    yy, xx = np.mgrid[:h, :w]
    blob = np.exp(-(((yy - h * 0.4) / (h * 0.2)) ** 2 + ((xx - w * 0.45) / (w * 0.25)) ** 2))
    cloud = np.clip(blob * (1.2 + 0.35 * fbm()), 0, 1)
    white = np.array([0.55, 0.56, 0.58, 0.62])[:, None, None] * (1 + 0.1 * fbm())
    cloudy = clear * (1 - cloud) + white * cloud
    prof = dict(driver="GTiff", height=h, width=w, count=4, dtype="uint16", crs="EPSG:32632",
                transform=Affine(10, 0, 501_760, 0, -10, 5_002_240), nodata=0)
    paths = []
    for date, img in (("2025-06-01", clear), ("2025-06-11", cloudy)):
        paths.append(str(tmp_path / f"{date}.tif"))
        with rasterio.open(paths[-1], "w", **prof) as dst:
            dst.write((img * 10000).clip(1, 10000).astype("uint16"))
            dst.descriptions = ("blue", "green", "red", "nir")
            dst.update_tags(TIFFTAG_DATETIME=f"{date.replace('-', ':')} 10:00:00")
    rec = composite_here(_options(paths, tmp_path / "out", windows=parse_windows(None), side=512,
                                  mask=parse_mask("model")), **QUIET)
    assert rec["mask"] == "model:l2a"
    tile = sorted(os.listdir(tmp_path / "out" / "tiles"))[0]
    with rasterio.open(tmp_path / "out" / "tiles" / tile / f"{tile}_all.tif") as src:
        assert (src.bounds.left, src.bounds.top) == (501_760, 5_002_240)
        count, red = src.read(5), src.read(3)
    assert (count[cloud > 0.5] == 1).mean() > 0.9  # the cloudy date left out under the cloud
    assert (count[cloud < 0.01] == 2).mean() > 0.9  # clear land: both dates
    under = cloud > 0.5
    one = under & (count == 1)  # the clear date's own values (no scale declared: its numbers)
    np.testing.assert_array_equal(red[one], (clear[2] * 10000).clip(1, 10000).astype("uint16")[one])
