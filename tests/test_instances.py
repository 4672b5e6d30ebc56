"""Field instances and labels that are vectors: the 3-class target, label vectors rasterized onto the
image's grid (the same chips as the label raster), instance polygons back from a class map, and
object-level scores against hand-counted cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from geoseg.evaluate.instances import InstanceCounts, scores
from geoseg.train import targets


def test_the_instance_target_marks_interiors_and_boundaries():
    ids = np.zeros((6, 9), np.int64)
    ids[1:5, 1:4] = 7  # two fields side by side, one pixel row of background above and below
    ids[1:5, 4:8] = 9
    padded = np.pad(ids, 1)
    t = targets.instance_target(padded, np.ones(ids.shape, bool), width=1)
    want = np.array([[0, 0, 0, 0, 0, 0, 0, 0, 0],
                     [0, 2, 2, 2, 2, 2, 2, 2, 0],
                     [0, 2, 1, 2, 2, 1, 1, 2, 0],
                     [0, 2, 1, 2, 2, 1, 1, 2, 0],
                     [0, 2, 2, 2, 2, 2, 2, 2, 0],
                     [0, 0, 0, 0, 0, 0, 0, 0, 0]], np.uint8)
    np.testing.assert_array_equal(t, want)


def test_instance_scores_hand_counted():
    p = np.zeros((4, 10), np.int64)
    r = np.zeros((4, 10), np.int64)
    p[:, 0:5] = 1  # 20 px; reference 1 covers 4x4 of it: IoU 16 / 20 = 0.8: a match
    r[:, 1:5] = 1
    p[:, 6:8] = 2  # 8 px against reference 2 of 12 px sharing 8: IoU 8 / 12 = 0.67: a match
    r[:, 6:9] = 2
    r[0, 9] = 3  # a reference instance nobody predicted
    counts = InstanceCounts()
    counts.add(p[:, :5], r[:, :5])  # in two windows, as a scene is read
    counts.add(p[:, 5:], r[:, 5:])
    s = scores(counts)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 0, 1)
    assert s["precision"] == 1.0 and s["recall"] == pytest.approx(2 / 3) and s["f1"] == pytest.approx(0.8)
    p[:, 6:8] = 0
    p[0:1, 6:9] = 2  # 3 px against 12: IoU 0.25, no match
    counts = InstanceCounts()
    counts.add(p, r)
    s = scores(counts)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 2) and s["f1"] == pytest.approx(0.4)
    counts.predicted_features = 3  # the file holds a third polygon, too thin to cover a pixel centre
    s = scores(counts)
    assert (s["predicted"], s["fp"]) == (3, 2)


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    from geoseg.data.sample import write_sample

    d = tmp_path_factory.mktemp("fields")
    return write_sample(str(d), size=320, seed=4, instances=True)


def test_sample_instances_keep_background_apart_from_nodata(fields, tmp_path):
    """0 is background (no parcel) and -1 nodata in the sample's instances.tif, so the target has
    background wherever the swath holds no parcel; an instance raster declaring 0 as nodata is refused."""
    from geoseg.data.raster import read_info
    from geoseg.errors import InputError

    with rasterio.open(fields["instances"]) as src:
        ids, prof = src.read(1), src.profile
    with rasterio.open(fields["scene"]) as src:
        imaged = src.read_masks(1) > 0
    assert prof["nodata"] == -1 and (ids == 0).any()
    np.testing.assert_array_equal(ids == -1, ~imaged)
    made = targets.from_instances(fields["instances"], read_info(fields["scene"]), str(tmp_path / "t.tif"))
    with rasterio.open(made) as src:
        t = src.read(1)
    np.testing.assert_array_equal(t == 0, imaged & (ids == 0))  # background: imaged, no parcel
    assert ((t == 1) | (t == 2)).sum() == (ids > 0).sum()
    prof.update(nodata=0)
    with rasterio.open(tmp_path / "zero-nodata.tif", "w", **prof) as dst:
        dst.write(np.maximum(ids, 0), 1)
    with pytest.raises(InputError, match=r"zero-nodata.tif: declares 0, the value of no instance"):
        targets.from_instances(str(tmp_path / "zero-nodata.tif"), read_info(fields["scene"]), str(tmp_path / "z.tif"))


def test_label_vectors_give_the_label_rasters_chips(fields, tmp_path):
    """The sample's labels as polygons (a GeoParquet of their pixel outlines) rasterized back onto the
    image's grid: the same label raster, so the same spatial split and the same chips."""
    import geopandas as gpd
    import shapely

    from geoseg.data.raster import read_info
    from geoseg.train.data import open_pairs, plan_training, read_val_chips
    from geoseg.vectorize.local import polygons_here
    from geoseg.vectorize.stages import Source

    with rasterio.open(fields["labels"]) as src:
        labels, transform, crs = src.read(1), src.transform, src.crs
    names = ("bare_soil", "vegetation", "water", "built_up")
    source = Source("x", *labels.shape, tuple(transform)[:6], None, (0, 1, 2, 3), names, "s")
    piece = polygons_here(source, lambda w: labels[w.slices], 128)
    geoms = shapely.transform(shapely.from_wkb(np.asarray(piece.wkb, dtype=object)),
                              lambda xy: np.column_stack([transform.c + transform.a * xy[:, 0],
                                                          transform.f + transform.e * xy[:, 1]]))
    gpd.GeoDataFrame({"landcover": [names[c] for c in piece.cls]}, geometry=geoms, crs=crs).to_parquet(
        tmp_path / "labels.parquet")
    made = targets.from_vectors(str(tmp_path / "labels.parquet"), read_info(fields["scene"]),
                                str(tmp_path / "labels-from-vectors.tif"), field="landcover")
    with rasterio.open(made) as got:
        back = got.read(1)
        tags = got.tags()
    names_sorted = sorted({names[c] for c in piece.cls})  # the names found, numbered in sorted order
    remap = np.full(256, 255, np.uint8)
    remap[:4] = [names_sorted.index(n) if n in names_sorted else 255 for n in names]
    np.testing.assert_array_equal(remap[labels], back)
    assert json.loads(tags["CLASS_NAMES"]) == names_sorted
    # the same chips: planned on the raster and on the rasterized vectors alike (classes renumbered)
    a = plan_training(open_pairs([fields["scene"]], [fields["labels"]], [1, 2, 3, 4]), chip=64, block=128)
    b = plan_training(open_pairs([fields["scene"]], [made], [1, 2, 3, 4]), chip=64, block=128)
    np.testing.assert_array_equal(a.val_chips, b.val_chips)
    np.testing.assert_array_equal(a.train_blocks, b.train_blocks)
    rows = {"pair": a.val_chips[:, 0], "row": a.val_chips[:, 1], "col": a.val_chips[:, 2]}
    ca, cb = read_val_chips(rows, a), read_val_chips(rows, b)
    np.testing.assert_array_equal(ca["image"], cb["image"])
    np.testing.assert_array_equal(remap[ca["label"]], cb["label"])
    assert targets.from_vectors(str(tmp_path / "labels.parquet"), read_info(fields["scene"]), made,
                                field="landcover") == made  # kept: made once


