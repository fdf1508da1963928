"""Tumor core re-read in each case's own contrast (manifest ``postprocessing.core_refinement``).

Why: in a non-enhancing tumor the boundary between tumor core and oedema is a difference of a few
per cent in signal whose direction changes from case to case, so a network's fixed rule finds the
core's location but not its edge (docs/models.md, "Case-adaptive tumor core"). Inside the predicted
tumor the case's own inputs are clustered by a Gaussian mixture (scikit-learn's EM, run in
:mod:`medcnncad.inference.gaussian_mixture`); each component votes
"core" when the network's mean core probability over its voxels exceeds 0.5, and a voxel is core
where ``network_weight`` x its core probability + (1 - ``network_weight``) x its component's vote
exceeds 0.5 (see :class:`~medcnncad.models.manifest.CoreRefinement`). The whole tumor and the fixed labels
(enhancing tumor) never change; only core and shell labels are swapped inside the tumor, and a core
component that shares no voxel with the network's own core is left as shell, and a case whose refined
core would be more than ``max_volume_change`` times larger or smaller than the network's keeps the
network's labels (the refinement moves the core's edge; it neither adds core lesions nor replaces the
core).

Arrays are (K, J, I) on the input grid; spacings in mm; volumes in mL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medcnncad.inference.gaussian_mixture import fit_full_mixture, posterior
from medcnncad.lesions.components import components, nonzero_box
from medcnncad.models.manifest import CoreRefinement

__all__ = ["RefinementOutcome", "refine_core", "cluster_vote", "touching"]

MIN_TUMOR_VOXELS = 50  # fewer tumor voxels than this (or 10 per component): nothing to cluster


@dataclass(frozen=True)
class RefinementOutcome:
    """What :func:`refine_core` did to one case: ``applied`` or the ``reason`` it did not; volumes
    (mL) relabelled into the core and out of it; ``fixed_share``: the fixed labels' share of the
    predicted core before refinement (None when it was not computed)."""

    applied: bool
    reason: str = ""
    to_core_ml: float = 0.0
    to_shell_ml: float = 0.0
    fixed_share: float | None = None


def _padded_box(mask: np.ndarray, margin_vox: np.ndarray) -> tuple[slice, ...]:
    """The smallest box holding every True voxel of a non-empty ``mask``, widened by ``margin_vox``
    voxels per (K, J, I) axis and clipped to the grid."""
    tight = nonzero_box(mask)
    assert tight is not None
    return tuple(slice(max(s.start - int(m), 0), min(s.stop + int(m), n))
                 for s, m, n in zip(tight, margin_vox, mask.shape))


def _features(images: Sequence[sitk.Image], box: tuple[slice, ...], inside: np.ndarray,
              sigma_vox: np.ndarray) -> np.ndarray:
    """(N, C): each image inside ``box`` Gaussian-smoothed (``sigma_vox`` voxels per K, J, I axis; 0: not
    smoothed), then z-scored over the N voxels of the boolean ``inside`` (box-shaped; ``np.nonzero`` order)."""
    columns = []
    for image in images:
        values = sitk.GetArrayViewFromImage(image)[box].astype(np.float64)
        if np.any(sigma_vox > 0):
            values = ndimage.gaussian_filter(values, sigma=sigma_vox)
        column = values[inside]
        columns.append((column - column.mean()) / (column.std() + 1e-9))
    return np.stack(columns, 1)


def cluster_vote(features: np.ndarray, core_probability: np.ndarray, components: int, max_fit_voxels: int,
                 seed: int) -> np.ndarray:
    """(N,) vote in [0, 1]: each voxel's posterior-weighted share of mixture components whose mean
    network core probability exceeds 0.5. The mixture (full covariances) is fitted on at most
    ``max_fit_voxels`` voxels drawn with ``seed``, then evaluated on all N."""

    rng = np.random.default_rng(seed)
    fit = features if len(features) <= max_fit_voxels else features[rng.choice(len(features), max_fit_voxels,
                                                                                replace=False)]
    shares = posterior(fit_full_mixture(fit, components, reg_covar=1e-3, seed=seed), features)  # (K, N)
    component_core = (shares @ core_probability) / np.maximum(shares.sum(1), 1e-12)
    return (component_core > 0.5).astype(np.float64) @ shares


def refine_core(label_map: np.ndarray, core_channels: Sequence[np.ndarray], images: Mapping[str, sitk.Image],
                spec: CoreRefinement, voxel_ml: float) -> RefinementOutcome:
    """Apply ``spec`` to a (K, J, I) label map in place.

    Args:
        label_map: the post-processed label map (values as in the manifest).
        core_channels: (K, J, I) network probabilities of the core and fixed labels; their sum, taken
            inside the tumor's box only (and only when the refinement runs), is the core probability.
        images: the inputs that were given (absent ones left out), on the label map's grid.
        spec: the manifest's refinement.
        voxel_ml: one voxel's volume in mL.
    """
    missing = [name for name in spec.required_inputs if name not in images]
    if missing:
        return RefinementOutcome(False, f"needs input(s) {missing}")
    whole = np.isin(label_map, (spec.core_label, spec.shell_label, *spec.fixed_labels))
    n = int(whole.sum())
    if n < max(MIN_TUMOR_VOXELS, 10 * spec.components):
        return RefinementOutcome(False, f"tumor too small to cluster ({n} voxels)")
    first = images[spec.required_inputs[0]]
    sigma_vox = spec.smoothing_mm / np.asarray(first.GetSpacing(), float)[::-1]
    box = _padded_box(whole, np.ceil(4 * sigma_vox))  # the smoothing's reach around the tumor
    labels, tumor = label_map[box], whole[box]  # views: writing labels writes the label map
    fixed = np.isin(labels, spec.fixed_labels)
    core_before = fixed | (labels == spec.core_label)
    core_voxels = int(core_before.sum())
    if not core_voxels:  # no seed: the step only moves the edge of a core the network found
        return RefinementOutcome(False, "the network found no core")
    share = float(fixed.sum()) / core_voxels
    if share >= spec.max_fixed_share:
        return RefinementOutcome(False, f"fixed labels are {share:.2f} of the core (>= {spec.max_fixed_share:g})",
                                 fixed_share=share)
    features = _features([images[name] for name in spec.required_inputs], box, tumor, sigma_vox)
    probability = cast(np.ndarray, sum(channel[box].astype(np.float64) for channel in core_channels))[tumor]
    vote = cluster_vote(features, probability, spec.components, spec.max_fit_voxels, spec.seed)
    core_after = fixed.copy()
    core_after[tumor] |= spec.network_weight * probability + (1 - spec.network_weight) * vote > 0.5
    core_after = touching(core_after, core_before)
    ratio = float(core_after.sum()) / core_voxels
    if not 1 / spec.max_volume_change <= ratio <= spec.max_volume_change:
        return RefinementOutcome(False, f"the refined core would be {ratio:.2f} x the network's (limit "
                                        f"{spec.max_volume_change:g} x either way): network's labels kept",
                                 fixed_share=share)
    to_core = core_after & ~core_before
    to_shell = core_before & ~core_after  # never a fixed voxel: those are in both
    labels[to_core] = spec.core_label
    labels[to_shell] = spec.shell_label
    return RefinementOutcome(True, "", float(to_core.sum()) * voxel_ml, float(to_shell.sum()) * voxel_ml, share)


def touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The 26-connected components of boolean ``mask`` that share a voxel with ``seed`` (same shape)."""
    labelled, count = components(mask)
    keep = np.zeros(count + 1, bool)
    keep[np.unique(labelled[mask & seed])] = True
    keep[0] = False
    return keep[labelled]
