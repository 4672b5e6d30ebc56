"""Quantized models for the CPUs users have, with their accuracy cost measured (Ray-free).

``geoseg quantize RUN_DIR [--precision int8|bf16] [--calibration IMG ...] [--max-miou-drop 0.01]``

* ``int8``: the run's best checkpoint exported to ONNX (:mod:`geoseg.models.export`), then statically
  quantized by ONNX Runtime (QDQ: per-channel int8 weights, uint8 activations whose ranges
  are calibrated on ``--calibration-chips`` training chips of the run, or on tiles of the
  rasters given with ``--calibration``); a ``.onnx`` model file.
* ``bf16``: the model in bfloat16 on CPUs that have it (AVX512-BF16, AMX): a TorchScript
  ``.pt`` model file that predict runs under bf16 autocast.

Either is scored against the fp32 model on the run's own validation blocks (the spatial
split the run trained with: chips it never trained on): the share of pixels whose class
is unchanged, and the mIoU of each against the labels. The numbers are printed, written
into the model file's description, and the file is refused (one line, the numbers, no file
written) when mIoU drops by more than ``--max-miou-drop``.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from geoseg.data import storage
from geoseg.models import checkpoint, export
from geoseg.data.classes import NODATA
from geoseg.errors import CheckpointError, InputError
from geoseg.models.metrics import confusion, scores
from geoseg.models.runfolder import RunFolder

PRECISIONS = {"int8": ".onnx", "bf16": ".pt"}


def run_plan(run_dir: str):
    """The training plan of a run (its rasters, bands and spatial split, from ``run.json``),
    re-made without Ray: the same blocks, so the same validation chips."""
    from geoseg.train.config import TrainConfig
    from geoseg.train.plan import plan_run

    try:
        summary = json.loads(storage.read_text(RunFolder(run_dir).record))
    except (OSError, ValueError):
        raise InputError(f"{run_dir}: no run.json: quantize a training run folder (its validation "
                         "blocks score the quantized model)") from None
    cfg = TrainConfig(**{**summary["config"], "out": run_dir})
    plan = plan_run(cfg, scan=_kept_scan(cfg)).training
    cache = None
    from geoseg.train import cache as chip_cache

    url = chip_cache.cache_url(cfg.out, cfg.chip_cache)
    man = chip_cache.read_manifest(url) if url else None
    if man and man.get("state") == "complete":
        cache = chip_cache.layout(url, plan.info["block"], plan.pairs)
    return plan, cache


def _kept_scan(cfg):
    """The labels' histograms the run's chip cache kept (no rescan), else a scan here."""
    from geoseg.train import cache as chip_cache
    from geoseg.train.data import declared_classes
    from geoseg.train.labels import scan_labels

    def scan(pairs):
        k, source = declared_classes(pairs[0].label, cfg.num_classes)
        kept = chip_cache.scanned_histograms(chip_cache.cache_url(cfg.out, cfg.chip_cache),
                                             [p.label.url for p in pairs], k)
        return kept if kept is not None else scan_labels([p.label for p in pairs], k, source)

    return scan


def validation_chips(plan, cache, limit: int = 256) -> dict:
    """Up to ``limit`` of the run's validation chips (evenly through them)."""
    from geoseg.train.data import read_val_chips

    chips = plan.val_chips
    if len(chips) > limit:
        chips = chips[np.linspace(0, len(chips) - 1, limit).astype(int)]
    return read_val_chips({"pair": chips[:, 0], "row": chips[:, 1], "col": chips[:, 2]}, plan, cache)


def calibration_tiles(plan, cache, images: list[str] | None, n: int, side: int, bands: list[int] | None) -> np.ndarray:
    """``n`` calibration inputs: random training chips of the run, or random windows of ``images``."""
    if not images:
        from geoseg.train.data import sample_train_chips

        return sample_train_chips({"id": np.arange(n)}, plan, cache)["image"]
    from geoseg.data.raster import read_info, tile_reader
    from geoseg.data.tiling import Window

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        url = images[i % len(images)]
        info = read_info(url)
        if info.height < side or info.width < side:
            raise InputError(f"--calibration {url}: {info.width}x{info.height} is smaller than one {side}² tile")
        r, c = int(rng.integers(0, info.height - side + 1)), int(rng.integers(0, info.width - side + 1))
        out.append(tile_reader(url, bands).read_window(Window(r, c, side, side))[0])
    return np.stack(out)


