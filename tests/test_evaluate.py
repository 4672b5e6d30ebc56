"""geoseg evaluate: hand-computed scores, chunked sums, many pairs on a multi-node Ray
equal to one process and to a direct computation, GeoTIFF / Zarr / S3, pairing, refusals."""

import json
import pathlib

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.data.classes import LANDCOVER
from geoseg.errors import InputError, RasterError
from geoseg.evaluate import Pair, find_pairs, plan_scenes, run_evaluation, score_in_process
from geoseg.evaluate.plan import plan_scene
from geoseg.evaluate.stages import score_chunk
from geoseg.models.metrics import confusion, report
from geoseg.data.tiling import Window

UTM = "EPSG:32633"
TRANSFORM = Affine(10, 0, 500000, 0, -10, 6000000)  # 10 m pixels: 0.01 ha each


def write_classes(path, arr, crs=UTM, transform=TRANSFORM, nodata=255, tags=True):
    with rasterio.open(path, "w", driver="GTiff", height=arr.shape[0], width=arr.shape[1], count=1, dtype="uint8",
                       crs=crs, transform=transform, nodata=nodata, tiled=True, blockxsize=128,
                       blockysize=128) as dst:
        dst.write(arr[None])
        if tags:
            dst.update_tags(**LANDCOVER.to_tags())
    return str(path)


def test_report_of_a_hand_computed_confusion_matrix():
    names = ["a", "b", "c", "d", "e"]
    cm = np.array([[3, 1, 0, 0, 1],   # a: 3 right, 1 taken for b, 1 for e
                   [0, 2, 0, 0, 0],
                   [0, 1, 0, 0, 0],   # c: labelled once, never predicted
                   [0, 0, 0, 0, 0],   # d: neither labelled nor predicted
                   [0, 0, 0, 0, 0]])  # e: only predicted
    rep = report(cm, names)
    a, b, c, d, e = (rep["per_class"][n] for n in names)
    assert (a["iou"], a["dice"], a["precision"], a["recall"], a["support"]) == (0.6, 0.75, 1.0, 0.6, 5)
    assert (b["iou"], b["precision"], b["recall"]) == (0.5, 0.5, 1.0) and b["dice"] == pytest.approx(2 / 3)
    assert (c["iou"], c["dice"], c["precision"], c["recall"], c["absent"]) == (0.0, 0.0, None, 0.0, False)
    assert d["absent"] and d["iou"] is None and d["dice"] is None and d["support"] == 0
    assert (e["iou"], e["precision"], e["recall"], e["predicted"], e["absent"]) == (0.0, 0.0, None, 1, False)
    assert rep["absent"] == ["d"]
    assert rep["miou"] == pytest.approx((0.6 + 0.5 + 0 + 0) / 4)  # d left out, not counted as 0
    assert rep["pixel_accuracy"] == 5 / 8 and rep["pixels"] == 8
    json.dumps(rep, allow_nan=False)  # valid JSON: no NaN anywhere


# labels (rows 0-1, cols 4-5: nodata) and a prediction with its own nodata and a class (3)
# that only the prediction has; 2x2 chunks, so one chunk is all ignored.
LABELS = np.array([[0, 0, 1, 1, 255, 255],
                   [0, 0, 1, 1, 255, 255],
                   [0, 0, 2, 2, 1, 1],
                   [0, 0, 2, 2, 1, 1]], np.uint8)
PRED = np.array([[0, 1, 1, 1, 0, 2],
                 [0, 0, 1, 255, 1, 1],
                 [3, 0, 2, 1, 1, 1],
                 [3, 0, 2, 2, 1, 255]], np.uint8)
HAND_CM = [[5, 1, 0, 2],
           [0, 6, 0, 0],
           [0, 1, 3, 0],
           [0, 0, 0, 0]]


