"""Model files to read: a self-describing ``.onnx``, ``.pt`` (TorchScript) or ``.pt2`` (``torch.export``) that
``geoseg export`` or ``geoseg quantize`` wrote (:mod:`geoseg.models.export`), checked before use.

A file is refused in one line when it is truncated, not a model, carries no geoseg description,
or reaches outside itself: ONNX external data (an initializer read from another path) and
operators of domains ONNX Runtime does not ship are never loaded. Its description is a
checkpoint's (:class:`geoseg.models.checkpoint.CheckpointMeta`) with an ``export`` section.
"""

from __future__ import annotations

import json
import os
import tempfile

from geoseg.data import storage
from geoseg.errors import CheckpointError
from geoseg.models.checkpoint import CheckpointMeta

KEY = "geoseg"  # the ONNX metadata property / TorchScript and torch.export extra file holding the description
ALLOWED_DOMAINS = {"", "ai.onnx", "com.microsoft", "ai.onnx.ml", "ai.onnx.preview", "ai.onnx.preview.training"}


def is_model_file(path: str) -> bool:
    """True for a path naming an exported model file (by its suffix) rather than a checkpoint folder."""
    return str(path).lower().endswith((".onnx", ".pt", ".torchscript", ".pt2"))


def kind_of(path: str) -> str:
    """``onnx``, ``pt2`` (a ``torch.export`` archive) or ``torchscript``, by the file's suffix."""
    lower = str(path).lower()
    return "onnx" if lower.endswith(".onnx") else "pt2" if lower.endswith(".pt2") else "torchscript"


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
        desc = _archive_extra(local, path, kind_of(path))
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


ARCHIVES = {"torchscript": ("TorchScript model", "/data.pkl"), "pt2": ("torch.export archive", "/archive_format")}


def _archive_extra(local: str, name: str, kind: str) -> str | None:
    """The description from a TorchScript or ``torch.export`` archive (both zips, the description in
    ``extra/geoseg.json``), read without loading the model."""
    import zipfile

    what, marker = ARCHIVES[kind]
    try:
        with zipfile.ZipFile(local) as z:
            names = [n for n in z.namelist() if n.endswith(f"/extra/{KEY}.json")]
            if not any(n.endswith(marker) for n in z.namelist()):
                raise CheckpointError(f"{name}: not a {what} (no {marker[1:]} in the archive)")
            return z.read(names[0]).decode() if names else None
    except zipfile.BadZipFile:
        raise CheckpointError(f"{name}: not a {what}, or truncated") from None


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


def load_exported(path: str, device: str = "cpu"):
    """A ``torch.export`` archive's module, on ``device`` (torch's loader: a graph and its tensors)."""
    import torch

    class Exported(torch.nn.Module):
        """The archive's graph as a module that ``eval()`` and ``to()`` accept (it was exported in
        eval mode; the graph's own ``eval()`` raises)."""

        def __init__(self, graph):
            super().__init__()
            self.graph = graph

        def train(self, mode: bool = True):  # the graph is frozen in eval mode
            self.training = mode
            return self

        def forward(self, x):
            return self.graph(x)

    local = fetch(path)
    try:
        program = torch.export.load(local)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"{path}: not a loadable torch.export archive ({str(exc).splitlines()[0][:120]})") \
            from None
    return Exported(program.module()).to(device)
