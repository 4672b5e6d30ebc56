"""From model output tiles to output chunks: crop the halo, mask nodata.

Default stitching is halo + centre crop: every output pixel comes from exactly
one tile, the one whose core holds it, and was predicted with ``halo`` pixels
of real context on every side. When the halo covers the model's receptive
field the stitched map equals whole-image inference.
"""

from __future__ import annotations

import numpy as np

from geoseg.classes import NODATA


def crop_core(pred: np.ndarray, halo: int, core: int) -> np.ndarray:
    """Crop ``(N, [K,] T, T)`` tile predictions to their ``(N, [K,] core, core)`` cores."""
    return pred[..., halo : halo + core, halo : halo + core]


def finish(classes: np.ndarray, valid: np.ndarray, halo: int, core: int) -> np.ndarray:
    """Core class tiles ``(N, core, core)`` with nodata where the input is nodata."""
    out = np.array(crop_core(classes, halo, core), dtype=np.uint8, copy=True)
    out[~valid] = NODATA
    return out


def to_uint8_proba(proba: np.ndarray, halo: int, core: int) -> np.ndarray:
    """Core probabilities scaled to uint8 (0..255)."""
    p = crop_core(proba, halo, core)
    return np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)
