"""Looking at outputs: ``geoseg view`` and lazy xarray.

    server.py  geoseg view: a local HTTP server of web-map tiles (rio-tiler) and a Leaflet page (static/)
    lazy.py    open_map / segment: outputs and models as lazy, dask-backed xarray (geoseg.open_map, geoseg.segment)
"""

from geoseg.view.server import serve

__all__ = ["serve"]
