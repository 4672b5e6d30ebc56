import json
import tracemalloc

import numpy as np
import rasterio

from geoseg.data.classes import LANDCOVER, NODATA, VEGETATION, WATER
from geoseg.data.sample import BAND_NAMES, CRS, SampleScene, write_sample
from geoseg.data.tiling import Window


def test_sample_files_are_georeferenced_cogs(sample_dir):
    with rasterio.open(sample_dir / "scene.tif") as s, rasterio.open(sample_dir / "labels.tif") as lab:
        assert s.count == 4 and s.dtypes[0] == "uint16" and s.nodata == 0
        assert s.descriptions == BAND_NAMES
        assert s.crs.to_epsg() == 32633 and s.crs == rasterio.crs.CRS.from_string(CRS)
        assert s.transform.a == 10.0 and s.transform.e == -10.0
        assert s.profile["tiled"] and s.overviews(1)
        assert lab.dtypes[0] == "uint8" and lab.nodata == NODATA
        assert lab.crs == s.crs and lab.transform == s.transform and lab.shape == s.shape
        assert json.loads(lab.tags()["CLASS_NAMES"]) == list(LANDCOVER.names)
        assert lab.colormap(1)[WATER][:3] == LANDCOVER.colors[WATER]
        img, labels = s.read(), lab.read(1)
    nodata = np.all(img == 0, axis=0)
    assert 0.01 < nodata.mean() < 0.3  # an irregular collar, not the whole scene
    np.testing.assert_array_equal(nodata, labels == NODATA)
    # every class is present
    counts = np.bincount(labels[labels != NODATA], minlength=4)
    assert (counts > 0).all(), counts
    # spectra are informative: vegetation has a higher NDVI than water, water a higher NDWI
    f = img.astype(float)
    ndvi = (f[3] - f[2]) / (f[3] + f[2] + 1e-9)
    ndwi = (f[1] - f[3]) / (f[1] + f[3] + 1e-9)
    assert ndvi[labels == VEGETATION].mean() > ndvi[labels == WATER].mean() + 0.3
    assert ndwi[labels == WATER].mean() > ndwi[labels == VEGETATION].mean() + 0.3


def test_render_is_deterministic_and_independent_of_windows():
    scene = SampleScene(300, 260, seed=7)
    whole_img, whole_lab = scene.render(Window(0, 0, 300, 260))
    img2, lab2 = SampleScene(300, 260, seed=7).render(Window(0, 0, 300, 260))
    np.testing.assert_array_equal(whole_img, img2)
    # any window renders exactly the pixels of the whole scene
    win = Window(37, 101, 150, 93)
    part_img, part_lab = scene.render(win)
    np.testing.assert_array_equal(part_img, whole_img[(slice(None), *win.slices)])
    np.testing.assert_array_equal(part_lab, whole_lab[win.slices])
    other, _ = SampleScene(300, 260, seed=8).render(Window(0, 0, 300, 260))
    assert not np.array_equal(other, whole_img)


def test_written_files_identical_for_any_block_size(tmp_path):
    a = write_sample(str(tmp_path / "a"), size=300, seed=2, block=128)
    b = write_sample(str(tmp_path / "b"), size=300, seed=2, block=300)
    with rasterio.open(a["scene"]) as x, rasterio.open(b["scene"]) as y:
        np.testing.assert_array_equal(x.read(), y.read())


def _peak(tmp_path, size: int) -> int:
    tracemalloc.start()
    write_sample(str(tmp_path / f"s{size}"), size=size, seed=1, block=128)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_generation_streams_in_windows(tmp_path):
    """Peak numpy memory does not grow with the raster: 16x the pixels, same peak."""
    write_sample(str(tmp_path / "warm"), size=128, seed=1, block=128)  # one-off allocations (imports, GDAL)
    small, big = _peak(tmp_path, 256), _peak(tmp_path, 1024)
    raster_bytes = 1024 * 1024 * (4 * 2 + 1)
    assert big < 1.15 * small, (small, big)
    assert big < raster_bytes * 0.7, (big, raster_bytes)