@pytest.mark.slow
def test_field_delineation_recipe_end_to_end(ray_local, fields, tmp_path):
    """sample --instances -> train --instances -> predict --vectors -> evaluate --instances; and the
    target itself, vectorized, gives back the reference fields (F1 near 1)."""
    from geoseg.cli import main
    from geoseg.evaluate import run_evaluation
    from geoseg.data.raster import read_info
    from geoseg.vectorize import VectorizeOptions, vectorize

    made = targets.from_instances(fields["instances"], read_info(fields["scene"]), str(tmp_path / "target.tif"))
    res = vectorize(made, VectorizeOptions(), log=lambda *_: None)
    assert res[0]["classes"] == ["field"]
    rep = run_evaluation([made], [made], instances=[fields["instances"]])
    inst = rep["instances"]
    with rasterio.open(fields["instances"]) as src:
        ids = src.read(1)
    assert inst["reference"] == len(np.unique(ids[ids > 0]))
    assert inst["f1"] > 0.95 and inst["precision"] > 0.95  # interiors grown back over their boundary
    # the reference as polygons (one per parcel, GeoParquet) scores as the raster of ids does
    import geopandas as gpd
    import shapely.geometry
    from rasterio.features import shapes

    with rasterio.open(fields["instances"]) as src:
        polys = [(shapely.geometry.shape(g), int(v))
                 for g, v in shapes(ids, mask=ids > 0, transform=src.transform)]
        crs = src.crs
    parcels = gpd.GeoDataFrame({"parcel": [v for _, v in polys]}, geometry=[g for g, _ in polys], crs=crs)
    parcels.dissolve(by="parcel").reset_index().to_parquet(tmp_path / "parcels.parquet")
    by_vectors = run_evaluation([made], [made], instances=[str(tmp_path / "parcels.parquet")])["instances"]
    assert (by_vectors["reference"], by_vectors["tp"]) == (inst["reference"], inst["tp"])

    run = tmp_path / "run"
    assert main(["train", "--image", fields["scene"], "--label", fields["instances"], "--instances", "--out",
                 str(run), "--arch", "tinyfcn", "--epochs", "1", "--chip-size", "64", "--block-size", "128",
                 "--chips-per-epoch", "16", "--batch-size", "8", "--workers", "1"]) in (0, None)
    summary = json.loads((run / "run.json").read_text())
    assert summary["classes"]["names"] == ["background", "field", "boundary"]
    assert main(["predict", fields["scene"], "--out", str(tmp_path / "pred"), "--checkpoint", str(run),
                 "--tile-size", "128", "--halo", "32", "--vectors"]) in (0, None)
    rec = json.loads((tmp_path / "pred" / "scene.json").read_text())
    assert rec["vectors"]["classes"] == ["field"]
    rep = run_evaluation([str(tmp_path / "pred" / "scene.tif")], [made], instances=[fields["instances"]])
    assert rep["instances"]["reference"] == inst["reference"] and 0 <= rep["instances"]["tp"] <= inst["reference"]


