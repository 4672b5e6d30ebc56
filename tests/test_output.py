"""Output layout checks that need no Ray: one writer per Zarr chunk and shard."""

import pytest
import zarr

from geoseg.data import storage
from geoseg.data.classes import LANDCOVER
from geoseg.errors import GeosegError
from geoseg.data.output import SceneOutput, check_alignment, create_zarr
from geoseg.data.raster import RasterInfo
from geoseg.data.tiling import TileGrid


def _info(h=300, w=200):
    return RasterInfo(url="x.tif", height=h, width=w, count=4, dtype="uint16", crs="EPSG:32633",
                      transform=(10.0, 0.0, 0.0, 0.0, -10.0, 0.0), nodata=0, descriptions=(None,) * 4, tags={})


def test_chunks_equal_tile_cores_pass_and_others_are_refused(tmp_path):
    out = SceneOutput(str(tmp_path), "scene")
    grid = TileGrid(300, 200, core=64, halo=8)
    create_zarr(out, _info(), grid, LANDCOVER, {"x": 1}, probabilities=True)
    check_alignment(out, grid)  # as planned: each tile core is exactly one chunk
    with pytest.raises(GeosegError, match=r"scene.zarr/classes: chunks \(64, 64\) do not match the 128x128 tiles"):
        check_alignment(out, TileGrid(300, 200, core=128, halo=8))


def test_shards_spanning_several_tiles_are_refused(tmp_path):
    out = SceneOutput(str(tmp_path), "scene")
    root = zarr.open_group(storage.zarr_store(out.zarr), mode="w", zarr_format=3)
    root.create_array("classes", shape=(300, 200), chunks=(64, 64), shards=(128, 128), dtype="uint8")
    with pytest.raises(GeosegError, match=r"shards \(128, 128\) do not match the 64x64 tiles"):
        check_alignment(out, TileGrid(300, 200, core=64, halo=8))


def test_a_prefix_made_with_relative_paths_works_from_any_folder(ray_local, sample_dir, tmp_path, monkeypatch):
    """``cd D && geoseg predict in/scene.tif --out out``; then, from another folder, vectorize, mosaic
    and view ``D/out``: every path the records keep is absolute."""
    import json
    import os
    import shutil

    from geoseg.cli import main
    from geoseg.view.server import MapSource, load, tile

    d, elsewhere = tmp_path / "d", tmp_path / "elsewhere"
    (d / "in").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(sample_dir / "scene.tif", d / "in" / "scene.tif")
    monkeypatch.chdir(d)
    assert main(["predict", "in/scene.tif", "--out", "out", "--model", "index", "--tile-size", "320"]) == 0
    rec = json.loads((d / "out" / "scene.json").read_text())
    paths = [rec["input"], *(v for v in rec["outputs"].values() if isinstance(v, str))]
    assert paths and all(os.path.isabs(p) for p in paths), paths
    job = json.loads((d / "out" / "_job.json").read_text())
    assert all(os.path.isabs(s["record"]) and os.path.isabs(s["input"]) for s in job["scenes"])
    monkeypatch.chdir(elsewhere)
    assert main(["vectorize", "../d/out"]) == 0
    assert (d / "out" / "scene.vectors.parquet").exists()
    assert main(["mosaic", str(d / "out"), "--grid", "EPSG:32633:20", "--out", "mosaic"]) == 0
    assert any(n.endswith(".zarr") for n in os.listdir(elsewhere / "mosaic"))
    load()
    source = MapSource("../d/out")
    import morecantile

    (s, w), (n, e) = source.summary()["scenes"][0]["bounds"]
    t = morecantile.tms.get("WebMercatorQuad").tile((w + e) / 2, (s + n) / 2, 13)
    assert tile(source, "input", "scene", t.z, t.x, t.y)[:4] == b"\x89PNG"


def test_a_relative_input_read_into_s3_is_found_from_any_folder(s3, sample_dir, tmp_path, monkeypatch):
    """``cd D && geoseg predict in/scene.tif --out s3://...`` (one scene on this machine's CPUs: no
    Ray); from another folder, the prefix's record names the input wherever it is read, so the
    map server shows it and vectorize reads the prefix."""
    import json
    import os
    import shutil

    from geoseg.cli import main
    from geoseg.data import storage
    from geoseg.vectorize import VectorizeOptions
    from geoseg.vectorize.local import vectorize_here
    from geoseg.view.server import MapSource, load, tile

    d, elsewhere = tmp_path / "d", tmp_path / "elsewhere"
    (d / "in").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(sample_dir / "scene.tif", d / "in" / "scene.tif")
    monkeypatch.chdir(d)
    assert main(["predict", "in/scene.tif", "--out", "s3://geoseg/rel", "--model", "index"]) == 0
    rec = json.loads(storage.read_text("s3://geoseg/rel/scene.json"))
    assert rec["input"] == str(d / "in" / "scene.tif") and rec["outputs"]["cog"] == "s3://geoseg/rel/scene.tif"
    monkeypatch.chdir(elsewhere)
    (res,) = vectorize_here("s3://geoseg/rel", VectorizeOptions(), log=lambda *_: None)
    assert res["polygons"] > 0 and storage.exists("s3://geoseg/rel/scene.vectors.parquet")
    load()
    source = MapSource("s3://geoseg/rel")
    import morecantile

    (s, w), (n, e) = source.summary()["scenes"][0]["bounds"]
    t = morecantile.tms.get("WebMercatorQuad").tile((w + e) / 2, (s + n) / 2, 13)
    assert tile(source, "input", "scene", t.z, t.x, t.y)[:4] == b"\x89PNG"
    assert not os.listdir(elsewhere)  # nothing written where the commands ran
