"""Clouds and time: validity masks decoded as documented, masked pixels never classified (SCL,
QA bits, a 20 m SCL asset stacked with 10 m bands, the cloud model), items and rasters without
the mask refused in one line, --max-cloud, training without masked pixels, and every temporal
merge rule equal to a direct numpy computation over scenes in two UTM zones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from rasterio.warp import transform

from geoseg.data.classes import MASKED, NODATA
from geoseg.data.masks import QA_MASKED, SCL_MASKED, parse_mask
from geoseg.data.stac import StackOptions
from geoseg.errors import InputError
from geoseg.predict import PredictOptions, predict

QUIET = {"log": lambda *_: None}
ZONE_EDGE = 12.0


# --- decoding ----------------------------------------------------------------------


def test_scl_classes_and_qa_bits_decode_as_documented():
    scl = parse_mask("scl")
    values = np.arange(12)
    assert set(values[scl.decode(values)]) == {0, 1, 3, 8, 9, 10} == set(SCL_MASKED)
    assert set(values[parse_mask("scl:3,8,9,10,11").decode(values)]) == {3, 8, 9, 10, 11}
    qa = parse_mask("qa_pixel")
    words = np.arange(1 << 16, dtype=np.uint16)
    want = np.zeros(len(words), bool)
    for bit in QA_MASKED:  # dilated cloud, cirrus, cloud, cloud shadow
        want |= (words >> bit) & 1 == 1
    np.testing.assert_array_equal(qa.decode(words), want)
    assert QA_MASKED == (1, 2, 3, 4)
    # Landsat: 21824 = clear land (bits 6, 8, 10, 12, 14), 22280 = cloud with high confidence (bit 3 set)
    assert not qa.decode(np.array([21824]))[0] and qa.decode(np.array([22280]))[0]
    only_shadow = parse_mask("qa_pixel:bits=4")
    assert list(only_shadow.decode(np.array([1 << 4, 1 << 3]))) == [True, False]
    assert parse_mask(None).kind == "none" and not parse_mask("none").active
    assert parse_mask("model").level == "l2a" and parse_mask("model:l1c").level == "l1c"
    for bad, words_in in (("fmask", "which values"), ("scl:a,b", "not a list"), ("model:l3", "l2a"),
                          ("qa_pixel:bits=40", "bits 0 to 31")):
        with pytest.raises(InputError, match=words_in):
            parse_mask(bad)


# --- predict with a mask band ---------------------------------------------------------


def _scene_with_scl(path, sample_dir, scl, tag_time=None, epsg=None, lon=None, lat=None):
    with rasterio.open(sample_dir / "scene.tif") as src:
        data, desc, prof = src.read(), src.descriptions, src.profile
    h, w = scl.shape
    data = data[:, :h, :w]
    prof.update(count=5, height=h, width=w, dtype=data.dtype, tiled=True, blockxsize=256, blockysize=256)
    if epsg:
        (x,), (y,) = transform("EPSG:4326", f"EPSG:{epsg}", [lon], [lat])
        prof.update(crs=f"EPSG:{epsg}", transform=Affine(10, 0, round(x), 0, -10, round(y)))
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data, [1, 2, 3, 4])
        dst.write(scl.astype(data.dtype), 5)
        dst.descriptions = (*desc[:4], "scl")
        if tag_time:
            dst.update_tags(TIFFTAG_DATETIME=tag_time)
    return path


@pytest.mark.parametrize("stitch", ["crop", "hann"])
def test_masked_pixels_are_never_classified(ray_local, sample_dir, tmp_path, stitch):
    rng = np.random.default_rng(1)
    scl = rng.choice([4, 5, 6, 8, 9, 3, 10], size=(384, 448)).astype(np.uint8)
    scl[:128, :128] = 9  # a tile all cloud: written masked without the model
    scl[200:260, 300:] = 0
    src = _scene_with_scl(tmp_path / "s.tif", sample_dir, scl)
    prefix = tmp_path / "o"
    (rec,) = predict([str(src)], str(prefix), PredictOptions(
        model="index", tile_size=128, halo=16, stitch=stitch, probabilities=True, mask=parse_mask("scl")), **QUIET)
    with rasterio.open(src) as image:
        valid = (image.read([1, 2, 3, 4]) != image.nodata).any(axis=0)  # nodata stays nodata
    assert (~valid).any()
    masked = np.isin(scl, SCL_MASKED) & valid
    with rasterio.open(prefix / "s.tif") as cog:
        classes = cog.read(1)
        assert json.loads(cog.tags()["CLASS_NAMES"]) and cog.tags()["MASKED_CLASS"] == str(MASKED)
    np.testing.assert_array_equal(classes == MASKED, masked)
    assert (classes[~masked & valid] < 4).all() and (classes[~valid] == NODATA).all()  # clear pixels classified
    # the same scene without a mask: the clear pixels get the same classes
    (plain,) = predict([str(src)], str(tmp_path / "p"), PredictOptions(model="index", tile_size=128, halo=16,
                                                                         stitch=stitch), **QUIET)
    with rasterio.open(tmp_path / "p" / "s.tif") as cog:
        np.testing.assert_array_equal(cog.read(1)[~masked], classes[~masked])
    proba = xr.open_zarr(prefix / "s.zarr")["probabilities"].values
    assert (proba[:, masked] == 0).all() and (proba[:, ~masked & valid].sum(axis=0) > 0).all()
    assert rec["masked"]["pixels"] == int(masked.sum())
    assert rec["masked"]["fraction"] == pytest.approx(masked.sum() / valid.sum(), abs=1e-6)
    assert rec["tiles"]["masked_skipped"] == 1 and rec["parameters"]["mask"] == "scl:0,1,3,8,9,10"
    job = json.loads((prefix / "_job.json").read_text())
    assert job["scenes"][0]["masked_fraction"] == rec["masked"]["fraction"]
    item = json.loads((prefix / "s.item.json").read_text())
    values = {c["value"]: c for c in item["assets"]["classes"]["classification:classes"]}
    assert values[MASKED]["name"] == "masked"


def test_a_20m_scl_asset_is_stacked_by_nearest_and_masks(ray_local, tmp_path_factory, tmp_path):
    from geoseg.data.sample import write_sample

    d = tmp_path_factory.mktemp("sclitem")
    write_sample(str(d), size=256, seed=7, stac=True)
    item = json.loads((d / "item.json").read_text())
    with rasterio.open(d / item["assets"]["B8A"]["href"]) as b8a:  # the 20 m grid
        prof, h, w = b8a.profile, b8a.height, b8a.width
    scl20 = np.full((h, w), 4, np.uint8)
    scl20[: h // 2, : w // 3] = 9
    prof.update(dtype="uint8", nodata=None)
    with rasterio.open(d / "scl.tif", "w", **prof) as dst:
        dst.write(scl20, 1)
    item["assets"]["scl"] = {"href": "scl.tif", "type": "image/tiff; application=geotiff", "roles": ["data"]}
    (d / "item.json").write_text(json.dumps(item))
    opts = PredictOptions(model="index", tile_size=128, halo=16, mask=parse_mask("scl"),
                          stack=StackOptions(("blue", "green", "red", "nir")))
    (rec,) = predict([str(d / "item.json")], str(tmp_path / "o"), opts, **QUIET)
    with rasterio.open(rec["outputs"]["cog"]) as cog:
        classes = cog.read(1)
    want = np.kron(np.isin(scl20, SCL_MASKED), np.ones((2, 2), bool))[: classes.shape[0], : classes.shape[1]]
    want &= classes != NODATA
    np.testing.assert_array_equal(classes == MASKED, want)
    assert want.mean() > 0.1
    # an item without the asset: refused in one line naming the item and the asset
    del item["assets"]["scl"]
    (d / "noscl.json").write_text(json.dumps({**item, "id": "no-scl-item"}))
    with pytest.raises(InputError) as err:
        predict([str(d / "noscl.json")], str(tmp_path / "x"), opts, **QUIET)
    assert "no-scl-item" in str(err.value) and "'scl'" in str(err.value) and "\n" not in str(err.value)


def test_a_raster_without_the_mask_band_is_refused_in_one_line(ray_local, sample_dir, tmp_path):
    with pytest.raises(InputError) as err:
        predict([str(sample_dir / "scene.tif")], str(tmp_path / "o"),
                PredictOptions(model="index", mask=parse_mask("qa_pixel")), **QUIET)
    assert "scene.tif" in str(err.value) and "'qa_pixel'" in str(err.value) and "\n" not in str(err.value)


def test_max_cloud_leaves_out_cloudier_items(tmp_path):
    from geoseg.data.inputs import ItemSelection, expand_inputs

    items = []
    for i, cover in enumerate([5.0, 35.0, 80.0, None]):
        props = {"datetime": "2025-06-01T00:00:00Z", **({"eo:cloud_cover": cover} if cover is not None else {})}
        items.append({"type": "Feature", "id": f"i{i}", "properties": props,
                      "assets": {"image": {"href": f"/data/i{i}.tif", "type": "image/tiff"}}})
    (tmp_path / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    select = ItemSelection(max_cloud=35)
    urls = expand_inputs([str(tmp_path / "items.json")], select=select)
    assert urls == ["/data/i0.tif", "/data/i1.tif", "/data/i3.tif"]  # unknown cover: kept
    assert select.skipped == [("i2", 80.0)] and select.seen == 4
    assert expand_inputs([str(tmp_path / "items.json")], select=ItemSelection(max_cloud=1.0)) == ["/data/i3.tif"]
    (tmp_path / "cloudy.json").write_text(json.dumps({"type": "FeatureCollection", "features": items[:3]}))
    with pytest.raises(InputError, match="--max-cloud 1: all 3 items"):
        expand_inputs([str(tmp_path / "cloudy.json")], select=ItemSelection(max_cloud=1.0))
    with pytest.raises(InputError, match="percentage"):
        PredictOptions(model="index", max_cloud=120)


# --- the cloud model ------------------------------------------------------------------


def _fbm(rng, h, w):
    """Fractal noise: what gives a synthetic cloud the texture of a real one (a smooth bright blob
    is not a cloud to the model)."""
    from scipy.ndimage import gaussian_filter

    out = np.zeros((h, w))
    for sigma, weight in ((48, 1.0), (16, 0.5), (6, 0.3), (2, 0.15)):
        n = gaussian_filter(rng.standard_normal((h, w)), sigma)
        out += weight * n / n.std()
    return out


def test_cloud_model_runs_offline_and_its_mask_enters_the_class_map(ray_local, tmp_path, monkeypatch):
    """ukis-csmask's ONNX model, from the installed wheel, no network: a textured cloud over mixed
    land is masked, the land away from it is not."""
    import socket

    def no_network(*a, **k):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    rng = np.random.default_rng(1)
    h = w = 512
    spectra = np.array([[0.03, 0.06, 0.04, 0.30], [0.10, 0.14, 0.18, 0.26], [0.12, 0.13, 0.14, 0.20],
                        [0.05, 0.05, 0.03, 0.02]])
    land = rng.integers(0, 4, (h // 32, w // 32)).repeat(32, 0).repeat(32, 1)
    img = spectra[land].transpose(2, 0, 1) * (1 + 0.15 * rng.standard_normal((4, h, w)))
    yy, xx = np.mgrid[:h, :w]
    blob = np.exp(-(((yy - h * 0.4) / (h * 0.2)) ** 2 + ((xx - w * 0.45) / (w * 0.25)) ** 2))
    cloud = np.clip(blob * (1.2 + 0.35 * _fbm(rng, h, w)), 0, 1)
    white = np.array([0.55, 0.56, 0.58, 0.62])[:, None, None] * (1 + 0.1 * _fbm(rng, h, w))
    img = img * (1 - cloud) + white * cloud
    prof = dict(driver="GTiff", height=h, width=w, count=4, dtype="uint16", crs="EPSG:32632",
                transform=Affine(10, 0, 500000, 0, -10, 5000000), nodata=0)
    with rasterio.open(tmp_path / "c.tif", "w", **prof) as dst:
        dst.write((img * 10000).clip(1, 10000).astype("uint16"))
        dst.descriptions = ("blue", "green", "red", "nir")
    (rec,) = predict([str(tmp_path / "c.tif")], str(tmp_path / "o"),
                     PredictOptions(model="index", tile_size=256, halo=32, mask=parse_mask("model")), **QUIET)
    with rasterio.open(rec["outputs"]["cog"]) as cog:
        classes = cog.read(1)
    masked = classes == MASKED
    assert masked[cloud > 0.5].mean() > 0.9  # the cloud
    assert masked[cloud < 0.01].mean() < 0.1  # clear land (a buffer of 4 model pixels grows the cloud)
    assert (classes[~masked] < 4).all()
    assert rec["masked"]["pixels"] == int(masked.sum()) and rec["masked"]["source"] == "model:l2a"


def test_the_cloud_model_missing_is_refused_in_one_line_before_any_work(tmp_path, monkeypatch):
    import importlib.util

    from geoseg.predict.plan import plan_job

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ukis_csmask" else real(name, *a))
    with pytest.raises(InputError) as err:
        plan_job([str(tmp_path / "any.tif")], str(tmp_path / "o"),
                 PredictOptions(model="index", mask=parse_mask("model")), log=lambda *_: None)
    assert "geoseg[clouds]" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# --- training -------------------------------------------------------------------------


def test_training_leaves_masked_pixels_out(sample_dir, tmp_path):
    from geoseg.train.data import (MAX_MASKED, mostly_masked, open_pairs, plan_training, read_val_chips,
                                   sample_train_chips)

    with rasterio.open(sample_dir / "labels.tif") as lab:
        labels = lab.read(1)
    scl = np.full(labels.shape, 4, np.uint8)
    scl[:320] = 9  # the top half cloudy: the block row 256-384 half masked
    img = _scene_with_scl(tmp_path / "t.tif", sample_dir, scl)
    mask = parse_mask("scl")
    pairs = open_pairs([str(img)], [str(sample_dir / "labels.tif")], [1, 2, 3, 4], mask=mask)
    assert pairs[0].mask_band == 5
    plan = plan_training(pairs, chip=64, block=128, num_classes=4)
    share = plan.info["masked"]["fraction_of_labelled"][str(img)]
    assert 0.4 < share < 0.6
    masked_rows = np.isin(scl, SCL_MASKED)
    assert not (plan.train_blocks[:, 1] < 256).any()  # blocks with every pixel masked: never drawn
    # chips drawn in the half-masked block row: at a random offset about half of them would be
    # mostly masked; they are drawn again
    half = plan.train_blocks[:, 1] == 256
    plan.train_blocks, plan.train_weights = plan.train_blocks[half], np.full(half.sum(), 1 / half.sum())
    chips = sample_train_chips({"id": np.arange(200)}, plan)
    assert not (chips["label"] == MASKED).any()  # masked: the ignore value
    ignored = (chips["label"] == NODATA).mean(axis=(1, 2))
    assert (ignored > MAX_MASKED).mean() < 0.15, (ignored > MAX_MASKED).mean()
    val = read_val_chips({"pair": plan.val_chips[:, 0], "row": plan.val_chips[:, 1], "col": plan.val_chips[:, 2]}, plan)
    for (p, r, c), lab in zip(plan.val_chips, val["label"]):
        hidden = masked_rows[r : r + 64, c : c + 64]
        assert (lab[hidden] == NODATA).all()
        assert (lab[~hidden] == labels[r : r + 64, c : c + 64][~hidden]).all()
    assert mostly_masked(np.array([[[MASKED] * 3 + [1]]]))[0] and MAX_MASKED == 0.5


# --- time in the mosaic ---------------------------------------------------------------


@pytest.fixture(scope="module")
def series(sample_dir, tmp_path_factory):
    """Four dates over two UTM zones (two scenes in zone 32, two in 33, overlapping), each with its own
    clouds in an SCL band, predicted with --mask scl and probabilities."""
    from geoseg.execution import runtime
    from geoseg.predict.job import PRELOAD

    if not runtime.owns_ray():
        runtime.shutdown()
        runtime.init_ray(None, preload=PRELOAD)
    d = tmp_path_factory.mktemp("series")
    rng = np.random.default_rng(4)
    places = [(32632, ZONE_EDGE - 0.05, 45.0), (32633, ZONE_EDGE - 0.04, 44.995), (32632, ZONE_EDGE - 0.045, 44.998),
              (32633, ZONE_EDGE - 0.035, 45.001)]
    paths = []
    for i, (epsg, lon, lat) in enumerate(places):
        scl = np.full((320, 384), 4, np.uint8)
        for _ in range(3):
            cy, cx = rng.integers(0, 320), rng.integers(0, 384)
            yy, xx = np.mgrid[:320, :384]
            scl[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(40, 110) ** 2] = rng.choice([3, 8, 9])
        paths.append(str(_scene_with_scl(d / f"t{i}.tif", sample_dir, scl, f"2025:06:{i * 5 + 1:02d} 10:00:00",
                                         epsg, lon, lat)))
    prefix = d / "o"
    predict(paths, str(prefix), PredictOptions(model="index", tile_size=128, halo=16, probabilities=True,
                                               mask=parse_mask("scl")), **QUIET)
    return prefix


def _warped(prefix, stem, shape, t, crs):
    """A scene's classes and probabilities on the mosaic grid: every pixel centre transformed
    exactly, nearest neighbour (NODATA / 0 outside)."""
    h, w = shape
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    xs, ys = t.c + t.a * cols + t.b * rows, t.f + t.d * cols + t.e * rows
    with rasterio.open(prefix / f"{stem}.tif") as src:
        classes = src.read(1)
        sx, sy = (np.asarray(v) for v in transform(crs, src.crs, xs.ravel().tolist(), ys.ravel().tolist()))
        inv = ~src.transform
        fc, fr = inv.c + inv.a * sx + inv.b * sy, inv.f + inv.d * sx + inv.e * sy
    c, r = np.floor(fc).astype(int).reshape(shape), np.floor(fr).astype(int).reshape(shape)
    ok = (r >= 0) & (r < classes.shape[0]) & (c >= 0) & (c < classes.shape[1])
    proba = xr.open_zarr(prefix / f"{stem}.zarr")["probabilities"].values
    out = np.full(shape, NODATA, np.uint8)
    out[ok] = classes[r[ok], c[ok]]
    p = np.zeros((proba.shape[0], *shape), np.uint8)
    p[:, ok] = proba[:, r[ok], c[ok]]
    p[:, out == NODATA] = 0
    return out, p


def _expected(rule, obs, probs, k):
    """Each rule over the observations (in time order), directly in numpy over the whole grid."""
    obs, probs = np.stack(obs), np.stack(probs).astype(np.float64)
    clear = obs < k
    count = clear.sum(axis=0)
    hits = np.stack([(obs == c).sum(axis=0) for c in range(k)])
    if rule == "latest-clear":
        idx = np.where(clear.any(0), len(obs) - 1 - np.argmax(clear[::-1], axis=0), 0)
        out = np.take_along_axis(obs, idx[None], 0)[0]
    elif rule == "first-clear":
        out = np.take_along_axis(obs, np.argmax(clear, axis=0)[None], 0)[0]
    elif rule == "mean-probability":
        out = np.where(clear[:, None], probs, 0).sum(axis=0).argmax(axis=0)
    else:  # mode; ties: the higher summed probability, then the class seen latest
        psum = np.where(clear[:, None], probs, 0).sum(axis=0)
        last = np.stack([np.where((obs == c).any(0), len(obs) - 1 - np.argmax((obs == c)[::-1], axis=0), -1)
                         for c in range(k)])
        key = hits.astype(np.float64) * 1e9 + psum * 1e2 + last  # psum < 255 x 4 dates; last < 100
        out = key.argmax(axis=0)
    out = out.astype(np.uint8)
    out[count == 0] = np.where((obs == MASKED).any(0), MASKED, NODATA)[count == 0]
    freq = np.rint(hits / np.maximum(count, 1) * 255).astype(np.uint8)
    return out, count, freq


@pytest.mark.parametrize("rule", ["mode", "mean-probability", "latest-clear", "first-clear"])
def test_each_temporal_rule_equals_numpy_over_two_utm_zones(series, rule):
    from geoseg.mosaic.job import mosaic

    (rec,) = mosaic(str(series), "EPSG:4326:0.0001", name=rule, chunk=128, rule=rule, frequencies=True, **QUIET)
    ds = xr.open_zarr(rec["zarr"])
    got = ds["classes"].values
    t = Affine(*rec["transform"])
    stems = [s["stem"] for s in sorted(rec["scenes"], key=lambda s: s["order"])]
    assert stems == ["t0", "t1", "t2", "t3"]  # by acquisition time; t0, t2 in zone 32, t1, t3 in zone 33
    warped = [_warped(series, s, got.shape, t, "EPSG:4326") for s in stems]
    want, count, freq = _expected(rule, [w[0] for w in warped], [w[1] for w in warped], 4)
    assert (count >= 2).mean() > 0.2 and (count == 0).any()  # overlaps, and pixels seen by nothing clear
    np.testing.assert_array_equal(ds["count"].values, count)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.rint(ds["frequencies"].values * 255), freq)  # stored uint8, 255 = all
    assert (got == MASKED).any() and rec["merge"]["rule"] == rule and "count" in rec["layers"]


def test_from_to_selects_the_dates(series):
    from geoseg.mosaic import Period
    from geoseg.mosaic.job import mosaic

    (rec,) = mosaic(str(series), "EPSG:4326:0.0001", name="june6", chunk=128, rule="latest-clear",
                    period=Period("2025-06-06", "2025-06-11"), **QUIET)
    assert sorted(s["stem"] for s in rec["scenes"]) == ["t1", "t2"]
    assert rec["merge"]["from"] == "2025-06-06" and rec["fingerprint"]["to"] == "2025-06-11"
    with pytest.raises(InputError, match="no scene was acquired"):
        mosaic(str(series), "EPSG:4326:0.0001", name="none", period=Period("2030-01-01"), **QUIET)
    with pytest.raises(InputError, match="after --to"):
        Period("2025-07-01", "2025-06-01")
    with pytest.raises(InputError, match="ISO 8601"):
        Period("June")
