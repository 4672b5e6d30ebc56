"""The bad-input catalogue: each bad input is one line naming it and what is wrong, non-zero exit,
no traceback (``--debug`` shows it), and nothing written that looks complete."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio

TRAIN = ["--chip-size", "64", "--block-size", "128", "--epochs", "1", "--chips-per-epoch", "16",
         "--arch", "tinyfcn", "--workers", "1"]


def run(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "geoseg", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


@pytest.fixture(scope="module")
def bad(sample_dir, tmp_path_factory):
    """Broken variants of the sample scene, made once."""
    d = tmp_path_factory.mktemp("bad")
    with rasterio.open(sample_dir / "scene.tif") as src:
        prof, data, desc = src.profile, src.read(), src.descriptions
    with rasterio.open(sample_dir / "labels.tif") as src:
        lprof, labels, ltags = src.profile, src.read(1), src.tags()

    def write(name, array, **changes):
        p = {**(lprof if array.ndim == 2 else prof), **changes}
        with rasterio.open(d / name, "w", **p) as dst:
            dst.write(array, 1) if array.ndim == 2 else dst.write(array)
            if array.ndim == 3:
                dst.descriptions = desc
            else:
                dst.update_tags(**ltags)

    write("nocrs.tif", data, crs=None)
    write("complex.tif", data.astype("complex64"), dtype="complex64")
    write("allnodata.tif", np.zeros_like(data), nodata=0)
    out = labels.copy()
    out[300:303, 300:303], out[320, 320] = 7, 9  # inside the scene's footprint
    write("labels_out.tif", out)
    write("labels_float.tif", labels.astype("float32") + 0.5, dtype="float32")
    write("nonir.tif", data)
    with rasterio.open(d / "nonir.tif", "r+") as dst:
        dst.descriptions = ("blue", "green", "red", "swir16")
    (d / "bad.yaml").write_text("epochs: [1\n")
    (d / "badvalue.yaml").write_text(f"images: [{sample_dir}/scene.tif]\nlabels: [{sample_dir}/labels.tif]\n"
                                     "out: r\nval_fraction: abc\n")
    (d / "file").write_text("a regular file")
    (d / "item.json").write_text(json.dumps({  # a STAC item with one COG per band (the sample's bands as assets)
        "type": "Feature", "stac_version": "1.1.0", "id": "x", "geometry": None, "properties": {}, "links": [],
        "assets": {name: {"href": str(sample_dir / "scene.tif"), "type": "image/tiff"}
                   for name in ("blue", "green", "red", "nir")}}))
    # truncated in the middle of the pixel data: the header and the first blocks are intact
    shutil.copy(sample_dir / "scene.tif", d / "truncated.tif")
    os.truncate(d / "truncated.tif", os.path.getsize(d / "truncated.tif") * 6 // 10)
    return d


CASES = [
    # (args, exit code, words the one line must hold)
    (["predict", "{bad}/nocrs.tif", "--out", "{tmp}/o", "--model", "index"], 1,
     ["nocrs.tif", "has no CRS", "--allow-no-crs"]),
    (["predict", "{bad}/complex.tif", "--out", "{tmp}/o", "--model", "index"], 1,
     ["complex.tif", "unsupported pixel type complex64"]),
    (["predict", "{scene}", "--out", "{tmp}/o", "--model", "index", "--bands", "blue=1,green=2,red=3,nir=3"], 1,
     ["band 3 given to several roles (red, nir)"]),
    (["predict", "{scene}", "--out", "{tmp}/o", "--model", "index", "--bands", "blue=1,blue=2,red=3,nir=4"], 1,
     ["role blue given more than once"]),
    (["predict", "{scene}", "--out", "{bad}/file/o", "--model", "index"], 1, ["file/o", "Not a directory"]),
    (["sample", "{bad}/file/s"], 1, ["file/s", "Not a directory"]),
    (["train", "--image", "{scene}", "--label", "{bad}/labels_out.tif", "--out", "{tmp}/r", *TRAIN], 1,
     ["labels_out.tif", "label values 7, 9 are outside", "--num-classes 10"]),
    (["train", "--image", "{scene}", "--label", "{bad}/labels_float.tif", "--out", "{tmp}/r", *TRAIN], 1,
     ["labels_float.tif", "not a label raster", "float32"]),
    (["train", "--image", "{bad}/nocrs.tif", "--label", "{labels}", "--out", "{tmp}/r", *TRAIN], 1, ["has no CRS"]),
    (["train", "--config", "{bad}/missing.yaml"], 1, ["missing.yaml: not found"]),
    (["train", "--config", "{bad}/bad.yaml"], 1, ["bad.yaml: not valid YAML"]),
    (["train", "--config", "{bad}/badvalue.yaml"], 1, ["val_fraction must be a number, got 'abc'"]),
    (["train", "--image", "{scene}", "--label", "{labels}", "--out", "{bad}/file/r", *TRAIN], 1, ["Not a directory"]),
    (["evaluate", "{scene}", "{labels}"], 1, ["scene.tif: not a class map", "4 band(s) of uint16"]),
    (["predict", "{scene}", "--out", "{tmp}/o", "--model", "index", "--address", "127.0.0.1:{port}"], 1,
     ["Ray cluster at 127.0.0.1:", "not reachable"]),
    (["predict", "--out", "{tmp}/o", "--model", "index"], 1, ["give rasters or STAC items", "--stac-api"]),
    (["predict", "--out", "{tmp}/o", "--model", "index", "--collections", "s2"], 1, ["give rasters or STAC items"]),
    (["predict", "--out", "{tmp}/o", "--model", "index", "--stac-api", "http://127.0.0.1:{port}", "--bbox", "1,2"], 1,
     ["--bbox must be W,S,E,N"]),
    (["predict", "--out", "{tmp}/o", "--model", "index", "--stac-api", "http://127.0.0.1:{port}"], 1,
     ["--stac-api http://127.0.0.1:", "ConnectionError"]),
    (["predict", "{item}", "--out", "{tmp}/o", "--model", "index", "--assets", "blue,green,red,swir16"], 1,
     ["item.json: item", "has no band 'swir16'"]),
    (["predict", "{item}", "--out", "{tmp}/o", "--model", "index", "--resampling", "nir=magic"], 1,
     ["--resampling: 'nir=magic' is not BAND=METHOD"]),
    (["predict", "{scene}", "--out", "{tmp}/o", "--model", "index", "--gpus-per-worker", "1"], 1,
     ["--gpus-per-worker asks for GPUs", "sees none"]),  # would wait for a GPU forever
    (["predict", "s3://geoseg/scene.tif", "--out", "{tmp}/o", "--model", "index"], 1,
     ["s3://geoseg/scene.tif", "connect"]),  # endpoint unreachable (AWS_ENDPOINT_URL below)
]


@pytest.mark.parametrize("args, code, words", CASES, ids=[" ".join(c[0][:2]) + f"-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line(args, code, words, bad, sample_dir, tmp_path):
    port = _closed_port()
    fmt = dict(bad=bad, tmp=tmp_path, scene=sample_dir / "scene.tif", labels=sample_dir / "labels.tif", port=port,
               item=bad / "item.json")
    args = [a.format(**fmt) for a in args]
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"} if args[1].startswith("s3://") else None
    t0 = time.monotonic()
    res = run(*args, env=env, timeout=120)
    assert res.returncode == code, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geoseg: error: "), res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert time.monotonic() - t0 < 60  # no hang: refused before any work
    assert not (tmp_path / "o" / "scene.json").exists() and not (tmp_path / "r" / "run.json").exists()
    assert not (tmp_path / "o" / "scene.tif").exists()


def test_debug_shows_the_traceback(bad, tmp_path):
    res = run("predict", str(bad / "nocrs.tif"), "--out", str(tmp_path / "o"), "--model", "index", "--debug")
    assert res.returncode == 1 and "Traceback" in res.stderr and "RasterError" in res.stderr


def test_band_names_without_a_model_band_are_refused(bad):
    from geoseg.data.bands import select_bands
    from geoseg.errors import InputError

    with rasterio.open(bad / "nonir.tif") as src:
        desc = src.descriptions
    # a checkpoint trained on blue, green, red, nir (bands 1-4): the names say band 4 is not nir
    with pytest.raises(InputError, match=r"nonir.tif: the model reads blue, green, red, nir.*without nir"):
        select_bands(str(bad / "nonir.tif"), desc, roles=["blue", "green", "red", "nir"], numbers=[1, 2, 3, 4])
    # names that say nothing: the training band numbers are used
    assert select_bands("x.tif", (None,) * 4, roles=["blue", "green", "red", "nir"], numbers=[1, 2, 3, 4])[0] == \
        [1, 2, 3, 4]


def test_label_values_missed_at_planning_are_refused_when_read(sample_dir, bad):
    """Planning reads labels decimated; a chip holding an undeclared class still fails, naming it."""
    from geoseg.errors import RasterError
    from geoseg.data.raster import read_info
    from geoseg.train.data import Pair, read_chip

    pair = Pair(read_info(str(sample_dir / "scene.tif")), read_info(str(bad / "labels_out.tif")), [1, 2, 3, 4])
    image, labels = read_chip(pair, 100, 100, 64, k=4)  # no stray value here
    assert image.shape == (4, 64, 64) and set(np.unique(labels)) <= {0, 1, 2, 3, 255}
    with pytest.raises(RasterError, match=r"labels_out.tif \(window rows 290:354, cols 290:354\): label values 7, 9"):
        read_chip(pair, 290, 290, 64, k=4)


def test_checkpoint_of_another_architecture_is_refused_before_any_output_is_touched(sample_dir, tmp_path, ray_local):
    from geoseg.models import checkpoint
    from geoseg.data.classes import LANDCOVER
    from geoseg.errors import CheckpointError
    from geoseg.models.zoo import ModelConfig, build_model
    from geoseg.predict import predict
    from geoseg.predict.plan import PredictOptions, plan_job

    cfg = ModelConfig("tinyfcn", "resnet18", 4, 4)
    meta = checkpoint.CheckpointMeta(cfg, LANDCOVER, [0.0] * 4, [1.0] * 4)
    ck, scene, out = str(tmp_path / "ck"), str(sample_dir / "scene.tif"), tmp_path / "o"
    checkpoint.save(ck, build_model(cfg), meta)
    job = plan_job([scene], str(out), PredictOptions(checkpoint=ck))  # planning writes nothing
    assert job.first.status == "new" and not (out / "scene.zarr").exists()
    checkpoint.verify(ck)
    doc = json.loads((tmp_path / "ck" / "geoseg.json").read_text())
    doc["model"]["arch"] = "fpn"
    (tmp_path / "ck" / "geoseg.json").write_text(json.dumps(doc))
    misfit = r"ck: weights do not fit fpn/resnet18, the model its geoseg.json describes: \d+ missing"
    with pytest.raises(CheckpointError, match=misfit):
        checkpoint.verify(ck)
    # fpn's shapes are known now (it was built): the same check without building it
    with pytest.raises(CheckpointError, match=misfit):
        checkpoint.verify(ck, build=False)
    # the check that runs beside Ray's start, in its own process: the same one line
    with pytest.raises(CheckpointError, match=misfit):
        checkpoint.BackgroundCheck(ck).result()
    # an earlier run's outputs are not deleted by --overwrite when the new checkpoint is refused
    (out / "scene.zarr").mkdir(parents=True)
    (out / "scene.json").write_text("{}")
    with pytest.raises(CheckpointError, match=misfit):
        predict([scene], str(out), PredictOptions(checkpoint=ck, overwrite=True), log=lambda *_: None)
    assert (out / "scene.json").read_text() == "{}" and (out / "scene.zarr").is_dir()


def test_truncated_file_fails_naming_file_and_window(bad, tmp_path):
    res = run("predict", str(bad / "truncated.tif"), "--out", str(tmp_path / "o"), "--model", "index",
              "--tile-size", "128", "--halo", "0")
    assert res.returncode == 1, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("geoseg: error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "truncated.tif: cannot read window rows" in errors[0] and "corrupt or truncated" in errors[0]
    assert not (tmp_path / "o" / "truncated.json").exists() and not (tmp_path / "o" / "truncated.tif").exists()


def test_skip_bad_tiles_writes_nodata_and_lists_them(ray_local, bad, sample_dir, tmp_path):
    from geoseg.data.classes import NODATA
    from geoseg.predict import PredictOptions, predict

    opts = PredictOptions(model="index", tile_size=128, halo=0, bands=[1, 2, 3, 4])
    (clean,) = predict([str(sample_dir / "scene.tif")], str(tmp_path / "clean"), opts)
    (rec,) = predict([str(bad / "truncated.tif")], str(tmp_path / "o"), PredictOptions(**{**opts.__dict__,
                                                                                           "skip_bad_tiles": True}))
    tiles = rec["tiles"]
    assert tiles["bad"] == len(tiles["bad_tiles"]) > 0
    assert tiles["predicted"] + tiles["nodata_skipped"] + tiles["bad"] == tiles["total"] == clean["tiles"]["total"]
    with rasterio.open(tmp_path / "o" / "truncated.tif") as a, rasterio.open(tmp_path / "clean" / "scene.tif") as b:
        got, want = a.read(1), b.read(1)
    bad_mask = np.zeros(got.shape, bool)
    for t in tiles["bad_tiles"]:
        w = t["window"]
        bad_mask[w["row_off"] : w["row_off"] + w["height"], w["col_off"] : w["col_off"] + w["width"]] = True
    assert (got[bad_mask] == NODATA).all()  # unreadable tiles: nodata, listed
    np.testing.assert_array_equal(got[~bad_mask], want[~bad_mask])  # the rest: as from the intact file


def test_all_nodata_scene_is_a_valid_empty_output(ray_local, bad, tmp_path):
    from geoseg.data.classes import NODATA
    from geoseg.predict import PredictOptions, predict

    (rec,) = predict([str(bad / "allnodata.tif")], str(tmp_path / "o"), PredictOptions(model="index", tile_size=256))
    assert rec["status"] == "complete" and rec["tiles"]["predicted"] == 0
    assert rec["tiles"]["nodata_skipped"] == rec["tiles"]["total"]
    with rasterio.open(tmp_path / "o" / "allnodata.tif") as src:
        assert src.crs is not None and (src.read(1) == NODATA).all()


def test_no_crs_is_accepted_when_allowed(ray_local, bad, tmp_path):
    from geoseg.predict import PredictOptions, predict

    (rec,) = predict([str(bad / "nocrs.tif")], str(tmp_path / "o"),
                     PredictOptions(model="index", tile_size=256, allow_no_crs=True))
    assert rec["tiles"]["predicted"] > 0
    with rasterio.open(tmp_path / "o" / "nocrs.tif") as src:
        assert src.crs is None


def test_evaluate_reads_predict_zarr_like_its_cog(ray_local, sample_dir, tmp_path):
    from geoseg.errors import RasterError
    from geoseg.evaluate import evaluate
    from geoseg.predict import PredictOptions, predict

    (rec,) = predict([str(sample_dir / "scene.tif")], str(tmp_path / "o"), PredictOptions(model="index"))
    labels = str(sample_dir / "labels.tif")
    from_zarr, from_cog = evaluate(rec["outputs"]["zarr"], labels), evaluate(rec["outputs"]["cog"], labels)
    assert from_zarr["confusion"] == from_cog["confusion"] and from_zarr["pixels"] > 0
    os.remove(rec["outputs"]["record"])  # as if the job had not finished
    with pytest.raises(RasterError, match="incomplete"):
        evaluate(rec["outputs"]["zarr"], labels)
