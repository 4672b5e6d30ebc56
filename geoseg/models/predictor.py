"""The model core of inference: a batch of numpy tiles in, class tiles out.

Plain classes with no Ray in them, so they can be tested and benchmarked on
their own (and on a GPU machine that has no Ray). The model stage
(:class:`geoseg.predict.stages.Infer`) builds one from a :class:`ModelSpec` in
each model actor; ``benchmarks/`` time them bare.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from geoseg.models import checkpoint, modelfile
from geoseg.errors import InputError
from geoseg.models.index import IndexModel, IndexThresholds
from geoseg.models.onnx import CPU_PIXELS_PER_CALL, OnnxPredictor, onnx_device
from geoseg.models.reference import ModelRef, resolve


class IndexPredictor:
    """Spectral-index model with (possibly per-scene) thresholds."""

    def __init__(self, thresholds: dict[int, dict] | None = None):
        self.models = {int(k): IndexModel(IndexThresholds(**v)) for k, v in (thresholds or {}).items()}
        self.default = IndexModel()
        self.num_classes = self.default.num_classes

    def set_scene(self, scene: int, thresholds: dict) -> None:
        """Scene ``scene``'s own thresholds (a job's scenes are planned while it runs)."""
        self.models[int(scene)] = IndexModel(IndexThresholds(**thresholds))

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




def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device available")
    return device


class TorchPredictor:
    """A torch segmentation model with its normalisation and speed options.

    The data path keeps the host's work to one copy: tiles stay in the raster's
    dtype (uint16 is half of float32) until they are on the device, where they
    are converted and normalised; the class map is the argmax of the logits
    (softmax only for probabilities, TTA or blending) and comes back as uint8.
    On CUDA the tiles go through a pinned host buffer allocated once and reused,
    and the copy of the next sub-batch runs on a side stream while the current
    one computes.

    ``precision``: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast (``"auto"``: bf16 on
    GPUs that support it, fp32 on CPU). ``channels_last`` (default on: oneDNN's
    CPU convolutions are faster in it too, 12-27% for a U-Net here) and
    ``compile`` (``torch.compile``: True for its default backend, or a backend; every
    forward call gets one fixed shape, so it compiles once: sub-batches, and on a GPU
    batches smaller than the largest one so far, are padded up to it; where compiling
    fails, say for want of a compiler on the node, the model runs eagerly, with one
    warning line) are speed options. ``batch_size``: tiles per forward call
    (``None``: the whole batch on a GPU; on CPU about 256k pixels, i.e. one 512-px
    tile, which keeps activations in cache: 25% faster per tile than 8 at once
    here). ``tta`` averages the softmax over horizontal/vertical flips.
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
        compile: bool | str | Callable = False,
        tta: bool = False,
        batch_size: int | None = None,
        threads: int | None = None,
    ):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.device = pick_device(device)
        self.cuda = self.device.startswith("cuda")
        if precision == "auto":
            precision = "bf16" if self.cuda and torch.cuda.is_bf16_supported() else "fp32"
        if precision not in ("fp32", "bf16", "fp16"):
            raise InputError(f"--precision must be fp32, bf16 or fp16, got {precision!r}")
        self.precision = precision
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.channels_last = True if channels_last is None else channels_last
        self.tta = tta
        self.compiled = bool(compile)
        self.batch_size = batch_size
        self._largest = 0  # compiled on a GPU: the largest batch so far, the one shape of every call
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1).clamp_min(1e-6)
        model = model.eval().to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._eager = model
        self._lock = threading.Lock()
        backend = "inductor" if compile is True else compile
        self.model = torch.compile(model, dynamic=False, backend=backend) if compile else model
        self.num_classes = None
        self._pinned_buffers: dict = {}  # reusable pinned host buffers (CUDA), one per calling thread
        self._copy_stream = torch.cuda.Stream(device=self.device) if self.cuda else None

    @classmethod
    def from_checkpoint(cls, path: str, meta=None, **options) -> "TorchPredictor":
        model, meta = checkpoint.load(path, meta=meta)
        pred = cls(model, meta.mean, meta.std, **options)
        pred.num_classes = meta.model.num_classes
        pred.meta = meta
        return pred

    # --- public ---------------------------------------------------------------

    def predict(self, tiles: np.ndarray, scenes: np.ndarray | None = None) -> np.ndarray:
        """Class map ``(N, H, W)`` uint8 of tiles ``(N, bands, H, W)`` in any numeric dtype.
        (``scenes`` is accepted for the predictors' common signature.)"""
        import torch

        if self.tta:
            head = lambda x: self._softmax(x).argmax(1).to(torch.uint8)  # noqa: E731
        else:
            head = lambda x: self._logits(x).argmax(1).to(torch.uint8)  # noqa: E731
        return self._run(tiles, head)

    def predict_proba(self, tiles: np.ndarray, scenes: np.ndarray | None = None) -> np.ndarray:
        """Softmax ``(N, K, H, W)`` float32."""
        return self._run(tiles, self._softmax)

    # --- the device path --------------------------------------------------------

    def _logits(self, x):
        import torch

        with torch.autocast(device_type="cuda" if self.cuda else "cpu", dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            try:
                return self.model(x)
            except Exception as exc:
                if not self._compile_failed(exc):
                    raise
                return self.model(x)

    def _compile_failed(self, exc: Exception) -> bool:
        """True where ``exc`` is torch.compile failing to compile (no working compiler or
        Triton on this node, say): the model then runs eagerly from here on, with one line
        saying so. Errors of the model itself are not caught."""
        if "torch._dynamo" not in sys.modules:  # never compiled: not a compiler's error
            return False
        from torch._dynamo.exc import BackendCompilerFailed

        if not isinstance(exc, BackendCompilerFailed):  # the compiler, not the model (which eager would repeat)
            return False
        with self._lock:  # calls running at once may all fail to compile: one line
            if self.compiled:
                from geoseg.console import worker_print

                self.model, self.compiled = self._eager, False
                cause = getattr(exc, "inner_exception", None) or exc.__cause__ or exc  # the backend's own error
                reason = next((ln.strip() for ln in str(cause).splitlines() if ln.strip()), type(cause).__name__)
                worker_print(f"--compile: torch.compile failed ({reason[:200]}); the model runs eagerly")
        return True

    def _softmax(self, x):
        prob = self._logits(x).float().softmax(1)
        if self.tta:
            prob += self._logits(x.flip(-1)).float().softmax(1).flip(-1)
            prob += self._logits(x.flip(-2)).float().softmax(1).flip(-2)
            prob /= 3
        return prob

    def _step(self, n: int, side: int) -> int:
        """Tiles per forward call: ``batch_size``; else on a GPU the whole batch (measured on an
        H100, U-Net/resnet34, 32 tiles of 576^2, bf16: 0.75x the model alone, against 0.61x in 2
        sub-batches and 0.42x in 4, whose host-side launches cost more than the overlapped copy
        saves); on CPU about ``CPU_PIXELS_PER_CALL`` pixels."""
        if self.batch_size:
            return self.batch_size
        if not self.cuda:
            return max(1, CPU_PIXELS_PER_CALL // (side * side))
        if self.compiled:  # one shape (a new one would compile again): smaller batches are padded up
            self._largest = max(self._largest, n)
            return self._largest
        return n

    def _run(self, tiles: np.ndarray, head) -> np.ndarray:
        """``head`` (a function of normalised device tensors) over every sub-batch; numpy out."""
        import torch

        n = len(tiles)
        if n == 0:
            raise ValueError("no tiles to predict")
        step = self._step(n, tiles.shape[-1])
        outs = []
        with torch.inference_mode():
            for i, x in self._device_batches(tiles, step):
                k = min(step, n - i)
                if self.compiled and len(x) < step:  # one fixed shape (and layout): torch.compile compiles once
                    x = torch.cat([x, x.new_zeros((step - len(x), *x.shape[1:]))])
                    if self.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                outs.append(head(x)[:k])
            out = torch.cat(outs) if len(outs) > 1 else outs[0]
            return self._to_host(out)

    def _device_batches(self, tiles: np.ndarray, step: int):
        """``(offset, normalised float tensor on the device)`` for each sub-batch of ``step`` tiles."""
        import torch

        if not self.cuda:
            with warnings.catch_warnings():  # Ray hands batches over read-only; torch only reads them
                warnings.simplefilter("ignore", UserWarning)
                x = torch.from_numpy(np.ascontiguousarray(tiles))
            for i in range(0, len(x), step):
                yield i, self._normalize(x[i : i + step])
            return
        host, staged = self._pinned(threading.get_ident(), tiles)  # one buffer per calling thread
        stream = self._copy_stream

        def upload(i: int):
            _parallel_copy(staged[i : i + step], tiles[i : i + step])  # this sub-batch only: the rest overlaps
            with torch.cuda.stream(stream):
                dev = host[i : i + step].to(self.device, non_blocking=True)
                done = torch.cuda.Event()
                done.record(stream)
            return dev, done

        pending = upload(0)
        for i in range(0, len(tiles), step):
            dev, done = pending
            torch.cuda.current_stream().wait_event(done)
            dev.record_stream(torch.cuda.current_stream())
            yield i, self._normalize(dev)  # the caller launches the model on it (asynchronously)
            if i + step < len(tiles):
                pending = upload(i + step)  # host copy and upload while the GPU computes

    def _normalize(self, x):
        import torch

        x = (as_float(x) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _pinned(self, key, like: np.ndarray):
        """``(torch view, numpy view)`` of a pinned host buffer shaped like ``like``, allocated
        once and reused across calls (grown when a larger batch comes)."""
        import torch

        nbytes = like.nbytes
        buf = self._pinned_buffers.get(key)
        if buf is None or buf.numel() < nbytes:
            torch.cuda.current_stream().synchronize()  # the old buffer may still be in flight
            buf = self._pinned_buffers[key] = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True)
        staged = buf[:nbytes].numpy().view(like.dtype).reshape(like.shape)
        return buf[:nbytes].view(_torch_dtype(like.dtype)).view(like.shape), staged

    def _to_host(self, out) -> np.ndarray:
        return out.cpu().numpy()


_COPY_POOL = None


def _parallel_copy(dst: np.ndarray, src: np.ndarray, parts: int = 8) -> None:
    """``dst[...] = src`` on a few threads (numpy releases the GIL while it copies): one
    thread's memcpy into pinned memory is the slowest step of feeding a GPU."""
    global _COPY_POOL
    if len(src) < 2 or src.nbytes < (8 << 20):
        np.copyto(dst, src)
        return
    if _COPY_POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _COPY_POOL = ThreadPoolExecutor(parts, thread_name_prefix="geoseg-stage")
    bounds = np.linspace(0, len(src), min(parts, len(src)) + 1).astype(int)
    list(_COPY_POOL.map(lambda ab: np.copyto(dst[ab[0] : ab[1]], src[ab[0] : ab[1]]), zip(bounds[:-1], bounds[1:])))


def _torch_dtype(dtype: np.dtype):
    import torch

    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def as_float(x):
    """A device tensor of any raster dtype as float32 (uint16 through int32 where a
    backend lacks the direct conversion)."""
    import torch

    try:
        return x.float()
    except RuntimeError:
        if x.dtype == torch.uint16:
            return (x.view(torch.int16).to(torch.int32) & 0xFFFF).float()
        raise


@dataclass(frozen=True)
class ModelSpec:
    """What model to run and how, small enough to ship to every actor, which builds it: the
    job's :class:`~geoseg.models.reference.ModelRef` (resolved and described once, in planning),
    per-scene index thresholds, and the predictor's options."""

    ref: ModelRef
    scene_params: dict = field(default_factory=dict)  # per-scene index thresholds
    options: dict = field(default_factory=dict)  # TorchPredictor / OnnxPredictor options

    @property
    def name(self) -> str:
        return self.ref.name

    def build(self):
        if self.ref.kind == "index":
            return IndexPredictor(self.scene_params)
        opts = dict(self.options)
        opts.setdefault("threads", int(os.environ.get("GEOSEG_TORCH_THREADS", "0")) or None)
        return load_predictor(self.ref, **opts)


# --- the fastest safe path for a model: runtime and precision ------------------------------------


def cpu_flags() -> set[str]:
    """This CPU's feature flags (``/proc/cpuinfo``; empty where it is not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_runtime(meta, device: str = "cpu", precision: str = "auto") -> dict:
    """How a model runs on this machine: ``{"runtime", "precision", "note"}``.

    An ONNX file runs in ONNX Runtime at the precision it was made in (fp32, or int8: on any
    x86-64 or Arm CPU; fastest with VNNI, which the note names where it is missing); a
    TorchScript or torch.export file or a checkpoint in torch. A model made for bf16 (``geoseg quantize
    --precision bf16``) runs in bf16 where the CPU has bf16 instructions (AVX512-BF16, AMX),
    else in fp32, and the note says so."""
    export = (meta.extra or {}).get("export") or {}
    made = export.get("precision") or (meta.extra or {}).get("precision") or "fp32"
    runtime = "onnxruntime" if export.get("format") == "onnx" else "torch"
    note = ""
    if runtime == "onnxruntime":
        flags = cpu_flags()
        if made == "int8" and device == "cpu" and flags and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
            note = "this CPU has no VNNI: INT8 runs, slower than where it was measured"
        return {"runtime": runtime, "precision": made, "note": note}
    if precision != "auto":
        return {"runtime": runtime, "precision": precision, "note": ""}
    if made == "bf16" and device == "cpu":
        if cpu_flags() & {"avx512_bf16", "amx_bf16"}:
            return {"runtime": runtime, "precision": "bf16", "note": ""}
        return {"runtime": runtime, "precision": "fp32", "note": "made for bf16, but this CPU has no bf16 "
                "instructions (AVX512-BF16 or AMX): fp32"}
    return {"runtime": runtime, "precision": "auto", "note": ""}


def load_predictor(model: "str | ModelRef", **options):
    """The predictor of a checkpoint folder or an exported model file (a URL, or the job's
    :class:`~geoseg.models.reference.ModelRef`, whose description is not read again), on the
    fastest safe path (:func:`choose_runtime`)."""
    ref = model if isinstance(model, ModelRef) else resolve(checkpoint_url=model)
    path, meta = ref.url, ref.meta
    onnx = ref.kind == "onnx"
    device = (onnx_device if onnx else pick_device)(options.get("device", "auto"))
    how = choose_runtime(meta, device, options.get("precision", "auto"))
    if how["runtime"] == "onnxruntime":
        pred = OnnxPredictor(path, meta, device=device, threads=options.get("threads"), tta=options.get("tta", False),
                             batch_size=options.get("batch_size"))
    else:
        opts = {**options, "precision": how["precision"]}
        if ref.is_file:
            opts["compile"] = False  # a traced or exported module is what it is
            load = modelfile.load_exported if ref.kind == "pt2" else modelfile.load_torchscript
            pred = TorchPredictor(load(path, device), meta.mean, meta.std, **opts)
            pred.num_classes, pred.meta = meta.model.num_classes, meta
        else:
            pred = TorchPredictor.from_checkpoint(path, meta=meta, **opts)
    pred.runtime = {**how, "precision": getattr(pred, "precision", how["precision"])}
    return pred
