"""Post-processing of a segmentation: probabilities -> label map, component floors, the vessel filter, the lesion
filter, label volume floors and the core refinement, as the model's manifest (``postprocessing``) declares.

Label maps are uint8 (K, J, I); probabilities (C, K, J, I) with C the manifest's output channels;
volumes in mL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from medcnncad.inference.refine import refine_core
from medcnncad.lesions.components import boxed_components, component_peaks
from medcnncad.lesions.lesion_filter import RemovedCandidate, apply_lesion_filter, removed_candidates
from medcnncad.lesions.vessel_filter import apply_vessel_filter
from medcnncad.models.manifest import LabelVolumeFloor, Manifest

__all__ = ["softmax_background", "foreground_probability_at", "label_map_from_probabilities",
           "label_map_from_probabilities_torch", "remove_small_components", "apply_label_volume_floors",
           "postprocess", "mode_warning", "restrict_to_mask"]


def remove_small_components(label_map: np.ndarray, min_ml: float, voxel_ml: float,
                            foreground_at: Callable[[np.ndarray], np.ndarray] | None = None,
                            min_probability: float = 0.0,
                            removed: list[RemovedCandidate] | None = None) -> np.ndarray:
    """Zero the 26-connected foreground components of a (K, J, I) label map that are smaller
    than ``min_ml`` or whose largest foreground probability is below ``min_probability``
    (in place; returned). ``foreground_at(mask)`` gives the foreground probability at the
    voxels of a boolean (K, J, I) mask, in C order. ``removed``: when given, a
    :class:`~medcnncad.lesions.lesion_filter.RemovedCandidate` per removed component is appended."""
    by_probability = min_probability > 0 and foreground_at is not None
    found = boxed_components(label_map) if min_ml > 0 or by_probability else None
    if found is None:
        return label_map
    box, labelled, count = found  # labelled inside the occupied box only: same components, less work
    rows = 16  # bincount and fancy indexing convert to int64: a few slices at a time, not a full-size copy
    sizes = np.zeros(count + 1, np.int64)
    for k in range(0, labelled.shape[0], rows):
        sizes += np.bincount(labelled[k:k + rows].ravel(), minlength=count + 1)
    small = sizes * voxel_ml < min_ml
    drop = small.copy()
    peak = None
    if by_probability:
        assert foreground_at is not None  # by_probability
        peak = component_peaks(labelled, labelled > 0, foreground_at, label_map.shape, box, count + 1)
        drop |= peak < min_probability
    drop[0] = False
    if removed is not None:
        ids = np.flatnonzero(drop)
        stages = ["volume" if small[i] else "probability floor" for i in ids]
        removed += removed_candidates(labelled, ids, stages, sizes, voxel_ml, peak, None, box)
    inner = label_map[box]  # a view: zeroing it zeroes the label map
    for k in range(0, labelled.shape[0], rows):
        inner[k:k + rows][drop[labelled[k:k + rows]]] = 0
    return label_map


def apply_label_volume_floors(label_map: np.ndarray, floors: Sequence[LabelVolumeFloor], voxel_ml: float,
                              applied: list[tuple[LabelVolumeFloor, float]] | None = None) -> np.ndarray:
    """Relabel each floor's ``value`` as ``replace_with`` where its total volume in the (K, J, I) label
    map is below ``min_ml`` (in place; returned). ``voxel_ml``: one voxel's volume in mL;
    ``applied``: when given, ``(floor, volume_ml)`` is appended for each floor that relabelled voxels."""
    for floor in floors:
        mask = label_map == floor.value
        volume_ml = float(mask.sum()) * voxel_ml
        if 0 < volume_ml < floor.min_ml:
            label_map[mask] = floor.replace_with
            if applied is not None:
                applied.append((floor, volume_ml))
    return label_map


def softmax_background(manifest: Manifest) -> int | None:
    """Index of the one background output channel of a softmax model (foreground = 1 - it), else None."""
    background = [i for i, c in enumerate(manifest.postprocessing.channels) if c.value == 0]
    return background[0] if manifest.postprocessing.activation == "softmax" and len(background) == 1 else None


def foreground_probability_at(probabilities: np.ndarray, manifest: Manifest) -> Callable[[np.ndarray], np.ndarray]:
    """``mask -> foreground probability`` at the mask's voxels of (C, K, J, I) output probabilities:
    1 - background for a softmax model with one background channel, else the largest
    foreground channel."""
    background = softmax_background(manifest)
    if background is not None:
        return lambda mask: 1.0 - probabilities[background][mask]
    foreground = [i for i, c in enumerate(manifest.postprocessing.channels) if c.value != 0]
    return lambda mask: np.max([probabilities[i][mask] for i in foreground], axis=0)


def label_map_from_probabilities(probabilities: np.ndarray, manifest: Manifest, rows: int = 16) -> np.ndarray:
    """Apply the manifest's rule to (C, K, J, I) probabilities of all output channels; uint8 (K, J, I).

    softmax: value of the arg-max channel. sigmoid: channels painted in order (``Postprocessing.painting``)
    where probability > threshold (later channels overwrite earlier ones). Works ``rows`` slices
    at a time, so no full-size index array is ever allocated.
    """
    post = manifest.postprocessing
    values = np.array([c.value for c in post.channels], dtype=np.uint8)
    out: np.ndarray = np.zeros(probabilities.shape[1:], dtype=np.uint8)
    for k in range(0, out.shape[0], rows):
        part = probabilities[:, k:k + rows]
        if post.activation == "softmax":
            out[k:k + rows] = values[np.argmax(part, axis=0)]
            continue
        for index in post.painting():
            out[k:k + rows][part[index] > post.threshold] = post.channels[index].value
    return out


def label_map_from_probabilities_torch(probabilities: torch.Tensor, manifest: Manifest) -> torch.Tensor:
    """:func:`label_map_from_probabilities` where the (C, K, J, I) ``probabilities`` are (a GPU for the resident
    case): uint8 (K, J, I), the same labels (``argmax`` takes the first of tied channels, as numpy's does)."""
    post = manifest.postprocessing
    values = torch.tensor([c.value for c in post.channels], dtype=torch.uint8, device=probabilities.device)
    if post.activation == "softmax":
        return values[probabilities.argmax(0)]
    out = torch.zeros(probabilities.shape[1:], dtype=torch.uint8, device=probabilities.device)
    for index in post.painting():
        out[probabilities[index] > post.threshold] = post.channels[index].value
    return out


def restrict_to_mask(probs: np.ndarray, label_map: np.ndarray, mask: np.ndarray, manifest: Manifest,
                     uncertainty: np.ndarray | None = None) -> None:
    """Set the (C, K, J, I) ``probs`` and the (K, J, I) ``label_map`` to background outside ``mask``
    ((K, J, I), 0 = outside), in place.

    Outside the brain mask the inputs were set to 0, so whatever the network outputs there is not a reading
    of the patient: labels become 0, foreground channels 0, a softmax background channel 1, and
    ``uncertainty`` ((K, J, I), when given) 0. Run after :func:`postprocess`, so that the floors and the lesion
    filter see the candidates they were fitted on.
    """
    outside = mask == 0
    label_map[outside] = 0
    post = manifest.postprocessing
    for index, channel in enumerate(post.channels):
        probs[index][outside] = 1 if channel.value == 0 and post.activation == "softmax" else 0
    if uncertainty is not None:
        uncertainty[outside] = 0


def _spacing_kji(given: Mapping[str, sitk.Image]) -> tuple[float, float, float]:
    """Voxel spacing (mm) of the label map's grid, in (K, J, I) order (every given input is on it)."""
    spacing = next(iter(given.values())).GetSpacing()
    return float(spacing[2]), float(spacing[1]), float(spacing[0])


def _vessel_warning(removed: list[RemovedCandidate]) -> list[str]:
    """A warning naming what the vessel filter removed (nothing: none)."""
    if not removed:
        return []
    return [f"removed {len(removed)} thin, long, enhancing component(s) ({sum(c.volume_ml for c in removed):.2f} "
            "mL) as dural sinus or vessel mimics (model post-processing, vessel_filter)"]


def postprocess(manifest: Manifest, label_map: np.ndarray, probs: np.ndarray, voxel_ml: float,
                given: Mapping[str, sitk.Image], warnings: list[str],
                score_within: np.ndarray | None = None) -> tuple[list[RemovedCandidate], float | None]:
    """The manifest's post-processing of a (K, J, I) label map, in place.

    Volume and probability floors, the vessel filter (a warning when it removes something), the lesion
    filter, label volume floors (a warning for each that fires), then the core refinement (a warning
    when it changes labels).

    Args:
        manifest: the model's manifest (its ``postprocessing`` block).
        label_map: uint8 (K, J, I) label values, changed in place.
        probs: (C, K, J, I) output probabilities on the label map's grid.
        voxel_ml: one voxel's volume in mL.
        given: the inputs present, on the label map's grid (the core refinement reads them).
        warnings: human-readable notes are appended here.
        score_within: boolean (K, J, I) mask (the brain, with ``results_inside_mask``): only candidates with a
            voxel inside it count towards the lesion filter's largest probability (the case score).

    Returns:
        The removed candidates (largest first) and, with a lesion filter, the largest probability
        it gave any candidate (0 without candidates); ``None`` without a lesion filter.
    """
    post = manifest.postprocessing
    foreground_at = foreground_probability_at(probs, manifest)
    removed: list[RemovedCandidate] = []
    remove_small_components(label_map, post.min_lesion_ml, voxel_ml, foreground_at, post.min_lesion_probability,
                            removed)
    if post.vessel_filter is not None:  # before the lesion filter: a vessel is not a candidate, nor scored
        vessels: list[RemovedCandidate] = []
        apply_vessel_filter(label_map, _spacing_kji(given), post.vessel_filter, vessels, foreground_at)
        removed += vessels
        warnings += _vessel_warning(vessels)
    scores: list[float] = []
    if post.lesion_filter is not None:
        apply_lesion_filter(label_map, foreground_at, voxel_ml,
                                [(c.name, c.value) for c in post.channels if c.value != 0], post.lesion_filter,
                                removed, scores, score_within)
    applied: list[tuple[LabelVolumeFloor, float]] = []
    apply_label_volume_floors(label_map, post.label_volume_floors, voxel_ml, applied)
    names = {0: "background", **{x.value: x.name for x in manifest.labels}}
    warnings += [f"{names[f.value]} totalled {ml:.3f} mL (< {f.min_ml:g} mL): relabelled {names[f.replace_with]} "
                 "(model post-processing, label_volume_floors)" for f, ml in applied]
    warnings += _refine_core(manifest, label_map, probs, voxel_ml, given)
    removed.sort(key=lambda c: -c.volume_ml)  # largest first, as reports and Slicer list them
    return removed, (max(scores, default=0.0) if post.lesion_filter is not None else None)


def _refine_core(manifest: Manifest, label_map: np.ndarray, probs: np.ndarray, voxel_ml: float,
                 given: Mapping[str, sitk.Image]) -> list[str]:
    """The manifest's core refinement (:mod:`medcnncad.inference.refine`), in place; a message when it
    relabelled voxels."""
    spec = manifest.postprocessing.core_refinement
    if spec is None:
        return []
    channels = manifest.postprocessing.channels
    core = [i for i, c in enumerate(channels) if c.value in (spec.core_label, *spec.fixed_labels)]
    outcome = refine_core(label_map, [probs[i] for i in core], given, spec, voxel_ml)
    if not outcome.applied or outcome.to_core_ml + outcome.to_shell_ml == 0:
        return []
    names = {x.value: x.name for x in manifest.labels}
    return [f"tumor core re-read in this case's own contrast (model post-processing, core_refinement): "
            f"{outcome.to_core_ml:.2f} mL {names[spec.shell_label]} -> {names[spec.core_label]}, "
            f"{outcome.to_shell_ml:.2f} mL {names[spec.core_label]} -> {names[spec.shell_label]}"]


def mode_warning(manifest: Manifest, augmented: bool) -> list[str]:
    """A warning when the run's test-time augmentation differs from the mode the model's lesion
    filters were chosen in (they act on peak probabilities, which averaging lowers)."""
    post, chosen = manifest.postprocessing, manifest.inference.test_time_augmentation
    filtered = post.min_lesion_probability > 0 or post.lesion_filter is not None or post.label_volume_floors
    if augmented == chosen or not filtered:
        return []
    return [f"{manifest.id}'s lesion filters were chosen {'with' if chosen else 'without'} test-time "
            f"augmentation and this run {'used' if augmented else 'did not use'} it: expect "
            f"{'more' if augmented else 'fewer'} candidates removed than the model's evaluation shows"]
