"""Validity masks: which pixels of a scene are clouds, shadows or otherwise not a clear look.

``--mask SOURCE`` (predict and train) names where a scene's mask comes from:

* ``scl``: Sentinel-2 L2A's scene classification band (asset or band named ``scl``). Masked by
  default: 0 no data, 1 saturated or defective, 3 cloud shadow, 8 cloud medium probability,
  9 cloud high probability, 10 thin cirrus. Other classes: ``scl:0,1,3,8,9,10,11`` (11 = snow).
* ``qa_pixel``: Landsat Collection 2's pixel quality band. Masked by default: bit 1 dilated cloud,
  2 cirrus, 3 cloud, 4 cloud shadow. Other bits: ``qa_pixel:bits=1,3,4``.
* ``ASSET:VALUES`` / ``ASSET:bits=BITS``: any band or asset of that name, masked where it holds
  one of the values (or has one of the bits set), e.g. ``fmask:2,4`` or ``cloud:1``.
* ``model`` (``model:l1c`` for top-of-atmosphere inputs): the cloud and cloud-shadow model that
  PyPI's ``ukis-csmask`` ships (``pip install geoseg[clouds]``), run on the tile's blue, green,
  red and nir bands in the same pass as the segmentation model (:mod:`geoseg.models.cloud`).
* ``none``: no mask (the default).

A masked pixel is never classified: class maps hold :data:`~geoseg.data.classes.MASKED` there
(docs/outputs.md). A mask band stacked from an item at another resolution (SCL at 20 m) is put
on the item's grid by nearest neighbour (:mod:`geoseg.data.stac`: it is categorical).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoseg.errors import InputError

# Sentinel-2 L2A scene classification (ESA's Level-2A product definition)
SCL_CLASSES = {0: "no_data", 1: "saturated_or_defective", 2: "dark_area_pixels", 3: "cloud_shadows",
               4: "vegetation", 5: "not_vegetated", 6: "water", 7: "unclassified",
               8: "cloud_medium_probability", 9: "cloud_high_probability", 10: "thin_cirrus", 11: "snow"}
SCL_MASKED = (0, 1, 3, 8, 9, 10)
# Landsat Collection 2 QA_PIXEL bits (USGS Landsat 8-9 C2 L2 product guide)
QA_BITS = {0: "fill", 1: "dilated_cloud", 2: "cirrus", 3: "cloud", 4: "cloud_shadow", 5: "snow", 6: "clear",
           7: "water"}
QA_MASKED = (1, 2, 3, 4)
CLOUD_BANDS = ("blue", "green", "red", "nir")  # what the cloud model reads
SYNTAX = "scl, qa_pixel, ASSET:VALUES, ASSET:bits=BITS, model, model:l1c or none"


@dataclass(frozen=True)
class MaskSpec:
    """Where a scene's validity mask comes from (``--mask``), checked as it is made."""

    kind: str = "none"  # none / values / bits / model
    band: str | None = None  # the asset or band holding the mask (values, bits)
    values: tuple[int, ...] = ()  # masked values, or masked bits
    level: str = "l2a"  # the cloud model's product level (model)

    @property
    def active(self) -> bool:
        return self.kind != "none"

    @property
    def reads(self) -> tuple[str, ...]:
        """The bands (asset keys, band names or roles) a mask reads beside the model's."""
        if self.kind in ("values", "bits"):
            return (self.band,)
        return CLOUD_BANDS if self.kind == "model" else ()

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        if self.kind == "model":
            return f"model:{self.level}"
        listed = ",".join(str(v) for v in self.values)
        return f"{self.band}:{'bits=' if self.kind == 'bits' else ''}{listed}"

    def decode(self, band: np.ndarray) -> np.ndarray:
        """Masked pixels (bool) of a mask band's values (any shape, any numeric dtype)."""
        data = np.asarray(band)
        if self.kind == "values":
            return np.isin(data, np.asarray(self.values, dtype=data.dtype))
        if self.kind == "bits":
            bits = 0
            for b in self.values:
                bits |= 1 << b
            return (data.astype(np.int64) & bits) != 0
        raise ValueError(f"a {self.kind} mask is not decoded from a band")


def parse_mask(text: str | None) -> MaskSpec:
    """``--mask`` -> :class:`MaskSpec`; one line naming the value if it is wrong."""
    raw = (text or "none").strip()
    name, sep, rest = raw.partition(":")
    name = name.strip().lower()
    if not name:
        raise InputError(f"--mask {text!r}: expected {SYNTAX}")
    if name == "none" and not sep:
        return MaskSpec()
    if name == "model":
        level = (rest.strip().lower() or "l2a") if sep else "l2a"
        if level not in ("l2a", "l1c"):
            raise InputError(f"--mask {text!r}: the cloud model is for l2a (surface) or l1c (top of atmosphere) "
                             "reflectance, e.g. --mask model:l1c")
        return MaskSpec("model", level=level)
    rest = rest.strip()
    bits = rest.lower().startswith("bits=")
    listed = rest[5:] if bits else rest
    if not sep or not listed:
        if name == "scl":
            return MaskSpec("values", "scl", SCL_MASKED)
        if name in ("qa_pixel", "qa"):
            return MaskSpec("bits", name, QA_MASKED)
        raise InputError(f"--mask {text!r}: which values of {name!r} are masked? e.g. --mask {name}:2,4 or "
                         f"--mask {name}:bits=3,4 (known without values: scl, qa_pixel)")
    try:
        values = tuple(sorted({int(v) for v in listed.split(",") if v.strip()}))
    except ValueError:
        raise InputError(f"--mask {text!r}: {listed!r} is not a list of integers") from None
    if not values or min(values) < 0 or (bits and max(values) > 31):
        raise InputError(f"--mask {text!r}: give values >= 0 (bits 0 to 31), e.g. --mask {name}:3,8,9,10")
    return MaskSpec("bits" if bits else "values", name, values)


def masked_share(counted: dict) -> dict:
    """A run record's ``masked`` section from what the COG copy counted: pixels masked, and their
    share of the valid pixels (those classified or masked)."""
    masked = int(counted.get("masked", 0))
    seen = masked + int(sum(counted["pixels"]))
    return {"pixels": masked, "fraction": round(masked / seen, 6) if seen else 0.0}


def mask_band(url: str, descriptions: tuple[str | None, ...], spec: MaskSpec) -> int:
    """The band number (1-based) of a raster's mask band: the band described as ``spec.band``
    (a stacked item's asset key); one line naming the raster and the band where there is none."""
    for i, d in enumerate(descriptions, start=1):
        if d and d.strip().lower() == str(spec.band).lower():
            return i
    raise InputError(f"{url}: --mask {spec} reads a band {spec.band!r}, which this raster does not name "
                     f"(band descriptions {list(descriptions)})")
