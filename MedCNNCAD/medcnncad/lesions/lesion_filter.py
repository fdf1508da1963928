"""The lesion filter (a second stage): is a segmented component a true lesion or a false positive?

The classic CAD recipe: the segmenter proposes candidates (26-connected foreground components
of the label map), a small classifier trained on the segmenter's own true and false candidates
scores each one, and candidates scoring below a threshold are removed from the label map. Here
the classifier is a logistic regression on a few features of each component, all computed from
the label map and the foreground probability, so it works whatever input sequences are present.
Its coefficients live in the model manifest (``postprocessing.lesion_filter``).

Features (:data:`BASE_FEATURES`, then ``fraction:<channel>`` for each foreground output channel of the manifest):

- ``log_volume_ml``: natural log of the component's volume in mL;
- ``max_probability`` / ``mean_probability``: largest / mean foreground probability inside it;
- ``high_probability_fraction``: fraction of its voxels with foreground probability >= 0.9;
- ``log_volume_ratio``: log of its volume over the case's largest component's (0 for the largest);
- ``fraction:<channel>``: fraction of its voxels labelled with that output channel's value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medcnncad.lesions.components import boxed_components, mask_from_box
from medcnncad.models.lesion_filter_features import BASE_FEATURES, feature_names
from medcnncad.models.manifest import LesionFilter

__all__ = ["BASE_FEATURES", "LesionFilter", "RemovedCandidate", "component_features", "feature_names",
           "apply_lesion_filter", "removed_candidates"]

HIGH_PROBABILITY = 0.9


@dataclass(frozen=True)
class RemovedCandidate:
    """A foreground component that post-processing removed from the label map (the probability maps
    keep it). ``stage``: ``volume``, ``probability floor``, ``vessel filter`` or ``lesion filter``; ``centroid_kji``:
    voxel indices (K, J, I) of its centre; probabilities are foreground probabilities in [0, 1]."""

    stage: str
    voxel_count: int
    volume_ml: float
    max_probability: float | None
    classifier_probability: float | None
    centroid_kji: tuple[float, float, float]

    def to_json(self, image: sitk.Image) -> dict:
        """JSON with the centre in LPS and RAS millimetres of ``image``'s grid."""
        lps = image.TransformContinuousIndexToPhysicalPoint([float(c) for c in self.centroid_kji[::-1]])
        return {"stage": self.stage, "voxel_count": self.voxel_count, "volume_ml": self.volume_ml,
                "max_probability": self.max_probability, "classifier_probability": self.classifier_probability,
                "centroid_lps_mm": list(lps), "centroid_ras_mm": [-lps[0], -lps[1], lps[2]]}


def removed_candidates(labelled: np.ndarray, ids: np.ndarray, stages: Sequence[str], sizes: np.ndarray,
                       voxel_ml: float, peaks: np.ndarray | None, scores: np.ndarray | None,
                       box: tuple[slice, ...] | None = None) -> list[RemovedCandidate]:
    """:class:`RemovedCandidate` records of components ``ids`` of ``labelled`` (K, J, I), which covers
    ``box`` of the label map (``None``: all of it); ``sizes``, ``peaks`` and ``scores`` are indexed by id."""
    if not len(ids):
        return []
    offset = np.array([s.start for s in box] if box else [0, 0, 0], float)
    centres = ndimage.center_of_mass(labelled > 0, labelled, ids)
    return [RemovedCandidate(stage, int(sizes[i]), float(sizes[i] * voxel_ml),
                             None if peaks is None else float(peaks[i]), None if scores is None else float(scores[i]),
                             cast("tuple[float, float, float]", tuple(float(c) for c in np.asarray(centre) + offset)))
            for i, stage, centre in zip(ids, stages, centres)]


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


def apply_lesion_filter(label_map: np.ndarray, foreground_at: Callable[[np.ndarray], np.ndarray],
                            voxel_ml: float, channels: Sequence[tuple[str, int]], classifier: LesionFilter,
                            removed: list[RemovedCandidate] | None = None,
                            scores: list[float] | None = None,
                            score_within: np.ndarray | None = None) -> np.ndarray:
    """Zero the components of a (K, J, I) label map that ``classifier`` scores below its threshold
    (in place; returned). ``foreground_at(mask)``: foreground probability at a mask's voxels;
    ``removed``: when given, a :class:`RemovedCandidate` per removed component is appended;
    ``scores``: when given, every component's classifier probability is appended, or with ``score_within``
    (a boolean (K, J, I) mask, e.g. the brain) only those of the components with a voxel inside it."""
    found = boxed_components(label_map)
    if found is None:
        return label_map
    box, labelled, count = found  # labelled inside the occupied box only: same components, less work
    inner = label_map[box]  # a view: zeroing it zeroes the label map
    inside = labelled > 0
    x = component_features(labelled, count, inner, foreground_at(mask_from_box(label_map.shape, box, inside)),
                           voxel_ml, channels)
    order = [feature_names(channels).index(name) for name in classifier.features]
    score = np.concatenate([[1.0], classifier.probability(x[:, order])])
    if scores is not None:
        if score_within is None:
            counted = np.ones(count + 1, bool)
        else:  # only the components touching score_within
            counted = np.zeros(count + 1, bool)
            counted[labelled[inside & score_within[box]]] = True
        scores += score[1:][counted[1:]].tolist()
    drop = score < classifier.min_probability
    if removed is not None and drop.any():
        ids = np.flatnonzero(drop)
        sizes = np.bincount(labelled[inside], minlength=count + 1)
        removed += removed_candidates(labelled, ids, ["lesion filter"] * len(ids), sizes, voxel_ml,
                                      np.concatenate([[0.0], x[:, 1]]), score, box)
    inner[drop[labelled]] = 0
    return label_map
