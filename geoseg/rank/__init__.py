"""``geoseg rank``: the chips of a predicted job most worth labelling next (active learning).

Read top to bottom:

    plan.py    no Ray   RankOptions, the job's finished scenes, each scene's cells (its --uncertainty
                        table, or its stored --probabilities scored alike: geoseg.data.uncertainty)
    select.py  no Ray   candidates (chip windows on the cell grid, their scores), choose (best first,
                        spaced, balanced across predicted classes)
    stages.py  no Ray   scene_candidates, write_chip (quicklook PNG, labelling GeoPackage), write_table
    driver.py  no Ray   the driver loop every runner shares
    local.py   no Ray   the same in this process (rank_here)
    job.py     Ray      the driver loop on Ray tasks (a cluster's scenes)
"""

from geoseg.rank.plan import DEFAULT_CHIP, STRATEGIES, RankOptions


def rank(*args, **kwargs):
    """:func:`geoseg.rank.job.rank` (Ray is imported only when it runs)."""
    from geoseg.rank.job import rank as run

    return run(*args, **kwargs)


def rank_here(*args, **kwargs):
    """:func:`geoseg.rank.local.rank_here`: the same in this process, without Ray."""
    from geoseg.rank.local import rank_here as run

    return run(*args, **kwargs)


__all__ = ["DEFAULT_CHIP", "STRATEGIES", "RankOptions", "rank", "rank_here"]
