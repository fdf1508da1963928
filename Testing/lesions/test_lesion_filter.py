"""The lesion filter (medcnncad.lesions.lesion_filter): features by hand, the logistic rule,
manifest validation, and the Segmenter applying it after the floors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_image
from helpers import blob_manifest_dict, blob_segmenter

from medcnncad.errors import ModelError
from medcnncad.lesions.components import components
from medcnncad.lesions.lesion_filter import apply_lesion_filter, component_features, feature_names
from medcnncad.models.manifest import LesionFilter, parse_manifest

CHANNELS = [("NCR", 1), ("ED", 2), ("ET", 4)]


def _two_components() -> tuple[np.ndarray, np.ndarray]:
    """(K, J, I) labels: A = 2 voxels at i 1-2 (NCR, ET), B = 4 voxels at i 5-8 (ED, ED, ED, ET), and
    their foreground probabilities (A: 0.95, 0.5; B: 0.9, 0.8, 0.7, 0.99)."""
    labels = np.zeros((3, 3, 10), np.uint8)
    fg = np.zeros(labels.shape)
    labels[1, 1, 1:3], fg[1, 1, 1:3] = (1, 4), (0.95, 0.5)
    labels[1, 1, 5:9], fg[1, 1, 5:9] = (2, 2, 2, 4), (0.9, 0.8, 0.7, 0.99)
    return labels, fg


def test_features_of_two_components_by_hand():
    labels, fg = _two_components()
    labelled, count = components(labels > 0)
    x = component_features(labelled, count, labels, fg[labelled > 0], 0.001, CHANNELS)
    assert feature_names(CHANNELS) == ("log_volume_ml", "max_probability", "mean_probability",
                                       "high_probability_fraction", "log_volume_ratio",
                                       "fraction:NCR", "fraction:ED", "fraction:ET")
    np.testing.assert_allclose(x[0], [math.log(0.002), 0.95, 0.725, 0.5, math.log(0.5), 0.5, 0.0, 0.5])
    np.testing.assert_allclose(x[1], [math.log(0.004), 0.99, 0.8475, 0.5, 0.0, 0.0, 0.75, 0.25])


def test_no_components_no_features():
    empty = np.zeros((3, 3, 3), np.int32)
    assert component_features(empty, 0, empty, np.zeros(0), 0.001, CHANNELS).shape == (0, 8)


def test_classifier_drops_candidates_below_its_threshold():
    labels, fg = _two_components()
    # P = sigmoid(log v - log 0.003) = v / (v + 0.003): A 0.4, B 0.571
    classifier = LesionFilter(("log_volume_ml",), (0.0,), (1.0,), (1.0,), -math.log(0.003), 0.5)
    np.testing.assert_allclose(classifier.probability(np.log([[0.002], [0.004]])), [0.4, 0.004 / 0.007])
    out = apply_lesion_filter(labels.copy(), lambda m: fg[m], 0.001, CHANNELS, classifier)
    assert not out[1, 1, 1:3].any() and (out[1, 1, 5:9] == labels[1, 1, 5:9]).all()
    keep_all = LesionFilter(("log_volume_ml",), (0.0,), (1.0,), (1.0,), -math.log(0.003), 0.39)
    np.testing.assert_array_equal(apply_lesion_filter(labels.copy(), lambda m: fg[m], 0.001, CHANNELS,
                                                          keep_all), labels)


def test_case_score_counts_only_candidates_touching_score_within():
    """With a brain mask the filter's decisions stay the same, but a candidate wholly outside the mask
    does not count towards the case score (it will not be shown)."""
    labels, fg = _two_components()
    classifier = LesionFilter(("log_volume_ml",), (0.0,), (1.0,), (1.0,), -math.log(0.003), 0.39)
    brain = np.zeros(labels.shape, bool)
    brain[1, 1, 1] = True  # touches component A (P 0.4) only
    scores: list[float] = []
    out = apply_lesion_filter(labels.copy(), lambda m: fg[m], 0.001, CHANNELS, classifier, None, scores, brain)
    np.testing.assert_array_equal(out, labels)  # both kept, as without the mask
    assert scores == pytest.approx([0.4])
    scores = []
    apply_lesion_filter(labels.copy(), lambda m: fg[m], 0.001, CHANNELS, classifier, None, scores)
    assert scores == pytest.approx([0.4, 0.004 / 0.007])


def test_classifier_uses_the_manifest_feature_order():
    """Features are picked by name: a classifier listing them in another order scores the same."""
    labels, fg = _two_components()
    a = LesionFilter(("mean_probability", "fraction:ED"), (0.8, 0.4), (0.1, 0.5), (2.0, -1.0), 0.3, 0.5)
    b = LesionFilter(("fraction:ED", "mean_probability"), (0.4, 0.8), (0.5, 0.1), (-1.0, 2.0), 0.3, 0.5)
    labelled, count = components(labels > 0)
    x = component_features(labelled, count, labels, fg[labelled > 0], 0.001, CHANNELS)
    # by hand, A: z = (-0.75, -0.8), logit 0.3 - 1.5 + 0.8 = -0.4; B: z = (0.475, 0.7), 0.3 + 0.95 - 0.7 = 0.55
    np.testing.assert_allclose(a.probability(x[:, [2, 6]]), 1 / (1 + np.exp([0.4, -0.55])))
    np.testing.assert_allclose(b.probability(x[:, [6, 2]]), a.probability(x[:, [2, 6]]))


def _classifier_json(**changes) -> dict:
    data = {"features": ["mean_probability"], "mean": [0.0], "scale": [1.0], "coefficients": [1.0],
            "intercept": -0.8, "min_probability": 0.5}
    return {**data, **changes}


@pytest.mark.parametrize("changes, message", [
    ({"features": ["fraction:XX"]}, r"features \['fraction:XX'\] unknown"),
    ({"mean": [0.0, 1.0]}, "differ in length"),
    ({"scale": [0.0]}, "lesion_classifier/scale"),
    ({"min_probability": 2}, "lesion_classifier/min_probability"),
])
def test_invalid_classifiers_name_the_problem(tmp_path, changes, message):
    raw = blob_manifest_dict()
    raw["postprocessing"]["lesion_classifier"] = _classifier_json(**changes)
    with pytest.raises(ModelError, match=message):
        parse_manifest(raw, tmp_path)


def test_segmenter_applies_the_manifest_classifier_after_the_floors(tmp_path):
    seg = blob_segmenter(tmp_path, lesion_filter=_classifier_json())
    vol = np.zeros((20, 20, 20), np.float32)
    boxes = [(slice(2, 6),) * 3, (slice(10, 14),) * 3, (slice(2, 6), slice(12, 16), slice(2, 6))]
    # mean probability 1.0 / 0.881 / 0.690 -> P = sigmoid(mean - 0.8) = 0.55 / 0.52 / 0.47: the last goes
    for box, value in zip(boxes, (1.0, 0.55, 0.52)):
        vol[box] = value
    result = seg.run({"CT": make_image(vol)})
    assert [bool((result.label_map[box] == 3).all()) for box in boxes] == [True, True, False]
    assert result.label_map.sum() == 3 * 64 * 2
    assert result.probabilities["blob"][boxes[2]].min() > 0.68  # the probability map keeps it


def test_reports_state_the_classifier(tmp_path):
    from medcnncad.reporting.case_outputs import _lesion_filter
    from medcnncad.reporting.html import _filter_text

    raw = blob_manifest_dict()
    raw["postprocessing"]["lesion_classifier"] = _classifier_json(description="fitted on phantoms")
    rule = _lesion_filter(parse_manifest(raw, tmp_path))
    assert rule["classifier"]["min_probability"] == 0.5 and rule["classifier"]["features"] == ["mean_probability"]
    assert "the lesion filter (a second-stage logistic model) scores at least 0.5 (model post-processing); " in \
        _filter_text(rule)
    assert "classifier" not in _lesion_filter(parse_manifest(blob_manifest_dict(), tmp_path))
    raw["inference"]["test_time_augmentation"] = True
    rule = _lesion_filter(parse_manifest(raw, tmp_path))
    assert rule["chosen_with_test_time_augmentation"] is True
    assert "at least 0.5 (model post-processing, chosen with test-time augmentation); " in _filter_text(rule)


def test_label_volume_floor_relabels_a_label_whose_case_total_is_small():
    from medcnncad.inference.segmenter import apply_label_volume_floors
    from medcnncad.models.manifest import LabelVolumeFloor

    labels = np.zeros((4, 4, 4), np.uint8)
    labels[0, 0, :] = 1
    labels[1, 1, 1:4] = 4  # 3 voxels = 0.003 mL
    out = apply_label_volume_floors(labels.copy(), [LabelVolumeFloor(4, 0.005, 1)], 0.001)
    assert (out[1, 1, 1:4] == 1).all() and (out[0, 0] == 1).all() and out.sum() == 7
    np.testing.assert_array_equal(apply_label_volume_floors(labels.copy(), [LabelVolumeFloor(4, 0.003, 1)], 0.001),
                                  labels)  # 0.003 mL is not below 0.003 mL


@pytest.mark.parametrize("cubes, kept", [(1, 0), (2, 2)])
def test_segmenter_applies_label_volume_floors_to_the_case_total(tmp_path, cubes, kept):
    """Two 64-voxel cubes (0.128 mL in all) pass a 0.1 mL floor although each one alone is below it."""
    seg = blob_segmenter(tmp_path, label_volume_floors=[{"value": 3, "min_ml": 0.1, "replace_with": 0}])
    vol = np.zeros((20, 20, 20), np.float32)
    for box in [(slice(2, 6),) * 3, (slice(10, 14),) * 3][:cubes]:
        vol[box] = 1.0
    result = seg.run({"CT": make_image(vol)})
    assert result.label_map.sum() == 3 * 64 * kept
    relabelled = [w for w in result.warnings if "label_volume_floors" in w]
    assert relabelled == ([] if kept else ["blob totalled 0.064 mL (< 0.1 mL): relabelled background "
                                           "(model post-processing, label_volume_floors)"])


def test_label_volume_floors_name_unknown_labels(tmp_path):
    raw = blob_manifest_dict()
    raw["postprocessing"]["label_volume_floors"] = [{"value": 3, "min_ml": 0.1, "replace_with": 7}]
    with pytest.raises(ModelError, match=r"label_volume_floors use unknown label values \[7\]"):
        parse_manifest(raw, tmp_path)


def test_reports_state_the_label_volume_floors(tmp_path):
    from medcnncad.reporting.case_outputs import _lesion_filter
    from medcnncad.reporting.html import _filter_text

    raw = blob_manifest_dict()
    raw["postprocessing"]["label_volume_floors"] = [{"value": 3, "min_ml": 0.2, "replace_with": 0}]
    rule = _lesion_filter(parse_manifest(raw, tmp_path))
    assert rule["label_volume_floors"] == [{"value": 3, "name": "blob", "min_ml": 0.2, "replace_with": 0,
                                            "replace_with_name": "background"}]
    assert _filter_text(rule).endswith(" blob is relabelled background when its total volume is below 0.2 mL.")


def test_fit_script_writes_a_manifest_the_engine_loads(tmp_path):
    """scripts/fit_lesion_filter.py write: classifier JSON + threshold + label floor -> a valid manifest."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    raw = blob_manifest_dict()
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    fitted = {k: v for k, v in _classifier_json().items() if k != "min_probability"}
    (tmp_path / "classifier.json").write_text(json.dumps(fitted))
    subprocess.run([sys.executable, str(root / "scripts" / "fit_lesion_filter.py"), "write", "--classifier",
                    str(tmp_path / "classifier.json"), "--manifest", str(tmp_path / "manifest.json"),
                    "--min-probability", "0.25", "--label-floor", "3:0.2:0", "--description", "test",
                    "--probability-floor", "0.9", "--tta"], check=True)
    manifest = parse_manifest(json.loads((tmp_path / "manifest.json").read_text()), tmp_path)
    post = manifest.postprocessing
    assert post.min_lesion_probability == 0.9 and manifest.inference.test_time_augmentation is True
    assert post.lesion_filter.min_probability == 0.25 and post.lesion_filter.intercept == -0.8
    assert post.lesion_filter.features == ("mean_probability",) and post.lesion_filter.description == "test"
    assert [(f.value, f.min_ml, f.replace_with) for f in post.label_volume_floors] == [(3, 0.2, 0)]