def _field_map() -> np.ndarray:
    """A background / field / boundary map drawn by hand: two fields side by side (their rings
    touching), a ring-shaped field around a small one in its hole, a field whose predicted boundary
    is two pixels wide, and a lone speck of boundary far from every interior."""
    m = np.zeros((60, 70), np.uint8)

    def field(r0, c0, r1, c1, ring=1):
        m[r0:r1, c0:c1] = 2
        m[r0 + ring : r1 - ring, c0 + ring : c1 - ring] = 1

    field(2, 2, 20, 18)
    field(2, 18, 20, 40)  # shares its left ring with the first field's right ring
    field(24, 2, 56, 40)  # the ring field: its interior with a hole ...
    m[33:47, 13:29] = 2  # ... its inner ring ...
    field(34, 14, 46, 28)  # ... around a field of its own
    field(4, 44, 40, 66, ring=2)  # a predicted boundary two pixels wide (GROW)
    m[50, 60] = 2  # a speck of boundary: nobody's
    return m


@pytest.mark.parametrize("chunk", [70, 16])
def test_instances_are_disjoint_and_tile_the_fields(tmp_path, chunk):
    """Each closed interior grows over the boundary pixels nearest to it: the polygons never overlap,
    an instance in another's hole stays a hole of it, ``pixels`` and ``area_ha`` are the polygon's,
    and chunk seams change nothing."""
    import geopandas as gpd
    import shapely
    from affine import Affine
    from rasterio.features import rasterize

    from geoseg.data.classes import INSTANCE_CLASSES
    from geoseg.data.cog import CogWriter
    from geoseg.vectorize import VectorizeOptions
    from geoseg.vectorize.local import vectorize_here

    m = _field_map()
    transform = Affine(10, 0, 500000, 0, -10, 5000000)
    url = str(tmp_path / "fields.tif")
    with CogWriter(url, height=m.shape[0], width=m.shape[1], count=1, dtype="uint8", crs="EPSG:32633",
                   transform=transform, nodata=255, tags=INSTANCE_CLASSES.to_tags()) as dst:
        from geoseg.data.tiling import Window

        dst.write(Window(0, 0, *m.shape), m)
    (res,) = vectorize_here(url, VectorizeOptions(chunk=chunk), out=str(tmp_path / "v"), log=lambda *_: None)
    f = gpd.read_parquet(res["files"]["parquet"])
    assert len(f) == 5 and set(f.class_name) == {"field"}
    assert f.area.sum() == pytest.approx(shapely.union_all(f.geometry.values).area)  # disjoint
    np.testing.assert_allclose(f.pixels * 100.0, f.area)
    np.testing.assert_allclose(f.area_ha * 1e4, f.area)
    burnt = rasterize(((g, i + 1) for i, g in enumerate(f.geometry)), out_shape=m.shape, transform=transform)
    covered = burnt > 0
    speck = np.zeros(m.shape, bool)
    speck[50, 60] = True
    np.testing.assert_array_equal(covered, (m > 0) & ~speck)  # every field pixel but the speck, once
    sizes = sorted(int((burnt == i + 1).sum()) for i in range(len(f)))
    assert sizes == sorted([18 * 16, 18 * 22, 32 * 38 - 12 * 14, 12 * 14, 36 * 22])  # each field's own pixels
    inner = f.geometry[np.argmin(f.pixels)]
    ring = f.geometry[int(np.argmax([len(g.interiors) for g in f.geometry]))]
    assert len(ring.interiors) == 1 and not ring.intersects(inner.buffer(-1))  # the inner field is its hole
