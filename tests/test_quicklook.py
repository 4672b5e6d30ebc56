"""Quicklooks and charts: PNGs of the expected size whose pixels differ exactly where the inputs do."""

import io
import subprocess
import sys

import numpy as np
import rasterio
from affine import Affine
from PIL import Image

from geoseg.data import quicklook
from geoseg.data.classes import LANDCOVER
from geoseg.data.classmap import read_overview
from geoseg.data.plots import confusion_matrix_png, training_curves_png

TITLE, GAP = 24, 8  # compose(): a panel starts below its title, after a gap


def _write(path, data, nodata=None, descriptions=None, tags=None, overviews=False):
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype=data.dtype, crs="EPSG:32633", transform=Affine(10, 0, 5e5, 0, -10, 6e6),
                       nodata=nodata, tiled=True, blockxsize=256, blockysize=256) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
        if tags:
            dst.update_tags(**tags)
        if overviews:
            dst.build_overviews([2, 4, 8], rasterio.enums.Resampling.nearest)
    return str(path)


def _png(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGBA"))


def test_true_colour_changes_only_where_the_image_does(tmp_path):
    rng = np.random.default_rng(0)
    base = (rng.random((4, 150, 210)) * 2000 + 500).astype(np.uint16)
    base[:, :10, :] = 0  # a nodata collar
    bright = base.copy()
    bright[:, 60:70, 100:120] = 9000  # one small square differs (under 2% of the pixels)
    names = ["blue", "green", "red", "nir"]
    a = quicklook.write_png(str(tmp_path / "a.png"), quicklook.true_colour(*quicklook.read_image(
        _write(tmp_path / "a.tif", base, nodata=0, descriptions=names))))
    b = quicklook.write_png(str(tmp_path / "b.png"), quicklook.true_colour(*quicklook.read_image(
        _write(tmp_path / "b.tif", bright, nodata=0, descriptions=names))))
    pa, pb = _png(a), _png(b)
    assert pa.shape == (150, 210, 4)
    assert (pa[:10, :, 3] == 0).all() and (pa[10:, :, 3] == 255).all()  # nodata transparent
    assert (pb[60:70, 100:120, :3] == 255).all()  # the bright square saturates
    changed = np.zeros((150, 210), bool)
    changed[60:70, 100:120] = True
    # the stretch moved a little (its percentiles include the square), so elsewhere colours
    # stay close, while the square changed a lot
    diff = np.abs(pa[..., :3].astype(int) - pb[..., :3].astype(int)).max(-1)
    assert diff[changed].mean() > 100 and diff[~changed].max() < 40


def test_red_green_blue_found_by_band_name(tmp_path):
    data = np.zeros((4, 64, 64), np.uint16)
    data[0] = 1000  # blue only: the picture must be blue
    url = _write(tmp_path / "s.tif", data + 1, descriptions=["blue", "green", "red", "nir"])
    px = quicklook.true_colour(*quicklook.read_image(url))[32, 32]
    assert px[2] > 200 and px[0] < 50 and px[1] < 50


def test_error_map_marks_exactly_the_disagreement(tmp_path):
    labels = np.zeros((120, 200), np.uint8)
    labels[:, 100:] = 1
    labels[:5] = 255
    pred = labels.copy()
    pred[40:60, 20:50] = 2  # wrong: water where the labels say bare soil
    tags = LANDCOVER.to_tags()
    lab_url = _write(tmp_path / "l.tif", labels, nodata=255, tags=tags)
    pred_url = _write(tmp_path / "p.tif", pred, nodata=255, tags=tags)
    out = quicklook.write_error_map(pred_url, lab_url, LANDCOVER.names, LANDCOVER, str(tmp_path / "e.png"))
    img = _png(out)
    assert img.shape[0] == 120 + TITLE + GAP
    x0 = GAP + 200 + GAP + 200 + GAP  # the third panel: errors
    errors = img[TITLE : TITLE + 120, x0 : x0 + 200]
    wrong = np.zeros((120, 200), bool)
    wrong[40:60, 20:50] = True
    assert (errors[wrong][:, :3] == LANDCOVER.colors[2]).all()  # in the colour of what it was taken for
    assert (errors[~wrong & (labels != 255)][:, :3] == quicklook.CORRECT).all()
    assert (errors[:5, :, :3] == 255).all()  # nodata: the white background shows


def test_overview_reads_stay_small(tmp_path):
    big = np.zeros((3000, 2000), np.uint8)
    big[:1500] = 1
    url = _write(tmp_path / "big.tif", big, nodata=255, overviews=True)
    small, scale = read_overview(url, max_side=500)
    assert small.shape == (500, 333) and scale == 6.0
    assert (small[:250] == 1).all() and (small[250:] == 0).all()


def test_charts_are_pngs_that_follow_their_data():
    cm = np.array([[50, 5, 0], [10, 30, 0], [0, 0, 0]])
    a = Image.open(io.BytesIO(confusion_matrix_png(cm, ["x", "y", "z"])))
    b = Image.open(io.BytesIO(confusion_matrix_png(cm.T, ["x", "y", "z"])))
    assert a.size == b.size and a.width >= 400
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    history = [{"epoch": e, "train_loss": 1 / (e + 1), "val_miou": 0.1 * e, "val_pixel_accuracy": 0.2 * e,
                **{f"val_iou_{n}": 0.05 * e for n in LANDCOVER.names}} for e in range(4)]
    curves = Image.open(io.BytesIO(training_curves_png(history, LANDCOVER.names)))
    assert curves.size == (1500, 420)
    flat = [dict(h, val_miou=0.0) for h in history]
    other = Image.open(io.BytesIO(training_curves_png(flat, LANDCOVER.names)))
    assert not np.array_equal(np.asarray(curves), np.asarray(other))


def test_quicklook_command(sample_dir, tmp_path):
    out = tmp_path / "labels.png"
    res = subprocess.run([sys.executable, "-m", "geoseg", "quicklook", str(sample_dir / "labels.tif"),
                          "--out", str(out), "--max-side", "320"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    img = _png(out)
    assert img.shape[0] == 320 + TITLE + GAP and img.shape[1] > 320  # 640 px decimated to 320, plus legend
    res = subprocess.run([sys.executable, "-m", "geoseg", "quicklook", str(tmp_path / "missing.tif")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "missing.tif: not found" in res.stderr
