"""Model files: a trained checkpoint exported as one self-describing file (Ray-free).

``geoseg export RUN_DIR --format onnx|torchscript [--out FILE]`` writes the model and its
description in one file, which ``geoseg predict --checkpoint FILE`` runs without the run
folder:

* ``.onnx``: the graph (dynamic batch, height and width) for ONNX Runtime (CPU, and CUDA
  where a GPU is present); the description is the model's ``geoseg`` metadata property;
* ``.pt`` (TorchScript): a traced module for torch, the description in the archive's
  ``extra/geoseg.json``.

The description is the checkpoint's (:class:`geoseg.checkpoint.CheckpointMeta`: bands by
name and number, band scales, normalisation, classes with names and colours) plus the tile
advice (``--tile-size`` / ``--halo``), the precision the file runs at (``fp32``, or ``int8``
for a file :mod:`geoseg.quantize` made) with its measured accuracy, and geoseg's version.

Model files are refused in one line when they are truncated, not a model, carry no geoseg
description, or reach outside themselves: ONNX external data (an initializer read from another
path) and operators of domains ONNX Runtime does not ship are never loaded.
"""

from __future__ import annotations

import json
import os
import tempfile

from geoseg import __version__, checkpoint, storage
from geoseg.checkpoint import CheckpointMeta
from geoseg.errors import CheckpointError, InputError

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
KEY = "geoseg"  # the ONNX metadata property / TorchScript extra file holding the description
OPSET = 18
ALLOWED_DOMAINS = {"", "ai.onnx", "com.microsoft", "ai.onnx.ml", "ai.onnx.preview", "ai.onnx.preview.training"}
TILE_ADVICE = {"tile_size": 512, "halo": 32}


def is_model_file(path: str) -> bool:
    """True for a path naming an exported model file (by its suffix) rather than a checkpoint folder."""
    return str(path).lower().endswith((".onnx", ".pt", ".torchscript"))


def kind_of(path: str) -> str:
    return "onnx" if str(path).lower().endswith(".onnx") else "torchscript"


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
    out = out or storage.join(run_dir, f"model{FORMATS[fmt]}")
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
    else:
        with torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, path, _extra_files={f"{KEY}.json": json.dumps(desc)})


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


# --- reading model files ----------------------------------------------------------------------


def fetch(path: str) -> str:
    """A local copy of a (possibly remote) model file."""
    if not storage.exists(path):
        raise CheckpointError(f"{path}: not found")
    if not storage.is_remote(path):
        return storage.local_path(path)
    local = os.path.join(tempfile.mkdtemp(prefix="geoseg-model-"), os.path.basename(path))
    fs, p = storage.filesystem(path)
    fs.get_file(p, local)
    return local


def read_description(path: str) -> dict:
    """A model file's geoseg description, after the file is checked (see the module's doc)."""
    local = fetch(path)
    if kind_of(path) == "onnx":
        proto = _onnx_checked(local, path)
        desc = next((p.value for p in proto.metadata_props if p.key == KEY), None)
    else:
        desc = _torchscript_extra(local, path)
    if desc is None:
        raise CheckpointError(f"{path}: a model file without a geoseg description; export it with geoseg export")
    try:
        return json.loads(desc)
    except ValueError:
        raise CheckpointError(f"{path}: its geoseg description is not valid JSON") from None


def describe(path: str) -> CheckpointMeta:
    """The checkpoint description a model file carries (its ``export`` section in ``extra``)."""
    d = read_description(path)
    meta = CheckpointMeta.from_dict(d, path)
    meta.extra = {**meta.extra, "export": d.get("export") or {}}
    return meta


def _onnx_checked(local: str, name: str):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(local, load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{name}: not an ONNX model, or truncated ({type(exc).__name__})") from None
    if not proto.graph.node or not proto.graph.input:
        raise CheckpointError(f"{name}: not an ONNX model, or truncated (an empty graph)")
    tensors = list(proto.graph.initializer) + [a.t for n in proto.graph.node for a in n.attribute if a.HasField("t")]
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
        raise CheckpointError(f"{name}: refused: it reads tensors from other files (ONNX external data)")
    nodes = list(proto.graph.node) + [n for f in proto.functions for n in f.node]
    domains = {n.domain for n in nodes} - {f.domain for f in proto.functions}  # a model's own functions are its own
    foreign = sorted(domains - ALLOWED_DOMAINS)
    if foreign:
        raise CheckpointError(f"{name}: refused: operators of domain {foreign[0]!r}, which ONNX Runtime does not ship")
    return proto


def _torchscript_extra(local: str, name: str) -> str | None:
    """The description from a TorchScript archive (a zip), read without loading the model."""
    import zipfile

    try:
        with zipfile.ZipFile(local) as z:
            names = [n for n in z.namelist() if n.endswith(f"/extra/{KEY}.json")]
            if not any(n.endswith("/data.pkl") for n in z.namelist()):
                raise CheckpointError(f"{name}: not a TorchScript model (no data.pkl in the archive)")
            return z.read(names[0]).decode() if names else None
    except zipfile.BadZipFile:
        raise CheckpointError(f"{name}: not a TorchScript model, or truncated") from None


def load_torchscript(path: str, device: str = "cpu"):
    """A TorchScript model file's module (torch's own loader: TorchScript code and tensors, no Python
    pickles of arbitrary classes)."""
    import torch

    local = fetch(path)
    try:
        return torch.jit.load(local, map_location=device).eval()
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a loadable TorchScript model ({str(exc).splitlines()[0][:120]})") \
            from None
