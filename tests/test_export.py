"""Exported and quantized model files: predict runs them without the run folder and gives the eager
model's class maps (ONNX, TorchScript and torch.export, U-Net and FCN, crop and hann); quantize scores INT8
against fp32 on the run's validation blocks and refuses a model whose mIoU drops; bad model files
are refused in one line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio

from geoseg.models import checkpoint, export, modelfile
from geoseg.errors import CheckpointError, InputError


@pytest.fixture(scope="module")
def small(sample_dir, tmp_path_factory):
    """A 320 x 256 corner of the sample scene (not square: a row/column swap fails), with its labels."""
    d = tmp_path_factory.mktemp("small")
    for name in ("scene.tif", "labels.tif"):
        with rasterio.open(sample_dir / name) as src:
            prof, data = src.profile, src.read(window=((100, 420), (60, 316)))
            tags = src.tags()
        prof.update(height=320, width=256, transform=src.window_transform(((100, 420), (60, 316))), driver="GTiff",
                    blockxsize=128, blockysize=128, tiled=True)
        with rasterio.open(d / name, "w", **prof) as dst:
            dst.write(data)
            dst.update_tags(**tags)
            if name == "scene.tif":
                dst.descriptions = ("blue", "green", "red", "nir")
    return d


@pytest.fixture(scope="module")
def trained(sample_dir, tmp_path_factory):
    """A run folder (checkpoint + run.json) of a TinyFCN trained for a few seconds in this process
    on the sample scene, as ``geoseg train`` lays it out (quantize re-plans its validation blocks)."""
    import torch

    from geoseg.train.augment import Augment
    from geoseg.models.checkpoint import CheckpointMeta
    from geoseg.train.losses import make_loss
    from geoseg.models.zoo import ModelConfig, build_model
    from geoseg.train.config import TrainConfig
    from geoseg.train.data import open_pairs, plan_training, sample_train_chips
    from geoseg.train.fit import train_epoch

    run = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(images=[str(sample_dir / "scene.tif")], labels=[str(sample_dir / "labels.tif")], out=str(run),
                      arch="tinyfcn", chip_size=64, block_size=128, chip_cache="off")
    plan = plan_training(open_pairs(cfg.images, cfg.labels, [1, 2, 3, 4]), chip=64, block=128)
    mcfg = ModelConfig("tinyfcn", "resnet18", 4, len(plan.classes))
    torch.manual_seed(0)
    model = build_model(mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mean, std = torch.tensor(plan.mean).view(1, -1, 1, 1), torch.tensor(plan.std).view(1, -1, 1, 1)
    batches = ({"image": torch.from_numpy(b["image"].astype(np.float32)), "label": torch.from_numpy(b["label"])}
               for b in (sample_train_chips({"id": np.arange(16)}, plan) for _ in range(60)))
    train_epoch(model, batches, opt=opt, loss_fn=make_loss("ce"), augment=Augment(),
                normalize=lambda x: (x - mean) / std, amp={"device_type": "cpu", "enabled": False})
    meta = CheckpointMeta(mcfg, plan.classes, plan.mean, plan.std, ["blue", "green", "red", "nir"], [1, 2, 3, 4])
    checkpoint.save(str(run / "best"), model, meta)
    (run / "run.json").write_text(json.dumps({"config": dataclasses.asdict(cfg)}))
    return run


@pytest.fixture(scope="module")
def unet_ckpt(tmp_path_factory):
    from geoseg.models.checkpoint import CheckpointMeta
    from geoseg.data.classes import LANDCOVER
    from geoseg.models.zoo import ModelConfig, build_model

    import torch

    out = {}
    for arch, enc in (("unet", "resnet18"), ("fcn", "resnet50")):
        torch.manual_seed(1)
        cfg = ModelConfig(arch, enc, 4, 4)
        folder = tmp_path_factory.mktemp(arch)
        checkpoint.save(str(folder), build_model(cfg), CheckpointMeta(cfg, LANDCOVER, [700.0, 900.0, 800.0, 2500.0],
                                                                      [300.0, 300.0, 400.0, 900.0],
                                                                      ["blue", "green", "red", "nir"], [1, 2, 3, 4]))
        out[arch] = folder
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["unet", "fcn"])
def test_exported_files_predict_the_eager_models_class_maps(ray_local, unet_ckpt, small, tmp_path, arch):
    from geoseg.predict import PredictOptions, predict

    folder = unet_ckpt[arch]
    files = {fmt: export.export(str(folder), fmt, str(tmp_path / f"m{export.FORMATS[fmt]}"), log=lambda *_: None)
             for fmt in export.FORMATS}
    meta = modelfile.describe(files["onnx"])
    assert meta.model.arch == arch and meta.band_roles == ["blue", "green", "red", "nir"]
    assert meta.extra["export"]["precision"] == "fp32" and meta.extra["export"]["tile_advice"]["tile_size"] == 512
    scene = str(small / "scene.tif")
    for stitch in ("crop", "hann"):
        maps = {}
        for name, model in (("eager", str(folder)), *files.items()):
            opts = PredictOptions(checkpoint=model, tile_size=96, halo=16, stitch=stitch, batch_size=4,
                                  precision="fp32")
            (rec,) = predict([scene], str(tmp_path / f"{name}-{stitch}"), opts, log=lambda *_: None)
            assert rec["placement"]["runtime"]["runtime"] == ("onnxruntime" if name == "onnx" else "torch")
            with rasterio.open(rec["outputs"]["cog"]) as cog:
                maps[name] = cog.read(1)
        for name in files:
            agree = (maps[name] == maps["eager"]).mean()
            assert agree >= 0.9999, (name, stitch, agree)


def test_quantized_int8_is_scored_and_refused_when_its_miou_drops(trained, sample_dir, tmp_path):
    from geoseg.models.predictor import OnnxPredictor, load_predictor
    from geoseg.train.quantize import quantize

    res = quantize(str(trained), "int8", max_miou_drop=0.05, out=str(tmp_path / "m.int8.onnx"), log=lambda *_: None)
    assert res["chips"] > 0 and res["agreement"] > 0.9 and res["miou_fp32"] > 0.2
    meta = modelfile.describe(str(tmp_path / "m.int8.onnx"))
    acc = meta.extra["export"]["accuracy"]
    assert meta.extra["export"]["precision"] == "int8" and acc["agreement"] == res["agreement"]
    assert acc["miou_int8"] == res["miou_int8"]
    pred = load_predictor(str(tmp_path / "m.int8.onnx"), threads=1)
    assert isinstance(pred, OnnxPredictor) and pred.runtime["precision"] == "int8"
    # calibrated on a raster without a single valid pixel: activation ranges are wrong, mIoU drops
    with rasterio.open(sample_dir / "scene.tif") as src:
        prof = src.profile
    prof.update(nodata=None)
    with rasterio.open(tmp_path / "dark.tif", "w", **prof) as dst:
        dst.write(np.zeros((4, prof["height"], prof["width"]), prof["dtype"]))
    with pytest.raises(InputError, match=r"int8 model refused: mIoU drops by .* more than --max-miou-drop 0.01"):
        quantize(str(trained), "int8", calibration=[str(tmp_path / "dark.tif")], max_miou_drop=0.01,
                 out=str(tmp_path / "bad.int8.onnx"), log=lambda *_: None)
    assert not (tmp_path / "bad.int8.onnx").exists()  # nothing written


def test_bad_model_files_are_refused_in_one_line(unet_ckpt, small, tmp_path):
    import onnx

    good = export.export(str(unet_ckpt["unet"]), "onnx", str(tmp_path / "good.onnx"), log=lambda *_: None)
    data = open(good, "rb").read()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 3])
    (tmp_path / "noise.pt").write_bytes(os.urandom(4096))
    (tmp_path / "noise.pt2").write_bytes(os.urandom(4096))
    proto = onnx.load(good)
    foreign = onnx.load(good)
    foreign.graph.node[0].domain = "evil.ops"
    onnx.save(foreign, tmp_path / "custom.onnx")
    external = onnx.load(good)
    t = external.graph.initializer[0]
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    entry = t.external_data.add()
    entry.key, entry.value = "location", "../../../etc/passwd"
    t.ClearField("raw_data")
    onnx.save(external, tmp_path / "external.onnx")
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "bare.onnx")
    cases = {"cut.onnx": "not an ONNX model, or truncated", "noise.pt": "not a TorchScript model",
             "noise.pt2": "not a torch.export archive",
             "custom.onnx": "operators of domain 'evil.ops'", "external.onnx": "reads tensors from other files",
             "bare.onnx": "without a geoseg description"}
    for name, words in cases.items():
        with pytest.raises(CheckpointError, match=words):
            modelfile.describe(str(tmp_path / name))
    # through the command: one line, exit 1, nothing written; and a model of 4 bands on a 3-band raster
    res = subprocess.run([sys.executable, "-m", "geoseg", "predict", str(small / "scene.tif"), "--out",
                          str(tmp_path / "o"), "--checkpoint", str(tmp_path / "external.onnx")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [res.stderr.strip()], res.stderr
    assert "external.onnx: refused" in res.stderr and not (tmp_path / "o" / "scene.zarr").exists()
    with rasterio.open(small / "scene.tif") as src:
        prof, data = src.profile, src.read([1, 2, 3])
    prof.update(count=3)
    with rasterio.open(tmp_path / "three.tif", "w", **prof) as dst:
        dst.write(data)
    res = subprocess.run([sys.executable, "-m", "geoseg", "predict", str(tmp_path / "three.tif"), "--out",
                          str(tmp_path / "o3"), "--checkpoint", good], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "three.tif" in res.stderr and "band" in res.stderr, res.stderr
