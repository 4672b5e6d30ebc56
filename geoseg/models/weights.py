"""Loading weights and training state from local files, never unpickling code.

The one place geoseg reads tensors from disk: ``.safetensors`` files (no pickle
at all) and torch files through ``torch.load(weights_only=True)``, which
refuses anything but plain tensors and containers.
"""

from __future__ import annotations

import os

from geoseg.errors import CheckpointError


def load_plain(path: str):
    """A torch file of plain tensors / containers (``weights_only``); pickled code is refused."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unsafe or corrupt pickles are refused, never retried unsafely
        raise CheckpointError(f"{path}: refused, not plain tensors ({type(exc).__name__})") from None


def load_weights(path: str) -> dict:
    """A state dict from a local safetensors or torch file."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: not found")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: unreadable weights ({exc})") from None
    state = load_plain(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: does not hold a state dict")
    return state
