"""The model of a job, resolved and described once: :class:`ModelRef`.

``--model NAME`` (a spectral-index model), ``--checkpoint RUN_DIR`` (a training run or a
checkpoint folder) or ``--checkpoint FILE`` (an exported ``.onnx`` / ``.pt``) become one value
in planning: its URL, its kind, and its description (:class:`~geoseg.models.checkpoint.CheckpointMeta`,
None for an index model). Every later step (the weights' check, the predictor's build in the
driver or in each actor, the run record) reads the reference, never the files' description again.
"""

from __future__ import annotations

from dataclasses import dataclass

from geoseg.data.classes import LANDCOVER, ClassScheme
from geoseg.errors import InputError
from geoseg.models import checkpoint, modelfile
from geoseg.models.checkpoint import CheckpointMeta
from geoseg.models.index import INDEX_MODELS

KINDS = ("index", "checkpoint", "onnx", "torchscript", "pt2")


@dataclass(frozen=True)
class ModelRef:
    """A model resolved: ``kind`` one of :data:`KINDS`; ``url`` the checkpoint folder or model
    file (None for an index model); ``name`` the index model's name, or ``"checkpoint"``;
    ``meta`` the description (None for an index model)."""

    name: str
    kind: str
    url: str | None = None
    meta: CheckpointMeta | None = None

    @property
    def deep(self) -> bool:
        """A trained model (torch or ONNX Runtime), not a spectral index."""
        return self.kind != "index"

    @property
    def is_file(self) -> bool:
        return self.kind in ("onnx", "torchscript", "pt2")

    @property
    def classes(self) -> ClassScheme:
        return self.meta.classes if self.meta is not None else LANDCOVER

    @property
    def in_channels(self) -> int | None:
        return self.meta.model.in_channels if self.meta is not None else None

    @property
    def size_multiple(self) -> int:
        return self.meta.model.size_multiple if self.meta is not None else 1


def check_choice(model: str | None, checkpoint_url: str | None) -> None:
    """Exactly one of ``--model NAME`` (a known index model) or ``--checkpoint URL``; else one line."""
    if (model is None) == (checkpoint_url is None):
        raise InputError("give exactly one of --model NAME or --checkpoint RUN_DIR")
    if model is not None and model not in INDEX_MODELS:
        raise InputError(f"--model: unknown model {model!r} (built-in: {', '.join(INDEX_MODELS)})")


def resolve(model: str | None = None, checkpoint_url: str | None = None) -> ModelRef:
    """The reference of ``--model NAME`` or ``--checkpoint URL`` (exactly one), described:
    a bad name, a missing folder or a bad model file fails here, in one line."""
    check_choice(model, checkpoint_url)
    if model is not None:
        return ModelRef(model, "index")
    kind = modelfile.kind_of(checkpoint_url) if modelfile.is_model_file(checkpoint_url) else "checkpoint"
    return ModelRef("checkpoint", kind, checkpoint_url, describe(checkpoint_url))


def describe(url: str) -> CheckpointMeta:
    """The description of a checkpoint folder or a model file (no torch: milliseconds)."""
    if modelfile.is_model_file(url):
        return modelfile.describe(url)
    return checkpoint.describe(url)


def verify(ref: "ModelRef | str", build: bool = True) -> CheckpointMeta | None:
    """:func:`geoseg.models.checkpoint.verify` for a checkpoint folder (a reference's description is
    not read again: only its weights' header); a model file (a graph or a traced module) is checked
    as it is read, so its description is its check."""
    if isinstance(ref, str):
        return modelfile.describe(ref) if modelfile.is_model_file(ref) else checkpoint.verify(ref, build)
    if ref.is_file:
        return ref.meta
    return checkpoint.verify(ref.url, build, ref.meta)
