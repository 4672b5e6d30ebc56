"""Spectral-index models: segmentation with no training.

NDWI (McFeeters: green vs nir) finds water, NDVI (nir vs red) vegetation, and
a blue/red balance separates grey built-up surfaces from reddish bare soil.
Thresholds are fixed, or chosen per scene by Otsu's method on a decimated read
of the scene (its overviews), so fitting never reads the full raster.
Classes follow :data:`geoseg.data.classes.LANDCOVER`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from geoseg.data.classes import BARE, BUILT, LANDCOVER, VEGETATION, WATER
from geoseg.data.raster import read_decimated

INDEX_MODELS = ("index", "index-otsu")  # the built-in models (--model NAME)
BAND_ROLES = ("blue", "green", "red", "nir")  # the bands they read, in this order


@dataclass(frozen=True)
class IndexThresholds:
    ndwi: float = 0.05
    ndvi: float = 0.35
    built: float = -0.1  # (blue - red) / (blue + red) above this: grey, built-up

    def to_dict(self) -> dict:
        return asdict(self)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float32), b.astype(np.float32)
    den = a + b
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, (a - b) / den, 0.0).astype(np.float32)


def indices(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ndwi, ndvi, built)`` of tiles ``(..., 4, H, W)`` in band order :data:`BAND_ROLES`."""
    blue, green, red, nir = (tiles[..., i, :, :] for i in range(4))
    return _ratio(green, nir), _ratio(nir, red), _ratio(blue, red)


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no valid pixels")
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0, dtype=float), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0, dtype=float), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


class IndexModel:
    """Classifies tiles whose bands are ordered as :data:`BAND_ROLES`; classes are :data:`LANDCOVER`."""

    num_classes = len(LANDCOVER)

    def __init__(self, thresholds: IndexThresholds | None = None):
        self.thresholds = thresholds or IndexThresholds()

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """Class map ``(N, H, W)`` uint8 for tiles ``(N, 4, H, W)``."""
        t = self.thresholds
        ndwi, ndvi, built = indices(tiles)
        out = np.full(ndwi.shape, BARE, dtype=np.uint8)
        out[built > t.built] = BUILT
        out[ndvi > t.ndvi] = VEGETATION
        out[ndwi > t.ndwi] = WATER
        return out

    def predict_proba(self, tiles: np.ndarray) -> np.ndarray:
        """One-hot scores ``(N, K, H, W)`` float32 (index models are not probabilistic)."""
        cls = self.predict(tiles)
        return (cls[:, None] == np.arange(self.num_classes)[None, :, None, None]).astype(np.float32)


def fit_otsu(url: str, band_numbers: list[int], max_side: int = 1024) -> IndexThresholds:
    """Per-scene Otsu thresholds from a decimated read (overviews when the file has them)."""
    data, _, nodata = read_decimated(url, band_numbers, max_side, "nearest")
    valid = ~np.all(data == nodata, axis=0) if nodata is not None else np.ones(data.shape[1:], bool)
    ndwi, ndvi, built = indices(data[None])
    base = IndexThresholds()
    ndwi_t = otsu(ndwi[0][valid])
    # Otsu on NDWI splits water from land only if the scene has water; keep it sane.
    ndwi_t = float(np.clip(ndwi_t, -0.05, 0.3))
    land = valid & (ndwi[0] <= ndwi_t)
    ndvi_t = float(np.clip(otsu(ndvi[0][land]), 0.15, 0.6)) if land.any() else base.ndvi
    return IndexThresholds(ndwi=ndwi_t, ndvi=ndvi_t, built=base.built)

