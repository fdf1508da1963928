"""Lesion classification: a 3D CNN on a patch centred on each lesion, with calibrated probabilities.

For each lesion (a connected component of the manifest's ``lesion_structure``, e.g. the
whole tumor), every input sequence is resampled (linear) onto a patch grid of
``patch_size`` voxels at ``patch_spacing_mm`` centred on the lesion's centroid, with axes
along LPS; the lesion's own mask (nearest neighbour) is an optional last channel. Each
sequence is z-scored over its non-zero patch voxels; an absent sequence stays zero.
Patch arrays are (C, K, J, I) = (channel, z, y, x), as SimpleITK returns them.

Probabilities are ``softmax(logits / T)`` with the temperature ``T`` fitted on a
validation split (:func:`fit_temperature`). Uncertainty, when asked for, is the standard
deviation of the positive-class probability over test-time flips (8 flips cost 8x the
classifier's time, which is milliseconds per lesion).

Case rules (:data:`CASE_GRADE_RULE`): the case's probability of the positive class
(e.g. high grade) is the largest lesion probability - a case is as high-grade as its
highest-grade lesion.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from medcnncad.errors import InputError, ModelError
from medcnncad.lesions.components import components
from medcnncad.models.grade_classifier import LoadedClassifier, cached_classifier, load_classifier
from medcnncad.models.manifest import ClassifierManifest

__all__ = ["LesionClass", "LoadedClassifier", "load_classifier", "lesion_patch", "patch_from_arrays",
           "normalise_patch", "classify_lesions", "fit_temperature", "calibrated_probabilities",
           "case_grade", "CASE_GRADE_RULE", "cached_classifier", "FLIPS"]

CASE_GRADE_RULE = ("case probability of the positive class = the largest probability of that class among the "
                   "case's lesions (a case is as high-grade as its highest-grade lesion); no lesion: not applicable")
FLIPS: tuple[tuple[int, ...], ...] = tuple(
    tuple(a for a, on in zip((1, 2, 3), bits) if on) for bits in itertools.product((0, 1), repeat=3))


@dataclass
class LesionClass:
    """Classifier output for one lesion (``lesion_id`` = the lesion's id within its structure)."""

    lesion_id: int
    probabilities: dict[str, float]
    predicted: str
    positive_probability: float
    uncertainty: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


def _patch_grid(center_lps: Sequence[float] | np.ndarray, size: Sequence[int], spacing: Sequence[float]) -> sitk.Image:
    """An empty LPS-aligned grid of ``size`` (x, y, z) voxels centred on ``center_lps`` (mm)."""
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing([float(s) for s in spacing])
    half = (np.asarray(size, float) - 1) / 2 * np.asarray(spacing, float)
    grid.SetOrigin([float(v) for v in np.asarray(center_lps, float) - half])
    return grid


def normalise_patch(patch: np.ndarray) -> np.ndarray:
    """Z-score each channel over its non-zero voxels (all-zero channels stay zero). (C, ...) float32."""
    out = np.zeros_like(patch, dtype=np.float32)
    for c, channel in enumerate(patch):
        nonzero = channel != 0
        if nonzero.sum() > 1:
            values = channel[nonzero]
            out[c][nonzero] = (values - values.mean()) / max(float(values.std()), 1e-6)
    return out


def lesion_patch(images: Sequence[sitk.Image | None], lesion_mask: sitk.Image | None,
                 center_lps: Sequence[float] | np.ndarray, manifest: ClassifierManifest,
                 normalise: bool = True) -> np.ndarray:
    """The network input for one lesion: (C, K, J, I) float32, z-scored unless ``normalise`` is
    False (a bundle's own preprocessing does it); ``None`` images are zeros."""
    grid = _patch_grid(center_lps, manifest.patch_size, manifest.patch_spacing_mm)
    shape = tuple(reversed(manifest.patch_size))
    channels = []
    for image in images:
        if image is None:
            channels.append(np.zeros(shape, np.float32))
            continue
        resampled = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        channels.append(sitk.GetArrayFromImage(resampled))
    patch = normalise_patch(np.stack(channels)) if normalise else np.stack(channels).astype(np.float32)
    if manifest.mask_channel:
        if lesion_mask is None:
            raise InputError(f"classifier {manifest.id} needs the lesion mask as its last channel")
        mask = sitk.Resample(lesion_mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        patch = np.concatenate([patch, (sitk.GetArrayFromImage(mask) > 0).astype(np.float32)[None]])
    return patch


def patch_from_arrays(images: Mapping[str, sitk.Image], mask_kji: np.ndarray, reference: sitk.Image,
                      manifest: ClassifierManifest, normalise: bool = True) -> np.ndarray:
    """:func:`lesion_patch` for a lesion given as a boolean KJI mask on ``reference``'s grid."""
    idx = np.argwhere(mask_kji)
    if len(idx) == 0:
        raise InputError("empty lesion mask")
    center_kji = idx.mean(0)
    center_lps = reference.TransformContinuousIndexToPhysicalPoint([float(v) for v in center_kji[::-1]])
    mask = sitk.GetImageFromArray(mask_kji.astype(np.uint8))
    mask.CopyInformation(reference)
    return lesion_patch([images.get(c.name) for c in manifest.inputs], mask, center_lps, manifest, normalise)


def calibrated_probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(logits / temperature)`` over the last axis."""
    return torch.softmax(logits / float(temperature), dim=-1)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood of ``labels`` (N,) under ``logits`` (N, K).

    Bounded 1-D search over log T in [-3, 3] (T from 0.05 to 20), the standard
    temperature scaling of Guo et al. (2017).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


def _logits(network: torch.nn.Module, patches: torch.Tensor, tta: bool) -> torch.Tensor:
    """(F, N, K) logits: F = 1, or 8 flip combinations of the three spatial axes."""
    flips = FLIPS if tta else ((),)
    with torch.inference_mode():  # FLIPS name the spatial dims of one (C, K, J, I) patch; +1 for the batch
        return torch.stack([network(torch.flip(patches, [d + 1 for d in f]) if f else patches) for f in flips])


def classify_patches(loaded: LoadedClassifier, patches: np.ndarray,
                     tta: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Calibrated probabilities (N, K) of (N, C, K, J, I) patches and, with ``tta``, the standard
    deviation (N,) of the positive-class probability over the 8 flips (else ``None``)."""
    m = loaded.manifest
    logits = _logits(loaded.network, torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32)), tta)
    probs = calibrated_probabilities(logits, m.temperature)
    mean = probs.mean(0).numpy()
    spread = probs[..., m.positive_index].std(0, unbiased=False).numpy() if tta else None
    return mean, spread


