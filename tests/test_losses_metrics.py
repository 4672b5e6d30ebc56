import numpy as np
import pytest
import torch

from geoseg.data.classes import NODATA
from geoseg.errors import InputError
from geoseg.train.losses import make_loss
from geoseg.models.metrics import confusion, scores


def test_confusion_and_scores_by_hand():
    truth = np.array([[0, 0, 1], [1, 2, NODATA]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = confusion(truth, pred, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    s = scores(cm)
    assert s["pixels"] == 5 and s["pixel_accuracy"] == pytest.approx(3 / 5)
    assert s["iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert s["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert s["dice"][1] == pytest.approx(2 * 2 / (2 * 2 + 1))
    assert s["precision"][0] == pytest.approx(0.5) and s["recall"][0] == pytest.approx(0.5)
    # a fourth class never labelled but predicted on one pixel: IoU 0 in mIoU, left out of miou_labelled
    pred4 = pred.copy()
    pred4[0, 1] = 3
    s4 = scores(confusion(truth, pred4, 4))
    assert s4["iou"] == pytest.approx([1 / 3, 1.0, 0.0, 0.0]) and s4["miou"] == pytest.approx((1 / 3 + 1) / 4)
    assert s4["miou_labelled"] == pytest.approx((1 / 3 + 1) / 3)


@pytest.mark.parametrize("name", ["ce", "dice", "focal", "ce+dice"])
def test_losses_ignore_nodata_and_prefer_the_truth(name):
    target = torch.tensor([[[0, 1], [2, NODATA]]])
    good = torch.nn.functional.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 10
    bad = good.roll(1, dims=1)
    loss = make_loss(name, class_weights=torch.tensor([1.0, 2.0, 1.0]) if name == "ce" else None)
    assert loss(good, target) < loss(bad, target)
    # the ignored pixel does not matter
    good2 = good.clone()
    good2[0, :, 1, 1] = torch.tensor([0.0, 0.0, 50.0]).roll(1)
    assert loss(good2, target) == pytest.approx(float(loss(good, target)), abs=1e-5)
    with pytest.raises(InputError):
        make_loss("nope")
