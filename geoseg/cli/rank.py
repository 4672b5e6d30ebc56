"""geoseg rank: the chips of a predicted job most worth labelling next."""

from __future__ import annotations

from geoseg.cli.args import ADDRESS_HELP, at_least, command
from geoseg.rank import DEFAULT_CHIP, STRATEGIES


def add(sub) -> None:
    ra = command(sub, "rank", "choose the chips of a predicted job most worth labelling next (active learning)",
                 "geoseg rank out/ --top 50 --strategy entropy")
    ra.add_argument("prefix", help="a predict job's output prefix (predict --uncertainty, or --probabilities)")
    ra.add_argument("--top", type=int, default=50, help="how many chips to choose")
    ra.add_argument("--strategy", choices=list(STRATEGIES), default="entropy",
                    help="; ".join(f"{k}: {v}" for k, v in STRATEGIES.items()))
    ra.add_argument("--chip", type=at_least("--chip", 32), default=DEFAULT_CHIP,
                    help=f"side of a chip in pixels, a multiple of 32 (default {DEFAULT_CHIP}: geoseg train's chip)")
    ra.add_argument("--min-distance", type=float, metavar="METRES",
                    help="no two chips' centres closer than this (default 1.5 chip sides)")
    ra.add_argument("--no-balance", dest="balance", action="store_false",
                    help="do not share the chips out across the predicted classes")
    ra.add_argument("--seed", type=int, default=0, help="the random strategy's seed")
    ra.add_argument("--exclude", action="append", default=[], metavar="CHIPS_PARQUET",
                    help="an earlier round's chips.parquet (repeatable): its chips, and chips overlapping them, are "
                         "not chosen again")
    ra.add_argument("--out", help="where the chips go (default PREFIX/rank): chips.parquet, chips/<rank>_<scene>.png "
                                  "and .gpkg, rank.json")
    ra.add_argument("--overwrite", action="store_true", help="replace an earlier ranking in --out")
    ra.add_argument("--address", help=ADDRESS_HELP + "; without one (or RAY_ADDRESS), in this process")
    ra.set_defaults(run=run)


def run(a) -> None:
    import os

    from geoseg.rank import RankOptions, rank, rank_here

    opts = RankOptions(a.prefix, a.out, a.top, a.strategy, a.chip, a.min_distance, a.balance, a.seed, a.overwrite,
                       tuple(a.exclude))
    if a.address or os.environ.get("RAY_ADDRESS"):
        rank(opts, address=a.address)
    else:
        rank_here(opts)
