"""What ``geoseg rank`` ranks, decided before a chip is chosen (no Ray): the options, a job's
finished scenes, and each scene's cells (its ``--uncertainty`` table, or its stored
``--probabilities`` scored the same way)."""

from __future__ import annotations

from dataclasses import dataclass

from geoseg.data import storage, uncertainty
from geoseg.errors import InputError

STRATEGIES = {
    "entropy": "the chips whose pixels' class probabilities are the most even (mean normalised entropy)",
    "margin": "the chips whose top two classes are the closest (1 - mean margin)",
    "disagreement": "the chips where the --tta passes disagree the most (predict --uncertainty --tta)",
    "random": "chips at random (a baseline), under the same spacing and class balance",
}
DEFAULT_CHIP = 128  # px: geoseg train's default --chip-size on CPU
MIN_VALID = 0.5  # a chip with fewer valid (classified) pixels is not a candidate


@dataclass(frozen=True)
class RankOptions:
    """``geoseg rank``'s options, checked as they are made."""

    prefix: str
    out: str | None = None  # default PREFIX/rank
    top: int = 50
    strategy: str = "entropy"
    chip: int = DEFAULT_CHIP
    min_distance: float | None = None  # metres between chip centres; default 1.5 chip sides
    balance: bool = True
    seed: int = 0
    overwrite: bool = False
    exclude: tuple[str, ...] = ()  # chips.parquet of earlier rounds: their chips (and what overlaps them) left out

    def __post_init__(self):
        if self.top < 1:
            raise InputError(f"--top {self.top}: choose at least one chip")
        if self.strategy not in STRATEGIES:
            raise InputError(f"--strategy {self.strategy!r}: one of {', '.join(STRATEGIES)}")
        if self.chip < uncertainty.CELL or self.chip % uncertainty.CELL:
            raise InputError(f"--chip {self.chip}: a multiple of {uncertainty.CELL} px (the uncertainty cells' side)")
        if self.min_distance is not None and self.min_distance < 0:
            raise InputError(f"--min-distance {self.min_distance:g}: metres, >= 0")

    @property
    def folder(self) -> str:
        return storage.absolute(self.out or storage.join(self.prefix, "rank"))


@dataclass(frozen=True)
class RankScene:
    """A finished scene of the job: where its outputs and input are, its grid, its cells' table."""

    stem: str
    zarr: str
    cog: str
    image: str  # the input raster (or stacked VRT)
    crs: str | None
    transform: tuple[float, ...]
    shape: tuple[int, int]
    classes: dict  # the class scheme, as the record has it
    table: str | None  # PREFIX/<stem>.uncertainty.parquet, or None: from the stored probabilities


def scenes_of(prefix: str) -> list[RankScene]:
    """The job's finished scenes; one line where it has none."""
    from geoseg.data.classmap import scene_maps

    prefix = storage.absolute(prefix)
    found = scene_maps(prefix)
    if not found:
        raise InputError(f"{prefix}: no finished scene to rank (run geoseg predict --uncertainty first)")
    out = []
    for stem, zarr_url, rec in found:
        info = rec["raster"]
        out.append(RankScene(stem, zarr_url, rec["outputs"]["cog"], rec["input"], info.get("crs"),
                             tuple(info["transform"]), (info["height"], info["width"]), rec["model"]["classes"],
                             rec["outputs"].get("uncertainty")))
    return out


def excluded(urls: tuple[str, ...]) -> dict[str, list[tuple[int, int, int]]]:
    """``{scene stem: [(row_off, col_off, size)]}`` of the chips of earlier rankings (``--exclude``)."""
    import pyarrow.parquet as pq

    out: dict[str, list[tuple[int, int, int]]] = {}
    for url in urls:
        path, fs = storage.arrow_filesystem(url)
        try:
            with storage.faults(url, "reading"):
                tab = pq.read_table(path, filesystem=fs, columns=["scene", "row_off", "col_off", "size"]).to_pylist()
        except (KeyError, ValueError) as exc:
            raise InputError(f"--exclude {url}: not a geoseg rank chips.parquet ({exc})") from None
        for r in tab:
            out.setdefault(r["scene"], []).append((r["row_off"], r["col_off"], r["size"]))
    return out


def cells_of(scene: RankScene, strategy: str):
    """The scene's cells (a pyarrow Table, :mod:`geoseg.data.uncertainty`'s columns)."""
    from geoseg.data.classes import ClassScheme

    k = len(ClassScheme.from_dict(scene.classes))
    if scene.table is None:
        if strategy == "disagreement":
            raise InputError(f"{scene.zarr}: --strategy disagreement needs the passes of predict --uncertainty --tta")
        return uncertainty.from_probabilities(scene.zarr, k)
    tab = uncertainty.read_table(scene.table)
    if strategy == "disagreement" and tab.num_rows and tab.column("disagreement").null_count == 0:
        import numpy as np

        if np.isnan(tab.column("disagreement").to_numpy()).all():
            raise InputError(f"{scene.table}: no disagreement scores; predict with --uncertainty --tta for "
                             "--strategy disagreement")
    return tab
