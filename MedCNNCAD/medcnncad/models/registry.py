"""Finding, verifying and loading models (manifest folders and MONAI bundles).

A model is found by id among the installed model folders, or by path. Weights are
verified against the SHA-256 in the manifest *before* they are opened, and always
loaded with ``torch.load(..., weights_only=True)`` so no pickled code can run.
"""

from __future__ import annotations

import os
from pathlib import Path

from medcnncad.errors import ModelError
from medcnncad.io.resources import resource_dir
from medcnncad.models.bundle import describe_bundle, load_bundle
from medcnncad.models.defaults import DEFAULT_GRADE_CLASSIFIER, DEFAULT_MODEL
from medcnncad.models.loaded import LoadedModel
from medcnncad.models.manifest import ClassifierManifest, Manifest, load_manifest
from medcnncad.models.preprocessing import build_preprocessing
from medcnncad.models.weights import build_network, load_into, load_state_dict_verified

__all__ = ["DEFAULT_MODEL", "DEFAULT_GRADE_CLASSIFIER", "model_search_paths", "list_models", "find_model",
           "load_model", "describe_model"]


def model_search_paths() -> list[Path]:
    """Folders searched for installed models, in priority order.

    ``MEDCNNCAD_MODEL_PATH`` (os.pathsep-separated), ``~/.medcnncad/models``, then the
    models shipped in the repository's ``Resources/Models``.
    """
    paths = [Path(p) for p in os.environ.get("MEDCNNCAD_MODEL_PATH", "").split(os.pathsep) if p]
    paths.append(Path.home() / ".medcnncad" / "models")
    shipped = resource_dir("Models")
    if shipped is not None:
        paths.append(shipped)
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


def describe_model(id_or_path: str | Path) -> Manifest | ClassifierManifest:
    """The manifest of a model (or a bundle's equivalent) without loading weights or running code.

    Args:
        id_or_path: manifest id or alias, bundle folder name, or a folder path.

    Returns:
        The segmentation :class:`Manifest` or, for a grade classifier, its ``ClassifierManifest``.

    Raises:
        ModelError: unknown model or invalid manifest.
    """
    folder = find_model(str(id_or_path))
    if _is_bundle(folder) and not (folder / "manifest.json").is_file():
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
        return load_bundle(folder, trust=trust)
    manifest = load_manifest(folder)
    if manifest.task != "segmentation":
        raise ModelError(f"{id_or_path}: model {manifest.id} is a {manifest.task} model (a lesion grade classifier "
                         f"is used with --grade-classifier, not as the segmentation model)")
    assert isinstance(manifest, Manifest)  # task "segmentation": parse_manifest's schema
    state = load_state_dict_verified(manifest.weights_file, manifest.weights_sha256)
    network = build_network(manifest.network_class, manifest.network_kwargs)
    load_into(network, state, manifest.weights_file)
    network.eval()
    return LoadedModel(manifest, network, build_preprocessing(manifest.preprocessing), "manifest", folder)
