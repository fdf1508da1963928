"""Finding, verifying and loading models: MedCNNCAD manifest folders, MONAI bundles, nnU-Net v2
model folders and Auto3DSeg (SlicerMONAIAuto3DSeg) model folders.

A model is found by id among the installed model folders, or by path. Weights are
verified against the SHA-256 in the manifest *before* they are opened, and always
loaded with ``torch.load(..., weights_only=True)`` so no pickled code can run.
"""

from __future__ import annotations

import os
from pathlib import Path

from medcnncad.errors import ModelError
from medcnncad.io.resources import resource_dir
from medcnncad.models.auto3dseg import describe_auto3dseg, is_auto3dseg_folder, load_auto3dseg
from medcnncad.models.bundle import describe_bundle, load_bundle
from medcnncad.models.defaults import DEFAULT_GRADE_CLASSIFIER, DEFAULT_MODEL
from medcnncad.models.loaded import LoadedModel
from medcnncad.models.manifest import ClassifierManifest, Manifest, load_manifest
from medcnncad.models.nnunet import describe_nnunet, is_nnunet_folder, load_nnunet
from medcnncad.models.preprocessing import build_preprocessing
from medcnncad.models.weights import build_network, load_into, load_state_dict_verified

__all__ = ["DEFAULT_MODEL", "DEFAULT_GRADE_CLASSIFIER", "MODEL_FORMATS", "model_format", "model_format_of",
           "model_source", "model_key", "model_search_paths", "list_models", "find_model", "load_model",
           "describe_model", "describe_segmentation_model"]


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


MODEL_FORMATS = ("manifest", "bundle", "nnunet", "auto3dseg")


def model_format(folder: Path) -> str | None:
    """Which model format a folder holds (a MedCNNCAD manifest wins over the others), or None."""
    if (folder / "manifest.json").is_file():
        return "manifest"
    if _is_bundle(folder):
        return "bundle"
    if is_nnunet_folder(folder):
        return "nnunet"
    if is_auto3dseg_folder(folder):
        return "auto3dseg"
    return None


_FORMAT_NAMES = {"manifest": "MedCNNCAD manifest", "bundle": "MONAI bundle", "nnunet": "nnU-Net v2 model folder",
                 "auto3dseg": "Auto3DSeg SegResNet (SlicerMONAIAuto3DSeg layout)"}


def model_format_of(manifest: Manifest | ClassifierManifest) -> str:
    """The format a described model came from: manifest, bundle, nnunet or auto3dseg."""
    return "bundle" if manifest.raw.get("bundle") else str(manifest.raw.get("format", "manifest"))


def model_source(manifest: Manifest | ClassifierManifest) -> str:
    """One line for a model card: the format, and where the weights came from."""
    kind = model_format_of(manifest)
    if kind == "nnunet":
        raw = manifest.raw
        return (f"{_FORMAT_NAMES[kind]} ({raw.get('configuration', '?')}, folds {','.join(raw.get('folds', []))}); "
                f"weights {manifest.folder}/fold_*/checkpoint_final.pth")
    return f"{_FORMAT_NAMES[kind]}; weights {manifest.weights_file}"


def model_key(manifest: Manifest | ClassifierManifest) -> str:
    """How a caller names a model again: the manifest id, or the folder of any other format."""
    if model_format_of(manifest) != "manifest":
        return str(manifest.folder)
    return manifest.id


def list_models() -> list[Path]:
    """Every model folder (manifest or bundle) under the search paths."""
    found: list[Path] = []
    for root in model_search_paths():
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if model_format(folder) is not None:
                found.append(folder)
    return found


def find_model(id_or_path: str) -> Path:
    """Resolve a model folder path, or a model id (manifest ``id`` or alias, or another format's folder name).

    A folder that holds a model wins; a folder that holds none (an output folder named like a model) does
    not hide the installed model of that id, and is refused by name when there is none.
    """
    candidate = Path(id_or_path).expanduser()
    if candidate.is_dir() and model_format(candidate) is not None:
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
    if candidate.is_dir():
        raise ModelError(f"{candidate}: not a model folder (manifest not found: no manifest.json, and not a MONAI "
                         f"bundle, nnU-Net v2 or Auto3DSeg model folder)")
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
    kind = model_format(folder)
    if kind == "bundle":
        return describe_bundle(folder)
    if kind == "nnunet":
        return describe_nnunet(folder)
    if kind == "auto3dseg":
        return describe_auto3dseg(folder)
    return load_manifest(folder)


def describe_segmentation_model(id_or_path: str | Path) -> Manifest:
    """:func:`describe_model` for a place that needs a segmentation model (any format).

    Raises:
        ModelError: unknown or invalid model, or a lesion grade classifier (naming it).
    """
    manifest = describe_model(id_or_path)
    if not isinstance(manifest, Manifest):
        raise ModelError(f"{id_or_path}: model {manifest.id} is a {manifest.task} model (a lesion grade classifier "
                         f"is used with --grade-classifier, not as the segmentation model)")
    return manifest


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
    kind = model_format(folder)
    if kind == "bundle":
        return load_bundle(folder, trust=trust)
    if kind == "nnunet":
        return load_nnunet(folder, trust=trust)
    if kind == "auto3dseg":
        return load_auto3dseg(folder, trust=trust)
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
