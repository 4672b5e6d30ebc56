"""geoseg: segment continent-scale satellite and agricultural imagery with Ray.

The data path reads top to bottom through these modules:

    raster (read) -> tiling (tile) -> models / predictor (model) -> stitch -> output (write)

``pipeline`` wires them into a Ray Data job; everything else is free of Ray.
"""

__version__ = "0.1.0"
