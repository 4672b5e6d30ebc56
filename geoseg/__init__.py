"""geoseg: segment continent-scale satellite and agricultural imagery with Ray.

The data path of ``geoseg predict`` reads top to bottom through these modules:

    raster (read) -> tiling (tile) -> predictor / models (model) -> stitch -> output (write)

``predict/`` (plan, stages, job) and ``train/`` (config, data, fit, job) wire
them into jobs. Ray is imported only by ``predict/job.py``, ``train/job.py``,
``runtime.py`` (starting or joining Ray) and ``submit.py`` (the Jobs API), and
only inside their functions; every other module, the compute core included,
runs without Ray. See ``docs/design.md``.
"""

__version__ = "0.1.0"


def open_map(url: str, scene: str | None = None):
    """A class map geoseg wrote, as a lazy dask-backed ``xarray.Dataset`` (see :mod:`geoseg.view.lazy`)."""
    from geoseg.view.lazy import open_map as _open_map

    return _open_map(url, scene)


def segment(data, checkpoint: str, tile_size: int = 512, halo: int = 32):
    """A model run lazily over a dask-backed ``xarray.DataArray`` of imagery (see :mod:`geoseg.view.lazy`)."""
    from geoseg.view.lazy import segment as _segment

    return _segment(data, checkpoint, tile_size, halo)
