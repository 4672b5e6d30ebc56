"""Sizes that cannot fit, found at planning: clamped where the fix is obvious, else refused in
one line naming the values and the limit (never a numpy allocation error mid-job).

* a ``--tile-size`` larger than the scene: clamped to the scene (the smallest core that
  covers it and keeps the model's input a multiple of its stride), the value used written
  into the run record;
* a tile (or training chip) whose batch would take more than half of this machine's memory
  for the model's inputs and first feature maps: refused.
"""

from __future__ import annotations

import psutil

from geoseg.errors import InputError

FEATURES = 64  # channels of a deep model's full-resolution feature maps (a U-Net's first stage), float32
SHARE = 0.5  # of this machine's memory that one batch may take


def clamp_tile(tile: int, halo: int, height: int, width: int, multiple: int = 1) -> int:
    """The core side used for a scene: ``tile``, or, when it is larger than the scene, the
    smallest side that covers it and keeps ``core + 2 * halo`` a multiple of ``multiple``."""
    side = max(height, width)
    if tile <= side:
        return tile
    m = max(1, multiple)
    core = -(-(side + 2 * halo) // m) * m - 2 * halo
    return min(tile, max(core, 1))


def batch_bytes(batch: int, bands: int, side: int, deep: bool) -> int:
    """Memory of one batch of ``side``² model inputs (float32) and, for a deep model, one input's
    full-resolution feature maps."""
    return side * side * 4 * (batch * bands + (FEATURES if deep else 0))


def check_fits(nbytes: int, what: str, fix: str) -> None:
    """Refuse ``what`` when it needs more than :data:`SHARE` of this machine's memory."""
    total = psutil.virtual_memory().total
    if nbytes > SHARE * total:
        raise InputError(f"{what} needs about {nbytes / 2**30:.1f} GiB for the model's inputs and features, "
                         f"more than half of this machine's {total / 2**30:.1f} GiB; {fix}")
