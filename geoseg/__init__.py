"""geoseg: segment continent-scale satellite and agricultural imagery with Ray.

The package is built in layers; a module imports only from its own layer or those below
(``tests/test_layers.py`` checks it, ``docs/design.md`` draws it):

    errors, console    what every layer says: GeosegError and its kinds, the progress line
    data/              data I/O and grids: storage, rasters, tiles, bands, STAC, class maps, outputs
    models/            models and model files: index models, the zoo, checkpoints, model files,
                       the predictors, ModelRef
    execution/         where work runs: the Ray runtime (started or joined), task runners, I/O threads,
                       the Jobs API
    predict/ train/ evaluate/ mosaic/ vectorize/ view/
                       the capabilities, each planning + Ray-free stages + (a local runner) + a Ray layer
    cli/               the command line

The data path of ``geoseg predict`` reads top to bottom: data.raster (read) -> data.tiling (tile)
-> models.predictor (model) -> data.stitch -> data.output (write). Ray is imported only in the
capabilities' ``job.py`` and in ``execution/runtime.py`` and ``execution/submit.py``, inside their functions;
everything else, the compute core included, runs without Ray. See ``docs/design.md``.
"""

from geoseg.version import __version__  # noqa: F401 - geoseg.__version__


def open_map(url: str, scene: str | None = None):
    """A class map geoseg wrote, as a lazy dask-backed ``xarray.Dataset`` (see :mod:`geoseg.view.lazy`)."""
    from geoseg.view.lazy import open_map as _open_map

    return _open_map(url, scene)


def segment(data, checkpoint: str, tile_size: int = 512, halo: int = 32):
    """A model run lazily over a dask-backed ``xarray.DataArray`` of imagery (see :mod:`geoseg.view.lazy`)."""
    from geoseg.view.lazy import segment as _segment

    return _segment(data, checkpoint, tile_size, halo)


def scheduler():
    """The dask scheduler to compute geoseg's lazy arrays with (see :func:`geoseg.view.lazy.scheduler`)."""
    from geoseg.view.lazy import scheduler as _scheduler

    return _scheduler()
