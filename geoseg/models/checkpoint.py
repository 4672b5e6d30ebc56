"""Self-describing model checkpoints: safetensors weights + a JSON description.

A checkpoint is a folder::

    model.safetensors   weights (no pickle)
    geoseg.json         model config, classes, bands, normalisation, epoch, metrics
    train_state.pt      optimizer state for resuming (loaded with weights_only=True)

``geoseg predict --checkpoint RUN_DIR`` accepts a checkpoint folder or a training
run folder (its ``best`` checkpoint, else the latest one).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from geoseg.data import storage
from geoseg.data.bands import windows_of
from geoseg.data.classes import ClassScheme
from geoseg.errors import CheckpointError, GeosegError
from geoseg.models.runfolder import RunFolder
from geoseg.models.weights import load_plain, load_weights
from geoseg.models.zoo import ModelConfig, build_model, known_state_shapes, remember_state_shapes, state_shapes

FORMAT = "geoseg-checkpoint/1"
META = "geoseg.json"
WEIGHTS = "model.safetensors"
STATE = "train_state.pt"


@dataclass
class CheckpointMeta:
    model: ModelConfig
    classes: ClassScheme
    mean: list[float]
    std: list[float]
    band_roles: list[str] | None = None  # role of each model input band, if known
    band_numbers: list[int] | None = None  # 1-based band numbers in the training rasters
    epoch: int = 0
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "model": self.model.to_dict(),
            "classes": self.classes.to_dict(),
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "bands": {"roles": self.band_roles, "numbers": self.band_numbers,
                      # the time windows of a multi-date model (bands red@planting, ...): read by name only
                      **({"windows": windows_of(self.band_roles)} if windows_of(self.band_roles) else {})},
            "epoch": self.epoch,
            "metrics": self.metrics,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "CheckpointMeta":
        if d.get("format") != FORMAT:
            raise CheckpointError(f"{source}: not a geoseg checkpoint (format {d.get('format')!r})")
        try:
            return cls(
                model=ModelConfig(**d["model"]),
                classes=ClassScheme.from_dict(d["classes"]),
                mean=[float(v) for v in d["normalization"]["mean"]],
                std=[float(v) for v in d["normalization"]["std"]],
                band_roles=d.get("bands", {}).get("roles"),
                band_numbers=d.get("bands", {}).get("numbers"),
                epoch=int(d.get("epoch", 0)),
                metrics=d.get("metrics", {}),
                extra=d.get("extra", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: malformed {META} ({exc})") from None


def save(folder: str, model, meta: CheckpointMeta, train_state: dict | None = None) -> None:
    """Write a checkpoint into a local folder."""
    import torch
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    module = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, os.path.join(folder, WEIGHTS))
    if train_state is not None:
        torch.save(train_state, os.path.join(folder, STATE))
    with open(os.path.join(folder, META), "w") as f:
        json.dump(meta.to_dict(), f, indent=2)


def locate(path: str) -> str:
    """The checkpoint folder for a checkpoint folder or a training run folder."""
    if storage.exists(storage.join(path, META)):
        return path
    run = RunFolder(path)
    for cand in (run.best, run.latest):
        if storage.exists(storage.join(cand, META)):
            return cand
    names = [n for n in storage.listdir(path) if n.startswith("checkpoint")]
    for name in sorted(names, reverse=True):  # Ray Train names sort by time
        cand = run.checkpoint(name)
        if storage.exists(storage.join(cand, META)):
            return cand
    if not storage.exists(path):
        raise CheckpointError(f"{path}: not found")
    raise CheckpointError(f"{path}: no geoseg checkpoint in it (no {META})")


def fetch(path: str) -> str:
    """A local copy of a (possibly remote) checkpoint folder."""
    folder = locate(path)
    if not storage.is_remote(folder):
        return storage.local_path(folder)
    local = tempfile.mkdtemp(prefix="geoseg-ckpt-")
    fs, p = storage.filesystem(folder)
    for name in (META, WEIGHTS, STATE):
        if fs.exists(f"{p}/{name}"):
            fs.get_file(f"{p}/{name}", os.path.join(local, name))
    return local


def read_meta(path: str) -> CheckpointMeta:
    folder = locate(path)
    try:
        d = json.loads(storage.read_text(storage.join(folder, META)))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{folder}/{META}: not valid JSON ({exc.msg})") from None
    return CheckpointMeta.from_dict(d, folder)


def _safetensors_shapes(url: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors file's header (no tensor data is read)."""
    import struct

    fs, p = storage.filesystem(url)
    try:
        with fs.open(p, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < n < 100 << 20:
                raise CheckpointError(f"{url}: not a safetensors file")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{url}: unreadable weights ({type(exc).__name__}: {exc})") from None
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def describe(path: str) -> CheckpointMeta:
    """The checkpoint's description, once its weights file is there and its header
    readable: every check that needs no torch (milliseconds). (A model file describes
    itself: :mod:`geoseg.models.modelfile`; :mod:`geoseg.models.reference` takes either.)"""
    return _described(path)[1]


def _described(path: str, meta: CheckpointMeta | None = None) -> tuple[str, CheckpointMeta, dict[str, tuple[int, ...]]]:
    """``(folder, description, tensor shapes of the weights)``."""
    folder = locate(path)
    meta = meta if meta is not None else read_meta(folder)
    weights = storage.join(folder, WEIGHTS)
    if not storage.exists(weights):
        raise CheckpointError(f"{folder}: has no {WEIGHTS}")
    return folder, meta, _safetensors_shapes(weights)


def verify(path: str, build: bool = True, meta: CheckpointMeta | None = None) -> CheckpointMeta | None:
    """The checkpoint's description, once its weights are known to fit the model it
    describes (tensor names and shapes, read from the weights' header): a checkpoint
    of another architecture fails here, in one line, before any output is written.

    The model's own shapes come from geoseg's cache where this architecture was built
    on this machine before, with the same libraries (milliseconds, no torch); else it
    builds the model, which imports torch and the architecture library (seconds on a
    small machine; ``geoseg predict`` then runs it while Ray starts), or with ``build``
    False returns None. ``meta``: the description, where the caller has it already (then only
    the weights' header is read)."""
    folder, meta, got = _described(path, meta)
    want = state_shapes(meta.model) if build else known_state_shapes(meta.model)
    if want is None:
        return None
    _check_fit(folder, meta, want, got)
    return meta


def _check_fit(folder: str, meta: CheckpointMeta, want: dict, got: dict) -> None:
    """One line naming the checkpoint, its model and the first misfit, where the weights'
    tensor shapes ``got`` are not the model's ``want``."""
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    shapes = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or extra or shapes:
        what = (f"{len(missing)} missing (e.g. {missing[0]})" if missing else
                f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else
                f"{len(shapes)} of other shapes (e.g. {shapes[0]}: {got[shapes[0]]} vs {want[shapes[0]]})")
        raise CheckpointError(f"{folder}: weights do not fit {meta.model.arch}/{meta.model.encoder}, "
                              f"the model its {META} describes: {what} tensors")


class BackgroundCheck:
    """:func:`verify` run in a separate Python process, started at once; :meth:`result`
    waits for it and raises its error (one line).

    A process, not a thread: the check imports torch and builds the model, seconds
    of CPU in the interpreter's lock, which a thread would take from the driver's
    own start-up work (starting Ray, say); the driver never imports torch at all.
    """

    def __init__(self, path: str):
        self.path = path
        self._proc = subprocess.Popen([sys.executable, "-m", "geoseg.models.checkpoint", path],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def result(self) -> None:
        _, err = self._proc.communicate()
        if self._proc.returncode:
            lines = err.decode(errors="replace").strip().splitlines()
            raise CheckpointError(lines[-1] if lines else
                                  f"{self.path}: checking its weights failed (exit {self._proc.returncode})")

    def cancel(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.communicate()


def load(path: str, with_state: bool = False, meta: CheckpointMeta | None = None):
    """``(model, meta[, train_state])`` from a checkpoint; weights never go through pickle.
    ``meta``: its description, where the caller has it already (not read again)."""
    local = fetch(path)
    meta = meta if meta is not None else read_meta(local)
    model = build_model(meta.model)
    weights = os.path.join(local, WEIGHTS)
    if not os.path.exists(weights):
        raise CheckpointError(f"{path}: has no {WEIGHTS}")
    state = load_weights(weights)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _check_fit(path, meta, shapes, {k: tuple(v.shape) for k, v in state.items()})  # the same line as verify's
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {meta.model.arch} ({str(exc).splitlines()[0]})") from None
    # the model meta.model describes, as built here: its shapes are kept for later checks (not at
    # save, whose caller may pair a model with another description)
    remember_state_shapes(meta.model, shapes)
    if not with_state:
        return model, meta
    train_state = None
    state_path = os.path.join(local, STATE)
    if os.path.exists(state_path):
        train_state = load_plain(state_path)
    return model, meta, train_state


def copy_folder(src: str, dst: str) -> None:
    """Copy a local checkpoint folder to a local or remote destination."""
    for name in os.listdir(src):
        storage.put_file(os.path.join(src, name), storage.join(dst, name))
    if not storage.is_remote(dst):
        shutil.copystat(src, storage.local_path(dst), follow_symlinks=True)


def _main(argv: list[str]) -> int:
    """``python -m geoseg.models.checkpoint PATH``: :func:`verify`; a failure is one line on stderr."""
    try:
        verify(argv[0])
    except GeosegError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
