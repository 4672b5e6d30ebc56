"""The model core of inference: a batch of numpy tiles in, class tiles out.

Plain classes with no Ray in them, so they can be tested and benchmarked on
their own (and on a GPU machine that has no Ray). The model stage
(:class:`geoseg.predict.stages.Infer`) builds one from a :class:`ModelSpec` in
each model actor; ``benchmarks/`` time them bare.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from geoseg import checkpoint
from geoseg.errors import InputError
from geoseg.models.index import INDEX_MODELS, IndexModel, IndexThresholds


class IndexPredictor:
    """Spectral-index model with (possibly per-scene) thresholds."""

    def __init__(self, thresholds: dict[int, dict] | None = None):
        self.models = {int(k): IndexModel(IndexThresholds(**v)) for k, v in (thresholds or {}).items()}
        self.default = IndexModel()
        self.num_classes = self.default.num_classes

    def _groups(self, scenes: np.ndarray | None):
        if scenes is None or not self.models:
            yield self.default, slice(None)
            return
        for s in np.unique(scenes):
            yield self.models.get(int(s), self.default), scenes == s

    def predict(self, tiles: np.ndarray, scenes: np.ndarray | None = None) -> np.ndarray:
        out = np.empty((tiles.shape[0], *tiles.shape[-2:]), dtype=np.uint8)
        for model, sel in self._groups(scenes):
            out[sel] = model.predict(tiles[sel])
        return out

    def predict_proba(self, tiles: np.ndarray, scenes: np.ndarray | None = None) -> np.ndarray:
        out = np.empty((tiles.shape[0], self.num_classes, *tiles.shape[-2:]), dtype=np.float32)
        for model, sel in self._groups(scenes):
            out[sel] = model.predict_proba(tiles[sel])
        return out


CPU_PIXELS_PER_CALL = 1 << 18  # forward-call size on CPU (see TorchPredictor)


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device available")
    return device


class TorchPredictor:
    """A torch segmentation model with its normalisation and speed options.

    ``precision``: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast (``"auto"``: bf16 on
    GPUs that support it, fp32 on CPU). ``channels_last`` (default on: oneDNN's
    CPU convolutions are faster in it too, 12-27% for a U-Net here), ``compile``
    and pinned host memory (CUDA only) are speed options. ``batch_size``: tiles per
    forward call (``None``: the whole batch on a GPU; on CPU about 256k pixels,
    i.e. one 512-px tile, which keeps activations in cache: 25% faster per tile
    than 8 at once here). ``tta`` averages the softmax over horizontal/vertical flips.
    """

    def __init__(
        self,
        model,
        mean: list[float],
        std: list[float],
        *,
        device: str = "auto",
        precision: str = "auto",
        channels_last: bool | None = None,
        compile: bool = False,
        tta: bool = False,
        batch_size: int | None = None,
        threads: int | None = None,
    ):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.device = pick_device(device)
        cuda = self.device.startswith("cuda")
        if precision == "auto":
            precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
        if precision not in ("fp32", "bf16", "fp16"):
            raise InputError(f"--precision must be fp32, bf16 or fp16, got {precision!r}")
        self.precision = precision
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.channels_last = True if channels_last is None else channels_last
        self.pin = cuda
        self.tta = tta
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1).clamp_min(1e-6)
        model = model.eval().to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model) if compile else model
        self.num_classes = None

    @classmethod
    def from_checkpoint(cls, path: str, **options) -> "TorchPredictor":
        model, meta = checkpoint.load(path)
        pred = cls(model, meta.mean, meta.std, **options)
        pred.num_classes = meta.model.num_classes
        pred.meta = meta
        return pred

    def _forward(self, x):
        import torch

        with torch.autocast(
            device_type="cuda" if self.device.startswith("cuda") else "cpu",
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        ):
            logits = self.model(x)
            if not self.tta:
                return logits.float().softmax(1)
            prob = logits.float().softmax(1)
            prob += self.model(x.flip(-1)).float().softmax(1).flip(-1)
            prob += self.model(x.flip(-2)).float().softmax(1).flip(-2)
            return prob / 3

    def _probabilities(self, tiles: np.ndarray):
        """Softmax probabilities as a torch tensor on the device, ``(N, K, H, W)``."""
        import torch

        tiles = np.ascontiguousarray(tiles, dtype=np.float32)
        with warnings.catch_warnings():  # Ray hands batches over zero-copy, read-only; torch only reads them
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(tiles)
        if self.pin:
            x = x.pin_memory()
        step = self.batch_size
        if not step:
            gpu = self.device.startswith("cuda")
            step = len(x) if gpu else max(1, CPU_PIXELS_PER_CALL // (x.shape[-1] * x.shape[-2]))
        outs = []
        with torch.inference_mode():
            for i in range(0, len(x), step):
                xb = x[i : i + step].to(self.device, non_blocking=True)
                xb = (xb - self.mean) / self.std
                if self.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                outs.append(self._forward(xb))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def predict(self, tiles: np.ndarray, scenes: np.ndarray | None = None) -> np.ndarray:
        """Class map ``(N, H, W)`` uint8."""
        import torch

        return self._probabilities(tiles).argmax(1).to(dtype=torch.uint8).cpu().numpy()

    def predict_proba(self, tiles: np.ndarray, scenes: np.ndarray | None = None) -> np.ndarray:
        """Softmax ``(N, K, H, W)`` float32."""
        return self._probabilities(tiles).cpu().numpy()


@dataclass(frozen=True)
class ModelSpec:
    """What model to run, small enough to ship to every actor, which builds it."""

    name: str  # "index", "index-otsu" or "checkpoint"
    checkpoint: str | None = None
    scene_params: dict = field(default_factory=dict)  # per-scene index thresholds
    options: dict = field(default_factory=dict)  # TorchPredictor options

    def build(self):
        if self.name in INDEX_MODELS:
            return IndexPredictor(self.scene_params)
        if self.name == "checkpoint":
            opts = dict(self.options)
            opts.setdefault("threads", int(os.environ.get("GEOSEG_TORCH_THREADS", "0")) or None)
            return TorchPredictor.from_checkpoint(self.checkpoint, **opts)
        raise InputError(f"unknown model {self.name!r}")
