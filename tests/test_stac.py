"""STAC items with one COG per band: stacked on one grid by a VRT, read window by window,
equal to the same pixels stacked into one GeoTIFF; trained on and predicted from, on S3 too."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio

from geoseg.errors import InputError
from geoseg.predict import PredictOptions, predict
from geoseg.data.stac import StackOptions, stack_item


@pytest.fixture(scope="module")
def item_dir(tmp_path_factory):
    """``geoseg sample --stac``: B02, B03, B04, B08 at 10 m, B8A at 20 m, scale 0.0001 in raster:bands."""
    from geoseg.data.sample import write_sample

    d = tmp_path_factory.mktemp("stac")
    urls = write_sample(str(d), size=384, seed=5, stac=True)
    # the same 10 m pixels stacked into one GeoTIFF, with the same scale
    shutil.copy(urls["scene"], d / "stacked.tif")
    with rasterio.open(d / "stacked.tif", "r+", IGNORE_COG_LAYOUT_BREAK="YES") as dst:
        dst.scales, dst.offsets = (0.0001,) * 4, (0.0,) * 4
    return d


def _item(d):
    return json.loads((d / "item.json").read_text())


def test_sample_item_has_one_cog_per_band(item_dir):
    item = _item(item_dir)
    assert set(item["assets"]) == {"B02", "B03", "B04", "B08", "B8A", "labels"}
    with rasterio.open(item["assets"]["B02"]["href"]) as b02, rasterio.open(item["assets"]["B8A"]["href"]) as b8a:
        assert b02.count == b8a.count == 1 and b02.res == (10.0, 10.0) and b8a.res == (20.0, 20.0)
        assert b8a.shape == (192, 192) and b02.crs == b8a.crs
    with rasterio.open(item_dir / "scene.tif") as scene, rasterio.open(item["assets"]["B04"]["href"]) as b04:
        np.testing.assert_array_equal(scene.read(3), b04.read(1))  # red is band 3 of the stacked scene


def test_stack_resolves_by_key_and_common_name_and_resamples(item_dir, tmp_path):
    item, src = _item(item_dir), str(item_dir / "item.json")
    by_name = stack_item(item, src, ["blue", "green", "red", "nir08"], str(tmp_path), resampling={"nir08": "nearest"})
    with rasterio.open(by_name) as vrt, rasterio.open(item["assets"]["B8A"]["href"]) as b8a:
        assert vrt.count == 4 and vrt.shape == (384, 384) and vrt.descriptions == ("blue", "green", "red", "nir08")
        assert vrt.scales == (0.0001,) * 4 and vrt.nodata == 0
        up, coarse = vrt.read(4), b8a.read(1)
        np.testing.assert_array_equal(up[::2, ::2], coarse)  # nearest: each 10 m pixel is its 20 m parent
        np.testing.assert_array_equal(up[1::2, 1::2], coarse)
    by_key = stack_item(item, src, ["B02", "B03", "B04", "B08"], str(tmp_path / "k"))
    with rasterio.open(by_key) as vrt, rasterio.open(item_dir / "scene.tif") as scene:
        np.testing.assert_array_equal(vrt.read(), scene.read())  # 10 m bands: the very pixels
    coarse = stack_item(item, src, ["blue", "nir08"], str(tmp_path / "r"), resolution=20.0)
    with rasterio.open(coarse) as vrt:
        assert vrt.shape == (192, 192) and vrt.res == (20.0, 20.0)
    with pytest.raises(InputError, match=r"has no band 'swir16'.*blue"):
        stack_item(item, src, ["blue", "swir16"], str(tmp_path / "x"))


def test_item_predicts_like_the_stacked_geotiff(ray_local, item_dir, tmp_path):
    """The index model's bands (blue, green, red, nir) are stacked from the item without flags."""
    opts = PredictOptions(model="index", tile_size=128, halo=16)
    (from_item,) = predict([str(item_dir / "item.json")], str(tmp_path / "item"), opts)
    (from_tif,) = predict([str(item_dir / "stacked.tif")], str(tmp_path / "tif"), opts)
    with rasterio.open(from_item["outputs"]["cog"]) as a, rasterio.open(from_tif["outputs"]["cog"]) as b:
        assert a.crs == b.crs and a.transform == b.transform
        np.testing.assert_array_equal(a.read(), b.read())
    assert from_item["stac_item"]["id"] == _item(item_dir)["id"]
    assert from_item["outputs"]["cog"].endswith(f"{_item(item_dir)['id']}.tif")

    # the outputs as a STAC catalog that tools without geoseg load
    import odc.stac
    import pystac

    cat = pystac.Catalog.from_file(str(tmp_path / "item" / "catalog.json"))
    (out_item,) = list(cat.get_items())
    assert out_item.id == _item(item_dir)["id"]
    assert [ln.get_absolute_href() for ln in out_item.links if ln.rel == "derived_from"] == [str(item_dir / "item.json")]
    names = [c["name"] for c in out_item.properties["classification:classes"]]
    assert names[:4] == ["bare_soil", "vegetation", "water", "built_up"]
    assert out_item.properties["proj:code"] == "EPSG:32633" and out_item.properties["proj:shape"] == [384, 384]
    assert set(out_item.assets) == {"classes", "zarr", "record"}
    ds = odc.stac.load([out_item], bands=["classes"])
    with rasterio.open(from_item["outputs"]["cog"]) as cog:
        np.testing.assert_array_equal(ds["classes"].values[0], cog.read(1))
        assert ds.odc.geobox.crs.epsg == 32633 and ds.odc.geobox.affine == cog.transform