def test_floors_record_what_they_removed():
    from medcnncad.inference.segmenter import remove_small_components

    labels = np.zeros((10, 10, 10), np.uint8)
    fg = np.full(labels.shape, 0.99, np.float32)
    labels[1:5, 1:5, 1:5] = 2    # 64 voxels, kept
    labels[8, 8, 8] = 1          # 1 voxel: below 0.008 mL
    labels[6:8, 1:3, 6:8] = 1    # 8 voxels at probability 0.5: below the 0.6 floor
    fg[6:8, 1:3, 6:8] = 0.5
    removed = []
    remove_small_components(labels, 0.008, 0.001, lambda m: fg[m], 0.6, removed)
    assert [(c.stage, c.voxel_count, c.centroid_kji) for c in removed] == [
        ("probability floor", 8, (6.5, 1.5, 6.5)), ("volume", 1, (8.0, 8.0, 8.0))]
    assert removed[0].max_probability == 0.5 and removed[0].classifier_probability is None
    assert removed[0].volume_ml == pytest.approx(0.008)


def test_classifier_records_what_it_removed_with_its_score():
    labels, fg = _two_components()
    classifier = LesionFilter(("log_volume_ml",), (0.0,), (1.0,), (1.0,), -math.log(0.003), 0.5)
    removed = []
    apply_lesion_filter(labels, lambda m: fg[m], 0.001, CHANNELS, classifier, removed)
    (a,) = removed
    assert (a.stage, a.voxel_count, a.centroid_kji) == ("lesion filter", 2, (1.0, 1.0, 1.5))
    assert a.max_probability == 0.95
    assert a.classifier_probability == pytest.approx(0.4)