class _Reader:
    """ONNX Runtime's calibration data: normalised inputs, a few at a time."""

    def __init__(self, tiles: np.ndarray, mean, std, name: str):
        self.batches = [((tiles[i : i + 4].astype(np.float32) - mean) / std) for i in range(0, len(tiles), 4)]
        self.name, self.i = name, 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.name: self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def quantize(run_dir: str, precision: str = "int8", calibration: list[str] | None = None,
             max_miou_drop: float = 0.01, out: str | None = None, calibration_chips: int = 64,
             val_chips: int = 256, log=print) -> dict:
    """Quantize a run's best model, score it against fp32 on the run's validation chips, and write
    it (unless mIoU drops by more than ``max_miou_drop``). Returns the scores and the file."""
    from geoseg.models.predictor import OnnxPredictor, TorchPredictor, cpu_flags

    if precision not in PRECISIONS:
        raise InputError(f"--precision must be int8 or bf16, got {precision!r}")
    if not 0 <= max_miou_drop <= 1:
        raise InputError(f"--max-miou-drop must be between 0 and 1, got {max_miou_drop}")
    out = out or RunFolder(run_dir).model_file(f"model.{precision}{PRECISIONS[precision]}")
    if not str(out).lower().endswith(PRECISIONS[precision]):
        raise InputError(f"--out {out}: a {precision} model file ends with {PRECISIONS[precision]}")
    if precision == "bf16" and not cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        raise InputError("--precision bf16: this CPU has no bf16 instructions (AVX512-BF16 or AMX); "
                         "use --precision int8")
    model, meta = checkpoint.load(run_dir)
    plan, cache = run_plan(run_dir)
    if len(plan.classes) != meta.model.num_classes:
        raise CheckpointError(f"{run_dir}: its model has {meta.model.num_classes} classes, its labels "
                              f"{len(plan.classes)}")
    val = validation_chips(plan, cache, val_chips)
    fp32 = TorchPredictor(model, meta.mean, meta.std, device="cpu", precision="fp32", threads=os.cpu_count())
    ref = fp32.predict(val["image"])
    work = tempfile.mkdtemp(prefix="geoseg-quantize-")
    mean = np.asarray(meta.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.maximum(np.asarray(meta.std, np.float32), 1e-6).reshape(1, -1, 1, 1)
    try:
        if precision == "int8":
            tiles = calibration_tiles(plan, cache, calibration, calibration_chips, plan.chip,
                                      plan.pairs[0].bands if calibration else None)
            local = os.path.join(work, "model.int8.onnx")
            _int8(model, meta, tiles, mean, std, work, local)
            meta.extra = {**meta.extra, "export": {"format": "onnx", "precision": "int8"}}
            got = OnnxPredictor(local, meta, device="cpu").predict(val["image"])
        else:
            local = os.path.join(work, "model.bf16.pt")
            export.write(model, meta, "torchscript", local, export.description(meta, "torchscript", "bf16"))
            got = TorchPredictor(model, meta.mean, meta.std, device="cpu", precision="bf16").predict(val["image"])
        result = _scores(val["label"], ref, got, meta.model.num_classes, precision)
        result.update({"calibration": calibration or f"{calibration_chips} training chips of the run"}
                      if precision == "int8" else {})
        drop = result["miou_fp32"] - result[f"miou_{precision}"]
        log(f"{precision} vs fp32 on {result['chips']} validation chips: {100 * result['agreement']:.2f}% of "
            f"pixels unchanged, mIoU {result['miou_fp32']:.4f} (fp32) -> {result[f'miou_{precision}']:.4f} "
            f"({precision})")
        if drop > max_miou_drop:
            raise InputError(f"{precision} model refused: mIoU drops by {drop:.4f} ({result['miou_fp32']:.4f} -> "
                             f"{result[f'miou_{precision}']:.4f}), more than --max-miou-drop {max_miou_drop}; "
                             f"{100 * result['agreement']:.2f}% of pixels unchanged")
        _describe(local, meta, precision, result, run_dir)
        with storage.faults(out, "writing the model file"):
            storage.publish(local, out)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    log(f"{precision} model: {out}")
    return {**result, "model": out}


def _int8(model, meta, tiles, mean, std, work: str, local: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = os.path.join(work, "model.fp32.onnx")
    export.write(model, meta, "onnx", fp32, export.description(meta, "onnx"))
    pre = os.path.join(work, "model.pre.onnx")
    quant_pre_process(fp32, pre, skip_symbolic_shape=True)
    quantize_static(pre, local, _Reader(tiles, mean, std, "image"), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


def _scores(labels: np.ndarray, ref: np.ndarray, got: np.ndarray, k: int, precision: str) -> dict:
    """Agreement, and mIoU over the classes labelled in the validation chips (a class without a
    labelled pixel that one model predicts on a few pixels would count as 0 and move the mean
    by 1/K: a drop that says nothing about quantization)."""
    valid = labels != NODATA
    return {"precision": precision, "chips": int(len(labels)),
            "agreement": float((ref == got)[valid].mean()) if valid.any() else float((ref == got).mean()),
            "miou_fp32": float(np.nan_to_num(scores(confusion(labels, ref, k))["miou_labelled"])),
            f"miou_{precision}": float(np.nan_to_num(scores(confusion(labels, got, k))["miou_labelled"]))}


def _describe(local: str, meta, precision: str, accuracy: dict, source: str) -> None:
    """The model file's description, with the measured accuracy (ONNX: its metadata property;
    TorchScript: written when it was saved, so saved again)."""
    fmt = "onnx" if precision == "int8" else "torchscript"
    base = checkpoint.CheckpointMeta(meta.model, meta.classes, meta.mean, meta.std, meta.band_roles,
                                     meta.band_numbers, meta.epoch, meta.metrics,
                                     {k: v for k, v in meta.extra.items() if k != "export"})
    desc = export.description(base, fmt, precision, accuracy, source)
    if fmt == "onnx":
        import onnx

        proto = onnx.load(local)
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key, entry.value = export.KEY, json.dumps(desc)
        onnx.save(proto, local)
    else:
        import torch

        module = torch.jit.load(local)
        torch.jit.save(module, local, _extra_files={f"{export.KEY}.json": json.dumps(desc)})
