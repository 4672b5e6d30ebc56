"""Deep segmentation models by name: segmentation-models-pytorch plus torchvision FCN.

Nothing is ever downloaded: encoder weights are random unless a local weights
file is given (``encoder_weights=PATH``), for transfer learning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata

from geoseg.errors import CheckpointError, InputError
from geoseg.models.weights import load_weights

# name -> smp architecture name
SMP_ARCHS = {
    "unet": "unet",
    "unet++": "unetplusplus",
    "unetplusplus": "unetplusplus",
    "deeplabv3": "deeplabv3",
    "deeplabv3plus": "deeplabv3plus",
    "deeplabv3+": "deeplabv3plus",
    "fpn": "fpn",
    "pspnet": "pspnet",
    "linknet": "linknet",
    "manet": "manet",
    "pan": "pan",
    "upernet": "upernet",
    "segformer": "segformer",
}
ARCHS = tuple(sorted(set(SMP_ARCHS) | {"fcn", "tinyfcn"}))


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "unet"
    encoder: str = "resnet18"
    in_channels: int = 4
    num_classes: int = 4

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise InputError(f"--arch: unknown architecture {self.arch!r} (choose from {', '.join(ARCHS)})")
        if self.in_channels < 1 or self.num_classes < 2:
            raise InputError("a model needs at least 1 input band and 2 classes")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def size_multiple(self) -> int:
        """Input sides must be a multiple of this: the encoders of the
        segmentation-models-pytorch architectures downsample 5 times (stride 32)."""
        return 1 if self.arch in ("fcn", "tinyfcn") else 32


def build_model(cfg: ModelConfig, encoder_weights: str | None = None, freeze_encoder: bool = False):
    """Instantiate a model; ``encoder_weights`` is a local file (safetensors or torch)."""
    import torch.nn as nn

    if cfg.arch == "tinyfcn":
        model = TinyFCN(cfg.in_channels, cfg.num_classes)
    elif cfg.arch == "fcn":
        model = _FCN(cfg.in_channels, cfg.num_classes, cfg.encoder)
    else:
        import segmentation_models_pytorch as smp

        try:
            model = smp.create_model(
                SMP_ARCHS[cfg.arch],
                encoder_name=cfg.encoder,
                encoder_weights=None,
                in_channels=cfg.in_channels,
                classes=cfg.num_classes,
            )
        except (KeyError, ValueError) as exc:
            raise InputError(f"--encoder {cfg.encoder!r} does not work with {cfg.arch}: {exc}") from None
    if encoder_weights:
        encoder = _encoder_of(model)
        state = load_weights(encoder_weights)
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        if len(missing) == len(encoder.state_dict()):
            raise CheckpointError(f"{encoder_weights}: none of its weights fit encoder {cfg.encoder}")
    if freeze_encoder:
        for p in _encoder_of(model).parameters():
            p.requires_grad = False
    assert isinstance(model, nn.Module)
    return model


def _encoder_of(model):
    enc = getattr(model, "encoder", None) or getattr(getattr(model, "net", None), "backbone", None)
    if enc is None:
        raise InputError(f"{type(model).__name__} has no separate encoder")
    return enc


def _fcn_cls():
    import torch.nn as nn

    class FCN(nn.Module):
        """torchvision's FCN-ResNet (no weights) for any number of bands; returns logits."""

        def __init__(self, in_channels: int, num_classes: int, encoder: str = "resnet50"):
            super().__init__()
            from torchvision.models.segmentation import fcn_resnet50, fcn_resnet101

            make = fcn_resnet101 if encoder == "resnet101" else fcn_resnet50
            self.net = make(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
            if in_channels != 3:
                old = self.net.backbone.conv1
                self.net.backbone.conv1 = nn.Conv2d(
                    in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
                )

        def forward(self, x):
            return self.net(x)["out"]

    return FCN


def _FCN(in_channels: int, num_classes: int, encoder: str):
    return _fcn_cls()(in_channels, num_classes, encoder if encoder.startswith("resnet1") else "resnet50")


def TinyFCN(in_channels: int, num_classes: int, width: int = 16):
    """A small fully-convolutional network (receptive field 11 px) for tests and smoke runs."""
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv2d(width, num_classes, 1),
    )


# --- the tensor shapes of an architecture, known without torch -------------------
#
# Checking a checkpoint's weights against the model its description names (before a
# prediction writes anything) needs the names and shapes of that model's tensors:
# building it imports torch and the architecture library, seconds of CPU. They depend
# only on the config and the libraries' versions, so once a model is built here they
# are kept in a small file and later checks read them instead.

SHAPE_LIBRARIES = ("torch", "torchvision", "timm", "segmentation-models-pytorch")


def state_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors of the model ``cfg`` describes: kept ones
    (:func:`known_state_shapes`), else the built model's, which are then kept."""
    known = known_state_shapes(cfg)
    if known is not None:
        return known
    shapes = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    remember_state_shapes(cfg, shapes)
    return shapes


def known_state_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]] | None:
    """The shapes kept for ``cfg`` with the installed libraries, or None (never built
    here, another version, an unreadable file): no torch import."""
    try:
        with open(_shapes_file(cfg)) as f:
            kept = json.load(f)
        return {str(k): tuple(int(n) for n in v) for k, v in kept["shapes"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def remember_state_shapes(cfg: ModelConfig, shapes: dict) -> None:
    """Keep ``shapes`` (of a model built from ``cfg``) for later checks; a cache that
    cannot be written (a read-only home, say) is skipped, as is one that holds them already."""
    shapes = {k: tuple(v) for k, v in shapes.items()}
    if known_state_shapes(cfg) == shapes:  # each load in each job: a read, not a write
        return
    path = _shapes_file(cfg)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"config": cfg.to_dict(), "shapes": {k: list(v) for k, v in shapes.items()}}, f)
        os.replace(tmp, path)  # whole or not at all, with other processes writing the same file
    except OSError:
        pass


def cache_dir() -> str:
    """geoseg's cache folder: ``GEOSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/geoseg`` (``~/.cache/geoseg``)."""
    if os.environ.get("GEOSEG_CACHE_DIR"):
        return os.environ["GEOSEG_CACHE_DIR"]
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "geoseg")


def _shapes_file(cfg: ModelConfig) -> str:
    """The file of ``cfg``'s shapes: named by the config, the libraries' versions and this
    module's source (which defines geoseg's own architectures)."""
    key = json.dumps({"config": cfg.to_dict(), **_code_identity()}, sort_keys=True)
    return os.path.join(cache_dir(), "state-shapes", hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")


@functools.lru_cache(maxsize=1)
def _code_identity() -> dict:
    """The installed libraries' versions and a hash of this module's source: read once per
    process (each check and each load names the shapes file)."""
    versions = {}
    for name in SHAPE_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    with open(__file__, "rb") as f:
        source = hashlib.sha256(f.read()).hexdigest()
    return {"versions": versions, "zoo": source}
