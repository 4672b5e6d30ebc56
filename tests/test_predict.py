"""predict end to end on a real local Ray; outputs read back by rasterio and xarray."""

import json

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401 - registers .rio
import xarray as xr

from geoseg.data.classes import LANDCOVER, NODATA
from geoseg.errors import OutputExistsError
from geoseg.models.index import IndexModel
from geoseg.predict import PredictOptions, predict


def _whole_image_index(scene_path):
    with rasterio.open(scene_path) as src:
        img = src.read()
    expected = IndexModel().predict(img[None])[0]
    expected[np.all(img == 0, axis=0)] = NODATA
    return expected


def test_predict_writes_zarr_cog_and_record(ray_local, sample_dir, tmp_path):
    out = tmp_path / "pred"
    opts = PredictOptions(model="index", tile_size=256, halo=16, batch_size=4, quicklook=True)
    (rec,) = predict([str(sample_dir / "scene.tif")], str(out), opts)
    with rasterio.open(sample_dir / "scene.tif") as src:
        crs, transform, shape = src.crs, src.transform, src.shape

    # COG: same grid, nodata, colour table, overviews, tiled
    with rasterio.open(out / "scene.tif") as cog:
        assert (cog.crs, cog.transform, cog.shape) == (crs, transform, shape)
        assert cog.nodata == NODATA and cog.dtypes[0] == "uint8"
        assert cog.profile["tiled"] and cog.overviews(1)
        assert cog.colormap(1)[0][:3] == (196, 164, 112)
        classes = cog.read(1)
    # stitched tiles equal whole-image inference (a per-pixel model: exact)
    np.testing.assert_array_equal(classes, _whole_image_index(sample_dir / "scene.tif"))

    # Zarr: chunked by tile core, georeferenced for xarray + rioxarray
    ds = xr.open_zarr(out / "scene.zarr")
    assert ds["classes"].shape == shape
    assert ds["classes"].encoding["chunks"] == (256, 256)
    assert ds["classes"].rio.crs == crs
    assert ds["classes"].rio.transform() == transform
    np.testing.assert_array_equal(ds["classes"].values, classes)

    record = json.loads((out / "scene.json").read_text())
    assert record == json.loads(json.dumps(rec))
    assert record["status"] == "complete"
    assert record["tiles"]["total"] == 9
    assert record["tiles"]["predicted"] + record["tiles"]["nodata_skipped"] == 9
    assert record["parameters"]["tile_size"] == 256 and record["model"]["name"] == "index"
    assert "ray" in record["versions"] and record["timings_s"]["total"] > 0
    assert not (out / ".geoseg" / "scene").exists()

    # class areas: 10 m pixels are 0.01 ha
    counts = np.bincount(classes[classes != NODATA].ravel(), minlength=4)
    assert [record["classes"][n]["pixels"] for n in LANDCOVER.names] == counts.tolist()
    assert [record["classes"][n]["area_ha"] for n in LANDCOVER.names] == pytest.approx((counts * 0.01).tolist())

    # quicklooks: the input in true colour (transparent where the scene is nodata) and the class map
    # in its colours; the scene is smaller than 1024 px, so every pixel is shown
    from PIL import Image

    with rasterio.open(sample_dir / "scene.tif") as src:
        scene_nodata = np.all(src.read() == 0, axis=0)
    with Image.open(record["outputs"]["quicklook_rgb"]) as png:
        rgb = np.asarray(png)
    assert rgb.shape == (*shape, 4)
    np.testing.assert_array_equal(rgb[..., 3] == 0, scene_nodata)
    with Image.open(record["outputs"]["quicklook_classes"]) as png:
        panel = np.asarray(png.convert("RGB"))[24 : 24 + shape[0], 8 : 8 + shape[1]]  # below the title
    colours = np.array(LANDCOVER.colors)
    shown = classes != NODATA
    np.testing.assert_array_equal(panel[shown], colours[classes[shown]])
    with Image.open(record["outputs"]["quicklook"]) as png:
        assert png.width > 2 * shape[1] and png.height == shape[0] + 32  # side by side, legend beside
    item = json.loads((out / "scene.item.json").read_text())
    assert item["assets"]["quicklook"]["type"] == "image/png"


def test_nodata_tiles_are_skipped(ray_local, tmp_path):
    from affine import Affine

    data = np.full((4, 200, 300), 1500, dtype=np.uint16)
    data[3] = 4000  # vegetation everywhere
    data[:, :100, :] = 0  # top half of the tiles: all nodata
    path = tmp_path / "holes.tif"
    with rasterio.open(
        path, "w", driver="GTiff", height=200, width=300, count=4, dtype="uint16", nodata=0,
        crs="EPSG:32631", transform=Affine(20, 0, 500000, 0, -20, 4000000),
    ) as dst:
        dst.write(data)
    opts = PredictOptions(model="index", tile_size=100, halo=8, bands={"blue": 1, "green": 2, "red": 3, "nir": 4})
    (rec,) = predict([str(path)], str(tmp_path / "out"), opts)
    assert rec["tiles"] == {"total": 6, "predicted": 3, "nodata_skipped": 3, "resumed": 0, "bad": 0, "bad_tiles": []}
    with rasterio.open(tmp_path / "out" / "holes.tif") as cog:
        classes = cog.read(1)
        assert cog.crs.to_epsg() == 32631
    assert (classes[:100] == NODATA).all()
    assert (classes[100:] == 1).all()


