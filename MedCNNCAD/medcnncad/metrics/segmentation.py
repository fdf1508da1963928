"""Overlap, distance and lesion-detection metrics between a prediction and a reference.

All metrics are per structure (a label value or a region = set of label values) on
(K, J, I) arrays; distances are in mm using the voxel spacing, volumes in mL.

Definitions (TP, FP, FN, TN counted over the whole grid):

- ``dice`` = ``f1`` = 2TP / (2TP + FP + FN); ``jaccard`` = TP / (TP + FP + FN)
- ``precision`` = TP / (TP + FP); ``recall`` = ``sensitivity`` = TP / (TP + FN)
- ``specificity`` = TN / (TN + FP); ``accuracy`` = (TP + TN) / N
- ``volume_diff_ml`` = predicted volume - reference volume (signed)
- Surfaces are the voxels of a mask removed by one binary erosion (6-connected), as in
  MONAI. ``hd95_mm`` = max of the two directed 95th percentiles of surface-to-surface
  distances; ``assd_mm`` = mean of all surface distances in both directions (MONAI's
  ``compute_hausdorff_distance(percentile=95)`` and symmetric
  ``compute_average_surface_distance``). ``hausdorff_mm`` is the full voxel-set
  Hausdorff distance, as SimpleITK's ``HausdorffDistanceImageFilter``.
- Lesions (:func:`lesion_detection`): detection counts and ``lesionwise_dice`` under a matching
  rule (:data:`STRICT` any overlap, or :data:`BRATS_2023`); the BraTS 2023 lesion-wise Dice is
  ``lesions_brats2023.lesionwise_dice`` (see :class:`LesionDetection`).

Empty masks (documented and tested behaviour):

- both empty: dice, jaccard, f1, precision, recall = 1; distances = 0.
- one empty: dice, jaccard, f1 = 0; distances = ``None`` (undefined); the ratio whose
  denominator is 0 (precision when nothing is predicted, recall when the reference is
  empty) is ``None``; the other is 0.
- specificity is ``None`` when the reference covers the whole grid (no negatives).
``None`` is written as JSON ``null``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medcnncad.errors import InputError
from medcnncad.io.images import geometry_text, same_space
from medcnncad.lesions.components import components, nonzero_box

__all__ = ["dice_per_label", "StructureMetrics", "LesionDetection", "DetectionRule", "structure_metrics", "dice",
           "lesion_detection", "compute_metrics", "check_label_image", "check_same_grid", "structures_for_labels",
           "pooled_detection", "DETECTION_RULE", "STRICT", "BRATS_2023"]

DETECTION_RULE = ("26-connected components; a reference lesion is detected (TP) when at least one of its voxels "
                  "is predicted; a predicted lesion is a false positive when none of its voxels is in the reference")


@dataclass(frozen=True)
class DetectionRule:
    """How lesions are matched. ``merge_mm`` > 0: reference components closer than that (voxel
    centres within ``merge_mm`` of each other's dilation) form one lesion, a reference lesion is
    detected when a predicted voxel lies within ``merge_mm`` of it, and a predicted lesion is a
    false positive only when none of its voxels lies within ``merge_mm`` of the reference.
    Reference lesions of at most ``ignore_reference_ml`` count neither as detected nor missed."""

    name: str
    merge_mm: float = 0.0
    ignore_reference_ml: float = 0.0
    description: str = DETECTION_RULE


STRICT = DetectionRule("any-overlap")
""":data:`DETECTION_RULE`: every 26-connected reference component is a lesion; overlap by one voxel."""
BRATS_2023 = DetectionRule(
    "brats2023", merge_mm=3.0, ignore_reference_ml=0.05,
    description="BraTS 2023 glioma lesion-wise rule, in mm: 26-connected reference components within 3 mm of each "
                "other are one lesion; it is detected (TP) when a predicted voxel lies within 3 mm of it; a "
                "predicted lesion is a false positive when none of its voxels lies within 3 mm of the reference; "
                "reference lesions of 0.05 mL or less are neither detected nor missed")
"""The BraTS 2023 glioma lesion-wise rule (dilation 3 voxels of 1 mm, lesions <= 50 voxels ignored),
in millimetres so that it means the same on anisotropic grids."""


@dataclass
class LesionDetection:
    """Lesion-wise detection counts under a :class:`DetectionRule`, and the lesion-wise Dice.

    ``lesionwise_dice`` (the BraTS 2023 challenge's lesion-wise Dice under that rule's matching):
    each counted reference lesion scores the Dice between its voxels and the whole predicted
    components matched to it (0 when missed); the sum is divided by the counted reference lesions
    plus the false-positive predicted lesions; 1.0 when there are neither (e.g. nothing predicted
    where the reference holds only ignored lesions)."""

    reference_lesions: int
    predicted_lesions: int
    true_positive: int
    false_negative: int
    false_positive: int
    sensitivity: float | None
    ignored_reference_lesions: int = 0
    rule: str = STRICT.name
    lesionwise_dice: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class StructureMetrics:
    """Every metric for one label or region (see module docstring for definitions)."""

    dice: float
    jaccard: float
    precision: float | None
    recall: float | None
    sensitivity: float | None
    specificity: float | None
    accuracy: float
    f1: float
    hd95_mm: float | None
    assd_mm: float | None
    hausdorff_mm: float | None
    volume_diff_ml: float
    predicted_volume_ml: float
    reference_volume_ml: float
    tp: int
    fp: int
    fn: int
    tn: int
    lesions: LesionDetection | None = None
    lesions_brats2023: LesionDetection | None = None

    def to_json(self) -> dict:
        return asdict(self)


def _ratio(num: int, den: int, both_empty: bool) -> float | None:
    if den:
        return num / den
    return 1.0 if both_empty else None


def _crop_union(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to their union's bounding box plus a 1-voxel zero margin."""
    union = pred | ref
    box = ndimage.find_objects(union.astype(np.uint8))[0]
    pad = [(1, 1)] * pred.ndim
    return np.pad(pred[box], pad), np.pad(ref[box], pad)


def _edges(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _distances(pred: np.ndarray, ref: np.ndarray, spacing_kji: Sequence[float],
               reach_mm: float = 0.0) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """Surface and voxel-set distances (mm) for two non-empty masks on the same grid.

    One distance map at a time (each is float64 over the union's box), freed before the next.
    With ``reach_mm`` > 0 also returns (prediction, reference, the reference's reach: voxels
    within ``reach_mm`` of it) cropped to the union's box, from the same distance map.
    """
    pred, ref = _crop_union(pred, ref)
    edge_p, edge_r = _edges(pred), _edges(ref)
    directed = []
    crop = None
    for source, edge_s, target, edge_t in ((pred, edge_p, ref, edge_r), (ref, edge_r, pred, edge_p)):
        to_target_edge = ndimage.distance_transform_edt(~edge_t, sampling=spacing_kji)
        if reach_mm > 0 and target is ref:  # outside a set, its nearest voxel is a surface voxel (below)
            crop = (pred, ref, ref | (to_target_edge <= reach_mm))
        # Voxel-set Hausdorff: the voxel of a set nearest to an outside point is always one of its
        # surface voxels (a step from an interior voxel towards the point gets closer), so the
        # surface distance map gives it: 0 inside the other set, the distance to its surface outside.
        directed.append((to_target_edge[edge_s], float(to_target_edge[source & ~target].max(initial=0.0))))
        del to_target_edge
    (d_pr, h_pr), (d_rp, h_rp) = directed
    hd95 = max(float(np.percentile(d_pr, 95)), float(np.percentile(d_rp, 95)))
    assd = float(np.concatenate([d_pr, d_rp]).mean())
    return {"hd95_mm": hd95, "assd_mm": assd, "hausdorff_mm": max(h_pr, h_rp)}, crop


def lesion_detection(pred: np.ndarray, ref: np.ndarray, rule: DetectionRule = STRICT,
                     spacing_xyz: Sequence[float] = (1.0, 1.0, 1.0),
                     reach: np.ndarray | None = None) -> LesionDetection:
    """Lesion-wise detection of boolean (K, J, I) masks under ``rule``; ``spacing_xyz`` in mm.

    ``reach``: the voxels within ``rule.merge_mm`` of ``ref``, when already known (same grid)."""
    pred_cc, n_pred = components(pred)
    if rule.merge_mm > 0 and ref.any():
        if reach is None:
            reach = ndimage.distance_transform_edt(~ref, sampling=tuple(spacing_xyz)[::-1]) <= rule.merge_mm
        ref_cc, n_ref = components(reach)  # merged lesions; each one's reach is its own component
    else:
        reach = ref
        ref_cc, n_ref = components(ref)
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    ref_voxels = np.bincount(ref_cc[ref], minlength=n_ref + 1)  # reference voxels only, not the reach
    counted = ref_voxels * voxel_ml > rule.ignore_reference_ml
    counted[0] = False
    hit = np.zeros(n_ref + 1, bool)
    hit[ref_cc[pred]] = True
    detected, n_counted = int((hit & counted).sum()), int(counted.sum())
    touching = pred & reach  # predicted voxels within reach of a reference lesion
    n_false = n_pred - len(np.unique(pred_cc[touching]))
    lesion_dice = _lesion_dice(pred, ref, pred_cc, n_pred, ref_cc, ref_voxels, touching)
    score = float(lesion_dice[counted].sum()) / (n_counted + n_false) if n_counted + n_false else 1.0
    return LesionDetection(n_counted, n_pred, detected, n_counted - detected, n_false,
                           detected / n_counted if n_counted else None, n_ref - n_counted, rule.name, score)


def _lesion_dice(pred: np.ndarray, ref: np.ndarray, pred_cc: np.ndarray, n_pred: int, ref_cc: np.ndarray,
                 ref_voxels: np.ndarray, touching: np.ndarray) -> np.ndarray:
    """Dice of each reference lesion (index 1..n of ``ref_cc``; ``ref_voxels``: its voxel counts) with the
    union of the whole predicted components that reach it (``touching``: predicted voxels in a lesion's
    reach). A predicted voxel inside a lesion belongs to such a component, so the overlap is the lesion's
    predicted voxels."""
    n_ref = len(ref_voxels) - 1
    if not n_ref or not touching.any():
        return np.zeros(n_ref + 1)
    pairs = np.unique(np.stack([ref_cc[touching], pred_cc[touching]]), axis=1)  # (lesion, component) pairs
    component_voxels = np.bincount(pred_cc.ravel(), minlength=n_pred + 1)
    matched_voxels = np.bincount(pairs[0], weights=component_voxels[pairs[1]], minlength=n_ref + 1)
    overlap = np.bincount(ref_cc[pred & ref], minlength=n_ref + 1)
    total = ref_voxels + matched_voxels
    return np.divide(2.0 * overlap, total, out=np.zeros(n_ref + 1), where=total > 0)


def detection_by_content(pred: np.ndarray, ref: np.ndarray, inner: np.ndarray) -> dict[str, int]:
    """Any-overlap detection of ``ref``'s lesions, split by whether a lesion holds ``inner`` voxels.

    Boolean (K, J, I) masks; ``inner`` is a nested reference structure (e.g. the tumor core inside
    the whole tumor). Returns reference and detected counts for lesions with and without it, the
    split of :data:`DETECTION_RULE`'s sensitivity (a whole-tumor lesion without core is oedema alone).
    """
    ref_cc, n_ref = components(ref)
    holds = np.zeros(n_ref + 1, bool)
    holds[ref_cc[inner & ref]] = True
    hit = np.zeros(n_ref + 1, bool)
    hit[ref_cc[pred & ref]] = True
    holds[0] = hit[0] = False
    without = ~holds
    without[0] = False
    return {"with_reference": int(holds.sum()), "with_detected": int((holds & hit).sum()),
            "without_reference": int(without.sum()), "without_detected": int((without & hit).sum())}


def pooled_detection(lesions: Sequence[Mapping[str, Any]], suffix: str = "") -> dict[str, float | None]:
    """Over cases (``LesionDetection.to_json()`` dicts): detected / all reference lesions, false
    positives per case, and the mean of the cases' lesion-wise Dice (over every case, tumor-free ones
    included, as the BraTS 2023 ranking averages it; cases without the value are left out), as
    ``lesion_sensitivity{suffix}``, ``false_positive_lesions_per_case{suffix}`` and
    ``lesionwise_dice_mean{suffix}``."""
    n_ref = sum(x["reference_lesions"] for x in lesions)
    scores = [x["lesionwise_dice"] for x in lesions if x.get("lesionwise_dice") is not None]
    return {f"lesion_sensitivity{suffix}": sum(x["true_positive"] for x in lesions) / n_ref if n_ref else None,
            f"false_positive_lesions_per_case{suffix}": (sum(x["false_positive"] for x in lesions) / len(lesions)
                                                         if lesions else None),
            f"lesionwise_dice_mean{suffix}": float(np.mean(scores)) if scores else None}


def dice(pred: np.ndarray, ref: np.ndarray, if_reference_empty: float | None = None) -> float:
    """Dice of two boolean masks of one shape, as :func:`structure_metrics` gives it (1.0 when both are
    empty) without its distances and lesion counts. ``if_reference_empty``: returned instead whenever
    ``ref`` is empty (e.g. NaN, so that the case does not count in a mean over cases with the structure)."""
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    n_ref = int(np.count_nonzero(ref))
    if not n_ref and if_reference_empty is not None:
        return if_reference_empty
    total = int(np.count_nonzero(pred)) + n_ref
    return 2 * int(np.count_nonzero(pred & ref)) / total if total else 1.0


def dice_per_label(pred: np.ndarray, ref: np.ndarray, values: Sequence[int]) -> dict[str, float]:
    """:func:`dice` of each label value between two label maps of one shape (1.0 where neither has it),
    keyed by the value as text (JSON-ready)."""
    return {str(v): dice(pred == v, ref == v) for v in values}


def structure_metrics(pred: np.ndarray, ref: np.ndarray, spacing_xyz: Sequence[float],
                      with_lesions: bool = True, total_voxels: int | None = None) -> StructureMetrics:
    """All metrics for two boolean (K, J, I) masks; ``spacing_xyz`` in mm (x, y, z).

    ``total_voxels``: size of the whole grid when ``pred``/``ref`` are a crop holding every
    foreground voxel (true negatives outside the crop count too); default ``pred.size``.
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise InputError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing_kji = tuple(float(s) for s in spacing_xyz)[::-1]
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    tp = int(np.count_nonzero(pred & ref))
    fp, fn = n_pred - tp, n_ref - tp
    total = pred.size if total_voxels is None else int(total_voxels)
    tn = total - tp - fp - fn
    both_empty = n_pred == 0 and n_ref == 0
    dice = _ratio(2 * tp, 2 * tp + fp + fn, both_empty)
    brats = None
    if n_pred and n_ref:
        found, crop = _distances(pred, ref, spacing_kji, BRATS_2023.merge_mm if with_lesions else 0.0)
        dist: dict[str, float | None] = dict(found)
        if crop is not None:  # the reference's reach comes from the distance map just computed
            brats = lesion_detection(crop[0], crop[1], BRATS_2023, spacing_xyz, reach=crop[2])
    else:
        value = 0.0 if both_empty else None
        dist = {"hd95_mm": value, "assd_mm": value, "hausdorff_mm": value}
    recall = _ratio(tp, tp + fn, both_empty)
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    return StructureMetrics(
        dice=dice, jaccard=_ratio(tp, tp + fp + fn, both_empty),  # type: ignore[arg-type]
        precision=_ratio(tp, tp + fp, both_empty), recall=recall, sensitivity=recall,
        specificity=_ratio(tn, tn + fp, False), accuracy=(tp + tn) / total, f1=dice,  # type: ignore[arg-type]
        hd95_mm=dist["hd95_mm"], assd_mm=dist["assd_mm"], hausdorff_mm=dist["hausdorff_mm"],
        volume_diff_ml=(n_pred - n_ref) * voxel_ml, predicted_volume_ml=n_pred * voxel_ml,
        reference_volume_ml=n_ref * voxel_ml, tp=tp, fp=fp, fn=fn, tn=tn,
        lesions=lesion_detection(pred, ref) if with_lesions else None,
        lesions_brats2023=None if not with_lesions else
        brats if brats is not None else lesion_detection(pred, ref, BRATS_2023, spacing_xyz))


def structures_for_labels(values: Sequence[int], regions: Mapping[str, Sequence[int]] | None = None,
                          names: Mapping[int, str] | None = None) -> dict[str, tuple[int, ...]]:
    """Structure name -> label values: one per label (named by ``names`` or ``label_<v>``), then regions."""
    names = names or {}
    out: dict[str, tuple[int, ...]] = {names.get(v, f"label_{v}"): (int(v),) for v in values}
    for name, labels in (regions or {}).items():
        out[name] = tuple(int(v) for v in labels)
    return out


def _foreground_box(pred: np.ndarray, ref: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of all non-zero voxels of either label map (None when both are empty)."""
    return nonzero_box((pred != 0) | (ref != 0))


def _mask(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    return labels == values[0] if len(values) == 1 else np.isin(labels, values)


def compute_metrics(pred: np.ndarray, ref: np.ndarray, spacing_xyz: Sequence[float],
                    structures: Mapping[str, Sequence[int]]) -> dict[str, StructureMetrics]:
    """Metrics for every structure (name -> non-zero label values) of two (K, J, I) label maps.

    Both maps are cropped once to the bounding box of their foreground; every count,
    component and distance is computed on that crop (true negatives outside it are added).

    Args:
        pred: predicted label map, integer (K, J, I).
        ref: reference label map on the same grid.
        spacing_xyz: voxel spacing in mm, (x, y, z) = (I, J, K) order, as SimpleITK's ``GetSpacing``.
        structures: structure name -> the label values it unites, e.g. ``{"WT": (1, 2, 4)}``.

    Returns:
        Structure name -> :class:`StructureMetrics` (Dice, Jaccard, HD95 and ASSD in mm, volumes in mL,
        lesion-wise detection under the strict and BraTS 2023 rules).

    Raises:
        InputError: the maps differ in shape.
    """
    if pred.shape != ref.shape:
        raise InputError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if any(0 in tuple(values) for values in structures.values()):  # background as a structure: no crop
        box: tuple[slice, ...] | None = tuple(slice(0, n) for n in pred.shape)
    else:
        box = _foreground_box(pred, ref)
    if box is None:
        box = tuple(slice(0, 1) for _ in pred.shape)  # both empty: any crop is all background
    p, r = pred[box], ref[box]
    return {name: structure_metrics(_mask(p, tuple(values)), _mask(r, tuple(values)), spacing_xyz,
                                    total_voxels=pred.size)
            for name, values in structures.items()}


def check_same_grid(image: sitk.Image, path: str, reference: sitk.Image, reference_path: str = "reference") -> None:
    """Refuse ``image`` when its grid is not ``reference``'s, with both geometries in the message."""
    if not same_space(image, reference):
        raise InputError(f"{path}: grid differs from {reference_path} ({path}: {geometry_text(image)}; "
                         f"{reference_path}: {geometry_text(reference)})")


def check_label_image(image: sitk.Image, path: str, reference: sitk.Image | None = None,
                      reference_path: str = "reference") -> np.ndarray:
    """Validate a label map image and return it as an integer (K, J, I) array.

    Raises:
        InputError: non-integer or negative values, or (when ``reference`` is given) a
            different grid, with both geometries in the message.
    """
    if reference is not None:
        check_same_grid(image, path, reference, reference_path)
    array = sitk.GetArrayFromImage(image)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise InputError(f"{path}: label map has non-integer values")
    if array.min() < 0 or array.max() > 65535:
        raise InputError(f"{path}: label values must be between 0 and 65535, got {array.min()}..{array.max()}")
    return array.astype(np.uint16 if array.max() > 255 else np.uint8)
