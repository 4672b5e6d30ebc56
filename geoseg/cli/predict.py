"""geoseg predict: rasters or STAC items to class maps (Zarr v3 and COG) with a Ray Data pipeline."""

from __future__ import annotations

from geoseg.data import storage
from geoseg.data.bands import parse_bands
from geoseg.data.masks import parse_mask
from geoseg.cli.args import BANDS_HELP, add_search_flags, add_stack_flags, command, nonneg, positive, search_options, stack_options, workers
from geoseg.errors import InputError
from geoseg.predict import PredictOptions, predict


def add(sub) -> None:
    pr = command(sub, "predict", "segment rasters with a Ray Data pipeline",
             "geoseg predict data/scene.tif --out out/ --checkpoint runs/unet --tile-size 512 --halo 32")
    pr.add_argument("inputs", nargs="*", help="rasters: paths, URLs, globs, .txt lists, STAC item JSON")
    pr.add_argument("--out", required=True, help="output prefix (folder or s3:// URL)")
    m = pr.add_mutually_exclusive_group(required=True)
    m.add_argument("--model", help="built-in model: index (fixed thresholds) or index-otsu")
    m.add_argument("--checkpoint", help="trained checkpoint or training run folder")
    pr.add_argument("--tile-size", type=positive("--tile-size"), default=512,
                    help="side of a tile's core, the pixels it writes (one output chunk; default 512)")
    pr.add_argument("--halo", type=nonneg("--halo"), default=32,
                    help="pixels of context read around each core (default 32)")
    pr.add_argument("--stitch", choices=["crop", "hann"], default="crop",
                    help="crop: each pixel from the tile whose core holds it (default); "
                         "hann: raised-cosine blend of overlapping tiles (two passes, scratch storage)")
    pr.add_argument("--batch-size", type=positive("--batch-size"), default=8)
    pr.add_argument("--bands", help=BANDS_HELP)
    pr.add_argument("--workers", type=workers,
                    help="model actors, N or MIN,MAX for a pool that grows and shrinks with the work "
                         "(default: one per GPU; on CPU one per 8 cores, each running one single-threaded call per "
                         "core; on geoseg's own local Ray without a GPU, none: the driver runs the model)")
    pr.add_argument("--gpus-per-worker", type=float, default=0.0)
    pr.add_argument("--probabilities", action="store_true", help="also write per-class probabilities")
    pr.add_argument("--uncertainty", action="store_true",
                    help="also keep how sure the model is, per 32 px cell: mean entropy, mean margin between the top "
                         "two classes, the class histogram (with --tta, the passes' disagreement), in "
                         "PREFIX/<stem>.uncertainty.parquet, from the same pass (for geoseg rank)")
    pr.add_argument("--tta", action="store_true", help="average predictions over flips")
    pr.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    pr.add_argument("--compile", action="store_true", help="torch.compile the model")
    pr.add_argument("--asset", help="STAC asset key to read (an item's one multi-band asset)")
    add_stack_flags(pr)
    add_search_flags(pr, "each item found is predicted")
    pr.add_argument("--mask", default="none", metavar="SOURCE",
                    help="validity mask of each scene; masked pixels are not classified (class 254, 'masked'): "
                         "scl (Sentinel-2 L2A: no data, saturated, cloud shadow, medium/high cloud, cirrus; or "
                         "scl:VALUES), qa_pixel (Landsat C2: dilated cloud, cirrus, cloud, shadow bits; or "
                         "qa_pixel:bits=BITS), ASSET:VALUES or ASSET:bits=BITS (any band of that name), model "
                         "(ukis-csmask's cloud and shadow model, pip install 'geoseg[clouds]'; model:l1c for "
                         "top-of-atmosphere inputs), none (default)")
    pr.add_argument("--overwrite", action="store_true", help="replace outputs made with other settings")
    pr.add_argument("--skip-bad-tiles", action="store_true",
                    help="tiles whose input cannot be read (corrupt blocks) are written as nodata and listed in the "
                         "run record, instead of failing the job")
    pr.add_argument("--allow-no-crs", action="store_true", help="accept input rasters without a CRS")
    pr.add_argument("--quicklook", action="store_true",
                    help="small PNGs beside each output: <stem>.rgb.png (input, true colour), <stem>.classes.png "
                         "(class map, legend), <stem>.quicklook.png (both side by side)")
    pr.add_argument("--fail-fast", action="store_true",
                    help="stop the job at the first scene that fails (default: list it in PREFIX/_job.json, "
                         "finish the others, exit 1; a rerun retries it)")
    pr.add_argument("--vectors", action="store_true",
                    help="once every scene is done, its polygons too (PREFIX/<stem>.vectors.parquet / .fgb); "
                         "see geoseg vectorize")
    pr.add_argument("--mosaic", metavar="GRID",
                    help="once every scene is done, mosaic them into PREFIX/mosaic.zarr on GRID: CRS:RESOLUTION "
                         "(EPSG:6933:10, EPSG:4326:0.0001) or utm:RESOLUTION (a store per UTM zone); "
                         "see geoseg mosaic")
    pr.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    pr.set_defaults(run=run)


