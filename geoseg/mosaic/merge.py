"""How a mosaic merges the scenes that cover a pixel: by place and by time (``--merge``).

A chunk's scenes come one at a time, in merge order (acquisition time where known, else the
job's), each already warped onto the chunk: :class:`Merge` keeps only running sums of the
size of one chunk (per class where the rule needs them), so its memory does not grow with the
number of observations, tens or hundreds of dates per pixel.

A pixel of a scene is an *observation* where it is not nodata, and a *clear* observation where
it is not masked either (:data:`~geoseg.data.classes.MASKED`, ``predict --mask``). Where a
pixel has no clear observation it is ``MASKED`` if some scene saw it masked, else nodata.
"""

from __future__ import annotations

import numpy as np

from geoseg.data.classes import MASKED, NODATA

RULES = {
    "confidence": "the pixel of the scene whose top class probability is highest (ties: the later scene)",
    "latest": "the valid pixel of the latest scene (acquisition time where known, else the job's order)",
    "latest-clear": "the latest clear (unmasked) observation",
    "first-clear": "the first clear (unmasked) observation",
    "mode": "the most frequent class over the clear observations (ties: the higher mean probability where "
            "stored, then the class seen latest)",
    "mean-probability": "the class of the highest mean probability over the clear observations",
}
NEEDS_PROBABILITIES = ("confidence", "mean-probability")


class Merge:
    """The merge of one chunk ``shape`` by ``rule``, over a scheme of ``k`` classes; ``proba``: the
    scenes' probabilities are given to :meth:`add` (tie-breaks of ``mode``)."""

    def __init__(self, rule: str, shape: tuple[int, int], k: int, proba: bool = False, frequencies: bool = False):
        self.rule, self.k, self.proba = rule, k, proba or rule in NEEDS_PROBABILITIES
        self.best = np.full(shape, NODATA, np.uint8)
        self.count = np.zeros(shape, np.uint16)  # clear observations
        self.seen_masked = np.zeros(shape, bool)
        self.n = 0  # scenes added
        self.conf = np.zeros(shape, np.uint8) if rule == "confidence" else None
        self.hits = np.zeros((k, *shape), np.uint16) if rule == "mode" or frequencies else None  # per class
        self.psum = np.zeros((k, *shape), np.float32) if rule == "mean-probability" or (rule == "mode" and proba) \
            else None
        self.last = np.full((k, *shape), -1, np.int32) if rule == "mode" else None

    def add(self, classes: np.ndarray, proba: np.ndarray | None = None) -> None:
        """One more scene's ``classes`` on the chunk (NODATA outside it), and its probabilities
        ``(k, h, w)`` uint8 where the rule needs them; scenes in merge order."""
        order, self.n = self.n, self.n + 1
        clear = classes < self.k
        self.count += clear
        self.seen_masked |= classes == MASKED
        for c in np.unique(classes[clear]) if self.hits is not None else ():
            seen = classes == c
            self.hits[c] += seen
            if self.last is not None:
                self.last[c][seen] = order
        if self.psum is not None and proba is not None:
            self.psum += np.where(clear, proba, 0)
        rule = self.rule
        if rule == "latest":
            valid = classes != NODATA
            self.best[valid] = classes[valid]
        elif rule == "latest-clear":
            self.best[clear] = classes[clear]
        elif rule == "first-clear":
            take = clear & (self.best >= self.k)
            self.best[take] = classes[take]
        elif rule == "confidence":
            conf = np.where(classes == NODATA, 0, proba.max(axis=0)).astype(np.uint8)
            take = (classes != NODATA) & ((self.best == NODATA) | (conf >= self.conf))
            self.best[take], self.conf[take] = classes[take], conf[take]

    def result(self) -> np.ndarray:
        """The merged classes of the chunk."""
        if self.rule in ("latest", "confidence"):
            return self.best
        if self.rule == "mean-probability":
            out = self.psum.argmax(axis=0).astype(np.uint8)
        elif self.rule == "mode":
            out = self._mode()
        else:
            out = self.best.copy()
        none = self.count == 0
        out[none] = np.where(self.seen_masked[none], MASKED, NODATA)
        return out

    def _mode(self) -> np.ndarray:
        best = np.zeros(self.count.shape, np.uint8)
        n, p, last = self.hits[0], (self.psum[0] if self.psum is not None else None), self.last[0]
        for c in range(1, self.k):
            nc, lc = self.hits[c], self.last[c]
            pc = self.psum[c] if self.psum is not None else None
            better = nc > n
            tie = nc == n
            if pc is not None:
                better |= tie & (pc > p)
                tie &= pc == p
            better |= tie & (lc > last)
            best[better] = c
            n, last = np.where(better, nc, n), np.where(better, lc, last)
            if pc is not None:
                p = np.where(better, pc, p)
        return best

    def frequencies(self) -> np.ndarray:
        """``(k, h, w)`` uint8: the share of each class among the clear observations (255 = all)."""
        share = self.hits / np.maximum(self.count, 1)
        return np.rint(share * 255).astype(np.uint8)
