"""Label rasters checked whole before training (geoseg.train.labels; its Ray tasks in geoseg.train.job)."""

import json

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.data.classes import NODATA
from geoseg.errors import RasterError
from geoseg.data.raster import read_info
from geoseg.train.labels import label_chunks, merge_scans, scan_chunk, scan_labels

NAMES = "bare_soil,vegetation,water,built_up"


def _pair(d, height=900, width=1100, seed=0):
    """A 4-band image and its labels (classes 0..3 named in CLASS_NAMES), asymmetric (h != w)."""
    rng = np.random.default_rng(seed)
    prof = dict(driver="GTiff", height=height, width=width, crs="EPSG:32633",
                transform=Affine(10, 0, 400000, 0, -10, 5000000), tiled=True, blockxsize=256, blockysize=256)
    img = rng.integers(100, 3000, (4, height, width), dtype=np.uint16)
    with rasterio.open(d / "image.tif", "w", count=4, dtype="uint16", **prof) as dst:
        dst.write(img)
        dst.descriptions = ("blue", "green", "red", "nir")
    lab = (np.arange(width)[None, :] * 4 // width + np.zeros((height, 1), int)).astype(np.uint8)
    lab[: height // 3] = np.minimum(lab[: height // 3], 1)  # the north: no water, no built-up
    lab[height - 40:, :60] = NODATA
    with rasterio.open(d / "labels.tif", "w", count=1, dtype="uint8", nodata=NODATA, **prof) as dst:
        dst.write(lab, 1)
        dst.update_tags(CLASS_NAMES=json.dumps(NAMES.split(",")))
    return d / "image.tif", d / "labels.tif", lab


def _write_like(src, dst, data):
    with rasterio.open(src) as s:
        prof, tags = s.profile, s.tags()
    with rasterio.open(dst, "w", **prof) as d:
        d.write(data, 1)
        d.update_tags(**tags)


def test_scan_counts_every_pixel_in_chunks(tmp_path):
    _, labels, lab = _pair(tmp_path)
    info = read_info(str(labels))
    chunks = label_chunks(info, chunk=256)
    assert len(chunks) == 4 * 5 and sum(h * w for _, _, h, w in chunks) == 900 * 1100
    (hist,) = scan_labels([info], 4, chunk=256)
    want = np.bincount(lab[lab != NODATA].ravel(), minlength=NODATA)
    np.testing.assert_array_equal(hist, want)
    assert hist[2] and hist[3]  # the classes the north lacks are counted from the south


def test_a_small_patch_outside_the_classes_is_refused_with_its_window(tmp_path):
    _, labels, lab = _pair(tmp_path)
    bad = lab.copy()
    bad[610:660, 830:880] = 7  # 50x50 of 990,000 pixels: decimated reads miss it
    _write_like(labels, tmp_path / "bad.tif", bad)
    info = read_info(str(tmp_path / "bad.tif"))
    with pytest.raises(RasterError) as err:
        merge_scans(info, [scan_chunk(info.url, w, 4) for w in label_chunks(info, 512)], 4, "its 4 classes")
    msg = str(err.value)
    assert "bad.tif" in msg and "label value 7" in msg and "rows 610:660, cols 830:880" in msg
    assert "--num-classes 8" in msg and "\n" not in msg


def test_a_label_with_nothing_labelled_is_refused(tmp_path):
    _, labels, lab = _pair(tmp_path, height=300, width=400)
    _write_like(labels, tmp_path / "empty.tif", np.full_like(lab, NODATA))
    with pytest.raises(RasterError, match="empty.tif: no labelled pixel"):
        scan_labels([read_info(str(tmp_path / "empty.tif"))], 4)


def test_geoseg_train_refuses_the_patch_in_one_line_and_records_the_histogram(ray_local, tmp_path, capsys):
    """The command: one line naming the file, value and window, exit 1, no run record; a clean
    label's full-resolution histogram goes into run.json."""
    from geoseg.cli import main

    image, labels, lab = _pair(tmp_path)
    bad = lab.copy()
    bad[610:660, 830:880] = 7
    _write_like(labels, tmp_path / "bad.tif", bad)
    args = ["train", "--image", str(image), "--chip-size", "64", "--block-size", "128", "--epochs", "1",
            "--chips-per-epoch", "16", "--batch-size", "8", "--arch", "tinyfcn", "--workers", "1"]
    code = main([*args, "--label", str(tmp_path / "bad.tif"), "--out", str(tmp_path / "run_bad")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("geoseg: error: ") and "label value 7" in err[-1]
    assert "rows 610:660, cols 830:880" in err[-1]
    assert not (tmp_path / "run_bad" / "run.json").exists()

    # --chip-cache off: chips read from the rasters every epoch, as before the cache
    assert main([*args, "--label", str(labels), "--out", str(tmp_path / "run"), "--chip-cache", "off"]) in (0, None)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["selection"]["metric"] == "val_miou" and run["selection"]["unlabelled_in_validation"] == []
    assert run["input"]["chip_cache"] is None and not (tmp_path / "run" / "chips").exists()
    assert run["config"]["chip_cache"] == "off" and run["input"]["chips_per_s"] > 0
    want = np.bincount(lab[lab != NODATA].ravel(), minlength=4)
    assert run["split"]["class_pixels"] == dict(zip(NAMES.split(","), want.tolist()))
    # a one-minute budget shorter than the first epoch (100,000 chips): that epoch is cut, validated inside it
    budget = ["--chips-per-epoch", "100000", "--max-minutes", "1"]
    assert main([*args, *budget, "--label", str(labels), "--out", str(tmp_path / "budget")]) in (0, None)
    last = json.loads((tmp_path / "budget" / "run.json").read_text())["last"]
    assert last["epoch"] == 0 and last["elapsed_s"] <= 60, last
