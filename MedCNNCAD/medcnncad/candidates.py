"""Second-stage lesion classifier: is a segmented component a true lesion or a false positive?

The classic CAD recipe: the segmenter proposes candidates (26-connected foreground components
of the label map), a small classifier trained on the segmenter's own true and false candidates
scores each one, and candidates scoring below a threshold are removed from the label map. Here
the classifier is a logistic regression on a few features of each component, all computed from
the label map and the foreground probability, so it works whatever input sequences are present.
Its coefficients live in the model manifest (``postprocessing.lesion_classifier``).

Features (``FEATURES``; ``fraction:<channel>`` for each foreground output channel of the manifest):

- ``log_volume_ml``: natural log of the component's volume in mL;
- ``max_probability`` / ``mean_probability``: largest / mean foreground probability inside it;
- ``high_probability_fraction``: fraction of its voxels with foreground probability >= 0.9;
- ``log_volume_ratio``: log of its volume over the case's largest component's (0 for the largest);
- ``fraction:<channel>``: fraction of its voxels labelled with that output channel's value.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .lesions import components
from .manifest import LesionClassifier

__all__ = ["BASE_FEATURES", "LesionClassifier", "component_features", "feature_names", "apply_lesion_classifier"]

BASE_FEATURES = ("log_volume_ml", "max_probability", "mean_probability", "high_probability_fraction",
                 "log_volume_ratio")
HIGH_PROBABILITY = 0.9


def feature_names(channels: Sequence[tuple[str, int]]) -> tuple[str, ...]:
    """All feature names for foreground output channels ``(name, value)``."""
    return BASE_FEATURES + tuple(f"fraction:{name}" for name, _ in channels)


def component_features(labelled: np.ndarray, count: int, label_map: np.ndarray, foreground: np.ndarray,
                       voxel_ml: float, channels: Sequence[tuple[str, int]]) -> np.ndarray:
    """(count, F) features of components 1..count of ``labelled`` (K, J, I), in :func:`feature_names` order.

    ``foreground``: the foreground probability at the voxels of ``labelled > 0``, in C order;
    ``channels``: the manifest's foreground output channels as ``(name, value)``; ``voxel_ml`` in mL.
    """
    if not count:
        return np.zeros((0, len(BASE_FEATURES) + len(channels)))
    inside = labelled > 0
    ids = labelled[inside]
    values = label_map[inside]
    size = np.bincount(ids, minlength=count + 1)[1:].astype(np.float64)
    peak = np.zeros(count + 1, np.float64)
    np.maximum.at(peak, ids, foreground)
    mean = np.bincount(ids, weights=foreground, minlength=count + 1)[1:] / size
    high = np.bincount(ids, weights=foreground >= HIGH_PROBABILITY, minlength=count + 1)[1:] / size
    columns = [np.log(size * voxel_ml), peak[1:], mean, high, np.log(size / size.max())]
    for _, value in channels:
        columns.append(np.bincount(ids, weights=values == value, minlength=count + 1)[1:] / size)
    return np.stack(columns, axis=1)


def apply_lesion_classifier(label_map: np.ndarray, foreground_at: Callable[[np.ndarray], np.ndarray],
                            voxel_ml: float, channels: Sequence[tuple[str, int]],
                            classifier: LesionClassifier) -> np.ndarray:
    """Zero the components of a (K, J, I) label map that ``classifier`` scores below its threshold
    (in place; returned). ``foreground_at(mask)``: foreground probability at a mask's voxels."""
    labelled, count = components(label_map > 0)
    if not count:
        return label_map
    x = component_features(labelled, count, label_map, foreground_at(labelled > 0), voxel_ml, channels)
    order = [feature_names(channels).index(name) for name in classifier.features]
    drop = np.concatenate([[False], classifier.probability(x[:, order]) < classifier.min_probability])
    label_map[drop[labelled]] = 0
    return label_map
