"""Mosaics: scenes in two UTM zones with overlapping footprints into one Zarr on a common grid,
equal to warping each scene's whole class map and merging by the rule; chunk-level resume;
a failing scene among good ones."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401 - the .rio accessor
import xarray as xr
from affine import Affine
from rasterio.warp import transform

from geoseg.data.classes import NODATA
from geoseg.predict import PredictOptions, predict

ZONE_EDGE = 12.0  # degrees east: UTM zones 32 and 33 meet here


def _write_scene(path, data, desc, epsg, lon, lat, res=10.0, tag_time=None):
    """A 4-band scene whose upper-left corner is at (lon, lat), in UTM zone ``epsg``."""
    (x,), (y,) = transform("EPSG:4326", f"EPSG:{epsg}", [lon], [lat])
    prof = dict(driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0], dtype=data.dtype,
                crs=f"EPSG:{epsg}", transform=Affine(res, 0, round(x), 0, -res, round(y)), tiled=True,
                blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
        dst.descriptions = desc
        if tag_time:
            dst.update_tags(TIFFTAG_DATETIME=tag_time)


@pytest.fixture(scope="module")
def zone_scenes(sample_dir, tmp_path_factory):
    """Three scenes: two in zone 32 and one in zone 33, the zone-33 one and one zone-32 one
    overlapping across the zone edge, taken at different times (asymmetric: 640 x 512 px)."""
    d = tmp_path_factory.mktemp("zones")
    with rasterio.open(sample_dir / "scene.tif") as src:
        data, desc = src.read(), src.descriptions
    data = data[:, :512, :]  # 512 rows x 640 cols
    _write_scene(d / "a32.tif", data, desc, 32632, ZONE_EDGE - 0.05, 45.0, tag_time="2025:06:01 10:00:00")
    _write_scene(d / "b33.tif", data[:, :, ::-1].copy(), desc, 32633, ZONE_EDGE - 0.03, 44.99,
                 tag_time="2025:06:11 10:00:00")
    _write_scene(d / "c32.tif", data[:, ::-1, :].copy(), desc, 32632, ZONE_EDGE - 0.2, 44.95)
    return d


def _direct(cogs_in_order, out_shape, dst_transform, dst_crs, confidences=None):
    """The mosaic computed directly: each whole class map warped onto the whole grid by nearest
    neighbour (every pixel centre transformed exactly), later scenes over earlier ones (or the
    most confident)."""
    from rasterio.warp import transform as warp_points

    h, w = out_shape
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    xs, ys = dst_transform * (cols, rows)
    best = np.full(out_shape, NODATA, np.uint8)
    best_conf = np.zeros(out_shape, np.uint8)
    for k, cog in enumerate(cogs_in_order):
        with rasterio.open(cog) as src:
            classes = src.read(1)
            sx, sy = warp_points(dst_crs, src.crs, xs.ravel().tolist(), ys.ravel().tolist())
            fc, fr = ~src.transform * (np.asarray(sx), np.asarray(sy))
        c, r = np.floor(fc).astype(int).reshape(out_shape), np.floor(fr).astype(int).reshape(out_shape)
        ok = (r >= 0) & (r < classes.shape[0]) & (c >= 0) & (c < classes.shape[1])
        warped = np.full(out_shape, NODATA, np.uint8)
        warped[ok] = classes[r[ok], c[ok]]
        valid = warped != NODATA
        if confidences is None:
            best[valid] = warped[valid]
            continue
        conf = np.zeros(out_shape, np.uint8)
        conf[ok] = confidences[k][r[ok], c[ok]]
        take = valid & ((best == NODATA) | (conf >= best_conf))
        best[take], best_conf[take] = warped[take], conf[take]
    return best


def test_mosaic_of_two_zones_equals_direct_warp_and_merge(ray_local, zone_scenes, tmp_path):
    from geoseg.mosaic.job import mosaic

    scenes = [str(zone_scenes / n) for n in ("b33.tif", "a32.tif", "c32.tif")]
    prefix = tmp_path / "o"
    predict(scenes, str(prefix), PredictOptions(model="index", tile_size=128, halo=16, probabilities=True),
            log=lambda *_: None)
    (rec,) = mosaic(str(prefix), "EPSG:4326:0.0001", chunk=256, log=lambda *_: None)
    assert rec["merge"]["rule"] == "confidence"  # every scene has probabilities
    assert [s["stem"] for s in sorted(rec["scenes"], key=lambda s: s["order"])] == ["c32", "a32", "b33"]  # by time
    ds = xr.open_zarr(prefix / "mosaic.zarr")
    assert ds.rio.crs.to_epsg() == 4326
    got = ds["classes"].values
    assert got.shape == tuple(rec["shape"]) and got.shape[0] != got.shape[1]
    t = Affine(*rec["transform"])
    assert np.isclose(float(ds.x[0]), t.c + t.a / 2) and np.isclose(float(ds.y[0]), t.f + t.e / 2)
    cogs = [prefix / f"{s['stem']}.tif" for s in sorted(rec["scenes"], key=lambda s: s["order"])]
    confs = [xr.open_zarr(str(c).replace(".tif", ".zarr"))["probabilities"].values.max(axis=0) for c in cogs]
    want = _direct(cogs, got.shape, t, "EPSG:4326", confs)
    np.testing.assert_array_equal(got, want)
    assert (got != NODATA).mean() > 0.3 and (got == NODATA).any()  # covered, and nodata where nothing is
    # multiscale levels by mode, each readable with its CRS
    assert len(rec["levels"]) >= 2
    lvl = xr.open_zarr(prefix / "mosaic.zarr", group="overviews/1")
    assert lvl["classes"].shape == tuple(rec["levels"][1]["shape"]) and lvl.rio.crs.to_epsg() == 4326
    from geoseg.mosaic.stages import mode2x2
    np.testing.assert_array_equal(lvl["classes"].values, mode2x2(got))
    coll = json.loads((prefix / "mosaic.collection.json").read_text())
    assert coll["type"] == "Collection" and "mosaic" in coll["assets"]
    # latest-valid merge: equal to warping in time order, later over earlier
    (late,) = mosaic(str(prefix), "EPSG:4326:0.0001", name="latest", chunk=256, rule="latest", log=lambda *_: None)
    np.testing.assert_array_equal(xr.open_zarr(prefix / "latest.zarr")["classes"].values,
                                  _direct(cogs, got.shape, t, "EPSG:4326"))
    # one store per UTM zone
    zones = mosaic(str(prefix), "utm:10", name="z", chunk=256, rule="latest", log=lambda *_: None)
    assert sorted(r["crs"] for r in zones) == ["EPSG:32632", "EPSG:32633"]
    for r in zones:
        z = xr.open_zarr(r["zarr"])
        assert z.rio.crs.to_epsg() == int(r["crs"].split(":")[1])
        zc = [prefix / f"{s['stem']}.tif" for s in sorted(r["scenes"], key=lambda s: s["order"])]
        np.testing.assert_array_equal(z["classes"].values,
                                      _direct(zc, z["classes"].shape, Affine(*r["transform"]), r["crs"]))


def test_half_written_mosaic_resumes_identical(ray_local, zone_scenes, tmp_path, monkeypatch):
    from geoseg.mosaic import stages
    from geoseg.mosaic.grid import parse_grid
    from geoseg.mosaic.job import mosaic
    from geoseg.mosaic.plan import order_scenes, plan_mosaic, prepare, read_scene, scene_records
    from geoseg.mosaic.stages import mosaic_chunks

    prefix = tmp_path / "o"
    predict([str(zone_scenes / "a32.tif"), str(zone_scenes / "b33.tif")], str(prefix),
            PredictOptions(model="index", tile_size=128, halo=16), log=lambda *_: None)
    (clean,) = mosaic(str(prefix), "EPSG:3035:20", name="clean", chunk=128, log=lambda *_: None)
    # a mosaic that died after its first chunks: a few written and logged, no record
    urls, basis = scene_records(str(prefix))
    (plan,) = plan_mosaic(order_scenes([read_scene(u) for u in urls]), parse_grid("EPSG:3035:20"), str(prefix),
                          "half", 128, "auto", basis)
    from geoseg.data.classes import LANDCOVER
    prepare(plan, LANDCOVER)
    # killed inside its range, at its fourth chunk: the three before it are logged done (chunk by chunk)
    real = stages.mosaic_chunk
    monkeypatch.setattr(stages, "LOG_EVERY_S", 0.0)
    monkeypatch.setattr(stages, "mosaic_chunk", lambda p, i: (_ for _ in ()).throw(KeyboardInterrupt) if i == 3
                        else real(p, i))
    with pytest.raises(KeyboardInterrupt):
        mosaic_chunks(plan, 0, plan.n_chunks(0))
    monkeypatch.setattr(stages, "mosaic_chunk", real)
    assert not (prefix / "half.json").exists()
    logs = []
    (resumed,) = mosaic(str(prefix), "EPSG:3035:20", name="half", chunk=128, log=logs.append)
    assert any(f"resuming, 3 of {plan.n_chunks(0)} chunks done already" in line for line in logs), logs
    assert resumed["shape"] == clean["shape"]
    np.testing.assert_array_equal(xr.open_zarr(prefix / "half.zarr")["classes"].values,
                                  xr.open_zarr(prefix / "clean.zarr")["classes"].values)
    # done: a rerun skips it; another grid over the same name is refused in one line
    again = []
    mosaic(str(prefix), "EPSG:3035:20", name="half", chunk=128, log=again.append)
    assert any("already complete" in line for line in again)
    from geoseg.errors import OutputExistsError
    with pytest.raises(OutputExistsError, match="half.zarr: exists with different"):
        mosaic(str(prefix), "EPSG:3035:30", name="half", chunk=128, log=lambda *_: None)


def test_a_failing_scene_is_listed_and_the_job_goes_on(ray_local, zone_scenes, tmp_path):
    """An unreadable header and a truncated file among good scenes: the job finishes the good
    ones, lists the bad ones in its summary, fails with a count; the rerun retries just them."""
    from geoseg.errors import ScenesFailedError

    d = tmp_path / "in"
    d.mkdir()
    for n in ("a32.tif", "b33.tif"):
        shutil.copy(zone_scenes / n, d / n)
    (d / "broken.tif").write_bytes(b"not a tiff at all")
    shutil.copy(zone_scenes / "c32.tif", d / "short.tif")
    with open(d / "short.tif", "r+b") as f:
        f.truncate((d / "short.tif").stat().st_size * 6 // 10)
    inputs = [str(d / n) for n in ("broken.tif", "a32.tif", "short.tif", "b33.tif")]
    prefix = tmp_path / "o"
    opts = PredictOptions(model="index", tile_size=128, halo=16, mosaic="EPSG:4326:0.0002")
    with pytest.raises(ScenesFailedError, match=r"2 of 4 scenes failed .*broken.tif.*_job.json.*no mosaic"):
        predict(inputs, str(prefix), opts, log=lambda *_: None)
    summary = json.loads((prefix / "_job.json").read_text())
    status = {s["stem"]: s["status"] for s in summary["scenes"]}
    assert status == {"broken": "failed", "a32": "complete", "short": "failed", "b33": "complete"}
    errors = {s["stem"]: s["error"] for s in summary["scenes"] if "error" in s}
    assert "broken.tif: cannot open" in errors["broken"] and "short.tif: cannot" in errors["short"]
    assert (prefix / "a32.json").exists() and (prefix / "b33.json").exists()
    assert not (prefix / "short.json").exists() and not (prefix / "mosaic.zarr").exists()
    # fixed inputs: the rerun retries just the failed scenes (the others are vouched for by the summary)
    shutil.copy(zone_scenes / "c32.tif", d / "short.tif")
    shutil.copy(zone_scenes / "a32.tif", d / "broken.tif")
    a32_before = (prefix / "a32.json").read_text()
    logs = []
    records = predict(inputs, str(prefix), opts, log=logs.append)
    assert sorted(r["input"] for r in records) == sorted([str(d / "broken.tif"), str(d / "short.tif")])
    assert (prefix / "a32.json").read_text() == a32_before
    assert (prefix / "mosaic.zarr").is_dir() and json.loads((prefix / "mosaic.json").read_text())["status"] == "complete"
    summary = json.loads((prefix / "_job.json").read_text())
    assert sorted(s["status"] for s in summary["scenes"]) == ["complete", "complete", "done", "done"]


def test_mosaic_without_ray_is_the_same_driver_loop_and_the_same_store(ray_local, zone_scenes, tmp_path):
    """mosaic_here runs the Ray job's driver loop with its tasks inline: the same store, chunk for chunk;
    ``--out maps/here.zarr`` is that store (its record beside it), not a folder holding one."""
    from geoseg.errors import InputError
    from geoseg.mosaic import mosaic
    from geoseg.mosaic.local import mosaic_here
    from geoseg.mosaic.plan import destination

    scenes = [str(zone_scenes / n) for n in ("b33.tif", "a32.tif")]
    prefix = tmp_path / "o"
    predict(scenes, str(prefix), PredictOptions(model="index", tile_size=128, halo=16), log=lambda *_: None)
    (on_ray,) = mosaic(str(prefix), "EPSG:3035:20", name="ray", chunk=128, log=lambda *_: None)
    maps = tmp_path / "maps"
    (here,) = mosaic_here(str(prefix), "EPSG:3035:20", out=str(maps / "here.zarr"), chunk=128, log=lambda *_: None)
    assert here["shape"] == on_ray["shape"] and here["transform"] == on_ray["transform"]
    assert len(here["levels"]) == len(on_ray["levels"]) >= 2
    for group in [None] + [f"overviews/{i}" for i in range(1, len(here["levels"]))]:
        a = xr.open_zarr(prefix / "ray.zarr", group=group)["classes"].values
        b = xr.open_zarr(maps / "here.zarr", group=group)["classes"].values
        np.testing.assert_array_equal(a, b)
    assert (maps / "here.zarr" / "zarr.json").exists() and not (maps / "here.zarr" / "mosaic.zarr").exists()
    assert (maps / "here.json").exists() and (maps / "here.collection.json").exists()
    assert destination("s3://b/p", "s3://b/maps/m.zarr/") == ("s3://b/maps", "m")
    assert destination("s3://b/p", None, "x") == ("s3://b/p", "x")
    with pytest.raises(InputError, match="names the store m.zarr, --name other another"):
        destination("s3://b/p", "s3://b/maps/m.zarr", "other")


def _core_validator(kind: str):
    """A jsonschema validator of STAC 1.1.0's core ``item``, ``collection`` or ``catalog`` schema, from
    the copies pystac ships (no network)."""
    from jsonschema import Draft7Validator
    from pystac.validation.local_validator import get_local_schema_cache
    from referencing import Registry, Resource

    cache = get_local_schema_cache()
    registry = Registry().with_resources((uri, Resource.from_contents(doc)) for uri, doc in cache.items())
    uri = next(u for u in cache if u.endswith(f"/{kind}-spec/json-schema/{kind}.json"))
    return Draft7Validator(cache[uri], registry=registry)


def test_stac_outputs_validate_and_items_carry_acquisition_times(ray_local, zone_scenes, tmp_path):
    """Items, the catalog and the mosaic's collection validate against the core schemas; an item's
    ``datetime`` is the scene's acquisition time (its TIFF datetime, taken as UTC) where it has one,
    the processing time apart (``created``)."""
    import json

    from geoseg.mosaic.job import mosaic
    from geoseg.vectorize import VectorizeOptions, vectorize

    prefix = tmp_path / "o"
    predict([str(zone_scenes / n) for n in ("a32.tif", "c32.tif")], str(prefix),
            PredictOptions(model="index", tile_size=128, halo=16), log=lambda *_: None)
    mosaic(str(prefix), "EPSG:4326:0.0002", chunk=256, log=lambda *_: None)
    vectorize(str(prefix / "a32.zarr"), VectorizeOptions(), out=str(prefix / "a32"), log=lambda *_: None)
    docs = {"item": [prefix / "a32.item.json", prefix / "c32.item.json"], "catalog": [prefix / "catalog.json"],
            "collection": [prefix / "mosaic.collection.json"]}
    for kind, paths in docs.items():
        validator = _core_validator(kind)
        for path in paths:
            errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(json.loads(path.read_text()))]
            assert not errors, (path.name, errors[:3])
    a32, c32 = (json.loads((prefix / f"{n}.item.json").read_text())["properties"] for n in ("a32", "c32"))
    assert a32["datetime"] == "2025-06-01T10:00:00Z" and a32["created"].endswith("Z") and a32["created"] != a32["datetime"]
    assert c32["datetime"] == c32["created"]  # no acquisition time known: the processing time, and it says so
    assert "processing time" in c32["geoseg:datetime_is"]
    interval = json.loads((prefix / "mosaic.collection.json").read_text())["extent"]["temporal"]["interval"]
    assert interval == [["2025-06-01T10:00:00Z", "2025-06-01T10:00:00Z"]]


@pytest.mark.parametrize("grid", ["EPSG:4326:0.0001", "EPSG:6933:10"])
def test_the_fast_warp_is_the_exact_one_at_any_chunk(ray_local, zone_scenes, tmp_path, grid):
    """Scenes of two UTM zones onto a geographic and an equal-area grid: positions interpolated on the
    output grid's lattice (recomputed exactly near source pixel edges) give the exact warp's pixels,
    at chunks of 256 and 1024 alike."""
    from geoseg.mosaic.local import mosaic_here

    prefix = tmp_path / "o"
    predict([str(zone_scenes / n) for n in ("b33.tif", "a32.tif")], str(prefix),
            PredictOptions(model="index", tile_size=128, halo=16), log=lambda *_: None)
    got = {}
    for chunk in (256, 1024):
        (rec,) = mosaic_here(str(prefix), grid, name=f"c{chunk}", chunk=chunk, rule="latest", log=lambda *_: None)
        got[chunk] = xr.open_zarr(prefix / f"c{chunk}.zarr")["classes"].values
    np.testing.assert_array_equal(got[256], got[1024])
    cogs = [prefix / f"{s['stem']}.tif" for s in sorted(rec["scenes"], key=lambda s: s["order"])]
    np.testing.assert_array_equal(got[256], _direct(cogs, got[256].shape, Affine(*rec["transform"]), rec["crs"]))
    assert (got[256] != NODATA).mean() > 0.3


def test_positions_on_source_pixel_edges_are_recomputed_exactly(monkeypatch):
    """A grid in the scene's own CRS spelled as WKT takes the lattice path with an identity transform,
    offset by half a pixel: every centre lies on a source pixel edge, where an interpolation error
    (here a made one, 1e-9 px, well inside the bound) would change the pixel; those are recomputed
    exactly, so the pixels are still the exact transform's, and the same-CRS path agrees."""
    from rasterio.crs import CRS

    from geoseg.mosaic import warp
    from geoseg.mosaic.plan import MosaicScene

    interpolated = warp._interpolated
    monkeypatch.setattr(warp, "_interpolated", lambda *a: [v - 1e-9 for v in interpolated(*a)])

    scene = MosaicScene(0, "s", "x", "x", "EPSG:32633", (10.0, 0.0, 399960.0, 0.0, -10.0, 5900040.0), 700, 900,
                        False, None, (0.0, 0.0, 0.0, 0.0))
    wkt = CRS.from_epsg(32633).to_wkt()
    for res, shift in ((10.0, 5.0), (5.0, 2.5), (20.0, 0.0), (7.0, 3.0)):
        dst = Affine(res, 0, 399960.0 - shift + 40 * res, 0, -res, 5900040.0 + shift - 30 * res)
        for chunk, (r0, c0) in ((256, (0, 0)), (256, (256, 512)), (1024, (0, 0))):
            t = dst * Affine.translation(c0, r0)
            cols, rows = np.meshgrid(np.arange(chunk) + 0.5, np.arange(chunk) + 0.5)
            xs, ys = t * (cols, rows)
            sx, sy = transform(wkt, "EPSG:32633", xs.ravel(), ys.ravel())
            fc, fr = ~Affine(*scene.transform) * (np.asarray(sx), np.asarray(sy))
            want_r = np.floor(np.asarray(fr)).astype(int).reshape(xs.shape)
            want_c = np.floor(np.asarray(fc)).astype(int).reshape(xs.shape)
            want_ok = (want_r >= 0) & (want_r < 700) & (want_c >= 0) & (want_c < 900)
            for crs in (wkt, "EPSG:32633"):  # the lattice path, the affine one
                found = warp.lookup(scene, crs, t, chunk, chunk, None, (r0, c0))
                if found is None:  # no centre in the scene
                    assert not want_ok.any()
                    continue
                r, c, ok = found.pixels()
                np.testing.assert_array_equal(ok, want_ok)
                np.testing.assert_array_equal(r[ok], want_r[ok])
                np.testing.assert_array_equal(c[ok], want_c[ok])
