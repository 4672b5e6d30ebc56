"""Active learning: predict --uncertainty keeps each cell's scores, equal to a direct computation from
the stored probabilities; geoseg rank chooses chips by them, spaced and balanced; its GeoParquet and
GeoPackages open with geopandas; their polygons train as partial labels (no gradient elsewhere) from
an earlier run's weights (--init); bad input is one line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import zarr

from geoseg.data import storage
from geoseg.data.classes import LANDCOVER, NODATA
from geoseg.data.uncertainty import CELL, read_table
from geoseg.errors import InputError
from geoseg.models import checkpoint
from geoseg.models.checkpoint import CheckpointMeta
from geoseg.models.zoo import ModelConfig, build_model
from geoseg.predict import PredictOptions, predict
from geoseg.rank import RankOptions, rank_here
from geoseg.rank.select import choose

QUIET = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def job(sample_dir, tmp_path_factory):
    """A random TinyFCN's run folder (best/), and its prediction of the sample scene with
    --uncertainty and --probabilities (on this machine's CPUs: no Ray)."""
    import torch

    root = tmp_path_factory.mktemp("rank")
    torch.manual_seed(0)
    cfg = ModelConfig("tinyfcn", "none", 4, len(LANDCOVER))
    run = root / "run"
    checkpoint.save(str(run / "best"), build_model(cfg), CheckpointMeta(cfg, LANDCOVER, [700.0, 900.0, 800.0, 2500.0],
                                                                        [300.0, 300.0, 300.0, 900.0]))
    (rec,) = predict([str(sample_dir / "scene.tif")], str(root / "out"),
                     PredictOptions(checkpoint=str(run), tile_size=256, halo=16, uncertainty=True, probabilities=True),
                     **QUIET)
    return {"run": run, "out": root / "out", "rec": rec, "root": root}


def _direct(zarr_url: str):
    """Entropy, margin, valid pixels and class counts per 32 px cell, straight from the stored arrays."""
    root = zarr.open_group(storage.zarr_store(zarr_url, read_only=True), mode="r")
    p = np.asarray(root["probabilities"][:]).astype(np.float64) / 255.0
    cls = np.asarray(root["classes"][:])
    k, h, w = p.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0).sum(0) / np.log(k)
    top = np.sort(p, axis=0)
    margin = top[-1] - top[-2]
    valid = cls < k
    return ent, margin, valid, cls


def test_uncertainty_table_is_the_scores_of_the_stored_probabilities(job):
    tab = read_table(job["rec"]["outputs"]["uncertainty"]).to_pandas()
    ent, margin, valid, cls = _direct(job["rec"]["outputs"]["zarr"])
    h, w = valid.shape
    assert len(tab) == math.ceil(h / CELL) * math.ceil(w / CELL)
    assert tab["disagreement"].isna().all()  # no --tta
    for row in tab.itertuples():
        sl = (slice(row.row_off, row.row_off + row.height), slice(row.col_off, row.col_off + row.width))
        v = valid[sl]
        assert row.valid == v.sum()
        if v.any():  # the table from float probabilities, the direct one from their uint8 copies
            assert abs(row.entropy - ent[sl][v].mean()) < 0.02 and abs(row.margin - margin[sl][v].mean()) < 0.02
        for c in range(len(LANDCOVER)):
            assert getattr(row, f"class_{c}") == (cls[sl][v] == c).sum()


def test_rank_chooses_the_chips_of_highest_direct_entropy(job, tmp_path):
    rec = rank_here(RankOptions(str(job["out"]), str(tmp_path / "r"), top=4, chip=64, min_distance=0, balance=False),
                    **QUIET)
    assert rec["chosen"] == 4 and rec["strategy"] == "entropy"
    chips = gpd.read_parquet(tmp_path / "r" / "chips.parquet").sort_values("rank")
    ent, _, valid, _ = _direct(job["rec"]["outputs"]["zarr"])
    h, w = valid.shape
    direct = []
    for r in range(0, h - 64 + 1, 32):
        for c in range(0, w - 64 + 1, 32):
            v = valid[r : r + 64, c : c + 64]
            if v.mean() >= 0.5:
                direct.append((ent[r : r + 64, c : c + 64][v].mean(), r, c))
    direct.sort(reverse=True)
    fourth = direct[3][0]
    for chip in chips.itertuples():
        sl = (slice(chip.row_off, chip.row_off + 64), slice(chip.col_off, chip.col_off + 64))
        mine = ent[sl][valid[sl]].mean()
        assert abs(mine - chip.score) < 0.02 and mine >= fourth - 0.02  # among the top four, to the uint8 rounding
    assert list(chips["score"]) == sorted(chips["score"], reverse=True)


