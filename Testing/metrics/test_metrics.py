"""Metrics against hand-computed values, SimpleITK and MONAI (anisotropic spacing)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import make_image
from monai.metrics import DiceMetric, compute_average_surface_distance, compute_hausdorff_distance
from scipy import ndimage

from medcnncad.metrics.segmentation import (
    BRATS_2023,
    STRICT,
    DetectionRule,
    compute_metrics,
    lesion_detection,
    pooled_detection,
    structure_metrics,
)

SPACING_XYZ = (0.8, 1.1, 2.5)


def _random_masks(seed: int, shape=(24, 30, 28)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) > 0.05
    b = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) > 0.05
    b |= a & (rng.random(shape) < 0.5)  # correlated, as a prediction and its reference are
    return a, b


def _monai(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    p = torch.from_numpy(pred[None, None].astype(np.float32))
    r = torch.from_numpy(ref[None, None].astype(np.float32))
    spacing = SPACING_XYZ[::-1]  # arrays are (K, J, I)
    dice = DiceMetric(include_background=True, reduction="none")(p, r)
    return {
        "dice": float(dice[0, 0]),
        "hd95_mm": float(compute_hausdorff_distance(p, r, include_background=True, percentile=95,
                                                    spacing=spacing)[0, 0]),
        "assd_mm": float(compute_average_surface_distance(p, r, include_background=True, symmetric=True,
                                                          spacing=spacing)[0, 0]),
    }


def _sitk(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    p = make_image(pred.astype(np.uint8), SPACING_XYZ)
    r = make_image(ref.astype(np.uint8), SPACING_XYZ)
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(p, r)  # source = prediction, target = reference
    hd = sitk.HausdorffDistanceImageFilter()
    hd.Execute(r, p)
    return {"dice": overlap.GetDiceCoefficient(), "jaccard": overlap.GetJaccardCoefficient(),
            "fnr": overlap.GetFalseNegativeError(), "fpr": overlap.GetFalsePositiveError(),
            "volume_similarity": overlap.GetVolumeSimilarity(), "hausdorff_mm": hd.GetHausdorffDistance()}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_equal_to_monai_and_simpleitk_on_random_masks(seed):
    pred, ref = _random_masks(seed)
    m = structure_metrics(pred, ref, SPACING_XYZ)
    mon = _monai(pred, ref)
    itk = _sitk(pred, ref)
    assert m.dice == pytest.approx(mon["dice"], abs=1e-6)
    assert m.dice == pytest.approx(itk["dice"], abs=1e-6)
    assert m.jaccard == pytest.approx(itk["jaccard"], abs=1e-6)
    assert 1 - m.recall == pytest.approx(itk["fnr"], abs=1e-6)
    # ITK's false positive error is FP / (FP + TN) = 1 - specificity
    assert 1 - m.specificity == pytest.approx(itk["fpr"], abs=1e-6)
    vs = 2 * (m.predicted_volume_ml - m.reference_volume_ml) / (m.predicted_volume_ml + m.reference_volume_ml)
    assert vs == pytest.approx(itk["volume_similarity"], abs=1e-6)
    # MONAI computes distances in float32: equal to 1e-6 relative
    assert m.hd95_mm == pytest.approx(mon["hd95_mm"], rel=1e-6)
    assert m.assd_mm == pytest.approx(mon["assd_mm"], rel=1e-6)
    assert m.hausdorff_mm == pytest.approx(itk["hausdorff_mm"], abs=1e-6)
    assert m.f1 == m.dice
    assert m.sensitivity == m.recall


def test_hand_built_cubes_anisotropic():
    # reference: 4x4x4 cube; prediction: same cube shifted by one voxel along I (x)
    ref = np.zeros((10, 10, 10), bool)
    ref[3:7, 3:7, 3:7] = True
    pred = np.roll(ref, 1, axis=2)
    m = structure_metrics(pred, ref, SPACING_XYZ)
    # overlap 4x4x3 = 48 voxels of 64 each: TP 48, FP 16, FN 16
    assert (m.tp, m.fp, m.fn, m.tn) == (48, 16, 16, 1000 - 80)
    assert m.dice == pytest.approx(96 / 128)
    assert m.jaccard == pytest.approx(48 / 80)
    assert m.precision == pytest.approx(0.75) and m.recall == pytest.approx(0.75)
    assert m.specificity == pytest.approx(920 / 936)
    assert m.accuracy == pytest.approx(968 / 1000)
    assert m.volume_diff_ml == pytest.approx(0.0)
    assert m.predicted_volume_ml == pytest.approx(64 * 0.8 * 1.1 * 2.5 / 1000)
    # shift by one voxel along x (0.8 mm): every voxel of one set is within 0.8 mm of the other
    assert m.hausdorff_mm == pytest.approx(0.8)


def test_empty_conventions():
    empty = np.zeros((5, 6, 7), bool)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = True
    both = structure_metrics(empty, empty, SPACING_XYZ)
    assert both.dice == 1.0 and both.precision == 1.0 and both.recall == 1.0
    assert both.hd95_mm == 0.0 and both.assd_mm == 0.0 and both.specificity == 1.0
    missed = structure_metrics(empty, full, SPACING_XYZ)  # nothing predicted
    assert missed.dice == 0.0 and missed.recall == 0.0 and missed.precision is None
    assert missed.hd95_mm is None and missed.volume_diff_ml == pytest.approx(-8 * 2.2 / 1000)
    spurious = structure_metrics(full, empty, SPACING_XYZ)  # nothing to find
    assert spurious.dice == 0.0 and spurious.precision == 0.0 and spurious.recall is None
    whole = np.ones((2, 2, 2), bool)
    assert structure_metrics(whole, whole, SPACING_XYZ).specificity is None


def test_lesion_detection_rule():
    ref = np.zeros((20, 20, 20), bool)
    pred = np.zeros_like(ref)
    ref[2:5, 2:5, 2:5] = True       # lesion A: found
    ref[10:13, 10:13, 10:13] = True  # lesion B: missed
    pred[4:6, 4:6, 4:6] = True       # touches A by one corner voxel block
    pred[15:18, 2:4, 2:4] = True     # false positive
    d = lesion_detection(pred, ref)
    assert (d.reference_lesions, d.predicted_lesions) == (2, 2)
    assert (d.true_positive, d.false_negative, d.false_positive) == (1, 1, 1)
    assert d.sensitivity == 0.5


def test_detection_split_by_what_the_reference_lesion_holds():
    from medcnncad.metrics.segmentation import detection_by_content

    ref = np.zeros((20, 20, 20), bool)
    inner = np.zeros_like(ref)
    pred = np.zeros_like(ref)
    ref[2:8, 2:8, 2:8] = True           # tumor with a core: found
    inner[4:6, 4:6, 4:6] = True
    ref[12:14, 2:4, 2:4] = True         # oedema-only island: missed
    ref[2:4, 12:14, 12:14] = True       # oedema-only island: found
    ref[14:18, 14:18, 14:18] = True     # second tumor with a core: missed
    inner[15, 15, 15] = True
    pred[7:9, 7:9, 7:9] = True          # touches the first tumor's corner, outside its core
    pred[3, 13, 13] = True
    pred[0, 19, 0] = True               # a false positive changes nothing here
    assert detection_by_content(pred, ref, inner) == {"with_reference": 2, "with_detected": 1,
                                                      "without_reference": 2, "without_detected": 1}
    d = lesion_detection(pred, ref)
    assert (d.reference_lesions, d.true_positive) == (4, 2)  # the split adds up to the plain rule


def _satellite_scene() -> tuple[np.ndarray, np.ndarray]:
    """1 mm grid: main tumor with a satellite 3 mm away, a far small lesion, two predicted specks."""
    ref = np.zeros((40, 40, 40), bool)
    pred = np.zeros_like(ref)
    ref[10:20, 10:20, 10:20] = True    # main: 1000 voxels = 1 mL, found
    ref[10:12, 10:12, 22:24] = True    # satellite: 8 voxels, centres 3 mm from the main one (x 19 -> 22)
    ref[30:34, 30:34, 30:34] = True    # far lesion: 64 voxels = 0.064 mL, missed
    pred[10:20, 10:20, 10:20] = True
    pred[25:27, 10:12, 10:12] = True   # 6 mm from the main tumor (z 19 -> 25): false positive in both rules
    pred[10:12, 21:23, 10:12] = True   # 2 mm from it (y 19 -> 21): false positive only when overlap is required
    return pred, ref


def test_brats2023_rule_merges_satellites_and_matches_within_3_mm():
    pred, ref = _satellite_scene()
    strict = lesion_detection(pred, ref)
    assert (strict.reference_lesions, strict.true_positive, strict.false_positive) == (3, 1, 2)
    assert strict.sensitivity == pytest.approx(1 / 3) and strict.rule == STRICT.name
    brats = lesion_detection(pred, ref, BRATS_2023)
    # main + satellite are one lesion (found), the far one is missed; the speck at 2 mm is matched
    assert (brats.reference_lesions, brats.true_positive, brats.false_negative) == (2, 1, 1)
    assert (brats.predicted_lesions, brats.false_positive, brats.ignored_reference_lesions) == (3, 1, 0)
    assert brats.sensitivity == 0.5


def test_brats2023_rule_ignores_small_reference_lesions_by_volume():
    pred, ref = _satellite_scene()
    ref[30:34, 30:34, 30:34] = False
    ref[30:33, 30:33, 30:33] = True    # 27 voxels = 0.027 mL <= 0.05 mL: neither found nor missed
    d = lesion_detection(pred, ref, BRATS_2023)
    assert (d.reference_lesions, d.ignored_reference_lesions, d.sensitivity) == (1, 1, 1.0)
    # the same lesion on a 2 mm grid is 0.216 mL and counts (missed)
    d2 = lesion_detection(pred, ref, BRATS_2023, spacing_xyz=(2.0, 2.0, 2.0))
    assert (d2.reference_lesions, d2.ignored_reference_lesions, d2.true_positive) == (2, 0, 1)


def test_detection_merge_distance_is_in_mm_on_anisotropic_grids():
    ref = np.zeros((12, 8, 8), bool)
    ref[2, 2:5, 2:5] = True
    ref[4, 2:5, 2:5] = True            # two slices further on: 2 mm at 1 mm slices, 10 mm at 5 mm slices
    pred = np.zeros_like(ref)
    pred[2, 3, 3] = True
    rule = DetectionRule("test", merge_mm=3.0)
    iso = lesion_detection(pred, ref, rule, spacing_xyz=(1.0, 1.0, 1.0))
    thick = lesion_detection(pred, ref, rule, spacing_xyz=(1.0, 1.0, 5.0))
    assert (iso.reference_lesions, iso.sensitivity) == (1, 1.0)
    assert (thick.reference_lesions, thick.sensitivity) == (2, 0.5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_reach_from_the_surface_distance_map_equals_its_own_distance_transform(seed):
    rng = np.random.default_rng(seed)
    blobs = [ndimage.gaussian_filter(rng.standard_normal((24, 30, 28)), 2.0) > 0.12 for _ in range(2)]
    ref, pred = blobs[0], blobs[1] | (blobs[0] & (rng.random(blobs[0].shape) < 0.5))  # scattered lesions
    from_metrics = structure_metrics(pred, ref, SPACING_XYZ).lesions_brats2023
    alone = lesion_detection(pred, ref, BRATS_2023, SPACING_XYZ)
    assert from_metrics == alone
    assert alone.reference_lesions > 2 and alone.ignored_reference_lesions > 0 and alone.false_positive > 5


def test_structure_metrics_reports_both_detection_rules():
    pred, ref = _satellite_scene()
    m = structure_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert m.lesions.sensitivity == pytest.approx(1 / 3) and m.lesions_brats2023.sensitivity == 0.5
    assert m.to_json()["lesions_brats2023"]["rule"] == "brats2023"


def test_pooled_detection_counts_lesions_not_cases():
    cases = [{"reference_lesions": 3, "true_positive": 1, "false_positive": 2},
             {"reference_lesions": 1, "true_positive": 1, "false_positive": 0},
             {"reference_lesions": 0, "true_positive": 0, "false_positive": 1}]
    assert pooled_detection(cases, "_x") == {"lesion_sensitivity_x": 0.5, "false_positive_lesions_per_case_x": 1.0,
                                             "lesionwise_dice_mean_x": None}  # reports written before the value
    for case, score in zip(cases, (0.25, 1.0, 0.0)):
        case["lesionwise_dice"] = score
    assert pooled_detection(cases)["lesionwise_dice_mean"] == pytest.approx(1.25 / 3)


def test_compute_metrics_labels_and_regions():
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[2:6, 2:6, 2:6] = 2
    ref[3:5, 3:5, 3:5] = 4
    pred = ref.copy()
    pred[3:5, 3:5, 3:5] = 1  # enhancing predicted as necrosis
    out = compute_metrics(pred, ref, (1, 1, 1), {"NCR": (1,), "ED": (2,), "ET": (4,), "WT": (1, 2, 4), "TC": (1, 4)})
    assert out["WT"].dice == 1.0 and out["TC"].dice == 1.0 and out["ED"].dice == 1.0
    assert out["ET"].dice == 0.0 and out["NCR"].dice == 0.0
    assert out["ET"].recall == 0.0 and out["NCR"].precision == 0.0


def test_dice_matches_structure_metrics_and_its_empty_rules():
    from medcnncad.metrics.segmentation import dice

    rng = np.random.default_rng(3)
    for _ in range(5):
        pred, ref = rng.random((6, 7, 8)) < 0.3, rng.random((6, 7, 8)) < 0.3
        assert dice(pred, ref) == pytest.approx(structure_metrics(pred, ref, SPACING_XYZ).dice)
    pred = np.zeros((4, 4, 4), bool)
    ref = pred.copy()
    ref[1, 1, 1:3] = pred[1, 1, 2:4] = True  # 1 voxel shared of 2 + 2
    assert dice(pred, ref) == 0.5
    empty = np.zeros_like(pred)
    assert dice(empty, empty) == 1.0 and dice(pred, empty) == 0.0  # as structure_metrics counts them
    assert np.isnan(dice(pred, empty, float("nan"))) and dice(empty, ref, float("nan")) == 0.0


def _lesionwise_scene() -> tuple[np.ndarray, np.ndarray]:
    """1 mm grid: lesion A (64 voxels) found by a component shifted one voxel (overlap 48 of 64 + 64),
    lesion B (64 voxels) missed, a 1-voxel reference lesion C (0.001 mL) nothing near, one 8-voxel
    false positive far from everything."""
    ref = np.zeros((20, 20, 36), bool)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6, 2:6] = True       # A
    pred[2:6, 2:6, 3:7] = True      # its finding: Dice 2*48 / (64 + 64) = 0.75
    ref[2:6, 2:6, 20:24] = True     # B, missed
    ref[15, 15, 15] = True          # C, 0.001 mL
    pred[15:17, 2:4, 30:32] = True  # false positive
    return pred, ref


def test_lesionwise_dice_by_hand():
    pred, ref = _lesionwise_scene()
    brats = lesion_detection(pred, ref, BRATS_2023)
    assert (brats.reference_lesions, brats.ignored_reference_lesions, brats.false_positive) == (2, 1, 1)
    assert brats.lesionwise_dice == pytest.approx((0.75 + 0.0) / (2 + 1))
    strict = lesion_detection(pred, ref, STRICT)  # C counts and is missed
    assert strict.lesionwise_dice == pytest.approx((0.75 + 0.0 + 0.0) / (3 + 1))
    assert structure_metrics(pred, ref, (1.0, 1.0, 1.0)).lesions_brats2023.lesionwise_dice == brats.lesionwise_dice


def test_lesionwise_dice_empty_and_ignored_references():
    empty = np.zeros((8, 8, 8), bool)
    tiny = empty.copy()
    tiny[4, 4, 4:7] = True  # 3 voxels, 0.003 mL: ignored by the BraTS 2023 rule
    assert lesion_detection(empty, empty, BRATS_2023).lesionwise_dice == 1.0
    assert lesion_detection(empty, tiny, BRATS_2023).lesionwise_dice == 1.0  # plain Dice would be 0
    assert lesion_detection(empty, tiny, STRICT).lesionwise_dice == 0.0
    assert lesion_detection(tiny, empty, BRATS_2023).lesionwise_dice == 0.0  # one false positive
    assert lesion_detection(tiny, tiny, STRICT).lesionwise_dice == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lesionwise_dice_equals_a_lesion_by_lesion_loop(seed):
    from medcnncad.lesions.components import components

    rng = np.random.default_rng(seed)
    blobs = [ndimage.gaussian_filter(rng.standard_normal((24, 30, 28)), 1.5) > 0.2 for _ in range(2)]
    ref, pred = blobs[0], blobs[1] | (blobs[0] & (rng.random(blobs[0].shape) < 0.3))
    got = lesion_detection(pred, ref, BRATS_2023, SPACING_XYZ)
    reach = ndimage.distance_transform_edt(~ref, sampling=SPACING_XYZ[::-1]) <= 3.0
    ref_cc, n_ref = components(reach)
    pred_cc, _ = components(pred)
    scores = []
    for lesion in range(1, n_ref + 1):
        voxels = (ref_cc == lesion) & ref
        if voxels.sum() * np.prod(SPACING_XYZ) / 1000 <= 0.05:
            continue
        matched = np.setdiff1d(np.unique(pred_cc[(ref_cc == lesion) & pred]), [0])
        found = np.isin(pred_cc, matched)
        scores.append(2 * (found & voxels).sum() / (found.sum() + voxels.sum()))
    false = len(np.setdiff1d(np.unique(pred_cc), np.concatenate([[0], np.unique(pred_cc[reach])])))
    assert got.false_positive == false and got.reference_lesions == len(scores) >= 3
    assert got.lesionwise_dice == pytest.approx(sum(scores) / (len(scores) + false))
    assert 0 < got.lesionwise_dice < 1
