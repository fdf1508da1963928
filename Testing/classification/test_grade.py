"""Lesion classification, calibration and test-time-augmentation uncertainty."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import make_image
from helpers import ThresholdNet, blob_manifest_dict, blob_segmenter, blob_volume, classifier_dict, write_classifier
from helpers import classify_segmenter as _segmenter

from medcnncad.classification.grade import (
    FLIPS,
    attach_classification,
    calibrated_probabilities,
    case_grade,
    classify_patches,
    fit_temperature,
    load_classifier,
    normalise_patch,
)
from medcnncad.errors import ModelError
from medcnncad.inference.segmenter import Segmenter
from medcnncad.metrics.calibration import binary_report, expected_calibration_error, youden_threshold
from medcnncad.models.loaded import LoadedModel
from medcnncad.models.manifest import parse_classifier_manifest, parse_manifest
from medcnncad.models.preprocessing import build_preprocessing
from medcnncad.models.weights import build_network


# -- calibration math -------------------------------------------------------------------------
def test_temperature_fit_matches_the_closed_form():
    # Logits (+a, -a) for the predicted class; a fraction q of the predictions is right. The NLL is
    # minimal where sigmoid(2a / T) = q, i.e. T = 2a / logit(q): a = 3, q = 0.8 -> T = 6 / ln 4.
    a, n = 3.0, 100
    logits = np.tile([a, -a], (n, 1))
    labels = np.array([0] * 80 + [1] * 20)
    assert fit_temperature(logits, labels) == pytest.approx(6 / np.log(4), rel=1e-3)
    # already calibrated logits keep T = 1
    logits = np.tile([np.log(4) / 2, -np.log(4) / 2], (n, 1))
    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=1e-3)


def test_calibrated_probabilities_divide_logits_by_the_temperature():
    p = calibrated_probabilities(torch.tensor([[2.0, 0.0]]), 2.0)
    assert float(p[0, 0]) == pytest.approx(np.e / (np.e + 1))


def test_binary_report_agrees_with_scikit_learn():
    from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 300), 0, 1)
    report = binary_report(p, y, 0.5)
    assert report["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert report["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    tn, fp, fn, tp = confusion_matrix(y, p >= 0.5).ravel()
    assert report["confusion_matrix"] == {"tp": tp, "fn": fn, "fp": fp, "tn": tn}
    assert report["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert report["specificity"] == pytest.approx(tn / (tn + fp))


def test_ece_by_hand_and_youden_threshold():
    # two bins used: [0.1] with label 0 -> |0 - 0.1|; [0.9, 0.9] with labels 1, 0 -> |0.5 - 0.9|
    assert expected_calibration_error([0.1, 0.9, 0.9], [0, 1, 0]) == pytest.approx((0.1 + 2 * 0.4) / 3)
    # perfectly separable at 0.6: Youden picks a threshold that separates them
    p, y = [0.1, 0.2, 0.55, 0.6, 0.7, 0.9], [0, 0, 0, 1, 1, 1]
    t = youden_threshold(p, y)
    assert 0.55 < t <= 0.6
    assert binary_report(p, y, t)["sensitivity"] == 1.0 and binary_report(p, y, t)["specificity"] == 1.0


def test_case_grade_is_the_highest_lesion_probability():
    from medcnncad.classification.grade import LesionClass

    lesions = [LesionClass(1, {"LGG": 0.8, "HGG": 0.2}, "LGG", 0.2),
               LesionClass(2, {"LGG": 0.3, "HGG": 0.7}, "HGG", 0.7)]
    assert case_grade(lesions) == 0.7
    assert case_grade([]) is None


def test_patch_normalisation_keeps_absent_channels_zero():
    patch = np.zeros((2, 4, 4, 4), np.float32)
    patch[0, 1:3, 1:3, 1:3] = np.arange(8).reshape(2, 2, 2) + 10
    out = normalise_patch(patch)
    values = out[0][patch[0] != 0]
    assert values.mean() == pytest.approx(0, abs=1e-6) and values.std() == pytest.approx(1, abs=1e-5)
    assert not out[1].any() and (out[0][patch[0] == 0] == 0).all()


# -- test-time augmentation ---------------------------------------------------------------------
def test_tta_uncertainty_is_zero_for_identity_passes_and_flip_equivariant_models(tmp_path):
    image = make_image(blob_volume())
    plain = _segmenter(tmp_path, ThresholdNet()).run({"CT": image})
    assert plain.uncertainty is None and plain.tta_passes == 1
    same = _segmenter(tmp_path, ThresholdNet()).run({"CT": image}, tta=[(), ()])
    assert same.tta_passes == 2 and np.abs(same.uncertainty).max() == 0.0
    flips = _segmenter(tmp_path, ThresholdNet()).run({"CT": image}, tta=True)  # per-voxel net: flip-equivariant
    assert flips.tta_passes == 4 and np.abs(flips.uncertainty).max() < 1e-6
    np.testing.assert_allclose(flips.probabilities["blob"], plain.probabilities["blob"], atol=1e-6)
    assert all(les.uncertainty == pytest.approx(0, abs=1e-6) for les in flips.lesions)


def test_the_model_decides_tta_when_the_caller_does_not(tmp_path):
    image = make_image(blob_volume())
    augmented = blob_segmenter(tmp_path, inference={"test_time_augmentation": True})
    assert augmented.run({"CT": image}).tta_passes == 4
    assert augmented.run({"CT": image}, tta=False).tta_passes == 1
    assert blob_segmenter(tmp_path).run({"CT": image}).tta_passes == 1


def _mode_warnings(result) -> list[str]:
    return [w for w in result.warnings if "test-time augmentation" in w]


def test_a_run_outside_the_mode_the_lesion_filters_were_chosen_in_is_flagged(tmp_path):
    image = {"CT": make_image(blob_volume())}
    single = blob_segmenter(tmp_path, min_lesion_probability=0.5)
    assert _mode_warnings(single.run(image)) == []
    assert _mode_warnings(single.run(image, tta=True)) == [
        "blob's lesion filters were chosen without test-time augmentation and this run used it: expect more "
        "candidates removed than the model's evaluation shows"]
    augmented = blob_segmenter(tmp_path, inference={"test_time_augmentation": True}, min_lesion_probability=0.5)
    assert _mode_warnings(augmented.run(image)) == []
    assert "chosen with test-time augmentation and this run did not use it" in _mode_warnings(
        augmented.run(image, tta=False))[0]
    assert _mode_warnings(blob_segmenter(tmp_path).run(image, tta=True)) == []  # no filter, nothing to flag


class _Ramp(torch.nn.Module):
    """Logits that grow along the window's first spatial axis: not flip-equivariant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-2, 2, x.shape[2]).view(1, 1, -1, 1, 1)
        return torch.cat([-ramp.expand_as(x), ramp.expand_as(x)], dim=1)