def test_spacing_and_class_balance_hold():
    rng = np.random.default_rng(0)
    n = 400
    lon, lat = 10 + rng.random(n) * 0.05, 50 + rng.random(n) * 0.05  # about 3.5 x 5.5 km
    cls = np.where(rng.random(n) < 0.8, 0, rng.integers(1, 3, n))  # class 0 dominates, and scores highest
    score = rng.random(n) + (cls == 0)
    cands = {"lon": lon, "lat": lat, "cls": cls}
    picked = choose(cands, score, 12, 300.0, balance=True)
    assert len(picked) == 12
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    for i in picked:
        for j in picked:
            if i < j:
                assert geod.inv(lon[i], lat[i], lon[j], lat[j])[2] >= 300.0
    counts = np.bincount(cls[picked], minlength=3)
    assert counts.max() <= 4 and (counts > 0).all()  # ceil(12 / 3) each
    unbalanced = choose(cands, score, 12, 300.0, balance=False)
    assert np.bincount(cls[unbalanced], minlength=3)[0] > 4  # without balance the dominant class takes more
    assert choose(cands, score, 12, 0.0, False) == list(np.argsort(-score, kind="stable")[:12])


def test_rank_outputs_open_with_their_crs(job, sample_dir, tmp_path):
    rank_here(RankOptions(str(job["out"]), str(tmp_path / "r"), top=3, chip=64, strategy="margin"), **QUIET)
    chips = gpd.read_parquet(tmp_path / "r" / "chips.parquet")
    with rasterio.open(sample_dir / "scene.tif") as src:
        crs = src.crs
    assert chips.crs == crs and len(chips) == 3 and set(chips["scene"]) == {"scene"}
    assert (chips.geometry.area == (64 * 10.0) ** 2).all()
    import pyogrio

    for row in chips.itertuples():
        layers = dict(pyogrio.list_layers(row.gpkg))
        assert layers == {"labels": "Polygon", "chip": "Polygon"}
        labels = gpd.read_file(row.gpkg, layer="labels")
        box = gpd.read_file(row.gpkg, layer="chip")
        assert len(labels) == 0 and "class" in labels.columns and labels.crs == crs
        assert box.crs == crs and box.geometry.iloc[0].equals_exact(row.geometry, 1e-6)
        assert os.path.getsize(row.png) > 500
    record = json.load(open(tmp_path / "r" / "rank.json"))
    assert record["strategy"] == "margin" and record["chosen"] == 3


def test_labelled_chips_train_from_the_earlier_weights(job, sample_dir, tmp_path, ray_local):
    from geoseg.train import TrainConfig, train

    rank_here(RankOptions(str(job["out"]), str(tmp_path / "r"), top=3, chip=64), **QUIET)
    chips = gpd.read_parquet(tmp_path / "r" / "chips.parquet")
    from geoseg.rank.stages import labels_from_raster

    assert labels_from_raster(str(tmp_path / "r" / "chips.parquet"), str(sample_dir / "labels.tif")) > 0
    out = tmp_path / "ft"
    summary = train(TrainConfig(images=[str(sample_dir / "scene.tif")], labels=[], out=str(out),
                                label_vectors=str(tmp_path / "r" / "chips" / "*.gpkg"), class_field="class",
                                init=str(job["run"]), epochs=1, chips_per_epoch=8, chip_size=64, block_size=64,
                                batch_size=4, workers=1, lr=1e-9, val_fraction=0.34), **QUIET)
    assert summary["init"]["from"] == str(job["run"] / "best")
    assert summary["model"]["arch"] == "tinyfcn"  # the earlier run's model, not the default
    burnt = rasterio.open(next((out / "labels").glob("*.tif"))).read(1)
    with rasterio.open(sample_dir / "labels.tif") as src:
        ref = src.read(1)
    inside = np.zeros(ref.shape, bool)
    for row in chips.itertuples():
        inside[row.row_off : row.row_off + 64, row.col_off : row.col_off + 64] = True
    assert (burnt[~inside] == NODATA).all()  # everything but the chips: left out of the loss
    agree = (burnt[inside] == ref[inside]).mean()
    assert agree > 0.97  # the chips' polygons burnt back (pixel-centre rasterization)
    start, _ = checkpoint.load(str(job["run"] / "best"))
    tuned, meta = checkpoint.load(str(out / "best"))
    for (name, a), b in zip(start.state_dict().items(), tuned.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=name)  # lr ~ 0: the given weights
    assert meta.mean == [700.0, 900.0, 800.0, 2500.0]  # the earlier run's normalisation


