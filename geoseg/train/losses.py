"""Segmentation losses: cross-entropy, Dice, focal, and CE + Dice. All honour the ignore index."""

from __future__ import annotations

from geoseg.data.classes import NODATA
from geoseg.errors import InputError

LOSSES = ("ce", "dice", "focal", "ce+dice")


def _valid_onehot(logits, target, ignore):
    import torch.nn.functional as F

    valid = target != ignore
    safe = target.clone()
    safe[~valid] = 0
    onehot = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    return valid.unsqueeze(1).to(logits.dtype), onehot


def dice_loss(logits, target, ignore: int = NODATA, eps: float = 1.0):
    """1 - mean soft Dice over classes present in target or prediction."""
    prob = logits.float().softmax(1)
    valid, onehot = _valid_onehot(prob, target, ignore)
    prob, onehot = prob * valid, onehot * valid
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = (2 * inter + eps) / (denom + eps)
    return 1 - dice.mean()


def focal_loss(logits, target, weight=None, gamma: float = 2.0, ignore: int = NODATA):
    import torch.nn.functional as F

    logp = F.log_softmax(logits.float(), 1)
    ce = F.nll_loss(logp, target, weight=weight, ignore_index=ignore, reduction="none")
    safe = target.clamp(0, logits.shape[1] - 1)
    pt = logp.gather(1, safe.unsqueeze(1)).squeeze(1).exp()
    loss = ((1 - pt) ** gamma) * ce
    valid = target != ignore
    return loss[valid].mean() if valid.any() else loss.sum() * 0


def make_loss(name: str, class_weights=None, ignore: int = NODATA):
    """A ``loss(logits, target)`` callable by name."""
    import torch.nn.functional as F

    if name not in LOSSES:
        raise InputError(f"--loss: unknown loss {name!r} (choose from {', '.join(LOSSES)})")

    def ce(logits, target):
        w = class_weights.to(logits.device) if class_weights is not None else None
        return F.cross_entropy(logits.float(), target, weight=w, ignore_index=ignore)

    if name == "ce":
        return ce
    if name == "dice":
        return lambda logits, target: dice_loss(logits, target, ignore)
    if name == "focal":
        return lambda logits, target: focal_loss(
            logits, target, class_weights.to(logits.device) if class_weights is not None else None, ignore=ignore
        )
    return lambda logits, target: ce(logits, target) + dice_loss(logits, target, ignore)
