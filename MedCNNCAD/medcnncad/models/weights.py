"""Building a manifest's MONAI network and loading verified weights into it.

Weights are verified against the manifest's SHA-256 *before* they are opened, and always
loaded with ``torch.load(..., weights_only=True)`` so no pickled code can run.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from medcnncad.errors import ModelError
from medcnncad.models.manifest import sha256_file

__all__ = ["build_network", "load_state_dict_verified", "load_into"]


def build_network(class_path: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    """Instantiate a MONAI network class named in a manifest (``monai.networks.nets.*`` only)."""
    module_name, _, class_name = class_path.rpartition(".")
    if module_name != "monai.networks.nets":
        raise ModelError(f"network class {class_path!r} is not in monai.networks.nets")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise ModelError(f"network class {class_path!r} does not exist in this MONAI version")
    try:
        return cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure of the constructor is a bad manifest
        raise ModelError(f"network {class_path} cannot be built with {kwargs}: {exc}") from exc


def load_state_dict_verified(path: Path, sha256: str | None) -> dict[str, torch.Tensor]:
    """Check the file's SHA-256 (when given), then load tensors only (``weights_only=True``)."""
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise ModelError(f"{path}: SHA-256 {actual} does not match the manifest ({sha256}); "
                             f"the weights were modified or corrupted")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a refused model
        raise ModelError(f"{path}: refused to load weights ({type(exc).__name__}: {str(exc)[:160]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: weights file is not a state dict of tensors")
    return state


def load_into(network: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """``load_state_dict(strict=True)`` with a :class:`ModelError` naming the file on mismatch."""
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit the network ({str(exc).splitlines()[0][:200]})") from None
