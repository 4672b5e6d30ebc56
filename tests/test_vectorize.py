"""Polygons from class maps: exact across chunk seams and corners (rasterized back they give the map),
holes kept, areas those of the class-area figures, GeoParquet and FlatGeobuf read back with their
CRS by geopandas and pyogrio, listed in the run record and the STAC item."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely

from geoseg.vectorize.local import polygons_here
from geoseg.vectorize.stages import Source, simplify


def _map(h: int = 203, w: int = 257) -> np.ndarray:
    """Shapes across chunk corners, holes and islands in holes, lines of pixels touching only at
    their corners, a nodata strip; not square (a row/column swap fails)."""
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w), np.uint8)
    m[((yy - 64) ** 2 + (xx - 64) ** 2) < 50**2] = 1  # a disc centred on a chunk corner
    m[((yy - 64) ** 2 + (xx - 64) ** 2) < 20**2] = 2  # an island in it: the disc's hole
    m[100:180, 30:230] = 3
    m[120:160, 60:200] = 0  # a ring across several chunks ...
    m[130:150, 90:170] = 3  # ... with an island in its hole
    m[((xx + yy) % 37 == 0) & (yy < 95) & (xx > 120)] = 2  # diagonal lines: each pixel its own polygon
    m[190:, :] = 255
    return m


SRC = Source("mem", 203, 257, (10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0), None, (0, 1, 2, 3),
             ("bare", "crop", "water", "built"), "s")


@pytest.mark.parametrize("chunk", [16, 64, 1024])
def test_polygons_are_exact_whatever_the_chunks(chunk):
    m = _map()
    piece = polygons_here(SRC, lambda w: m[w.slices], chunk)
    geoms = shapely.from_wkb(np.asarray(piece.wkb, dtype=object))
    assert all(shapely.is_valid(geoms)) and all(g.geom_type == "Polygon" for g in geoms)
    back = rasterio.features.rasterize(zip(geoms, piece.cls), out_shape=m.shape, fill=255, dtype="uint8")
    np.testing.assert_array_equal(back, m)  # no seam, no gap, no overlap
    assert sum(piece.pixels) == int((m != 255).sum())
    whole = polygons_here(SRC, lambda w: m[w.slices], 4096)  # one chunk: nothing to merge
    assert len(piece) == len(whole) and sorted(piece.pixels) == sorted(whole.pixels)
    disc = [g for g, c in zip(geoms, piece.cls) if c == 1 and g.area > 1000]
    assert len(disc) == 1 and len(disc[0].interiors) >= 1  # the island's hole kept, across 4 chunks
    ring = [g for g, c in zip(geoms, piece.cls) if c == 3 and g.area > 5000]
    assert len(ring) == 1 and len(ring[0].interiors) == 1


def test_simplified_polygons_share_their_edges_whatever_the_chunks():
    m = _map()
    out = {}
    for chunk in (16, 1024):
        piece = polygons_here(SRC, lambda w: m[w.slices], chunk)
        geoms = shapely.from_wkb(np.asarray(piece.wkb, dtype=object))
        simple = [simplify(g, j, SRC.width, 1.5) for g, j in zip(geoms, piece.junctions)]
        out[chunk] = sorted(round(g.area, 6) for g in simple)
        assert all(shapely.is_valid(simple))
        vertices = sum(len(shapely.get_coordinates(g)) for g in simple)
        assert vertices < 0.97 * sum(len(shapely.get_coordinates(g)) for g in geoms)
        overlap = sum(g.area for g in simple) - shapely.union_all(simple).area
        assert overlap < 1e-4 * sum(g.area for g in geoms)  # shared edges simplified alike: no slivers
    assert out[16] == out[1024]  # the same polygons, however the map was cut


def test_geographic_areas_are_those_of_the_pixels():
    from geoseg.data.area import PixelArea

    m = _map()
    src = Source("mem", 203, 257, (0.001, 0.0, 10.0, 0.0, -0.001, 60.0), "EPSG:4326", (0, 1, 2, 3), SRC.names, "g")
    area = PixelArea.of(src.crs, src.transform)
    piece = polygons_here(src, lambda w: m[w.slices], 64, area=area)
    want = area.class_areas_m2(m, 0, 4)
    got = np.bincount(piece.cls, weights=piece.area_m2, minlength=4)
    np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.slow
def test_predict_vectors_written_listed_and_read_back(ray_local, sample_dir, tmp_path):
    import geopandas as gpd
    import pyogrio

    from geoseg.predict import PredictOptions, predict
    from geoseg.vectorize import VectorizeOptions, vectorize

    prefix = tmp_path / "o"
    (rec,) = predict([str(sample_dir / "scene.tif")], str(prefix),
                     PredictOptions(model="index", tile_size=128, halo=16, probabilities=True, vectors=True))
    rec = json.loads((prefix / "scene.json").read_text())
    files = {k: rec["outputs"][f"vectors_{k}"] for k in ("parquet", "fgb")}
    assert files["parquet"] == str(prefix / "scene.vectors.parquet")
    frame = gpd.read_parquet(files["parquet"])
    with rasterio.open(prefix / "scene.tif") as cog:
        classes, crs, transform = cog.read(1), cog.crs, cog.transform
    assert frame.crs == crs and len(frame) == rec["vectors"]["polygons"]
    assert list(frame.columns[:7]) == ["id", "class", "class_name", "area_ha", "pixels", "mean_probability", "scene"]
    import pyarrow.parquet as pq

    schema = pq.read_schema(files["parquet"])  # the covering column GeoParquet 1.1 readers filter on
    geo = json.loads(schema.metadata[b"geo"])
    assert "bbox" in schema.names and geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    assert frame["mean_probability"].between(0, 1).all() and (frame["scene"] == "scene").all()
    by_class = frame.groupby("class_name")["area_ha"].sum()
    for name, c in rec["classes"].items():  # the polygons' areas are the class-area figures
        assert by_class.get(name, 0.0) == pytest.approx(c["area_ha"], rel=1e-6)
    back = rasterio.features.rasterize(zip(frame.geometry, frame["class"]), out_shape=classes.shape,
                                       transform=transform, fill=255, dtype="uint8")
    np.testing.assert_array_equal(back, classes)
    info = pyogrio.read_info(files["fgb"])
    assert info["features"] == len(frame) and pyogrio.read_dataframe(files["fgb"]).crs == crs
    item = json.loads((prefix / "scene.item.json").read_text())
    assert item["assets"]["vectors-parquet"]["href"] == str(prefix / "scene.vectors.parquet")
    # one class map, one class, small polygons dropped, simplified
    res = vectorize(str(prefix / "scene.tif"), VectorizeOptions(classes=("water",), min_area_ha=0.5, simplify=5.0),
                    out=str(tmp_path / "water"), log=lambda *_: None)
    water = gpd.read_parquet(tmp_path / "water.vectors.parquet")
    assert len(water) == res[0]["polygons"] > 0 and set(water["class_name"]) == {"water"}
    assert (water["area_ha"] >= 0.5).all()


def test_vectorize_without_ray_is_the_same_driver_loop_and_the_same_files(tmp_path):
    """vectorize_here runs the driver loop of the Ray job with its tasks inline: the same polygons
    (geometry, class, area, pixels) as a class map's whole-raster polygonization, no Ray started."""
    import sys

    import geopandas as gpd

    from geoseg.data.sample import write_sample
    from geoseg.vectorize import VectorizeOptions
    from geoseg.vectorize.local import vectorize_here

    ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    urls = write_sample(str(tmp_path / "s"), size=300, seed=4)
    with rasterio.open(urls["labels"]) as src:
        classes, transform = src.read(1), src.transform
    (res,) = vectorize_here(urls["labels"], VectorizeOptions(chunk=64), out=str(tmp_path / "here"),
                            log=lambda *_: None)
    assert ("ray" in sys.modules and sys.modules["ray"].is_initialized()) == ray_before
    frame = gpd.read_parquet(tmp_path / "here.vectors.parquet")
    assert len(frame) == res["polygons"] > 1 and frame["id"].tolist() == list(range(len(frame)))
    # across 5 x 5 chunks of 64 px, merged up the quad-tree: exactly the class map's pixels back
    back = rasterio.features.rasterize(zip(frame.geometry, frame["class"]), out_shape=classes.shape,
                                       transform=transform, fill=255, dtype="uint8")
    np.testing.assert_array_equal(back, np.where(classes == 255, 255, classes))
    assert int(frame["pixels"].sum()) == int((classes != 255).sum())
    assert not list(tmp_path.glob("here.vectors.parts-*"))  # the parts are gone once assembled