def test_chunked_sums_equal_the_hand_count(tmp_path):
    pair = Pair("s", write_classes(tmp_path / "p.tif", PRED), write_classes(tmp_path / "l.tif", LABELS))
    (plan,) = plan_scenes([pair], chunk=2)
    assert plan.n_chunks == 6 and plan.window(5) == Window(2, 4, 2, 2)
    ignored = score_chunk(plan, Window(0, 4, 2, 2))  # labels all nodata there
    assert ignored.confusion.sum() == 0 and ignored.ignored == {"label_nodata": 4, "prediction_nodata": 0}
    only_predicted = score_chunk(plan, Window(2, 0, 2, 2))  # class 3 is only predicted, here
    assert only_predicted.confusion[0, 3] == 2 and only_predicted.confusion[3].sum() == 0
    ev = score_in_process([plan])
    (counts,) = ev.counts
    assert counts.confusion.tolist() == HAND_CM
    assert counts.ignored == {"label_nodata": 4, "prediction_nodata": 2}
    np.testing.assert_allclose(counts.label_m2, [800, 800, 400, 0])  # 10 m pixels: 100 m² each
    np.testing.assert_allclose(counts.predicted_m2, [600, 1000, 400, 200])  # wherever predicted
    from geoseg.evaluate import build_report

    rep = build_report([plan], ev.counts)
    built = rep["per_class"]["built_up"]
    assert built["support"] == 0 and built["predicted"] == 2 and built["iou"] == 0.0 and not built["absent"]
    assert built["recall"] is None and built["predicted_area_ha"] == 0.02 and built["label_area_ha"] == 0.0
    assert rep["per_class"]["bare_soil"]["label_area_ha"] == 0.08


def test_refusals_are_one_line(tmp_path):
    labels = write_classes(tmp_path / "l.tif", LABELS)
    small = write_classes(tmp_path / "small.tif", LABELS[:, :4])
    with pytest.raises(RasterError, match=r"small.tif and .*l.tif are not on the same grid \(size 4x4 vs 6x4\)"):
        plan_scene(Pair("s", small, labels))
    moved = write_classes(tmp_path / "moved.tif", PRED, transform=TRANSFORM @ Affine.translation(1, 0))
    with pytest.raises(RasterError, match="not on the same grid \\(transform\\)"):
        plan_scene(Pair("s", moved, labels))
    bad = PRED.copy()
    bad[3, 0] = 7
    (plan,) = plan_scenes([Pair("s", write_classes(tmp_path / "bad.tif", bad), labels)], chunk=2)
    with pytest.raises(RasterError, match=r"bad.tif: class value\(s\) \[7\] outside the 4 classes, in window rows 2:4"):
        score_in_process([plan])
    other = write_classes(tmp_path / "other.tif", PRED, tags=False)
    with rasterio.open(other, "r+") as dst:
        dst.update_tags(CLASS_NAMES=json.dumps(["w", "x", "y", "z"]))
    with pytest.raises(RasterError, match="name their classes differently"):
        plan_scene(Pair("s", other, labels))


def test_pairs_by_folder_by_order_and_legacy_form(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "lab").mkdir()
    for stem in ("b", "a"):
        write_classes(tmp_path / "pred" / f"{stem}.tif", PRED)
        write_classes(tmp_path / "lab" / f"{stem}.tif", LABELS)
    pairs = find_pairs([str(tmp_path / "pred" / "*.tif")], [str(tmp_path / "lab")])
    assert [(p.name, p.labels.endswith(f"lab/{p.name}.tif")) for p in pairs] == [("a", True), ("b", True)]
    listed = tmp_path / "labels.txt"
    listed.write_text(f"{tmp_path}/lab/b.tif\n# comment\n{tmp_path}/lab/a.tif\n")
    pairs = find_pairs([str(tmp_path / "pred" / "a.tif"), str(tmp_path / "pred" / "b.tif")], [str(listed)])
    assert [p.labels.rsplit("/", 1)[1] for p in pairs] == ["b.tif", "a.tif"]  # in the order given
    (legacy,) = find_pairs([str(tmp_path / "pred" / "a.tif"), str(tmp_path / "lab" / "a.tif")])
    assert legacy.prediction.endswith("pred/a.tif") and legacy.labels.endswith("lab/a.tif")
    (tmp_path / "lab" / "a.tif").unlink()
    with pytest.raises(InputError, match=r"lab: no label raster named a.tif"):
        find_pairs([str(tmp_path / "pred" / "*.tif")], [str(tmp_path / "lab")])
    with pytest.raises(InputError, match=r"2 prediction\(s\) but 1 label raster"):
        find_pairs([str(tmp_path / "pred" / "*.tif")], [str(tmp_path / "lab" / "b.tif")])