def test_removed_candidate_centre_in_lps_and_ras_mm():
    import SimpleITK as sitk

    from medcnncad.lesions.lesion_filter import RemovedCandidate

    image = sitk.Image(4, 4, 4, sitk.sitkUInt8)
    image.SetSpacing((2.0, 3.0, 4.0))
    image.SetOrigin((10.0, 20.0, 30.0))
    out = RemovedCandidate("volume", 2, 0.048, None, None, (1.0, 1.0, 1.5)).to_json(image)
    assert out["centroid_lps_mm"] == [13.0, 23.0, 34.0] and out["centroid_ras_mm"] == [-13.0, -23.0, 34.0]


def test_reports_list_the_removed_candidates(tmp_path):
    from medcnncad.reporting.case_outputs import build_report
    from medcnncad.reporting.html import _removed_section

    seg = blob_segmenter(tmp_path, lesion_filter=_classifier_json())
    vol = np.zeros((20, 20, 20), np.float32)
    vol[2:6, 2:6, 2:6] = 1.0
    vol[2:6, 12:16, 2:6] = 0.52  # probability 0.690: classifier P = sigmoid(0.690 - 0.8) = 0.4725, removed
    report = build_report(seg.run({"CT": make_image(vol)}))
    removed = report["removed_candidates"]
    assert removed["count"] == 1 and removed["by_stage"] == {"lesion filter": 1}
    (c,) = removed["largest"]
    assert c["voxel_count"] == 64 and c["classifier_probability"] == pytest.approx(1 / (1 + math.exp(0.11)), abs=2e-3)
    assert c["centroid_lps_mm"] == pytest.approx([3.5, 13.5, 3.5])  # (i, j, k) centre at 1 mm spacing, origin 0
    from medcnncad.reporting.case_outputs import summary_table

    assert "1 candidate component(s) removed by the model's post-processing (1 by lesion filter)" in \
        summary_table(report)
    text = "".join(_removed_section(removed))
    assert "1 candidate component(s) removed (1 by lesion filter)" in text and "probability maps" in text
    assert _removed_section({"count": 0, "by_stage": {}, "largest": []}) == []


