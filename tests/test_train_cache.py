"""The chip cache (geoseg.train.cache): chips cut from it equal chips read from the rasters (locally
and on a real S3 endpoint), an interrupted build resumes with the missing blocks only, other rasters
start a new cache, and the labels' scan is kept for a rerun. No Ray: the build runs here."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import rasterio

from geoseg.train import cache as chip_cache
from geoseg.train.data import _read_chips, open_pairs, plan_training, read_val_chips, sample_train_chips


def _plan(scene_dir, chip=64, block=128):
    pairs = open_pairs([str(scene_dir / "scene.tif")], [str(scene_dir / "labels.tif")], [1, 2, 3, 4])
    return plan_training(pairs, chip=chip, block=block, val_fraction=0.3)


def _picks(plan, n=40, seed=7):
    """Random chips of the training blocks, the last block's bottom-right corner included."""
    rng = np.random.default_rng(seed)
    picks = []
    for p, r0, c0, s in plan.train_blocks[rng.choice(len(plan.train_blocks), n)].tolist():
        picks.append((p, r0, c0, s, r0 + int(rng.integers(0, s - plan.chip + 1)),
                      c0 + int(rng.integers(0, s - plan.chip + 1))))
    p, r0, c0, s = (int(v) for v in plan.train_blocks[-1])
    return picks + [(p, r0, c0, s, r0 + s - plan.chip, c0 + s - plan.chip)]


@pytest.fixture(scope="module")
def wide(tmp_path_factory, sample_dir):
    """The sample scene cut to 640 x 448 (not square: a row/column swap fails) with its bands in
    another order (no two bands alike) and a float32 band scale, so chips are float32."""
    d = tmp_path_factory.mktemp("wide")
    with rasterio.open(sample_dir / "scene.tif") as src:
        prof, data = src.profile, src.read()[[2, 0, 3, 1], :, :448]
    with rasterio.open(sample_dir / "labels.tif") as src:
        lprof, labels, tags = src.profile, src.read(1)[:, :448], src.tags()
    prof.update(width=448, driver="GTiff", tiled=True, blockxsize=128, blockysize=128)
    lprof.update(width=448, driver="GTiff", tiled=True, blockxsize=128, blockysize=128)
    with rasterio.open(d / "scene.tif", "w", **prof) as dst:
        dst.write(data)
        dst.scales = (1e-4, 1e-4, 1e-4, 2e-4)
    with rasterio.open(d / "labels.tif", "w", **lprof) as dst:
        dst.write(labels, 1)
        dst.update_tags(**tags)
    return d


@pytest.mark.parametrize("where", ["local", "s3"])
def test_chips_from_the_cache_equal_chips_from_the_rasters(wide, tmp_path, where, request):
    plan = _plan(wide)
    assert plan.pairs[0].image.height != plan.pairs[0].image.width and len(plan.val_blocks)
    url = str(tmp_path / "chips")
    if where == "s3":
        request.getfixturevalue("s3")
        url = "s3://geoseg/runs/r/chips"
    cache = chip_cache.build(chip_cache.layout(url, plan.info["block"], plan.pairs), plan, len(plan.classes))
    picks = _picks(plan)
    want, got = _read_chips(plan, picks), _read_chips(plan, picks, cache)
    assert got["image"].dtype == np.float32 and got["image"].shape == (len(picks), 4, 64, 64)
    assert got["label"].dtype == np.uint8
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
    assert (want["label"] == 255).any() and (want["label"] < 4).any()  # the collar's nodata is ignored
    rows = {"pair": plan.val_chips[:, 0], "row": plan.val_chips[:, 1], "col": plan.val_chips[:, 2]}
    want, got = read_val_chips(rows, plan), read_val_chips(rows, plan, cache)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
    # a training batch draws from the cache as from the rasters: shapes, classes
    batch = sample_train_chips({"id": np.arange(8)}, plan, cache)
    assert batch["image"].shape == (8, 4, 64, 64) and set(np.unique(batch["label"])) <= {0, 1, 2, 3, 255}
    manifest = json.loads(chip_cache.storage.read_text(chip_cache.storage.join(url, "cache.json")))
    assert manifest["state"] == "complete"
    assert manifest["blocks"] == len(plan.train_blocks) + len(plan.val_blocks)


