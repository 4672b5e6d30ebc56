"""STAC-GeoParquet indexes as inputs: the filters are pushed down to the Parquet reader (row groups
skipped), choose the same items as the same filters over the items as JSON, and the items chosen
predict and composite exactly as their JSON files do, from S3 too; a file that is not an index is
refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio

from geoseg.data import stacindex
from geoseg.data.inputs import ItemSelection, sources
from geoseg.data.stac import Search
from geoseg.errors import InputError


def _items(n: int, seed: int = 0) -> list[dict]:
    """``n`` items over Europe through 2024, in date order (as archives are: row groups by time)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x, y = float(rng.uniform(-10, 30)), float(rng.uniform(35, 60))
        day = np.datetime64("2024-01-01") + int(i * 366 // n)
        cover = None if i % 17 == 0 else round(float(rng.uniform(0, 100)), 1)
        out.append({
            "type": "Feature", "stac_version": "1.1.0", "id": f"it-{i:05d}",
            "collection": "sentinel-2-l2a" if i % 3 else "landsat-c2-l2",
            "bbox": [x, y, x + 1.0, y + 1.0],
            "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + 1, y], [x + 1, y + 1], [x, y + 1], [x, y]]]},
            "properties": {"datetime": f"{day}T10:30:00Z", "proj:code": "EPSG:32632",
                           **({"eo:cloud_cover": cover} if cover is not None else {}),
                           "s2:mgrs_tile": f"T{i % 60:02d}XYZ", "view:sun_elevation": 40.0},
            "assets": {"red": {"href": f"s3://archive/{i}/red.tif", "type": "image/tiff; application=geotiff"}},
            "links": [],
        })
    return out


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    items = _items(4000)
    url = str(tmp_path_factory.mktemp("index") / "items.parquet")
    return stacindex.write_index(items, url, row_group_size=400), items


CASES = [
    dict(bbox="0,45,10,50"),
    dict(datetime="2024-03-01/2024-03-31"),
    dict(datetime="2024-11-15/.."),
    dict(datetime="2024-06-01"),
    dict(collections="landsat-c2-l2", bbox="-5,40,5,45", datetime="2024-05-01T00:00:00Z/2024-08-31T23:59:59Z"),
    dict(collections="sentinel-2-l2a", max_cloud=20.0),
]


@pytest.mark.parametrize("case", CASES, ids=[",".join(c) for c in CASES])
def test_an_index_keeps_what_the_same_filters_keep_of_the_json_items(index, case, tmp_path):
    url, items = index
    case = dict(case)
    cloud = case.pop("max_cloud", None)
    search = Search.parse(None, **case)
    got = stacindex.read_index(url, search, cloud)

    def cloudy(it):
        c = it["properties"].get("eo:cloud_cover")
        return cloud is not None and c is not None and c > cloud

    want = [it["id"] for it in items if search.matches(it) and not cloudy(it)]
    assert 0 < len(want) < len(items)
    assert [g["id"] for g in got] == want
    # the same filters over the items as JSON files, through the same door as the index
    (tmp_path / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    kept = sources([str(tmp_path / "items.json")], None, ItemSelection(max_cloud=cloud, where=search))
    assert [item["id"] for item, _ in kept] == want
    # the items come back whole: assets, properties the filters and stacking read, geometry
    first = next(it for it in items if it["id"] == want[0])
    assert got[0]["assets"]["red"]["href"] == first["assets"]["red"]["href"]
    assert got[0]["properties"]["proj:code"] == "EPSG:32632" and got[0]["bbox"] == first["bbox"]
    assert "s2:mgrs_tile" not in got[0]["properties"]  # a column geoseg does not read is not read


def test_the_filters_skip_row_groups_before_reading_them(index):
    """The expression prunes by the row groups' statistics: a month of a year sorted by date touches
    2 of 10 row groups; the row groups that are read hold every match."""
    url, items = index
    dataset = stacindex.open_index(url)
    search = Search.parse(None, datetime="2024-03-01/2024-03-31")
    cond, exact = stacindex.expression(dataset.schema, search, None)
    assert exact
    (fragment,) = dataset.get_fragments()
    assert fragment.metadata.num_row_groups == 10
    kept = fragment.split_by_row_group(cond)
    assert 1 <= len(kept) <= 2
    rows = sum(f.row_groups[0].num_rows for f in kept)
    assert rows < len(items) / 4 and len(stacindex.read_index(url, search)) <= rows
    limited = stacindex.read_index(url, Search.parse(None, datetime="2024-03-01/2024-03-31", max_items=5))
    assert [g["id"] for g in limited] == [g["id"] for g in stacindex.read_index(url, search)][:5]


def test_an_index_in_parts_is_read_through_a_glob(index, tmp_path):
    """An index published in parts (items/part-*.parquet): a glob of them gives the items of all."""
    url, items = index
    for k in range(3):
        stacindex.write_index(items[k::3], str(tmp_path / "items" / f"part-{k}.parquet"), row_group_size=200)
    search = Search.parse(None, bbox="0,45,10,50", datetime="2024-02-01/2024-05-31")
    kept = sources([str(tmp_path / "items" / "part-*.parquet")], None, ItemSelection(where=search))
    want = {it["id"] for it in items if search.matches(it)}
    assert {item["id"] for item, _ in kept} == want and len(kept) == len(want) > 0


@pytest.fixture(scope="module")
def season(tmp_path_factory):
    from geoseg.data.seasons import write_series

    d = tmp_path_factory.mktemp("season")
    write_series(str(d), ["2024-04-10", "2024-05-20", "2024-06-30", "2024-08-09"], size=160, seed=3)
    items = json.loads((d / "items.json").read_text())["features"]
    stacindex.write_index(items, str(d / "items.parquet"), row_group_size=2)
    return d


def test_index_items_predict_as_their_json_items_do(ray_local, season, s3, tmp_path):
    from geoseg.data import storage
    from geoseg.predict import PredictOptions, predict

    window = Search.parse(None, datetime="2024-05-01/2024-07-31")
    opts = PredictOptions(model="index", tile_size=128, halo=16, search=window)
    from_json = predict([str(season / "items.json")], str(tmp_path / "json"), opts, log=lambda *_: None)
    # the index on S3 (its band COGs stay where the items point)
    storage.put_file(str(season / "items.parquet"), "s3://geoseg/index/items.parquet")
    from_index = predict(["s3://geoseg/index/items.parquet"], "s3://geoseg/pred", opts, log=lambda *_: None)
    assert [r["stac_item"]["id"] for r in from_index] == [r["stac_item"]["id"] for r in from_json]
    assert [r["stac_item"]["id"] for r in from_json] == ["s2_2024-05-20", "s2_2024-06-30"]
    for a, b in zip(from_json, from_index):
        with rasterio.open(a["outputs"]["cog"]) as x, storage.gdal_env(), rasterio.open(b["outputs"]["cog"]) as y:
            np.testing.assert_array_equal(x.read(), y.read())


def test_index_items_composite_as_their_json_items_do(season, tmp_path):
    from geoseg.composite import CompositeOptions, composite_here, parse_windows

    window = Search.parse(None, datetime="2024-05-01/2024-08-31")
    recs = {}
    for name in ("items.json", "items.parquet"):
        opts = CompositeOptions((str(season / name),), str(tmp_path / name), "utm:10",
                                windows=parse_windows(["summer=2024-05-01/2024-08-31"]), bands=("red", "nir"),
                                side=256, search=window, max_cloud=90.0)
        recs[name] = composite_here(opts, log=lambda *_: None)
    assert recs["items.json"]["observations"] == recs["items.parquet"]["observations"] == 3
    stacks = [open(tmp_path / n / "stacks.txt").read().split()[0] for n in recs]
    with rasterio.open(stacks[0]) as a, rasterio.open(stacks[1]) as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_bad_indexes_and_filters_are_one_line(index, season, tmp_path):
    url, _ = index
    (tmp_path / "noise.parquet").write_bytes(b"PAR1 not really")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "plain.parquet")
    with pytest.raises(InputError, match="noise.parquet: not a Parquet file"):
        stacindex.read_index(str(tmp_path / "noise.parquet"))
    with pytest.raises(InputError, match="plain.parquet: not a STAC-GeoParquet index"):
        stacindex.read_index(str(tmp_path / "plain.parquet"))
    with pytest.raises(InputError, match="missing.parquet: not found"):
        stacindex.read_index(str(tmp_path / "missing.parquet"))
    with pytest.raises(InputError, match="no STAC item of the inputs matches"):
        sources([url], None, ItemSelection(where=Search.parse(None, datetime="2019-01-01/2019-12-31")))
    with pytest.raises(InputError, match="item 'x': its datetime: 'yesterday' is not an RFC 3339"):
        Search.parse(None, datetime="2024-01-01/..").matches({"id": "x", "properties": {"datetime": "yesterday"}})
    with pytest.raises(InputError, match="ends before it starts"):
        Search.parse(None, datetime="2024-05-01/2024-04-01")
    for flags, words in ((["--datetime", "yesterday"], "--datetime: 'yesterday' is not an RFC 3339"),
                         (["--filter", "eo:cloud_cover < 5"], "--filter needs --stac-api URL"),
                         (["--bbox", "1,2,3,4"], "these choose STAC items")):
        given = str(season / "s2_2024-04-10" / "red.tif") if flags[0] == "--bbox" else url
        res = subprocess.run([sys.executable, "-m", "geoseg", "predict", given,
                              "--model", "index", "--out", str(tmp_path / "o"), *flags],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode != 0 and words in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
