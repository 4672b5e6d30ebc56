"""Model files to write: a trained checkpoint exported as one self-describing file (Ray-free).

``geoseg export RUN_DIR --format onnx|torchscript|pt2 [--out FILE]`` writes the model and its
description in one file, which ``geoseg predict --checkpoint FILE`` runs without the run
folder:

* ``.onnx``: the graph (dynamic batch, height and width) for ONNX Runtime (CPU, and CUDA
  where a GPU is present); the description is the model's ``geoseg`` metadata property;
* ``.pt`` (TorchScript): a traced module for torch, the description in the archive's
  ``extra/geoseg.json``;
* ``.pt2`` (``torch.export``): an exported program (dynamic batch, and height and width of at
  least 32 px in multiples of the model's size multiple), the description in the archive's ``extra/geoseg.json``.

The description is the checkpoint's (:class:`geoseg.models.checkpoint.CheckpointMeta`: bands by
name and number, band scales, normalisation, classes with names and colours) plus the tile
advice (``--tile-size`` / ``--halo``), the precision the file runs at (``fp32``, or ``int8``
for a file :mod:`geoseg.train.quantize` made) with its measured accuracy, and geoseg's version.

Reading and checking model files is :mod:`geoseg.models.modelfile`; descriptions are
:mod:`geoseg.models.checkpoint`'s. They import one way: checkpoint <- modelfile <- export.
"""

from __future__ import annotations

import json

from geoseg.version import __version__
from geoseg.data import storage
from geoseg.models import checkpoint
from geoseg.models.checkpoint import CheckpointMeta
from geoseg.models.modelfile import KEY
from geoseg.models.runfolder import RunFolder
from geoseg.errors import InputError

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}
OPSET = 18
TILE_ADVICE = {"tile_size": 512, "halo": 32}


def description(meta: CheckpointMeta, fmt: str, precision: str = "fp32", accuracy: dict | None = None,
                source: str = "") -> dict:
    """What a model file carries about itself."""
    return {**meta.to_dict(), "export": {"format": fmt, "precision": precision, "geoseg": __version__,
                                         "source": source, "tile_advice": TILE_ADVICE,
                                         **({"accuracy": accuracy} if accuracy else {})}}


def export(run_dir: str, fmt: str = "onnx", out: str | None = None, log=print) -> str:
    """Export the checkpoint of a run (its best) to one model file; returns its URL."""
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    model, meta = checkpoint.load(run_dir)
    out = out or RunFolder(run_dir).model_file(f"model{FORMATS[fmt]}")
    if not str(out).lower().endswith(FORMATS[fmt]):
        raise InputError(f"--out {out}: a {fmt} model file ends with {FORMATS[fmt]}")
    with storage.staging_path(out, FORMATS[fmt]) as local:
        write(model, meta, fmt, local, description(meta, fmt, source=str(run_dir)))
        storage.publish(local, out)
    log(f"{fmt} model: {out}")
    return out


def write(model, meta: CheckpointMeta, fmt: str, path: str, desc: dict) -> None:
    """Write ``model`` (a torch module, eval mode) with ``desc`` to a local ``path``."""
    import torch

    model = model.eval()
    c = meta.model.in_channels
    side = 2 * meta.model.size_multiple * 4  # a small input: the graph takes any side
    example = torch.zeros(1, c, side, side)
    if fmt == "onnx":
        import onnx

        onnx_export(model, example, path)
        proto = onnx.load(path)
        entry = proto.metadata_props.add()
        entry.key, entry.value = KEY, json.dumps(desc)
        onnx.save(proto, path)
    elif fmt == "pt2":
        torch.export.save(program(model, c, meta.model.size_multiple), path,
                          extra_files={f"{KEY}.json": json.dumps(desc)})
    else:
        with torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, path, _extra_files={f"{KEY}.json": json.dumps(desc)})


def program(model, channels: int, multiple: int):
    """``torch.export`` of ``model`` for any batch and any height and width of at least 32 px that are
    multiples of ``multiple`` (the example has a batch of 2: torch specialises a batch of 1; a side
    under 32 px would be another graph for an FCN's strided layers)."""
    import torch

    Dim = torch.export.Dim
    example = torch.zeros(2, channels, max(4 * multiple, 128), max(4 * multiple, 128))
    least = max(1, 32 // multiple)
    rows, cols = (Dim(n, min=least, max=65536 // multiple) for n in ("rows", "cols"))
    shapes = ({0: Dim("batch", min=1, max=4096), 2: multiple * rows, 3: multiple * cols},)
    with torch.no_grad():
        try:
            return torch.export.export(model, (example,), dynamic_shapes=shapes, strict=False)
        except Exception as exc:  # noqa: BLE001 - torch's export errors have no common base: one line
            raise InputError(f"this model cannot be exported with torch.export "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); use --format onnx") from None


def onnx_export(model, example, path: str) -> None:
    """``torch.onnx.export`` with dynamic batch, height and width (the TorchScript-based exporter:
    seconds and a plain graph; the dynamo exporter where it is gone)."""
    import warnings

    import torch

    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (example,), path, input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": axes, "logits": axes}, opset_version=OPSET, dynamo=False)
        except TypeError:  # a torch whose exporter has no TorchScript path
            dims = {i: torch.export.Dim(name, min=1 if i == 0 else 16) for i, name in axes.items()}
            torch.onnx.export(model, (example,), path, input_names=["image"], output_names=["logits"],
                              dynamic_shapes=(dims,), opset_version=OPSET, dynamo=True, verbose=False)