def _canonical_set(piece) -> list[bytes]:
    """A piece's polygons as a sorted list of canonical WKB: collinear vertices dropped, normalized."""
    geoms = shapely.from_wkb(np.asarray(piece.wkb, dtype=object))
    return sorted(shapely.to_wkb(shapely.normalize(shapely.simplify(geoms, 0))).tolist())


@pytest.mark.parametrize("chunk", [16, 64])
def test_merged_polygons_are_the_one_chunk_geometries(chunk):
    """Shapes across chunk corners, merged by seam intervals and a coverage union: the same geometry
    set as one chunk's polygons, with the same sums (pixels, geographic areas, probabilities)."""
    from geoseg.data.area import PixelArea

    m = _map()
    rng = np.random.default_rng(1)
    probs = rng.integers(0, 256, (4, *m.shape), dtype=np.uint8)
    src = Source("mem", 203, 257, (0.001, 0.0, 10.0, 0.0, -0.001, 60.0), "EPSG:4326", (0, 1, 2, 3), SRC.names, "g")
    area = PixelArea.of(src.crs, src.transform)
    read, read_probs = (lambda w: m[w.slices]), (lambda w: probs[(slice(None), *w.slices)])
    cut = polygons_here(src, read, chunk, read_probs, area)
    whole = polygons_here(src, read, 4096, read_probs, area)
    assert _canonical_set(cut) == _canonical_set(whole)
    key = lambda p: sorted(zip(p.cls, p.pixels, np.round(p.area_m2, 3), np.round(p.prob_sum, 6)))  # noqa: E731
    assert key(cut) == key(whole)
    # the sums against the pixels themselves: each polygon burnt back, its pixels summed
    geoms = shapely.from_wkb(np.asarray(whole.wkb, dtype=object))
    ids = rasterio.features.rasterize(((g, i + 1) for i, g in enumerate(geoms)), out_shape=m.shape, dtype="int32")
    chosen = np.take_along_axis(probs, np.minimum(m, 3)[None].astype(np.intp), 0)[0] / 255.0
    np.testing.assert_array_equal(np.bincount(ids.ravel(), minlength=len(geoms) + 1)[1:], whole.pixels)
    np.testing.assert_allclose(np.bincount(ids.ravel(), chosen.ravel(), len(geoms) + 1)[1:], whole.prob_sum,
                               rtol=1e-9)
    rows = np.broadcast_to(area.rows_m2(0, m.shape[0])[:, None], m.shape)
    np.testing.assert_allclose(np.bincount(ids.ravel(), rows.ravel(), len(geoms) + 1)[1:], whole.area_m2,
                               rtol=1e-9)