def test_items_in_two_utm_zones_keep_their_own_grids(ray_local, item_dir, tmp_path):
    """One job, items in zones 33N and 34N: each output keeps its item's CRS; nothing is reprojected."""
    item = _item(item_dir)
    other = tmp_path / "zone34"
    other.mkdir()
    for key, asset in item["assets"].items():
        dst = other / f"{key}.tif"
        shutil.copy(asset["href"], dst)
        with rasterio.open(dst, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as d:
            d.crs = "EPSG:32634"
        asset["href"] = str(dst)
    item["id"], item["properties"]["proj:code"] = "zone34", "EPSG:32634"
    (other / "item.json").write_text(json.dumps(item))
    recs = predict([str(item_dir / "item.json"), str(other / "item.json")], str(tmp_path / "o"),
                   PredictOptions(model="index", tile_size=128, halo=16))
    crs = {}
    for rec in recs:
        with rasterio.open(rec["outputs"]["cog"]) as cog:
            crs[rec["stac_item"]["id"]] = (cog.crs.to_epsg(), cog.shape, cog.read(1))
    assert crs["zone34"][0] == 32634 and crs[_item(item_dir)["id"]][0] == 32633
    assert crs["zone34"][1] == crs[_item(item_dir)["id"]][1] == (384, 384)
    np.testing.assert_array_equal(crs["zone34"][2], crs[_item(item_dir)["id"]][2])

    # evaluate the job's output folder: each output item leads to its input item, whose
    # "labels" asset holds the labels (no --labels needed)
    from geoseg.evaluate import evaluate, run_evaluation

    rep = run_evaluation([str(tmp_path / "o")], out=str(tmp_path / "report"))
    assert sorted(rep["scenes"]) == sorted(["zone34", _item(item_dir)["id"]])
    a, b = rep["scenes"].values()
    assert a["labels"] != b["labels"] and a["confusion"] == b["confusion"]
    direct = evaluate(recs[0]["outputs"]["cog"], str(item_dir / "labels.tif"))
    assert a["confusion"] == direct["confusion"] and a["miou"] == direct["miou"] > 0.3
    assert np.array(rep["confusion"]).sum() == 2 * np.array(direct["confusion"]).sum()


def test_item_on_s3_trains_and_predicts_with_its_bands(ray_local, s3, item_dir, tmp_path):
    """Single-band COGs at 10 and 20 m on the S3 endpoint: train on 4 named bands, then predict
    from the item with the checkpoint alone; an item without one of them is refused in one line."""
    from geoseg.models import checkpoint
    from geoseg.train import TrainConfig, train

    item = _item(item_dir)
    for key, asset in item["assets"].items():
        s3.upload_file(asset["href"], "geoseg", f"s2/{key}.tif")
        asset["href"] = f"s3://geoseg/s2/{key}.tif"
    s3.put_object(Bucket="geoseg", Key="s2/item.json", Body=json.dumps(item).encode())
    url = "s3://geoseg/s2/item.json"
    run = "s3://geoseg/runs/s2"  # checkpoints in object storage too
    cfg = TrainConfig(images=[url], labels=["s3://geoseg/s2/labels.tif"], out=run, arch="tinyfcn",
                      assets=["blue", "green", "red", "nir08"], epochs=1, chip_size=64, block_size=128,
                      chips_per_epoch=16, batch_size=8, workers=1)
    summary = train(cfg)
    assert summary["best_checkpoint"] == f"{run}/best"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="geoseg", Prefix="runs/s2/")["Contents"]}
    assert {"runs/s2/best/model.safetensors", "runs/s2/run.json", "runs/s2/curves.png"} <= keys
    assert any(k.startswith("runs/s2/checkpoint_") for k in keys)
    # the chip cache on object storage beside the run: every block decoded once, chips cut by byte ranges
    blocks = summary["input"]["chip_cache"]["blocks"]
    assert "runs/s2/chips/cache.json" in keys and sum(k.endswith(".chip") for k in keys) == blocks > 0
    _, meta = checkpoint.load(run)
    assert meta.model.arch == "tinyfcn" and meta.band_roles == ["blue", "green", "red", "nir08"]
    assert meta.extra["inputs"]["assets"] == ["blue", "green", "red", "nir08"] and meta.extra["inputs"]["scaled"]
    (rec,) = predict([url], str(tmp_path / "pred"), PredictOptions(checkpoint=run, tile_size=96, halo=16))
    assert rec["tiles"]["predicted"] > 0
    with rasterio.open(rec["outputs"]["cog"]) as cog:
        assert cog.shape == (384, 384)  # the 10 m grid, the 20 m band resampled onto it
    from geoseg.errors import RasterError

    raw = tmp_path / "raw.tif"  # the same bands as raw digital numbers: values 10^4 off what the model saw
    shutil.copy(item_dir / "scene.tif", raw)
    with rasterio.open(raw, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as dst:
        dst.descriptions = ("blue", "green", "red", "nir08")
    with pytest.raises(RasterError, match=r"raw.tif: the model was trained on scaled values"):
        predict([str(raw)], str(tmp_path / "p3"), PredictOptions(checkpoint=run, tile_size=96, halo=16))
    with pytest.raises(InputError, match=r"scene.tif: the model reads blue, green, red, nir08.*without nir08"):
        predict([str(item_dir / "scene.tif")], str(tmp_path / "p4"), PredictOptions(checkpoint=run, tile_size=96,
                                                                                      halo=16))
    del item["assets"]["B8A"]
    s3.put_object(Bucket="geoseg", Key="s2/no-b8a.json", Body=json.dumps(item).encode())
    with pytest.raises(InputError, match=r"no-b8a.json: item .* has no band 'nir08'"):
        predict(["s3://geoseg/s2/no-b8a.json"], str(tmp_path / "p2"), PredictOptions(checkpoint=run, tile_size=96,
                                                                                       halo=16))


def test_stack_options_change_the_fingerprint():
    a = PredictOptions(model="index").fingerprint([1, 2, 3, 4])
    b = PredictOptions(model="index", stack=StackOptions(("blue", "nir08"), 20.0)).fingerprint([1, 2])
    assert "stack" not in a and b["stack"] == {"assets": ["blue", "nir08"], "resolution": 20.0}


@pytest.fixture()
def stac_api(item_dir, tmp_path_factory, s3):
    """A real STAC API (stac-fastapi-static) on 127.0.0.1 over a static catalog of three sample items
    whose band COGs are on the S3 endpoint: two in June 2025 (apart), one in 2024."""
    import socket
    import subprocess
    import sys
    import time

    import pystac
    import requests

    root = tmp_path_factory.mktemp("api")
    base = _item(item_dir)
    for key, asset in base["assets"].items():  # as in real catalogs: the COGs on object storage
        s3.upload_file(asset["href"], "geoseg", f"cat/{key}.tif")
        asset["href"] = f"s3://geoseg/cat/{key}.tif"
    items = []
    for item_id, when, shift in (("s2-a", "2025-06-15T10:00:00Z", 0.0), ("s2-b", "2025-06-20T10:00:00Z", 3.0),
                                 ("s2-old", "2024-06-15T10:00:00Z", 0.0)):
        doc = json.loads(json.dumps(base))
        doc["id"], doc["properties"]["datetime"] = item_id, when
        doc["bbox"] = [doc["bbox"][0] + shift, doc["bbox"][1], doc["bbox"][2] + shift, doc["bbox"][3]]
        w, s_, e, n = doc["bbox"]
        doc["geometry"] = {"type": "Polygon", "coordinates": [[[w, s_], [e, s_], [e, n], [w, n], [w, s_]]]}
        items.append(pystac.Item.from_dict(doc))
    col = pystac.Collection("s2like", "Sentinel-2-like sample scenes", pystac.Extent(
        pystac.SpatialExtent([[-180, -90, 180, 90]]), pystac.TemporalExtent([[None, None]])))
    col.add_items(items)
    cat = pystac.Catalog("root", "geoseg test catalog")
    cat.add_child(col)
    cat.normalize_hrefs("file://" + str(root / "catalog"))  # absolute file URLs, as the server wants
    cat.save(pystac.CatalogType.ABSOLUTE_PUBLISHED)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**__import__("os").environ, "CATALOG_HREF": str(root / "catalog" / "catalog.json"),
           "APP_HOST": "127.0.0.1", "APP_PORT": str(port), "RELOAD": "false", "LOG_LEVEL": "warning",
           "ASSUME_ABSOLUTE_HREFS": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "stac_fastapi.static.app"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if requests.get(url, timeout=10).ok:
                    break
            except requests.RequestException:  # not listening yet, or still walking the catalog
                time.sleep(0.3)
        else:
            raise RuntimeError(f"STAC API did not start: {proc.stderr.read1().decode() if proc.poll() else ''}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_search_predicts_every_item_found(ray_local, stac_api, item_dir, tmp_path):
    from geoseg.data.stac import Search

    search = Search.parse(stac_api, "s2like", None, "2025-01-01T00:00:00Z/2025-12-31T23:59:59Z")
    recs = predict([], str(tmp_path / "o"), PredictOptions(model="index", tile_size=128, halo=16, search=search))
    assert sorted(r["stac_item"]["id"] for r in recs) == ["s2-a", "s2-b"]  # not the 2024 item
    summary = json.loads((tmp_path / "o" / "_job.json").read_text())
    assert sorted(s["stac_item"]["id"] for s in summary["scenes"]) == ["s2-a", "s2-b"]
    assert all(s["stac_item"]["href"].startswith(stac_api) for s in summary["scenes"])  # the API's item URLs
    with rasterio.open(recs[0]["outputs"]["cog"]) as a, rasterio.open(recs[1]["outputs"]["cog"]) as b:
        np.testing.assert_array_equal(a.read(), b.read())  # the same pixels behind both items
    # a bbox around the first item only
    w, s_, e, n = _item(item_dir)["bbox"]
    only_a = Search.parse(stac_api, "s2like", f"{w},{s_},{e},{n}", "2025-06-01T00:00:00Z/2025-06-30T00:00:00Z")
    assert [i["id"] for i in only_a.items()] == ["s2-a"]
    with pytest.raises(InputError, match="no items match"):
        Search.parse(stac_api, "s2like", None, "2019-01-01T00:00:00Z/2019-12-31T00:00:00Z").items()


def test_a_search_composites_the_items_it_finds(stac_api, item_dir, tmp_path):
    """geoseg composite over a STAC API search: the two 2025 items (band COGs on S3), not the 2024 one."""
    from geoseg.composite import CompositeOptions, composite_here
    from geoseg.data.stac import Search

    search = Search.parse(stac_api, "s2like", None, "2025-01-01T00:00:00Z/2025-12-31T23:59:59Z")
    rec = composite_here(CompositeOptions((), str(tmp_path / "comp"), "utm:10", bands=("blue", "nir08"), side=256,
                                          search=search), log=lambda *_: None)
    assert rec["observations"] == 2 and rec["windows"][0]["observations"] == 2 and rec["stores"][0]["zone"]
    with rasterio.open(open(tmp_path / "comp" / "stacks.txt").read().split()[0]) as src:
        assert src.descriptions == ("blue@all", "nir08@all", "count@all")
        count, blue = src.read(3), src.read(1)
    assert count.max() == 2 and set(np.unique(count)) <= {0, 1, 2}  # the two items: the same pixels
    with rasterio.open(_item(item_dir)["assets"]["B02"]["href"]) as b02:
        assert 0 < blue[count == 2].max() <= b02.read(1).max() * 0.0001 + 1e-6  # scaled to reflectance