def _scene(seed: int, shape: tuple[int, int]):
    """Labels with a nodata band and a prediction that is 80% right, on an asymmetric grid."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=shape).astype(np.uint8)  # class 3 never labelled
    labels[: shape[0] // 7] = 255
    pred = np.where(rng.random(shape) < 0.8, labels, rng.integers(0, 4, size=shape)).astype(np.uint8)
    pred[labels == 255] = rng.integers(0, 4, size=int((labels == 255).sum()))
    pred[-3:, :] = 255  # a strip the prediction left nodata
    return labels, pred


def _zarr_prediction(tmp_path, pred, info):
    """A class map in predict's Zarr layout (classes, spatial_ref), with its run record."""
    from geoseg.data import output
    from geoseg.data.tiling import TileGrid

    out = output.SceneOutput(str(tmp_path / "zpred"), "z")
    grid = TileGrid(pred.shape[0], pred.shape[1], core=128, halo=0)
    output.create_zarr(out, info, grid, LANDCOVER, {"model": "test"})
    for iy in range(grid.shape[0]):
        for ix in range(grid.shape[1]):
            w = Window(iy * 128, ix * 128, min(128, pred.shape[0] - iy * 128), min(128, pred.shape[1] - ix * 128))
            output.write_tile(out, w, pred[w.slices])
    output.write_record(out, {"status": "complete"})
    return out.zarr


