"""Data I/O and grids, the lowest layer above :mod:`geoseg.errors` and :mod:`geoseg.console`.

What geoseg reads and writes and the grids it cuts them into, with no model and no Ray:
URLs and GDAL settings (storage), rasters, tiles and read ranges (raster, cog, tiling), bands and
inputs (bands, inputs, stac), classes and class maps (classes, classmap), the quad-tree of
windows (quadtree), vector files, areas, size limits, stitching, and the outputs geoseg writes
(output, catalog, quicklook, plots), plus the synthetic sample scenes (sample).
"""
