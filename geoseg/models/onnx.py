"""ONNX Runtime: model files exported or quantized by geoseg, without torch.

:class:`OnnxPredictor` runs an ``.onnx`` file (fp32, or INT8 from ``geoseg quantize``) with the
same interface as :class:`geoseg.models.predictor.TorchPredictor`; :func:`onnx_device` and
:func:`cuda_present` choose the device without importing torch (seconds of CPU an ONNX model
does not need).
"""

from __future__ import annotations

import os

import numpy as np

from geoseg.errors import InputError
from geoseg.models import modelfile

CPU_PIXELS_PER_CALL = 1 << 18  # forward-call size on CPU (one 512-px tile: activations stay in cache)


def cuda_present() -> bool:
    """Whether this process sees an NVIDIA GPU, without importing torch (seconds of CPU):
    a device node under ``/dev``, unless ``CUDA_VISIBLE_DEVICES`` hides them all."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    return os.path.exists("/dev/nvidiactl") and any(
        name.startswith("nvidia") and name[6:].isdigit() for name in os.listdir("/dev"))


def onnx_device(device: str = "auto") -> str:
    """The device an ONNX model runs on: CUDA where ONNX Runtime has its CUDA provider and a GPU
    is there, else the CPU (torch is not imported: an ONNX model needs none of it)."""
    if device == "auto":
        if not cuda_present():
            return "cpu"
        import onnxruntime as ort

        return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    if device.startswith("cuda") and not cuda_present():
        raise InputError(f"--device {device}: no CUDA device available")
    return device



class OnnxPredictor:
    """An exported ONNX model (fp32, or INT8 from ``geoseg quantize``) in ONNX Runtime: numpy tiles
    in the raster's dtype in, uint8 class tiles out, like :class:`TorchPredictor`.

    On CPU each call is single-threaded by default (``threads``; the job's layouts run one
    call per core on threads sharing the session, which ONNX Runtime allows), about
    ``CPU_PIXELS_PER_CALL`` pixels at a time; with a GPU, CUDA where ONNX Runtime has it."""

    def __init__(self, path: str, meta, *, device: str = "cpu", threads: int | None = None, tta: bool = False,
                 batch_size: int | None = None):
        import onnxruntime as ort

        local = modelfile.fetch(path)
        modelfile._onnx_checked(local, path)  # refused before ONNX Runtime reads it
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(local, so, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.meta, self.num_classes = meta, meta.model.num_classes
        self.mean = np.asarray(meta.mean, np.float32).reshape(1, -1, 1, 1)
        self.std = np.maximum(np.asarray(meta.std, np.float32), 1e-6).reshape(1, -1, 1, 1)
        self.tta, self.batch_size = tta, batch_size
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"
        self.precision = ((meta.extra or {}).get("export") or {}).get("precision", "fp32")

    def _logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]

    def _batches(self, tiles: np.ndarray):
        step = self.batch_size or max(1, CPU_PIXELS_PER_CALL // (tiles.shape[-1] * tiles.shape[-2]))
        if self.device == "cuda":
            step = self.batch_size or len(tiles)
        for i in range(0, len(tiles), step):
            yield (tiles[i : i + step].astype(np.float32) - self.mean) / self.std

    def _softmax(self, x: np.ndarray) -> np.ndarray:
        def soft(z):
            z = z - z.max(1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(1, keepdims=True)

        prob = soft(self._logits(x))
        if self.tta:
            prob += soft(self._logits(np.ascontiguousarray(x[..., ::-1])))[..., ::-1]
            prob += soft(self._logits(np.ascontiguousarray(x[..., ::-1, :])))[..., ::-1, :]
            prob /= 3
        return prob.astype(np.float32)

    def predict(self, tiles: np.ndarray, scenes: np.ndarray | None = None) -> np.ndarray:
        """Class map ``(N, H, W)`` uint8 of tiles ``(N, bands, H, W)`` in any numeric dtype."""
        if len(tiles) == 0:
            raise ValueError("no tiles to predict")
        head = self._softmax if self.tta else self._logits
        return np.concatenate([head(x).argmax(1).astype(np.uint8) for x in self._batches(tiles)])

    def predict_proba(self, tiles: np.ndarray, scenes: np.ndarray | None = None) -> np.ndarray:
        """Softmax ``(N, K, H, W)`` float32."""
        return np.concatenate([self._softmax(x) for x in self._batches(tiles)])