def test_rerun_with_other_parameters_is_refused(ray_local, sample_dir, tmp_path):
    out = str(tmp_path / "pred")
    scene = str(sample_dir / "scene.tif")
    predict([scene], out, PredictOptions(model="index", tile_size=320, halo=8))
    # the same command again: already complete, nothing redone
    assert predict([scene], out, PredictOptions(model="index", tile_size=320, halo=8)) == []
    # --quicklook later: a finished scene gets its pictures, listed in its record and item; nothing redone
    assert predict([scene], out, PredictOptions(model="index", tile_size=320, halo=8, quicklook=True)) == []
    record = json.loads((tmp_path / "pred" / "scene.json").read_text())
    assert record["status"] == "complete" and (tmp_path / "pred" / "scene.quicklook.png").exists()
    assert record["outputs"]["quicklook"].endswith("scene.quicklook.png")
    assert "quicklook" in json.loads((tmp_path / "pred" / "scene.item.json").read_text())["assets"]
    with pytest.raises(OutputExistsError, match="tile_size"):
        predict([scene], out, PredictOptions(model="index", tile_size=256, halo=8))
    (rec,) = predict([scene], out, PredictOptions(model="index", tile_size=256, halo=8, overwrite=True))
    assert rec["parameters"]["tile_size"] == 256


def test_otsu_model_fits_per_scene_thresholds(ray_local, sample_dir, tmp_path):
    (rec,) = predict(
        [str(sample_dir / "scene.tif")], str(tmp_path / "o"), PredictOptions(model="index-otsu", tile_size=320)
    )
    t = rec["model"]["thresholds"]
    assert set(t) == {"ndwi", "ndvi", "built"} and 0.15 <= t["ndvi"] <= 0.6