def test_removed_candidates_survive_the_worker_round_trip(tmp_path):
    """The Slicer module runs the engine in a worker process: its result files carry them."""
    from medcnncad.slicer.worker import load_result, save_result

    seg = blob_segmenter(tmp_path, lesion_filter=_classifier_json())
    vol = np.zeros((20, 20, 20), np.float32)
    vol[2:6, 2:6, 2:6], vol[2:6, 12:16, 2:6] = 1.0, 0.52
    result = seg.run({"CT": make_image(vol)})
    assert len(result.removed_candidates) == 1
    save_result(result, tmp_path / "out")
    loaded = load_result(tmp_path / "out", seg.manifest, result.reference)
    assert loaded.removed_candidates == result.removed_candidates
    assert loaded.lesion_filter_max == result.lesion_filter_max
    assert result.lesion_filter_max == pytest.approx(1 / (1 + np.exp(-0.2)), abs=1e-3)


def _scattered(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random blobs (labels 1, 2, 4) away from the borders of a 40^3 grid, and probabilities."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.random((40, 40, 40)), 1.5) > 0.55
    blobs[:5], blobs[:, :3], blobs[..., 30:] = False, False, False  # a box smaller than the grid
    labels = np.where(blobs, rng.choice(np.array([1, 2, 4], np.uint8), blobs.shape), 0).astype(np.uint8)
    return labels, rng.random(labels.shape)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boxed_post_processing_equals_the_whole_grid(seed):
    """Components labelled inside the occupied box: same result as scipy on the whole grid."""
    from scipy import ndimage

    from medcnncad.inference.segmenter import remove_small_components
    from medcnncad.lesions.components import boxed_components

    labels, fg = _scattered(seed)
    whole, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
    box, boxed, boxed_count = boxed_components(labels)
    assert boxed_count == count > 5
    np.testing.assert_array_equal(boxed, whole[box])
    assert not whole[tuple(slice(0, s.start) for s in box)].any()
    # reference, whole grid: drop < 6 voxels or peak < 0.9; then the classifier on mean probability
    sizes = np.bincount(whole.ravel())
    peaks = ndimage.maximum(fg, whole, np.arange(count + 1))
    keep = (sizes >= 6) & (peaks >= 0.9)
    keep[0] = False
    expected = np.where(keep[whole], labels, 0)
    removed = []
    out = remove_small_components(labels.copy(), 0.006, 0.001, lambda m: fg[m], 0.9, removed)
    np.testing.assert_array_equal(out, expected)
    centres = ndimage.center_of_mass(whole > 0, whole, np.flatnonzero(~keep[1:]) + 1)
    np.testing.assert_allclose([c.centroid_kji for c in removed], centres)
    classifier = LesionFilter(("mean_probability",), (0.0,), (1.0,), (10.0,), -5.0, 0.5)  # keeps mean >= 0.5
    whole2, count2 = ndimage.label(expected > 0, structure=np.ones((3, 3, 3)))
    means = ndimage.mean(fg, whole2, np.arange(1, count2 + 1))
    expected2 = np.where(np.concatenate([[False], means >= 0.5])[whole2], expected, 0)
    np.testing.assert_array_equal(apply_lesion_filter(out, lambda m: fg[m], 0.001, CHANNELS, classifier),
                                  expected2)


def test_fit_script_collects_your_own_cases(tmp_path):
    """collect --cases NAME:FOLDER: one npz per case folder, reference as given; a label on another grid
    is an error naming the file."""
    import subprocess
    import sys
    from pathlib import Path

    import SimpleITK as sitk
    from helpers import small_phantom

    images, label = small_phantom()
    case = tmp_path / "cases" / "patient1"
    case.mkdir(parents=True)
    for name, image in images.items():
        sitk.WriteImage(image, str(case / f"{name}.nii.gz"))
    sitk.WriteImage(label, str(case / "label.nii.gz"))
    script = Path(__file__).resolve().parents[2] / "scripts" / "fit_lesion_filter.py"

    def collect(out: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), "collect", "--model", "brats-demo-unet", "--out",
                               str(tmp_path / out), "--cases", f"mine:{tmp_path / 'cases'}"],
                              capture_output=True, text=True, timeout=600)

    assert collect("out").returncode == 0
    saved = np.load(tmp_path / "out" / "mine" / "patient1.npz")
    np.testing.assert_array_equal(saved["ref"], sitk.GetArrayFromImage(label))
    assert saved["label"].shape == saved["fg"].shape == saved["ref"].shape and saved["label"].max() > 0
    sitk.WriteImage(label[:-2], str(case / "label.nii.gz"))
    done = collect("out2")
    assert done.returncode != 0
    assert "label.nii.gz: not on the grid of case patient1's first input" in done.stderr


