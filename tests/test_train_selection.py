"""Training keeps the right model: a split that sees every class, a selection metric over the classes
labelled in validation, labels that say what they are (a budget shorter than one epoch:
tests/test_train_labels.py, in its real run)."""

import json

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.data.classes import NODATA
from geoseg.errors import RasterError
from geoseg.train.data import _block_hash, open_pairs, plan_training, read_val_chips, stratify

BLOCK = 64


def _scene(d, lab: np.ndarray, names: list[str] | None):
    h, w = lab.shape
    prof = dict(driver="GTiff", height=h, width=w, crs="EPSG:32633", transform=Affine(10, 0, 400000, 0, -10, 5000000),
                tiled=True, blockxsize=256, blockysize=256)
    rng = np.random.default_rng(0)
    with rasterio.open(d / "image.tif", "w", count=4, dtype="uint16", **prof) as dst:
        dst.write(rng.integers(100, 3000, (4, h, w), dtype=np.uint16))
        dst.descriptions = ("blue", "green", "red", "nir")
    with rasterio.open(d / "labels.tif", "w", count=1, dtype="uint8", nodata=NODATA, **prof) as dst:
        dst.write(lab, 1)
        if names:
            dst.update_tags(CLASS_NAMES=json.dumps(names))
    return str(d / "image.tif"), str(d / "labels.tif")


def _stripes(h=512, w=640) -> np.ndarray:
    return (np.arange(w)[None, :] * 3 // w + np.zeros((h, 1), int)).astype(np.uint8)  # classes 0, 1, 2


def test_stratify_moves_the_fewest_pixels_and_names_a_class_in_one_block():
    names = ("a", "b", "c", "d")
    hist = np.array([[50, 0, 0, 10],   # training, some of d
                     [50, 0, 0, 40],   # training, most of d
                     [0, 60, 0, 0],    # validation
                     [0, 60, 5, 0],    # training, the only block of c
                     [0, 60, 0, 0]])   # training
    is_val = np.array([False, False, True, False, False])
    new, notes = stratify(hist, is_val, names, hist.sum(0), BLOCK)
    assert new.tolist() == [True, False, True, False, False]  # the block with the least of d moved
    assert new[np.flatnonzero(hist[:, 3])].tolist() == [True, False]  # d on both sides now
    assert len(notes) == 1 and "class c: its 5 labelled pixels lie in one --block-size 64 block" in notes[0]
    assert "training only" in notes[0]


def test_a_class_only_in_one_corner_gets_into_validation(tmp_path):
    """Class 3 covers the north-west corner (four blocks); with a seed whose hash split puts all
    of them in training, the plan still validates it (and still trains on it)."""
    lab = _stripes()
    lab[:2 * BLOCK, :2 * BLOCK] = 3
    image, labels = _scene(tmp_path, lab, ["a", "b", "c", "d"])
    corner = [(r, c) for r in (0, BLOCK) for c in (0, BLOCK)]
    seed = next(s for s in range(200) if all(_block_hash(s, 0, r // BLOCK, c // BLOCK) >= 0.2 for r, c in corner))
    plan = plan_training(open_pairs([image], [labels]), chip=32, block=BLOCK, seed=seed)
    val = read_val_chips({"pair": plan.val_chips[:, 0], "row": plan.val_chips[:, 1], "col": plan.val_chips[:, 2]}, plan)
    assert (val["label"] == 3).any()  # validated
    assert any((int(r), int(c)) in corner for _, r, c, _ in plan.train_blocks)  # and trained on
    assert plan.info["split_notes"] == []


def test_the_selection_metric_leaves_out_classes_not_labelled_in_validation():
    """The issue's case: epoch 1 is better on the three classes labelled, but predicts the fourth
    (never labelled in validation) on a few pixels: it is the better epoch all the same."""
    from geoseg.models.metrics import scores
    from geoseg.train.fit import SELECTION, epoch_metrics

    def cm(ious, stray=0):
        m = np.zeros((4, 4), np.int64)
        for c, iou in enumerate(ious):  # 1000 labelled px of c, predicted right on iou * 1000
            m[c, c] = round(1000 * iou)
            m[c, (c + 1) % 3] = 1000 - m[c, c]
        m[0, 3] = stray
        m[0, 0] -= stray
        return m

    names = ["a", "b", "c", "d"]
    e0 = epoch_metrics(0, [64, 1.0, 4], scores(cm([0.99, 0.98, 0.89])), 1.0, 1.0, names)
    e1 = epoch_metrics(1, [64, 1.0, 4], scores(cm([0.99, 0.985, 0.95], stray=20)), 1.0, 1.0, names)
    assert e1["val_miou"] > e0["val_miou"] and e1["val_miou_all"] < e0["val_miou_all"]  # counted as 0, d would win e0
    assert e1["val_iou_d"] is None and e1["val_unlabelled"] == ["d"] and SELECTION["metric"] == "val_miou"


def test_labels_with_a_gap_are_refused_unless_the_classes_are_given(tmp_path):
    from geoseg.train.config import TrainConfig

    lab = _stripes()
    lab[300:350, 400:450] = 7  # values 0..2 and a 50 x 50 patch of 7; no CLASS_NAMES
    image, labels = _scene(tmp_path, lab, None)
    with pytest.raises(RasterError) as err:
        plan_training(open_pairs([image], [labels]), chip=32, block=BLOCK)
    msg = str(err.value)
    assert "labels.tif: label value(s) 7 (2,500 px) leave a gap after 2" in msg and "rows 256:320, cols 384:448" in msg
    assert "--classes" in msg and "\n" not in msg
    cfg = TrainConfig(images=[image], labels=[labels], out=str(tmp_path / "r"), classes="a,b,c,d,e,f,g,h")
    assert cfg.num_classes == 8
    plan = plan_training(open_pairs([image], [labels]), chip=32, block=BLOCK, num_classes=cfg.num_classes,
                         class_names=cfg.classes)
    assert plan.classes.names == tuple("abcdefgh") and plan.info["classes_from"] == "--classes"
    assert plan.info["class_pixels"]["h"] == 2500
    # the same labels without the patch: their classes come from their values, and say so
    _scene(tmp_path, _stripes(), None)
    plan = plan_training(open_pairs([image], [labels]), chip=32, block=BLOCK)
    assert plan.info["classes_from"].startswith("the label values") and list(plan.info["class_pixels"]) == [
        "class_0", "class_1", "class_2"]
