"""``geoseg composite``: cloudy scenes of many dates -> per-pixel statistics of their clear looks,
per time window, as COG tiles on a grid with a STAC item each.

Read top to bottom:

    plan.py    no Ray   TimeWindow (--window), the statistic, CompositeOptions, Observation (an item's
                        or raster's band layers, time, bounds), describe, CompositePlan (tiles, windows'
                        observations, fingerprint, resume)
    stats.py   no Ray   reduce: median, percentiles, mean of the clear observations, and their count
    stages.py  no Ray   composite_tile (read each observation onto the tile, mask, reduce, write a COG
                        and an item per window, then the tile's stack), write_catalog
    driver.py  no Ray   the driver loop every runner shares: inputs described, tiles, resume, record
    local.py   no Ray   the same in this process (composite_here)
    job.py     Ray      the driver loop on Ray tasks
"""

from geoseg.composite.plan import (DEFAULT_SIDE, STATISTICS, CompositeOptions, TimeWindow, parse_statistic,
                                   parse_windows)


def composite(*args, **kwargs):
    """:func:`geoseg.composite.job.composite` (Ray is imported only when it runs)."""
    from geoseg.composite.job import composite as run

    return run(*args, **kwargs)


def composite_here(*args, **kwargs):
    """:func:`geoseg.composite.local.composite_here`: the same without Ray, in this process."""
    from geoseg.composite.local import composite_here as run

    return run(*args, **kwargs)


__all__ = ["DEFAULT_SIDE", "STATISTICS", "CompositeOptions", "TimeWindow", "composite", "composite_here",
           "parse_statistic", "parse_windows"]