def test_one_small_map_vectorizes_without_starting_ray(tmp_path):
    """One class map on this machine (no cluster named, no Ray up): the job runs in its own process,
    and its files are those of the Ray job."""
    import subprocess
    import sys

    m = _map()
    with rasterio.open(tmp_path / "m.tif", "w", driver="GTiff", height=m.shape[0], width=m.shape[1], count=1,
                       dtype="uint8", nodata=255, crs="EPSG:32633",
                       transform=rasterio.Affine(10, 0, 500000, 0, -10, 4000000)) as dst:
        dst.write(m, 1)
    code = ("import sys; from geoseg.vectorize import VectorizeOptions, vectorize; "
            f"vectorize({str(tmp_path / 'm.tif')!r}, VectorizeOptions(formats=('parquet',), chunk=64), log=print); "
            "print('ray started:', 'ray' in sys.modules and sys.modules['ray'].is_initialized())")
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ray started: False" in out.stdout
    import geopandas as gpd

    frame = gpd.read_parquet(tmp_path / "m.vectors.parquet")
    back = rasterio.features.rasterize(zip(frame.geometry, frame["class"]), out_shape=m.shape, fill=255,
                                       transform=rasterio.Affine(10, 0, 500000, 0, -10, 4000000), dtype="uint8")
    np.testing.assert_array_equal(back, m)