def classify_lesions(loaded: LoadedClassifier, images: Mapping[str, sitk.Image], label_map: np.ndarray,
                     reference: sitk.Image, structure_values: Sequence[int], tta: bool = False) -> list[LesionClass]:
    """Classify every connected component of ``structure_values`` in ``label_map`` (KJI on ``reference``)
    of at least the manifest's ``min_lesion_ml``.

    Lesion ids follow :func:`medcnncad.lesions.components.components` order (the same ids the lesion
    table uses for that structure).
    """
    m = loaded.manifest
    labelled, count = components(np.isin(label_map, list(structure_values)))
    voxel_ml = float(np.prod(reference.GetSpacing())) / 1000.0
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)[1:] * voxel_ml
    ids = [i + 1 for i in range(count) if sizes[i] >= m.min_lesion_ml]  # small fragments are not classified
    if not ids:
        return []
    raw = loaded.preprocess is not None
    patches = [patch_from_arrays(images, labelled == i, reference, m, normalise=not raw) for i in ids]
    if raw:  # a bundle: MONAI's (C, I, J, K) order, its own preprocessing
        assert loaded.preprocess is not None  # raw
        patches = [np.asarray(loaded.preprocess(torch.from_numpy(np.ascontiguousarray(p.transpose(0, 3, 2, 1)))),
                              dtype=np.float32) for p in patches]
    probs, spread = classify_patches(loaded, np.stack(patches), tta)
    out = []
    for i, (lesion_id, p) in enumerate(zip(ids, probs)):
        positive = float(p[m.positive_index])
        predicted = m.positive_class if positive >= m.threshold else \
            max((c for c in m.class_names if c != m.positive_class), key=lambda c: p[m.class_names.index(c)])
        out.append(LesionClass(lesion_id, {c: float(v) for c, v in zip(m.class_names, p)}, predicted, positive,
                               None if spread is None else float(spread[i])))
    return out


def case_grade(lesions: Sequence[LesionClass]) -> float | None:
    """Case probability of the positive class under :data:`CASE_GRADE_RULE` (None without lesions)."""
    return max((x.positive_probability for x in lesions), default=None)


def attach_classification(result, loaded: LoadedClassifier, tta: bool | None = None) -> dict:
    """Grade the lesions of a :class:`~medcnncad.inference.result.SegmentationResult` in place.

    Args:
        result: a segmentation run; its ``images`` (K, J, I) feed the lesion patches.
        loaded: from :func:`medcnncad.models.grade_classifier.load_classifier`; its ``lesion_structure``
            must be a label or region of the segmentation model.
        tta: flip test-time augmentation of the classifier (8 flips); default: as the segmentation run did.

    Returns:
        The summary also stored as ``result.classification``: model, calibration, operating point, the
        lesions' class probabilities, and the case probability of the positive class with its rule. Each
        lesion of the structure gets ``class_probabilities``, ``predicted_class`` (and
        ``class_uncertainty`` with ``tta``).

    Raises:
        ModelError: the segmentation model does not produce the classifier's structure.
    """
    if tta is None:
        tta = result.tta_passes > 1

    m = loaded.manifest
    structures = result.manifest.structures()
    if m.lesion_structure not in structures:
        raise ModelError(f"classifier {m.id} classifies {m.lesion_structure!r} lesions, which segmentation model "
                         f"{result.manifest.id} does not produce (it has {sorted(structures)})")
    t0 = time.perf_counter()
    classes = classify_lesions(loaded, result.images, result.label_map, result.reference,
                               structures[m.lesion_structure], tta=tta)
    by_id = {c.lesion_id: c for c in classes}
    for lesion in result.lesions:
        if lesion.structure == m.lesion_structure and lesion.id in by_id:
            c = by_id[lesion.id]
            lesion.class_probabilities = c.probabilities
            lesion.predicted_class = c.predicted
            lesion.class_uncertainty = c.uncertainty
    grade = case_grade(classes)
    result.timings["classification"] = time.perf_counter() - t0
    result.classification = {
        "model": {"id": m.id, "name": m.name, "version": m.version, "weights_sha256": m.weights_sha256,
                  "trained_on": m.trained_on},
        "structure": m.lesion_structure, "classes": m.class_names, "positive_class": m.positive_class,
        "calibration": {"method": m.calibration.get("method", "none"), "temperature": m.temperature},
        "operating_point": {"threshold": m.threshold, "rule": m.operating_point.get("rule", "")},
        "missing_channels": [c.name for c in m.inputs if c.name not in result.images],
        "tta": bool(tta),
        "lesions": [c.to_json() for c in classes],
        "case": {f"probability_{m.positive_class}": grade,
                 "predicted": None if grade is None else (m.positive_class if grade >= m.threshold else
                                                          next(c for c in m.class_names if c != m.positive_class)),
                 "rule": CASE_GRADE_RULE},
    }
    return result.classification
