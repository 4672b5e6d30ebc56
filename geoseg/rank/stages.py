"""The stages of ``geoseg rank`` (no Ray): a scene's candidates, each chosen chip's files, the table.

    scene_candidates   a scene's cells -> its candidate chips (select.candidates)
    write_chip         a chosen chip: ``chips/<rank>_<stem>.png`` (true colour beside the predicted
                       classes, with a legend) and ``chips/<rank>_<stem>.gpkg`` (an empty ``labels``
                       polygon layer with a ``class`` field, to draw in QGIS, and the ``chip`` footprint)
    write_table        ``chips.parquet``: every chosen chip's footprint, scores and rank (GeoParquet)
"""

from __future__ import annotations

import numpy as np

from geoseg.data import storage
from geoseg.rank.plan import RankScene, cells_of
from geoseg.rank.select import candidates


def scene_candidates(scene: RankScene, strategy: str, chip: int) -> dict:
    from geoseg.data.classes import ClassScheme

    k = len(ClassScheme.from_dict(scene.classes))
    return candidates(cells_of(scene, strategy), k, chip, scene.transform, scene.crs)


def footprint(scene: RankScene, row: int, col: int, chip: int):
    import shapely

    a, b, c, d, e, f = scene.transform[:6]
    corners = [(col, row), (col + chip, row), (col + chip, row + chip), (col, row + chip)]
    return shapely.Polygon([(c + a * x + b * y, f + d * x + e * y) for x, y in corners])


def chip_name(rank: int, scene: RankScene) -> str:
    return f"{rank:04d}_{scene.stem}"


def write_chip(scene: RankScene, chip: dict, folder: str) -> dict:
    """The chip's quicklook and its labelling GeoPackage; returns their URLs."""
    import geopandas as gpd
    import rasterio

    from geoseg.data import quicklook
    from geoseg.data.classes import ClassScheme
    from geoseg.data.raster import open_raster

    scheme = ClassScheme.from_dict(scene.classes)
    size, row, col = chip["size"], chip["row_off"], chip["col_off"]
    window = rasterio.windows.Window(col, row, size, size)
    with storage.gdal_env():
        with open_raster(scene.image) as src:
            bands = quicklook.rgb_bands(scene.image, tuple(src.descriptions), src.count)
            data = src.read(bands, window=window, boundless=True, fill_value=0).astype(np.float32)
            valid = src.read_masks(1, window=window, boundless=True) > 0
        with rasterio.open(scene.cog) as src:
            classes = src.read(1, window=window, boundless=True, fill_value=255)
    colours = quicklook.colours_of(scheme, len(scheme))
    picture = quicklook.compose([(f"{scene.stem} ({row}, {col})", quicklook.true_colour(data, valid)),
                                 (f"predicted: rank {chip['rank']}", quicklook.class_colours(classes, colours))],
                                quicklook.class_entries(scheme.names, colours))
    name = chip_name(chip["rank"], scene)
    png = quicklook.write_png(storage.join(folder, "chips", f"{name}.png"), picture)
    gpkg = storage.join(folder, "chips", f"{name}.gpkg")
    with storage.staging_path(gpkg, ".gpkg") as local:
        labels = gpd.GeoDataFrame({"class": np.zeros(0, np.int32), "class_name": np.zeros(0, str)},
                                  geometry=gpd.GeoSeries([], crs=scene.crs), crs=scene.crs)
        labels.to_file(local, layer="labels", driver="GPKG", geometry_type="Polygon")
        box = gpd.GeoDataFrame({"rank": [chip["rank"]], "scene": [scene.stem], "score": [chip["score"]],
                                "classes": [", ".join(f"{i}={n}" for i, n in enumerate(scheme.names))]},
                               geometry=[footprint(scene, row, col, size)], crs=scene.crs)
        box.to_file(local, layer="chip", driver="GPKG")
        storage.put_file(local, gpkg)
    return {"png": png, "gpkg": gpkg}


def write_table(folder: str, scenes: list[RankScene], chips: list[dict]) -> str:
    """``chips.parquet``: the chosen chips' footprints (in the scenes' CRS where they share one, else
    EPSG:4326), scores, classes and rank; GeoParquet with the CRS."""
    import geopandas as gpd

    from geoseg.data.raster import same_crs

    one = all(same_crs(s.crs, scenes[0].crs) for s in scenes)
    crs = scenes[0].crs if one else "EPSG:4326"
    geoms = []
    for c in chips:
        g = gpd.GeoSeries([footprint(scenes[c["scene"]], c["row_off"], c["col_off"], c["size"])],
                          crs=scenes[c["scene"]].crs)
        geoms.append(g.to_crs(crs).iloc[0] if not one else g.iloc[0])
    cols = {k: [c[k] for c in chips] for k in ("rank", "row_off", "col_off", "size", "score", "entropy", "margin",
                                               "disagreement", "valid", "class", "class_name", "png", "gpkg")}
    frame = gpd.GeoDataFrame({**cols, "scene": [scenes[c["scene"]].stem for c in chips]}, geometry=geoms, crs=crs)
    url = storage.join(folder, "chips.parquet")
    with storage.staging_path(url, ".parquet") as local:
        frame.to_parquet(local)
        storage.put_file(local, url)
    return url


def labels_from_raster(chips_url: str, labels_url: str) -> int:
    """Fill every chosen chip's ``labels`` layer from a label raster on the scenes' grid (a reference
    map: what a person would draw, for simulated loops and for chips a reference covers already);
    returns the polygons written."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import shapes
    from shapely.geometry import shape

    from geoseg.data.classes import NODATA

    chips = gpd.read_parquet(chips_url)
    written = 0
    with storage.gdal_env(), rasterio.open(labels_url) as src:
        t = src.transform
        for row in chips.itertuples():
            win = src.read(1, window=rasterio.windows.Window(row.col_off, row.row_off, row.size, row.size))
            wt = t * t.translation(row.col_off, row.row_off)
            polys = [(shape(g), int(v)) for g, v in shapes(win, mask=win != NODATA, transform=wt)]
            gpd.GeoDataFrame({"class": [v for _, v in polys]}, geometry=[g for g, _ in polys],
                             crs=chips.crs).to_file(row.gpkg, layer="labels", driver="GPKG")
            written += len(polys)
    return written