def test_out_names_the_file_and_fiboa_columns_with_an_area_range(tmp_path):
    """``geoseg vectorize MAP --out fields.parquet --schema fiboa --min-area A --max-area B``: that one
    file (no ``fields.parquet.vectors.parquet``, no FlatGeobuf), fiboa's core columns, every polygon
    within the areas, perimeters those of the geometries (and on the ellipsoid for degrees)."""
    import subprocess
    import sys

    import geopandas as gpd
    import pyarrow.parquet as pq

    from geoseg.vectorize.finish import _perimeters

    m = _map()
    with rasterio.open(tmp_path / "m.tif", "w", driver="GTiff", height=m.shape[0], width=m.shape[1], count=1,
                       dtype="uint8", nodata=255, crs="EPSG:32633",
                       transform=rasterio.Affine(10, 0, 500000, 0, -10, 4000000)) as dst:
        dst.write(m, 1)
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    run = lambda *flags: subprocess.run([sys.executable, "-m", "geoseg", "vectorize", str(tmp_path / "m.tif"),  # noqa: E731
                                         *flags], capture_output=True, text=True, env=env, timeout=120)
    res = run("--out", str(tmp_path / "fields.parquet"), "--schema", "fiboa", "--min-area", "1",
              "--max-area", "70", "--chunk", "64")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fields.parquet", "m.tif"]
    frame = gpd.read_parquet(tmp_path / "fields.parquet")
    assert list(frame.columns[:4]) == ["id", "area", "perimeter", "determination_method"]
    assert frame["id"].map(type).eq(str).all() and frame["id"].is_unique
    assert (frame["determination_method"] == "auto-imagery").all()
    assert len(frame) > 0 and frame["area"].between(1, 70).all()
    everything = polygons_here(SRC, lambda w: m[w.slices], 4096)
    areas = np.asarray(everything.pixels) * 100 / 1e4  # 10 m pixels
    assert len(frame) == int(((areas >= 1) & (areas <= 70)).sum()) < len(areas)  # the range, no more
    np.testing.assert_allclose(frame["perimeter"], frame.geometry.length, rtol=1e-12)
    assert json.loads(pq.read_schema(tmp_path / "fields.parquet").metadata[b"fiboa"])["fiboa_version"]
    # a FlatGeobuf named by --out is that file; a clash of --out and --format is one line
    assert run("--out", str(tmp_path / "f.fgb"), "--chunk", "64").returncode == 0
    assert (tmp_path / "f.fgb").exists() and not (tmp_path / "f.parquet").exists()
    bad = run("--out", str(tmp_path / "x.fgb"), "--format", "parquet")
    assert bad.returncode == 1 and "x.fgb is a FlatGeobuf file, but --format is parquet" in bad.stderr
    bad = run("--min-area", "2", "--max-area", "1")
    assert bad.returncode == 1 and "--max-area must be > --min-area" in bad.stderr
    # degrees: perimeters on the ellipsoid (0.01 degree at the equator: 1113.2 m east-west, 1105.7 m north-south)
    square = shapely.box(0, 0, 0.01, 0.01)
    assert abs(_perimeters([square], "EPSG:4326")[0] - 2 * (1113.2 + 1105.7)) < 1
    # a hole's ring counts, as in a projected CRS: each ring on the ellipsoid, summed
    from pyproj import Geod

    holed = shapely.Polygon([(10, 50), (10.5, 50), (10.5, 50.3), (10, 50.3)],
                            [[(10.1, 50.1), (10.2, 50.1), (10.2, 50.2), (10.1, 50.2)]])
    rings = [shapely.LineString(holed.exterior.coords), shapely.LineString(holed.interiors[0].coords)]
    want = sum(Geod(ellps="WGS84").geometry_length(r) for r in rings)
    np.testing.assert_allclose(_perimeters([square, holed], "EPSG:4326")[1], want, rtol=1e-9)
