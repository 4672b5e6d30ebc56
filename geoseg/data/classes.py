"""Class schemes: class names, colours and the nodata / ignore value."""

from __future__ import annotations

import json
from dataclasses import dataclass

NODATA = 255  # class-map nodata value, also the training ignore index
MASKED = 254  # a pixel a validity mask (--mask: cloud, shadow...) kept from being classified
MASKED_COLOR = (255, 255, 255, 255)


@dataclass(frozen=True)
class ClassScheme:
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.colors):
            raise ValueError("one colour per class name")
        if not 0 < len(self.names) < MASKED:
            raise ValueError(f"between 1 and {MASKED - 1} classes")

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def numbered(cls, names) -> "ClassScheme":
        """Classes of these names, numbered in order, with colours of their own (seeded)."""
        import numpy as np

        rng = np.random.default_rng(0)
        return cls(tuple(str(n) for n in names), tuple(tuple(int(x) for x in rng.integers(0, 255, 3)) for _ in names))

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        cmap = {i: (*c, 255) for i, c in enumerate(self.colors)}
        cmap[MASKED] = MASKED_COLOR
        cmap[NODATA] = (0, 0, 0, 0)
        return cmap

    def to_tags(self) -> dict[str, str]:
        return {
            "CLASS_NAMES": json.dumps(list(self.names)),
            "CLASS_COLORS": json.dumps([list(c) for c in self.colors]),
            "NODATA_CLASS": str(NODATA),
            "MASKED_CLASS": str(MASKED),
        }

    def to_dict(self) -> dict:
        return {"names": list(self.names), "colors": [list(c) for c in self.colors]}

    @classmethod
    def from_dict(cls, d: dict) -> "ClassScheme":
        return cls(tuple(d["names"]), tuple(tuple(int(v) for v in c) for c in d["colors"]))

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> "ClassScheme | None":
        if "CLASS_NAMES" not in tags:
            return None
        raw = tags["CLASS_NAMES"]
        try:  # a JSON list of names (what geoseg writes), else names separated by commas
            names = json.loads(raw)
        except ValueError:
            names = [n.strip() for n in raw.split(",") if n.strip()]
        if isinstance(names, str):
            names = [names]
        try:
            colors = json.loads(tags.get("CLASS_COLORS", "null"))
        except ValueError:
            colors = None  # unreadable colours: grey, as with none
        if not isinstance(colors, list) or len(colors) < len(names):
            colors = [[128, 128, 128]] * len(names)
        return cls(tuple(names), tuple(tuple(c) for c in colors))


# The sample scene's scheme, also the scheme of the spectral-index models.
LANDCOVER = ClassScheme(
    names=("bare_soil", "vegetation", "water", "built_up"),
    colors=((196, 164, 112), (56, 168, 0), (0, 112, 255), (230, 0, 0)),
)
BARE, VEGETATION, WATER, BUILT = range(4)


# The field-delineation target (geoseg.train.targets makes it, geoseg vectorize --instances reads it):
# background, an instance's interior, and its boundary pixels, BOUNDARY px wide.
INSTANCE_CLASSES = ClassScheme(("background", "field", "boundary"), ((200, 200, 200), (56, 168, 0), (110, 60, 20)))
BOUNDARY = 2  # px of an instance's edge that are its boundary (1 px: too thin to learn in CPU minutes)