def predict_options(a):
    return PredictOptions(
        model=a.model,
        checkpoint=a.checkpoint,
        tile_size=a.tile_size,
        halo=a.halo,
        stitch=a.stitch,
        batch_size=a.batch_size,
        bands=parse_bands(a.bands) if a.bands else None,
        workers=a.workers,
        gpus_per_worker=a.gpus_per_worker,
        probabilities=a.probabilities,
        uncertainty=a.uncertainty,
        tta=a.tta,
        precision=a.precision,
        compile=a.compile,
        overwrite=a.overwrite,
        asset=a.asset,
        stack=stack_options(a),
        search=search_options(a),
        address=a.address,
        skip_bad_tiles=a.skip_bad_tiles,
        allow_no_crs=a.allow_no_crs,
        quicklook=a.quicklook,
        fail_fast=a.fail_fast,
        mosaic=a.mosaic,
        vectors=a.vectors,
        mask=parse_mask(a.mask),
        max_cloud=a.max_cloud,
    )


def masked_tiles(tiles: dict) -> str:
    return f", {tiles['masked_skipped']} masked" if tiles.get("masked_skipped") else ""


def run(a) -> None:
    opts = predict_options(a)
    if not a.inputs and not (opts.search and opts.search.url):
        raise InputError("give rasters or STAC items (item files, a STAC-GeoParquet index) to predict, or search "
                         "a STAC API with --stac-api URL")
    records = predict(a.inputs, a.out, opts)
    if len(records) > 20:  # a line per scene is the job summary's
        tiles = sum(r["tiles"]["predicted"] for r in records)
        print(f"{len(records)} scenes predicted ({tiles} tiles); every scene in "
              f"{storage.join(a.out, '_job.json')}, STAC catalog {storage.join(a.out, 'catalog.json')}")
        return
    for rec in records:
        t = rec["tiles"]
        bad = f", {t['bad']} UNREADABLE (left nodata, listed in the record)" if t.get("bad") else ""
        if "masked" in rec:
            bad += f", {100 * rec['masked']['fraction']:.1f} % of valid pixels masked ({rec['masked']['source']})"
        print(
            f"{rec['input']}: {t['predicted']} tiles predicted, {t['nodata_skipped']} nodata, "
            f"{t['resumed']} resumed{masked_tiles(t)}{bad} in {rec['timings_s']['total']:.1f}s\n"
            f"  zarr:   {rec['outputs']['zarr']}\n  cog:    {rec['outputs']['cog']}\n"
            f"  record: {rec['outputs']['record']}"
            + (f"\n  quicklook: {rec['outputs']['quicklook']}" if rec["outputs"].get("quicklook") else "")
        )