def test_tta_uncertainty_measures_disagreement_between_passes(tmp_path):
    image = make_image(blob_volume())
    result = _segmenter(tmp_path, _Ramp()).run({"CT": image}, tta=[(), (1,)])
    # each voxel sees p = sigmoid(2 r) and, flipped, sigmoid(-2 r): std = |p - (1 - p)| / 2
    p = result.probabilities["blob"].astype(np.float64)
    assert np.isclose(p, 0.5, atol=1e-5).all()  # the two passes average to one half
    assert result.uncertainty.max() > 0.3


# -- the classifier end to end ------------------------------------------------------------------
def test_classifier_manifest_checks_channels_and_classes(tmp_path):
    bad = classifier_dict()
    bad["positive_class"] = "medium"
    with pytest.raises(ModelError, match="positive_class 'medium'"):
        parse_classifier_manifest(bad, tmp_path)
    bad = classifier_dict(mask_channel=False)
    bad["network"]["kwargs"]["in_channels"] = 2
    with pytest.raises(ModelError, match="in_channels=2 but the patch has 1 channels"):
        parse_classifier_manifest(bad, tmp_path)


def test_classifier_end_to_end_on_a_tiny_case(tmp_path):
    loaded = load_classifier(write_classifier(tmp_path / "clf"))
    vol = blob_volume()
    vol[2:4, 2:4, 2:5] = 1.0  # a second, small lesion
    result = _segmenter(tmp_path, ThresholdNet()).run({"CT": make_image(vol, spacing=(1.5, 1.5, 2.0))})
    summary = attach_classification(result, loaded, tta=True)
    lesions = [les for les in result.lesions if les.structure == "blob"]
    assert len(summary["lesions"]) == len(lesions) == 2
    for les, entry in zip(lesions, summary["lesions"]):
        assert les.class_probabilities == entry["probabilities"]
        assert sum(les.class_probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert les.predicted_class == ("high" if les.class_probabilities["high"] >= 0.5 else "low")
        assert les.class_uncertainty is not None and les.class_uncertainty >= 0
    assert summary["case"]["probability_high"] == max(e["positive_probability"] for e in summary["lesions"])
    assert "largest probability" in summary["case"]["rule"]
    # temperature 2 halves the logits: the same patches without calibration are more extreme
    patches = np.random.default_rng(0).normal(size=(3, 2, 8, 8, 8)).astype(np.float32)
    calibrated, _ = classify_patches(loaded, patches)
    with torch.inference_mode():
        logits = loaded.network(torch.from_numpy(patches))
    np.testing.assert_allclose(calibrated, torch.softmax(logits / 2.0, 1).numpy(), atol=1e-6)


def test_classifier_tta_spread_is_zero_for_a_flip_invariant_network(tmp_path):
    loaded = load_classifier(write_classifier(tmp_path / "clf"))

    class MeanNet(torch.nn.Module):  # global mean per channel: invariant to every flip
        def forward(self, x):
            m = x.mean(dim=(2, 3, 4))
            return torch.stack([m[:, 0], -m[:, 0]], 1)

    loaded.network = MeanNet()
    patches = np.random.default_rng(1).normal(size=(4, 2, 8, 8, 8)).astype(np.float32)
    _, spread = classify_patches(loaded, patches, tta=True)
    assert len(FLIPS) == 8 and np.abs(spread).max() < 1e-6


def test_classifier_structure_must_exist_in_the_segmentation_model(tmp_path):
    data = classifier_dict()
    data["lesion_structure"] = "WT"
    loaded = load_classifier(write_classifier(tmp_path / "clf", data))
    result = _segmenter(tmp_path, ThresholdNet()).run({"CT": make_image(blob_volume())})
    with pytest.raises(ModelError, match="'WT' lesions"):
        attach_classification(result, loaded)


def test_segmentation_model_is_not_a_classifier():
    with pytest.raises(ModelError, match="not a lesion grade classifier"):
        load_classifier("brats-demo-unet")


def test_report_and_outputs_carry_classification_and_uncertainty(tmp_path):
    from medcnncad.reporting.case_outputs import summary_table, write_case_outputs

    loaded = load_classifier(write_classifier(tmp_path / "clf"))
    result = _segmenter(tmp_path, ThresholdNet()).run({"CT": make_image(blob_volume())}, tta=True)
    attach_classification(result, loaded)
    outputs = write_case_outputs(result, tmp_path / "out")
    report = json.loads(outputs.files["report"].read_text())
    assert report["classification"]["model"]["id"] == "tiny-grade"
    assert report["uncertainty"]["cost"] == "4x the network time"
    assert sitk.ReadImage(str(outputs.files["uncertainty"])).GetSize() == result.reference.GetSize()
    blob = next(les for les in report["lesions"] if les["structure"] == "blob")
    assert set(blob["class_probabilities"]) == {"low", "high"}
    assert "P(high)" in summary_table(report)


def write_classification_bundle(folder, lesion_structure: str | None = "blob"):
    """A classification-template style bundle (3D DenseNet, ScaleIntensityd preprocessing)."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "init_features": 4, "growth_rate": 2,
              "block_config": [1, 1], "bn_size": 1}
    torch.manual_seed(1)
    network = build_network("monai.networks.nets.DenseNet", kwargs)
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    meta = {"name": "Tiny Classification", "version": "0.0.2",
            "network_data_format": {
                "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [8, 8, 8],
                                     "channel_def": {"0": "CT"}}},
                "outputs": {"pred": {"type": "probabilities", "format": "classes", "num_channels": 3,
                                     "channel_def": {"0": "benign", "1": "uncertain", "2": "malignant"}}}}}
    if lesion_structure:
        meta["medcnncad"] = {"lesion_structure": lesion_structure, "patch_spacing_mm": [2.0, 2.0, 2.0]}
    inference = {"network_def": {"_target_": "DenseNet", **kwargs},
                 "preprocessing": {"_target_": "Compose", "transforms": [
                     {"_target_": "LoadImaged", "keys": "image"},
                     {"_target_": "EnsureChannelFirstd", "keys": "image"},
                     {"_target_": "ScaleIntensityd", "keys": "image"}]},
                 "inferer": {"_target_": "SimpleInferer"}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    return folder, network


def test_model_zoo_classification_bundle_loads_through_the_same_path(tmp_path):
    folder, network = write_classification_bundle(tmp_path / "bundle")
    loaded = load_classifier(folder)
    m = loaded.manifest
    assert m.class_names == ["benign", "uncertain", "malignant"] and m.positive_class == "malignant"
    assert m.patch_size == (8, 8, 8) and m.temperature == 1.0 and not m.mask_channel
    textured = blob_volume() * (1 + 0.5 * np.random.default_rng(2).random(blob_volume().shape)).astype(np.float32)
    result = _segmenter(tmp_path, ThresholdNet()).run({"CT": make_image(textured, spacing=(1.5, 1.5, 2.0))})
    summary = attach_classification(result, loaded)
    assert len(summary["lesions"]) == 1 and summary["calibration"]["method"] == "none"
    # the same numbers by hand: raw patch (C, I, J, K), the bundle's ScaleIntensity, softmax
    from medcnncad.classification.grade import patch_from_arrays

    patch = patch_from_arrays(result.images, result.label_map == 3, result.reference, m, normalise=False)
    x = torch.from_numpy(np.ascontiguousarray(patch.transpose(0, 3, 2, 1)))
    x = (x - x.min()) / (x.max() - x.min())
    with torch.inference_mode():
        expected = torch.softmax(network.eval()(x[None]), 1)[0].numpy()
    got = summary["lesions"][0]["probabilities"]
    assert np.ptp(expected) > 1e-3  # the classes differ, so the comparison means something
    np.testing.assert_allclose([got[c] for c in m.class_names], expected, atol=1e-5)


def test_classification_bundle_must_name_the_structure_it_classifies(tmp_path):
    folder, _ = write_classification_bundle(tmp_path / "bundle", lesion_structure=None)
    with pytest.raises(ModelError, match="lesion_structure"):
        load_classifier(folder)


def test_platt_fit_recovers_a_known_calibration():
    from medcnncad.metrics.calibration import apply_platt, fit_platt

    # 2000 cases per score whose positive share is exactly sigmoid(2 logit(s) + 0.5)
    scores, labels = [], []
    for s in np.linspace(0.05, 0.95, 10):
        positives = int(round(2000 * apply_platt(s, 2.0, 0.5)))
        scores += [s] * 2000
        labels += [1] * positives + [0] * (2000 - positives)
    a, b = fit_platt(scores, labels)
    assert a == pytest.approx(2.0, abs=0.01) and b == pytest.approx(0.5, abs=0.01)
    assert apply_platt(0.5, 1.0, 0.0) == pytest.approx(0.5)


def test_case_probability_uses_the_manifest_calibration(tmp_path):
    from medcnncad.inference.scoring import case_probability, case_score

    raw = blob_manifest_dict()
    raw["case_calibration"] = {"method": "platt", "a": 1.0, "b": -np.log(3.0), "fitted_on": "hand-built"}
    manifest = parse_manifest(raw, tmp_path)
    segmenter = Segmenter(LoadedModel(manifest, ThresholdNet(), build_preprocessing(manifest.preprocessing),
                                      "manifest", tmp_path), device="cpu")
    result = segmenter.run({"CT": make_image(blob_volume() * 0.51)})  # score sigmoid(40 * 0.01) = sigmoid(0.4)
    score = case_score(result)
    assert score == pytest.approx(1 / (1 + np.exp(-0.4)), abs=1e-5)
    # logit(score) - ln 3: odds divided by three
    assert case_probability(result) == pytest.approx(1 / (1 + 3 * np.exp(-0.4)), abs=1e-5)


def test_platt_fit_is_scikit_learns_sigmoid_calibration_on_the_logit():
    from sklearn.calibration import _sigmoid_calibration  # private, but it is the reference implementation

    from medcnncad.metrics.calibration import _logit, fit_platt

    rng = np.random.default_rng(3)
    labels = (rng.random(60) < 0.6).astype(int)
    scores = np.clip(0.35 + 0.3 * labels + rng.normal(0, 0.2, 60), 0.01, 0.99)  # classes overlap
    a, b = fit_platt(scores, labels)
    big_a, big_b = _sigmoid_calibration(_logit(scores), labels)  # P = 1 / (1 + exp(A f + B))
    assert a == pytest.approx(-big_a, abs=1e-4) and b == pytest.approx(-big_b, abs=1e-4)


def test_platt_fit_stays_finite_when_the_score_separates_the_classes():
    from medcnncad.metrics.calibration import apply_platt, fit_platt

    # 10 tumor cases at 0.9, 10 tumor-free at 0.1: Platt's targets are 11/12 and 1/12, reached exactly
    # by z = +-ln 11 at logit = +-ln 9, so a = ln 11 / ln 9 = 1.0913 and b = 0 (plain maximum likelihood: a -> inf)
    a, b = fit_platt([0.9] * 10 + [0.1] * 10, [1] * 10 + [0] * 10)
    assert a == pytest.approx(np.log(11) / np.log(9), abs=1e-4) and b == pytest.approx(0.0, abs=1e-4)
    assert apply_platt(0.9, a, b) == pytest.approx(11 / 12, abs=1e-4)


def test_case_calibration_gives_cases_without_candidates_their_own_probability():
    from medcnncad.metrics.calibration import apply_case_calibration, fit_case_calibration_block, fit_platt

    # 6 cases scoring 0 (no candidate survived), 1 of them with a tumor: (1 + 1) / (6 + 2) = 0.25
    scores = [0.0] * 6 + [0.9] * 10 + [0.1] * 10
    labels = [1] + [0] * 5 + [1] * 10 + [0] * 10
    block = fit_case_calibration_block(scores, labels)
    assert block["no_candidate_probability"] == pytest.approx(0.25)
    assert (block["a"], block["b"]) == pytest.approx(fit_platt([0.9] * 10 + [0.1] * 10, [1] * 10 + [0] * 10))
    assert apply_case_calibration(0.0, block) == pytest.approx(0.25)
    assert apply_case_calibration(0.9, block) == pytest.approx(11 / 12, abs=1e-4)  # Platt part, by hand above
    np.testing.assert_allclose(apply_case_calibration(np.array([0.0, 0.9]), block), [0.25, 11 / 12], atol=1e-4)
    assert "no_candidate_probability" not in fit_case_calibration_block([0.9, 0.1], [1, 0])  # no zeros: Platt only


def test_log_loss_by_hand():
    from medcnncad.metrics.calibration import log_loss

    assert log_loss([0.9, 0.2], [1, 0]) == pytest.approx(-(np.log(0.9) + np.log(0.8)) / 2)
    assert binary_report([0.9, 0.2], [1, 0], 0.5)["log_loss"] == pytest.approx(0.16425, abs=1e-5)


@pytest.mark.parametrize("tumor_score, helps", [(0.6, True), (0.999, False)])
def test_a_calibration_is_written_only_when_it_helps_on_cases_it_was_not_fitted_on(tumor_score, helps):
    from medcnncad.evaluation.phantoms import calibration_helps
    from medcnncad.metrics.calibration import (
        apply_case_calibration,
        fit_case_calibration_block,
        leave_one_out_calibrated,
    )

    # 0.6 vs 0.4 separates the classes but is far too timid: calibration helps. 0.999 vs 0.001 is
    # already right, and Platt's prior would pull it to about 0.95 / 0.05 on unseen cases: it does not.
    scores = [tumor_score] * 12 + [1 - tumor_score] * 12
    labels = [1] * 12 + [0] * 12
    loo = leave_one_out_calibrated(scores, labels)
    others = np.arange(24) != 5
    assert loo[5] == pytest.approx(apply_case_calibration(
        scores[5], fit_case_calibration_block(np.array(scores)[others], np.array(labels)[others])))
    fit = {"before": binary_report(scores, labels, 0.5), "leave_one_out": binary_report(loo, labels, 0.5)}
    assert calibration_helps(fit) is helps


def _pet_ct_segmenter(tmp_path, calibration) -> Segmenter:
    """The blob model with a second, optional input (PET) that the network ignores, and ``case_calibration``."""
    raw = blob_manifest_dict()
    raw["inputs"].append({"name": "PET", "modality": "PT", "required": False})
    raw["network"]["kwargs"]["in_channels"] = 2
    raw["case_calibration"] = calibration
    manifest = parse_manifest(raw, tmp_path)

    class FirstChannel(ThresholdNet):
        def forward(self, x):
            return super().forward(x[:, :1])

    return Segmenter(LoadedModel(manifest, FirstChannel(), build_preprocessing(manifest.preprocessing), "manifest",
                                 tmp_path), device="cpu")


def test_case_calibration_applies_only_to_the_inputs_it_was_fitted_with(tmp_path):
    from medcnncad.inference.scoring import calibration_words, case_probability, case_score
    from medcnncad.reporting.case_outputs import build_report

    blocks = [{"method": "platt", "a": 1.0, "b": -np.log(3.0), "inputs": ["CT"], "fitted_on": "CT alone"},
              {"method": "platt", "a": 1.0, "b": np.log(2.0), "fitted_on": "CT and PET"}]  # no inputs: all of them
    seg = _pet_ct_segmenter(tmp_path, blocks)
    ct = make_image(blob_volume() * 0.51)
    odds = np.exp(0.4)  # score sigmoid(0.4): odds e^0.4
    alone = seg.run({"CT": ct})
    assert case_score(alone) == pytest.approx(1 / (1 + 1 / odds), abs=1e-5)
    assert case_probability(alone) == pytest.approx(1 / (1 + 3 / odds), abs=1e-5)  # odds / 3
    both = seg.run({"CT": ct, "PET": ct * 1.0001})  # (one image for both channels is refused)
    assert case_probability(both) == pytest.approx(1 / (1 + 1 / (2 * odds)), abs=1e-5)  # odds x 2
    case = build_report(alone)["case"]
    assert case["calibration"] == "platt" and case["calibration_inputs"] == ["CT"]
    assert case["calibration_fitted_on"] == "CT alone" and calibration_words(case) == "platt-calibrated for inputs CT"

    only_pet = _pet_ct_segmenter(tmp_path, {"method": "platt", "a": 1.0, "b": 0.5, "inputs": ["PET"]})
    result = only_pet.run({"CT": ct})
    assert case_probability(result) == case_score(result)  # no calibration for CT alone: the raw score
    case = build_report(result)["case"]
    assert case["calibration"] == "none" and calibration_words(case) == "uncalibrated score"
    assert "fitted with inputs PET, not CT" in case["calibration_note"]


@pytest.mark.parametrize("calibration, message", [
    ({"method": "platt", "a": 1.0, "b": 0.0, "inputs": ["MR"]}, r"case_calibration inputs \['MR'\]"),
    ([{"method": "platt", "a": 1.0, "b": 0.0, "inputs": ["CT", "PET"]}, {"method": "platt", "a": 2.0, "b": 0.0}],
     r"two case_calibration blocks for the same inputs \['CT', 'PET'\]"),
    ({"method": "isotonic", "a": 1.0, "b": 0.0}, "case_calibration"),
])
def test_bad_case_calibration_is_refused_by_name(tmp_path, calibration, message):
    with pytest.raises(ModelError, match=message):
        _pet_ct_segmenter(tmp_path, calibration)


def test_writing_a_case_calibration_replaces_only_the_block_for_the_same_inputs(tmp_path):
    from medcnncad.evaluation.phantoms import write_case_calibration
    from medcnncad.models.manifest import load_manifest

    raw = blob_manifest_dict()
    raw["inputs"].append({"name": "PET", "modality": "PT", "required": False})
    raw["network"]["kwargs"]["in_channels"] = 2
    raw["case_calibration"] = {"method": "platt", "a": 1.0, "b": 0.0, "fitted_on": "old, all inputs"}
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    write_case_calibration(str(tmp_path), {"method": "platt", "a": 2.0, "b": 0.1, "inputs": ["CT"], "fitted_on": "x",
                                           "before": {}, "after": {}})
    write_case_calibration(str(tmp_path), {"method": "platt", "a": 3.0, "b": 0.2, "inputs": ["PET", "CT"],
                                           "fitted_on": "new, all inputs"})
    m = load_manifest(tmp_path)
    assert len(m.case_calibration) == 2
    assert m.case_calibration_for(["CT"])["a"] == 2.0 and "before" not in m.case_calibration_for(["CT"])
    assert m.case_calibration_for(["CT", "PET"])["fitted_on"] == "new, all inputs"
    assert m.case_calibration_for(["PET"]) is None


def test_html_case_report_shows_lesion_classes(tmp_path):
    from medcnncad.reporting.case_outputs import write_case_outputs
    from medcnncad.reporting.html import case_report

    loaded = load_classifier(write_classifier(tmp_path / "clf"))
    result = _segmenter(tmp_path, ThresholdNet()).run({"CT": make_image(blob_volume())}, tta=True)
    attach_classification(result, loaded)  # follows the segmentation run: test-time augmentation
    assert all(les.class_uncertainty is not None for les in result.lesions if les.class_probabilities)
    write_case_outputs(result, tmp_path / "out")
    page = case_report(tmp_path / "out").read_text()
    assert "Lesion classification (tiny-grade 0.0.1" in page and "P(high)" in page
    assert "largest probability" in page and "test-time augmentation, 4 passes" in page


def test_lesions_below_the_classifier_minimum_are_not_classified(tmp_path):
    data = classifier_dict()
    data["min_lesion_ml"] = 0.1  # the small lesion: 2 x 2 x 3 voxels of 1.5 x 1.5 x 2 mm = 0.054 mL
    loaded = load_classifier(write_classifier(tmp_path / "clf", data))
    vol = blob_volume()
    vol[2:4, 2:4, 2:5] = 1.0
    result = _segmenter(tmp_path, ThresholdNet()).run({"CT": make_image(vol, spacing=(1.5, 1.5, 2.0))})
    summary = attach_classification(result, loaded)
    blobs = sorted((les for les in result.lesions if les.structure == "blob"), key=lambda x: x.volume_ml)
    assert len(blobs) == 2 and len(summary["lesions"]) == 1
    assert blobs[0].class_probabilities is None and blobs[1].class_probabilities is not None
    assert summary["lesions"][0]["lesion_id"] == blobs[1].id