@pytest.mark.slow
def test_many_pairs_on_a_multi_node_ray_equal_one_process(multi_node, tmp_path, s3):
    """GeoTIFF pairs (local and on S3) and a Zarr prediction on S3, many small chunks spread over
    3 nodes: the same sums as one process, and as numpy over whole arrays."""
    from geoseg.data.raster import read_info

    cluster, _ = multi_node(head_cpus=1, workers=2)
    shapes = {"t1": (300, 520), "t2": (520, 300), "z": (260, 390), "s3scene": (200, 330)}
    arrays = {name: _scene(i, shape) for i, (name, shape) in enumerate(shapes.items())}
    for d in ("pred", "lab"):
        (tmp_path / d).mkdir()
    labels, preds = [], []
    for name in ("t1", "t2"):
        preds.append(write_classes(tmp_path / "pred" / f"{name}.tif", arrays[name][1]))
        labels.append(write_classes(tmp_path / "lab" / f"{name}.tif", arrays[name][0]))
    labels.append(write_classes(tmp_path / "lab" / "z.tif", arrays["z"][0]))
    local_zarr = _zarr_prediction(tmp_path, arrays["z"][1], read_info(labels[-1]))
    for f in pathlib.Path(local_zarr).parent.rglob("*"):  # the Zarr store and its run record, on S3
        if f.is_file():
            s3.upload_file(str(f), "geoseg", f"zpred/{f.relative_to(pathlib.Path(local_zarr).parent)}")
    zarr_url = "s3://geoseg/zpred/z.zarr"
    for kind, idx in (("pred", 1), ("lab", 0)):
        local = write_classes(tmp_path / f"{kind}-s3.tif", arrays["s3scene"][idx])
        s3.upload_file(local, "geoseg", f"{kind}/s3scene.tif")
    labels.append("s3://geoseg/lab/s3scene.tif")

    rep = run_evaluation([str(tmp_path / "pred" / "*.tif"), zarr_url, "s3://geoseg/pred/*.tif"], labels,
                         out=str(tmp_path / "report"), chunk=128)
    assert list(rep["scenes"]) == ["t1", "t2", "z", "s3scene"]

    pairs = find_pairs([str(tmp_path / "pred" / "*.tif"), zarr_url, "s3://geoseg/pred/*.tif"], labels)
    one_process = score_in_process(plan_scenes(pairs, chunk=512))  # other chunks, one process
    total = np.zeros((4, 4), np.int64)
    for (name, (lab, pred)), counts in zip(arrays.items(), one_process.counts):
        valid = (lab != 255) & (pred != 255)
        direct = confusion(lab[valid], pred[valid], 4)
        assert rep["scenes"][name]["confusion"] == direct.tolist() == counts.confusion.tolist()
        total += direct
        assert rep["scenes"][name]["ignored_pixels"]["label_nodata"] == int((lab == 255).sum())
        area = rep["scenes"][name]["per_class"]["water"]["predicted_area_ha"]
        assert area == pytest.approx(0.01 * int((pred == 2).sum()))
    assert rep["confusion"] == total.tolist()
    assert rep["miou"] == pytest.approx(report(total, LANDCOVER.names)["miou"])
    assert rep["per_class"]["built_up"]["support"] == 0 and rep["per_class"]["built_up"]["predicted"] > 0

    written = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert written["confusion"] == rep["confusion"] and set(written["scenes"]) == set(shapes)
    assert written["error_maps"]["z"] == "errors/z.png" and (tmp_path / "report" / "errors" / "s3scene.png").exists()
    md = (tmp_path / "report" / "metrics.md").read_text()
    assert "| built_up |" in md and "errors/t2.png" in md
    from PIL import Image

    with Image.open(tmp_path / "report" / "confusion_matrix.png") as png:
        assert png.width > 300 and png.height > 300


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_labels_in_a_zarr_written_by_xarray(tmp_path, zarr_format):
    """Labels that another tool wrote to Zarr (rioxarray: one 2-D class array, spatial_ref) score
    like the same labels in a GeoTIFF; the grid is checked all the same."""
    import rioxarray

    tif = write_classes(tmp_path / "l.tif", LABELS)
    da = rioxarray.open_rasterio(tif).squeeze("band", drop=True).rename("landcover")
    da.attrs.pop("_FillValue", None)
    ds = da.to_dataset()
    ds["landcover"].encoding["_FillValue"] = 255
    ds.to_zarr(tmp_path / "l.zarr", mode="w", zarr_format=zarr_format, consolidated=False)
    pred = write_classes(tmp_path / "p.tif", PRED)
    from geoseg.evaluate import evaluate

    from_zarr, from_tif = evaluate(pred, str(tmp_path / "l.zarr")), evaluate(pred, tif)
    assert from_zarr["confusion"] == from_tif["confusion"] == HAND_CM
    assert from_zarr["ignored_pixels"] == from_tif["ignored_pixels"]
    small = write_classes(tmp_path / "small.tif", PRED[:, :4])
    with pytest.raises(RasterError, match="not on the same grid"):
        evaluate(small, str(tmp_path / "l.zarr"))


def test_evaluate_without_ray_is_the_same_driver_loop_and_the_same_report(tmp_path):
    """evaluate_here: the driver loop of run_evaluation with the chunks, error maps and files in this
    process; the report equals numpy over the whole arrays, and no Ray is started."""
    import sys

    from geoseg.evaluate.local import evaluate_here

    ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    arrays = {name: _scene(i, shape) for i, (name, shape) in enumerate({"a": (300, 260), "b": (130, 410)}.items())}
    for d in ("pred", "lab"):
        (tmp_path / d).mkdir()
    for name, (lab, pred) in arrays.items():
        write_classes(tmp_path / "pred" / f"{name}.tif", pred)
        write_classes(tmp_path / "lab" / f"{name}.tif", lab)
    rep = evaluate_here([str(tmp_path / "pred" / "*.tif")], [str(tmp_path / "lab")], out=str(tmp_path / "r"),
                        chunk=128)
    assert ("ray" in sys.modules and sys.modules["ray"].is_initialized()) == ray_before
    total = np.zeros((4, 4), np.int64)
    for name, (lab, pred) in arrays.items():
        valid = (lab != 255) & (pred != 255)
        direct = confusion(lab[valid], pred[valid], 4)
        assert rep["scenes"][name]["confusion"] == direct.tolist()
        total += direct
    assert rep["confusion"] == total.tolist()
    written = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert written["confusion"] == rep["confusion"] and (tmp_path / "r" / "errors" / "b.png").exists()