def test_an_interrupted_build_resumes_with_the_missing_blocks_only(sample_dir, tmp_path):
    plan = _plan(sample_dir)
    k = len(plan.classes)
    url = str(tmp_path / "chips")
    cache = chip_cache.layout(url, 128, plan.pairs)
    blocks = chip_cache.plan_blocks(plan)
    sigs = chip_cache.signatures([str(sample_dir / "scene.tif"), str(sample_dir / "labels.tif")])
    missing = chip_cache.prepare(cache, blocks, sigs)
    assert missing == blocks
    chip_cache.build_blocks(cache, missing[:5], k)  # killed after five blocks
    files = {b: cache.block_url(*b) for b in blocks}
    first = {b: open(files[b], "rb").read() for b in blocks[:5]}
    with open(files[blocks[1]], "r+b") as f:  # a damaged block (not a whole file) is built again
        f.truncate(100)
    assert chip_cache.read_manifest(url)["state"] == "building"
    again = chip_cache.prepare(cache, blocks, sigs)
    assert again == [blocks[1]] + blocks[5:]
    chip_cache.build(cache, plan, k, sigs)
    assert chip_cache.read_manifest(url)["state"] == "complete"
    assert all(open(files[b], "rb").read() == first[b] for b in blocks[:5])
    assert chip_cache.prepare(cache, blocks, sigs) == []  # a rerun of a finished run builds nothing

    # another block size: a new cache, the old files gone
    other = chip_cache.layout(url, 256, plan.pairs)
    assert len(chip_cache.prepare(other, [(0, 0, 0, 256)], sigs)) == 1
    assert not os.path.exists(files[blocks[0]])


def test_changed_rasters_start_afresh_and_the_scan_is_kept_for_the_same_labels(sample_dir, tmp_path):
    import shutil

    for name in ("scene.tif", "labels.tif"):
        shutil.copyfile(sample_dir / name, tmp_path / name)
    plan = _plan(tmp_path)
    url = str(tmp_path / "chips")
    labels = [str(tmp_path / "labels.tif")]
    sigs = chip_cache.signatures([str(tmp_path / "scene.tif"), labels[0]])
    hist = [np.arange(255, dtype=np.int64)]
    cache = chip_cache.layout(url, 128, plan.pairs)
    chip_cache.prepare(cache, chip_cache.plan_blocks(plan), sigs, chip_cache.scan_record(labels, hist, 4, sigs))
    np.testing.assert_array_equal(chip_cache.scanned_histograms(url, labels, 4)[0], hist[0])
    assert chip_cache.scanned_histograms(url, labels, 5) is None  # other declared classes: scanned again
    with rasterio.open(tmp_path / "labels.tif", "r+", IGNORE_COG_LAYOUT_BREAK="YES") as dst:  # edited in place
        dst.write(np.zeros((1, 8, 8), np.uint8), window=rasterio.windows.Window(0, 0, 8, 8))
    os.utime(tmp_path / "labels.tif", ns=(1, 1))
    assert chip_cache.scanned_histograms(url, labels, 4) is None
    new_sigs = chip_cache.signatures([str(tmp_path / "scene.tif"), labels[0]])
    assert len(chip_cache.prepare(cache, chip_cache.plan_blocks(plan), new_sigs)) == len(chip_cache.plan_blocks(plan))


def test_cache_location():
    assert chip_cache.cache_url("s3://b/run", None) == "s3://b/run/chips"
    assert chip_cache.cache_url("/runs/a", "/nvme/chips") == "/nvme/chips"
    assert chip_cache.cache_url("/runs/a", "off") is None
