"""Loading a lesion grade classifier (a 3D CNN on lesion patches): manifest or MONAI bundle.

Not to be confused with the lesion *filter* (:mod:`medcnncad.lesions.lesion_filter`), the
logistic second stage that removes false-positive components inside the segmenter.
Running the classifier on a case lives in :mod:`medcnncad.classification.grade`.
"""

from __future__ import annotations

import functools
from pathlib import Path

from medcnncad.errors import ModelError
from medcnncad.models.bundle import load_classification_bundle
from medcnncad.models.loaded import LoadedClassifier
from medcnncad.models.manifest import ClassifierManifest, load_manifest
from medcnncad.models.registry import find_model
from medcnncad.models.weights import build_network, load_into, load_state_dict_verified

__all__ = ["LoadedClassifier", "load_classifier", "cached_classifier"]


def load_classifier(id_or_path: str | Path, trust: bool = False) -> LoadedClassifier:
    """Load a lesion grade classifier by id or folder (SHA-256 verified, ``weights_only`` load, eval mode).

    A MONAI bundle whose metadata declares class probabilities (the model-zoo classification
    template format) loads too, behind the same trust step as segmentation bundles; see
    :func:`medcnncad.models.bundle.load_classification_bundle`.

    Args:
        id_or_path: manifest id or folder of a ``task: classification`` model, or a bundle folder.
        trust: allow a bundle whose configs contain executable code.

    Returns:
        The :class:`~medcnncad.models.loaded.LoadedClassifier`.

    Raises:
        ModelError: unknown model, not a classification model, tampered weights.
        TrustError: an untrusted bundle with code in its configs.
    """
    folder = find_model(str(id_or_path))
    if (folder / "configs" / "metadata.json").is_file() and not (folder / "manifest.json").is_file():
        return load_classification_bundle(folder, trust)
    manifest = load_manifest(folder)
    if not isinstance(manifest, ClassifierManifest):
        raise ModelError(f"{id_or_path}: model {manifest.id} is a {manifest.task} model, not a lesion grade classifier")
    state = load_state_dict_verified(manifest.weights_file, manifest.weights_sha256)
    network = build_network(manifest.network_class, manifest.network_kwargs)
    load_into(network, state, manifest.weights_file)
    return LoadedClassifier(manifest, network.eval(), folder)


@functools.lru_cache(maxsize=4)
def cached_classifier(id_or_path: str) -> LoadedClassifier:
    """One loaded classifier per process and id (like the segmenter cache)."""
    return load_classifier(id_or_path)