def test_unlabelled_pixels_give_no_gradient():
    import torch

    from geoseg.train.losses import make_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :, 4:] = NODATA
    for name in ("ce", "dice", "focal", "ce+dice"):
        logits.grad = None
        make_loss(name)(logits, target).backward()
        assert logits.grad[:, :, :, 4:].abs().max() == 0, name
        assert logits.grad[:, :, :, :4].abs().max() > 0, name


def test_bad_input_is_one_line(job, sample_dir, tmp_path):
    with pytest.raises(InputError, match="choose at least one chip"):
        RankOptions(str(job["out"]), top=0)
    with pytest.raises(InputError, match="multiple of 32"):
        RankOptions(str(job["out"]), chip=100)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no finished scene to rank"):
        rank_here(RankOptions(str(tmp_path / "empty")), **QUIET)
    with pytest.raises(InputError, match="--uncertainty --tta"):
        rank_here(RankOptions(str(job["out"]), str(tmp_path / "d"), strategy="disagreement"), **QUIET)
    (plain,) = predict([str(sample_dir / "scene.tif")], str(tmp_path / "plain"),
                       PredictOptions(checkpoint=str(job["run"]), tile_size=256, halo=16), **QUIET)
    r = subprocess.run([sys.executable, "-m", "geoseg", "rank", str(tmp_path / "plain"), "--strategy", "margin"],
                       capture_output=True, text=True)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "holds no probabilities" in lines[0] and "--uncertainty" in lines[0]
    rank_here(RankOptions(str(job["out"]), str(tmp_path / "again"), top=1, chip=64), **QUIET)
    with pytest.raises(InputError, match="--overwrite"):
        rank_here(RankOptions(str(job["out"]), str(tmp_path / "again"), top=1, chip=64), **QUIET)


def test_tta_disagreement_is_kept_and_ranked(job, sample_dir, tmp_path):
    (rec,) = predict([str(sample_dir / "scene.tif")], str(tmp_path / "tta"),
                     PredictOptions(checkpoint=str(job["run"]), tile_size=256, halo=16, uncertainty=True, tta=True),
                     **QUIET)
    tab = read_table(rec["outputs"]["uncertainty"]).to_pandas()
    seen = tab[tab["valid"] > 0]
    assert seen["disagreement"].between(0, 1).all() and seen["disagreement"].max() > 0  # flips of a random net
    out = rank_here(RankOptions(str(tmp_path / "tta"), top=2, chip=64, strategy="disagreement"), **QUIET)
    chips = gpd.read_parquet(out["chips"])
    assert (chips["score"] == chips["disagreement"]).all() and chips["score"].iloc[0] >= seen["disagreement"].median()


def test_an_earlier_rounds_chips_are_not_chosen_again(job, tmp_path):
    first = rank_here(RankOptions(str(job["out"]), str(tmp_path / "a"), top=3, chip=64, min_distance=0), **QUIET)
    second = rank_here(RankOptions(str(job["out"]), str(tmp_path / "b"), top=3, chip=64, min_distance=0,
                                   exclude=(first["chips"],)), **QUIET)
    a, b = gpd.read_parquet(first["chips"]), gpd.read_parquet(second["chips"])
    assert not any(x.intersection(y).area > 0 for x in a.geometry for y in b.geometry)
    assert second["candidates"] < first["candidates"]


def test_uncertainty_on_ray_with_hann_stitching(job, sample_dir, tmp_path, ray_local):
    """Two scenes (a Ray job), --stitch hann: each scene's table, the same cells as in one pass."""
    import shutil

    shutil.copy(sample_dir / "scene.tif", tmp_path / "twin.tif")
    recs = predict([str(sample_dir / "scene.tif"), str(tmp_path / "twin.tif")], str(tmp_path / "o"),
                   PredictOptions(checkpoint=str(job["run"]), tile_size=256, halo=16, uncertainty=True,
                                  stitch="hann"), **QUIET)
    assert all(r["placement"].get("ray") is not False for r in recs)  # on Ray (a local job says "ray": false)
    a, b = (read_table(r["outputs"]["uncertainty"]).to_pandas() for r in recs)
    one = read_table(job["rec"]["outputs"]["uncertainty"]).to_pandas()
    assert len(a) == len(b) == len(one)
    np.testing.assert_allclose(a["entropy"], b["entropy"], atol=1e-5)  # the twin scene: the same scores
    np.testing.assert_allclose(a["entropy"], one["entropy"], atol=1e-4)  # hann's pass 1 scores each tile's core
    assert (a["valid"] == one["valid"]).all()
