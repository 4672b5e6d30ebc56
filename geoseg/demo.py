"""The end-to-end demo behind README's first command."""

from __future__ import annotations

import time

from geoseg import storage


def run_demo(out: str, size: int = 2048, train_minutes: float = 3.0, address: str | None = None) -> None:
    from geoseg.evaluate import evaluate
    from geoseg.metrics import format_table
    from geoseg.pipeline import PredictOptions, predict
    from geoseg.sample import write_sample

    t0 = time.perf_counter()
    sample_dir = storage.join(out, "sample")
    print(f"[1/3] writing a {size}x{size} sample scene to {sample_dir}")
    urls = write_sample(sample_dir, size=size, seed=0)
    print(f"[2/3] segmenting it with the NDVI/NDWI index model on Ray")
    pred_dir = storage.join(out, "predictions", "index")
    opts = PredictOptions(model="index", address=address, overwrite=True, batch_size=16)
    (rec,) = predict([urls["scene"]], pred_dir, opts)
    print("[3/3] scoring against labels.tif")
    res = evaluate(rec["outputs"]["cog"], urls["labels"])
    print(format_table(res, res["class_names"]))
    print(
        f"\nindex model: mIoU {res['miou']:.3f}, pixel agreement {res['pixel_accuracy']:.3f}\n"
        f"outputs:\n  scene   {urls['scene']}\n  labels  {urls['labels']}\n"
        f"  zarr    {rec['outputs']['zarr']}\n  cog     {rec['outputs']['cog']}\n"
        f"  record  {rec['outputs']['record']}\n"
        f"demo finished in {time.perf_counter() - t0:.1f}s"
    )
