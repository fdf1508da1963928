"""The vessel filter: thin, long, enhancing components are dural sinuses or vessels, not tumors.

On post-contrast T1 the superior sagittal, straight and transverse sinuses and large cortical veins enhance as
brightly as a tumor's rim, and a segmenter trained on phantoms marks them as enhancing tumor. Such a component
is a tube or a sheet: its largest inscribed ball is small (a sinus's lumen is at most ~10 mm across) while it
runs for several centimetres, and it is solid in cross-section (a ring-enhancing tumor segmented as its rim alone
is hollow, and is kept). A component is removed when all of these hold (``postprocessing.vessel_filter``):

- volume >= ``min_ml`` (mL);
- largest inscribed radius <= ``max_radius_mm``: the largest Euclidean distance (mm, voxel spacing
  included) from a voxel of the component to the nearest voxel outside it;
- length >= ``min_length_mm``: the extent (mm) of its voxel centres along their principal axis;
- share of its voxels with one of ``enhancing_labels`` >= ``min_enhancing_fraction``;
- solid: filling the holes of each of its (K) slices adds at most ``max_fill_ratio`` - 1 of its volume (the
  array's slices only: a hollow tube lying within them, open at its ends, counts as solid).

Arrays are (K, J, I) as SimpleITK gives them; ``spacing_kji`` is in mm in that order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medcnncad.lesions.components import boxed_components, component_peaks
from medcnncad.lesions.lesion_filter import RemovedCandidate, removed_candidates
from medcnncad.models.manifest import VesselFilter

__all__ = ["VesselFilter", "TubeShape", "tube_shape", "is_vessel_like", "apply_vessel_filter"]


@dataclass(frozen=True)
class TubeShape:
    """Shape of one component: ``radius_mm`` (largest inscribed), ``length_mm`` (along the principal axis),
    ``enhancing_fraction`` and ``fill_ratio`` (slice-wise hole-filled volume over volume, >= 1)."""

    radius_mm: float
    length_mm: float
    enhancing_fraction: float
    fill_ratio: float


def tube_shape(component: np.ndarray, labels: np.ndarray, spacing_kji: tuple[float, float, float],
               enhancing_labels: tuple[int, ...]) -> TubeShape:
    """:class:`TubeShape` of a boolean (K, J, I) ``component`` crop; ``labels``: the label values at its voxels
    (C order)."""
    spacing = np.asarray(spacing_kji, dtype=np.float64)
    radius = float(ndimage.distance_transform_edt(np.pad(component, 1), sampling=spacing).max())
    points = np.argwhere(component) * spacing
    length = 0.0
    if len(points) >= 2:
        axis = np.linalg.eigh(np.cov(points.T))[1][:, -1]
        length = float(np.ptp(points @ axis))
    filled = sum(int(ndimage.binary_fill_holes(plane).sum()) for plane in component)
    return TubeShape(radius, length, float(np.isin(labels, enhancing_labels).mean()), filled / int(component.sum()))


def is_vessel_like(shape: TubeShape, volume_ml: float, rule: VesselFilter) -> bool:
    """Whether a component of ``volume_ml`` with ``shape`` meets every condition of ``rule``."""
    return (volume_ml >= rule.min_ml and shape.radius_mm <= rule.max_radius_mm
            and shape.length_mm >= rule.min_length_mm and shape.enhancing_fraction >= rule.min_enhancing_fraction
            and shape.fill_ratio <= rule.max_fill_ratio)


def apply_vessel_filter(label_map: np.ndarray, spacing_kji: tuple[float, float, float], rule: VesselFilter,
                        removed: list[RemovedCandidate] | None = None,
                        foreground_at: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Zero the 26-connected foreground components of a (K, J, I) label map that :func:`is_vessel_like` finds
    (in place; returned). ``removed``: when given, a :class:`RemovedCandidate` (stage ``vessel filter``) per
    removed component is appended, with its largest foreground probability when ``foreground_at`` (whole-grid
    boolean mask -> the foreground probability at its voxels, in C order) is given."""
    found = boxed_components(label_map)
    if found is None:
        return label_map
    box, labelled, count = found
    inner = label_map[box]  # a view: zeroing it zeroes the label map
    voxel_ml = float(np.prod(spacing_kji)) / 1000.0
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)
    drop = np.zeros(count + 1, bool)
    for index, crop in enumerate(ndimage.find_objects(labelled), start=1):
        if crop is None or sizes[index] * voxel_ml < rule.min_ml:
            continue
        component = labelled[crop] == index
        labels = inner[crop][component]
        if np.isin(labels, rule.enhancing_labels).mean() < rule.min_enhancing_fraction:
            continue  # most tumors: no distance transform of a large box for a component that cannot qualify
        shape = tube_shape(component, labels, spacing_kji, rule.enhancing_labels)
        drop[index] = is_vessel_like(shape, float(sizes[index] * voxel_ml), rule)
    if removed is not None and drop.any():
        ids = np.flatnonzero(drop)
        removed += removed_candidates(labelled, ids, ["vessel filter"] * len(ids), sizes, voxel_ml,
                                      _peaks(labelled, drop, foreground_at, label_map.shape, box), None, box)
    inner[drop[labelled]] = 0
    return label_map


def _peaks(labelled: np.ndarray, drop: np.ndarray, foreground_at: Callable[[np.ndarray], np.ndarray] | None,
           shape: tuple[int, ...], box: tuple[slice, ...]) -> np.ndarray | None:
    """The largest foreground probability of each dropped component (indexed by id; others 0), or None."""
    if foreground_at is None:
        return None
    return component_peaks(labelled, drop[labelled], foreground_at, shape, box, len(drop))
