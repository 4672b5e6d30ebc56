"""``geoseg mosaic``: every finished scene of a job into one Zarr v3 map on a common grid.

Read top to bottom:

    grid.py    no Ray   MosaicGrid (--grid CRS:RESOLUTION or utm:RESOLUTION), zones, snapped extents
    plan.py    no Ray   MosaicScene (from a run record), Period (--from/--to), MosaicPlan (one store per
                        zone), the fingerprint
    merge.py   no Ray   Merge: the rules by place and by time, running sums over a chunk's scenes
    stages.py  no Ray   mosaic_chunks (warp each covering scene into a chunk, merge), build_level (mode
                        overviews), finish (record, STAC Collection)
    driver.py  no Ray   the driver loop every runner shares: records read, chunk ranges, levels, resume
    local.py   no Ray   the same in this process (mosaic_here)
    job.py     Ray      the driver loop on Ray tasks
"""

from geoseg.mosaic.grid import MosaicGrid, parse_grid, utm_zone, zone_name
from geoseg.mosaic.warp import Lookup, lookup
from geoseg.mosaic.plan import RULES, Period


def mosaic(*args, **kwargs):
    """:func:`geoseg.mosaic.job.mosaic` (Ray is imported only when it runs)."""
    from geoseg.mosaic.job import mosaic as run

    return run(*args, **kwargs)


__all__ = ["RULES", "Lookup", "MosaicGrid", "Period", "lookup", "mosaic", "parse_grid", "utm_zone", "zone_name"]