@pytest.mark.parametrize("cubes, expected", [((1.0, 0.52), 1 / (1 + math.exp(-0.2))),
                                             ((0.52,), 1 / (1 + math.exp(0.11))), ((), 0.0)])
def test_case_score_is_the_classifiers_largest_probability(tmp_path, cubes, expected):
    """With a lesion filter the case score agrees with what is kept: a case whose candidates all
    fall below the threshold scores below it too (and no candidate at all scores 0)."""
    from medcnncad.inference.scoring import case_score

    seg = blob_segmenter(tmp_path, lesion_filter=_classifier_json())  # P = sigmoid(mean - 0.8), keep >= 0.5
    vol = np.zeros((20, 20, 20), np.float32)
    for box, value in zip([(slice(2, 6),) * 3, (slice(2, 6), slice(12, 16), slice(2, 6))], cubes):
        vol[box] = value
    result = seg.run({"CT": make_image(vol)})
    assert case_score(result) == pytest.approx(expected, abs=2e-3)
    assert (case_score(result) >= 0.5) == bool(result.label_map.any())


def test_removed_candidates_come_largest_first(tmp_path):
    """The result lists them largest first (reports keep the 10 largest; Slicer's table is in this order)."""
    seg = blob_segmenter(tmp_path, lesion_filter=_classifier_json())
    vol = np.zeros((20, 20, 20), np.float32)
    vol[2:5, 2:5, 2:5] = 0.52      # 27 voxels, first in scan order
    vol[10:14, 10:14, 10:14] = 0.52  # 64 voxels
    removed = seg.run({"CT": make_image(vol)}).removed_candidates
    assert [c.voxel_count for c in removed] == [64, 27]


def test_schema_1_lesion_classifier_is_read_as_lesion_filter_and_refused_in_schema_2(tmp_path):
    """The manifest migration of the rename (lesion filter vs grade classifier)."""
    from medcnncad.errors import ModelError

    raw = blob_manifest_dict()
    raw["schema_version"] = 1
    raw["postprocessing"]["lesion_classifier"] = _classifier_json()
    assert parse_manifest(raw, tmp_path).postprocessing.lesion_filter.intercept == -0.8
    raw["schema_version"] = 2
    with pytest.raises(ModelError, match="lesion_classifier is called lesion_filter since schema_version 2"):
        parse_manifest(raw, tmp_path)
    raw["postprocessing"]["lesion_filter"] = raw["postprocessing"].pop("lesion_classifier")
    assert parse_manifest(raw, tmp_path).postprocessing.lesion_filter.intercept == -0.8


def test_shipped_manifests_are_schema_2():
    import json

    from conftest import ROOT

    for path in (ROOT / "Resources" / "Models").glob("*/manifest.json"):
        data = json.loads(path.read_text())
        if data["task"] == "segmentation":
            assert data["schema_version"] == 2 and "lesion_classifier" not in data["postprocessing"], path
