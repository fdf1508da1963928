"""Finding, verifying and loading models (manifest folders and MONAI bundles).

A model is found by id among the installed model folders, or by path. Weights are
verified against the SHA-256 in the manifest *before* they are opened, and always
loaded with ``torch.load(..., weights_only=True)`` so no pickled code can run.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import ModelError
from .manifest import Manifest, load_manifest, sha256_file

__all__ = ["LoadedModel", "model_search_paths", "list_models", "find_model", "load_model", "build_network",
           "load_state_dict_verified", "load_into", "describe_model"]


@dataclass
class LoadedModel:
    """A model ready to run: its manifest, network (eval mode) and preprocessing.

    ``preprocess`` takes a channel-first MONAI ``MetaTensor`` (C, I, J, K) with a RAS
    affine and returns the network input in the same convention.
    """

    manifest: Manifest
    network: torch.nn.Module
    preprocess: Callable[[Any], Any]
    source: str  # "manifest" or "bundle"
    path: Path


def model_search_paths() -> list[Path]:
    """Folders searched for installed models, in priority order.

    ``MEDCNNCAD_MODEL_PATH`` (os.pathsep-separated), ``~/.medcnncad/models``, then the
    models shipped in the repository's ``Resources/Models``.
    """
    paths = [Path(p) for p in os.environ.get("MEDCNNCAD_MODEL_PATH", "").split(os.pathsep) if p]
    paths.append(Path.home() / ".medcnncad" / "models")
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "Resources" / "Models"
        if candidate.is_dir():
            paths.append(candidate)
            break
    return paths


def _is_bundle(folder: Path) -> bool:
    return (folder / "configs" / "metadata.json").is_file()


def list_models() -> list[Path]:
    """Every model folder (manifest or bundle) under the search paths."""
    found: list[Path] = []
    for root in model_search_paths():
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if (folder / "manifest.json").is_file() or _is_bundle(folder):
                found.append(folder)
    return found


def find_model(id_or_path: str) -> Path:
    """Resolve a model id (manifest ``id`` or bundle folder name) or a folder path."""
    candidate = Path(id_or_path).expanduser()
    if candidate.is_dir():
        return candidate
    if candidate.name == "manifest.json" and candidate.is_file():
        return candidate.parent
    for folder in list_models():
        if (folder / "manifest.json").is_file():
            try:
                manifest = load_manifest(folder)
                if id_or_path == manifest.id or id_or_path in manifest.aliases:
                    return folder
            except ModelError:
                continue
        elif folder.name == id_or_path:
            return folder
    raise ModelError(f"{id_or_path}: no such model (not a folder, and no installed model has this id; "
                     f"see 'medcnncad models')")


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


def describe_model(id_or_path: str | Path) -> Manifest:
    """The manifest of a model (or a bundle's equivalent) without loading weights or running code."""
    folder = find_model(str(id_or_path))
    if _is_bundle(folder) and not (folder / "manifest.json").is_file():
        from .bundle import describe_bundle

        return describe_bundle(folder)
    return load_manifest(folder)


def load_model(id_or_path: str | Path, trust: bool = False) -> LoadedModel:
    """Load a model by id or folder: verify, build the network, load weights (eval mode).

    Args:
        id_or_path: manifest id, bundle folder name, or a folder path.
        trust: allow a MONAI bundle whose configs contain executable code.

    Raises:
        ModelError: unknown model, invalid manifest, tampered weights.
        TrustError: an untrusted bundle with code in its configs.
    """
    folder = find_model(str(id_or_path))
    if _is_bundle(folder) and not (folder / "manifest.json").is_file():
        from .bundle import load_bundle

        return load_bundle(folder, trust=trust)
    manifest = load_manifest(folder)
    if manifest.task != "segmentation":
        raise ModelError(f"{id_or_path}: model {manifest.id} is a {manifest.task} model (a lesion classifier is "
                         f"used with --classifier, not as the segmentation model)")
    state = load_state_dict_verified(manifest.weights_file, manifest.weights_sha256)
    network = build_network(manifest.network_class, manifest.network_kwargs)
    load_into(network, state, manifest.weights_file)
    network.eval()
    from .preprocess import build_preprocessing

    return LoadedModel(manifest, network, build_preprocessing(manifest.preprocessing), "manifest", folder)