@pytest.mark.parametrize("how", ["crop", "hann"])
def test_interrupted_run_resumes_to_identical_output(ray_local, sample_dir, tmp_path, how):
    """Part of the tiles written, then the job dies: a rerun does only the rest, bit for bit."""
    from dataclasses import replace

    from geoseg.predict.finish import blend_tiles
    from geoseg.predict.plan import plan_job, prepare_scene
    from geoseg.predict.stages import Infer, planned_rows, read_tiles, write_softmax, write_tiles

    scene = str(sample_dir / "scene.tif")
    opts = PredictOptions(model="index", tile_size=128, halo=16, stitch=how, probabilities=how == "hann")
    (full,) = predict([scene], str(tmp_path / "full"), opts)

    # an interrupted job: the stages ran for the first 11 tiles only, nothing was finished
    job = plan_job([scene], str(tmp_path / "resumed"), opts)
    assert not (tmp_path / "resumed" / "scene.zarr").exists()  # planning writes nothing
    prepare_scene(job.first, job.ctx)
    infer = Infer(job.spec, opts.tile_size, probabilities=opts.probabilities, softmax=how == "hann")
    (row,) = planned_rows(job.first, batch_size=64, cpus=1)  # one range: the scene's 25 tiles
    assert (row["lo"], row["hi"]) == (0, 25)
    rng = {k: np.array([v], dtype=object if k in ("plan", "error") else None) for k, v in row.items()}
    rng["hi"] = np.array([11])
    batches = list(read_tiles(rng, replace(job.ctx, dtype="uint16", batch_size=4), (4, 160, 128)))
    assert [len(b["tile"]) for b in batches] == [4, 4, 3]  # a task's memory is bounded by the batch size
    assert sum(int(b["accounted"].sum()) for b in batches) == 11  # every tile of the range accounted for
    for batch in batches:
        if how == "crop":
            write_tiles(infer(batch))
        else:  # hann: 11 softmax tiles stored, then the 5 chunks of the first row blended from them
            write_softmax(infer(batch))
    if how == "hann":
        assert blend_tiles(job.first, 0, 5, True)["tiles"] == 5
    assert not (tmp_path / "resumed" / "scene.json").exists()

    (rec,) = predict([scene], str(tmp_path / "resumed"), opts)
    resumed = 11 if how == "crop" else 5
    assert rec["tiles"]["resumed"] == resumed
    assert rec["tiles"]["predicted"] + rec["tiles"]["nodata_skipped"] == 25 - resumed
    with rasterio.open(tmp_path / "full" / "scene.tif") as a, rasterio.open(tmp_path / "resumed" / "scene.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    za = xr.open_zarr(tmp_path / "full" / "scene.zarr")
    zb = xr.open_zarr(tmp_path / "resumed" / "scene.zarr")
    for name in za.data_vars:
        np.testing.assert_array_equal(za[name].values, zb[name].values)
    assert full["tiles"]["total"] == rec["tiles"]["total"] == 25


def test_tile_ranges_cover_every_tile_once_and_stay_few():
    from geoseg.data.tiling import tile_ranges

    for total in (1, 7, 64, 257, 123_457, 10**7):
        r = tile_ranges(total, 8, 2)
        assert r[0]["lo"] == 0 and r[-1]["hi"] == total
        assert all(a["hi"] == b["lo"] and a["hi"] - a["lo"] >= min(8, total) for a, b in zip(r, r[1:]))
        assert len(r) <= 10_000


def test_tiles_must_fit_the_model_stride(sample_dir, tmp_path):
    """A U-Net needs tile sides that are a multiple of 32: refused at planning, in one line."""
    from geoseg.models import checkpoint
    from geoseg.models.checkpoint import CheckpointMeta
    from geoseg.data.classes import LANDCOVER
    from geoseg.errors import InputError
    from geoseg.models.zoo import ModelConfig, build_model

    cfg = ModelConfig("unet", "resnet18", 4, 4)
    checkpoint.save(str(tmp_path / "ck"), build_model(cfg), CheckpointMeta(cfg, LANDCOVER, [1.0] * 4, [1.0] * 4))
    with pytest.raises(InputError, match=r"--tile-size 100 \+ 2 x --halo 10 = 120 px, but unet needs .* multiple of 32"):
        predict([str(sample_dir / "scene.tif")], str(tmp_path / "o"),
                PredictOptions(checkpoint=str(tmp_path / "ck"), tile_size=100, halo=10))
    assert not (tmp_path / "o").exists()  # nothing written


def _small_scene(path, seed: int, crs: str = "EPSG:32631") -> None:
    """A small asymmetric 4-band scene of its own content (x/y swaps show)."""
    from affine import Affine

    rng = np.random.default_rng(seed)
    h, w = 72 + seed % 5 * 8, 120 + seed % 3 * 16
    data = rng.integers(200, 3000, (4, h, w), dtype=np.uint16)
    data[3, : h // 2] += rng.integers(1500, 4000, dtype=np.uint16)  # vegetation in the north only
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=4, dtype="uint16", nodata=0, crs=crs,
                       transform=Affine(10, 0, 500000 + seed * 640, 0, -10, 4000000)) as dst:
        dst.write(data)
        dst.descriptions = ("blue", "green", "red", "nir")


def test_many_scenes_planned_on_a_multi_node_ray_and_a_finished_job_reruns_on_one_listing(multi_node, tmp_path):
    """Thirty scenes are planned by Ray tasks on a head and two workers while the first are read;
    each output equals whole-image inference; the job summary lists them all. A rerun of the
    finished job opens no input (they are garbage by then): the summary and one listing vouch."""
    multi_node(head_cpus=1, workers=2)
    d = tmp_path / "in"
    d.mkdir()
    inputs = []
    for i in range(30):
        _small_scene(d / f"s{i:02d}.tif", i)
        inputs.append(str(d / f"s{i:02d}.tif"))
    expected = {f"s{i:02d}": _whole_image_index(p) for i, p in enumerate(inputs)}
    opts = PredictOptions(model="index", tile_size=32, halo=8, batch_size=4, workers=1)
    # (one model actor takes a worker's CPU: the head and the other worker plan and read)
    lines: list[str] = []
    records = predict(inputs, str(tmp_path / "o"), opts, log=lines.append)
    assert [r["input"] for r in records] == inputs  # in the order of the inputs
    planned_on = set().union(*(r["placement"]["nodes"]["plan"] for r in records))
    import ray

    # planned in Ray tasks on the cluster's nodes (spread as Ray's scheduler sees fit: one node or more)
    assert planned_on and planned_on <= {n["NodeID"] for n in ray.nodes()}, planned_on
    for stem, want in expected.items():
        with rasterio.open(tmp_path / "o" / f"{stem}.tif") as cog:
            np.testing.assert_array_equal(cog.read(1), want, err_msg=stem)
    summary = json.loads((tmp_path / "o" / "_job.json").read_text())
    assert summary["status"] == "complete" and summary["counts"]["complete"] == 30
    assert 0 < summary["first_tile_s"] < summary["seconds"]
    assert {s["stem"] for s in summary["scenes"]} == set(expected)
    assert not (tmp_path / "o" / ".geoseg").exists() or not any((tmp_path / "o" / ".geoseg").iterdir())

    for p in inputs:  # a rerun that opened any input would fail on it now
        with open(p, "wb") as f:
            f.write(b"not a raster")
    lines.clear()
    assert predict(inputs, str(tmp_path / "o"), opts, log=lines.append) == []
    assert "30 of 30 scenes already complete, skipped" in lines
    assert json.loads((tmp_path / "o" / "_job.json").read_text())["counts"]["done"] == 30
