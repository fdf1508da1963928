"""medcnncad evaluate-phantoms: the summary agrees with its own cases and with an independent run."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medcnncad.evaluation.phantoms import evaluate_on_phantoms


@pytest.fixture(scope="module")
def summary():
    return evaluate_on_phantoms("brats-demo-unet", n_cases=2, seed_base=900_000, device="cpu")


def test_summary_pools_its_cases(summary):
    assert summary["seeds"] == [900_000, 900_001] and summary["tta"] is False and len(summary["per_case"]) == 2
    for name in ("WT", "TC", "ET"):
        cases = [c[name] for c in summary["per_case"] if c[name]["lesions"]["reference_lesions"] > 0]
        s = summary["structures"][name]
        assert s["cases_with_structure"] == len(cases)
        assert s["dice_mean"] == pytest.approx(np.mean([c["dice"] for c in cases]))
        assert s["hd95_mm_missed"] == sum(c["hd95_mm"] is None for c in cases)
        detected = sum(c[name]["lesions"]["true_positive"] for c in summary["per_case"])
        reference = sum(c[name]["lesions"]["reference_lesions"] for c in summary["per_case"])
        assert s["lesion_sensitivity"] == pytest.approx(detected / reference)
        lesionwise = [c[name]["lesions_brats2023"]["lesionwise_dice"] for c in summary["per_case"]]
        assert s["lesionwise_dice_mean_brats2023"] == pytest.approx(np.mean(lesionwise))
    split = summary["structures"]["WT"]["lesions_by_content"]  # WT lesions with / without tumor core
    assert split["inner"] == "TC" and "lesions_by_content" not in summary["structures"]["TC"]
    wt = [c["WT"]["lesions"] for c in summary["per_case"]]
    assert split["with_reference"] + split["without_reference"] == sum(x["reference_lesions"] for x in wt)
    assert split["with_detected"] + split["without_detected"] == sum(x["true_positive"] for x in wt)
    assert split["with_reference"] == 2  # one tumor per classic phantom
    # the demo model has no case calibration: the reported probability is the raw score
    assert all(c["abnormality_probability"] == c["abnormality_score_uncalibrated"] for c in summary["per_case"])


def test_the_table_names_the_cases_the_hd95_median_leaves_out(summary):
    from medcnncad.evaluation.phantoms import format_table

    missed = {**summary, "structures": {**summary["structures"],
                                        "ET": {**summary["structures"]["ET"], "hd95_mm_median": 4.0,
                                               "hd95_mm_missed": 2}}}
    table = format_table(missed)
    assert "| 4.00 (2 missed) |" in table and "'(k missed)': cases with nothing predicted" in table


def test_case_dice_equals_an_independent_run(summary):
    """Seed 900000 segmented again outside the evaluation; Dice by numpy from the label maps."""
    from medcnncad.data.phantom import make_phantom, preset
    from medcnncad.inference.segmenter import Segmenter
    from medcnncad.models.registry import load_model

    case = make_phantom(900_000, preset("classic"))
    labels = Segmenter(load_model("brats-demo-unet"), "cpu").run(case.images).label_map
    ref = sitk.GetArrayFromImage(case.label)
    for name, values in (("WT", (1, 2, 4)), ("TC", (1, 4)), ("ET", (4,))):
        p, r = np.isin(labels, values), np.isin(ref, values)
        assert summary["per_case"][0][name]["dice"] == pytest.approx(2 * (p & r).sum() / (p.sum() + r.sum()))


def test_tta_reaches_the_segmenter(monkeypatch):
    from medcnncad.inference import segmenter as inference

    seen = []
    run = inference.Segmenter.run

    def spy(self, inputs, progress=None, tta=None):
        seen.append(tta)
        return run(self, inputs, progress, tta=False)  # the flag is what is tested, not the 4x network time

    monkeypatch.setattr(inference.Segmenter, "run", spy)
    assert evaluate_on_phantoms("brats-demo-unet", n_cases=1, device="cpu", tta=True)["tta"] is True
    assert seen == [True]
    assert evaluate_on_phantoms("brats-demo-unet", n_cases=1, device="cpu")["tta"] is False  # the model's default
    assert seen == [True, False]


def test_a_set_of_normal_heads_counts_false_positives_without_dice():
    from medcnncad.errors import InputError

    normal = evaluate_on_phantoms("brats-demo-unet", n_cases=1, seed_base=910_000, device="cpu", tumor_free=1.0)
    assert normal["tumor_free_cases"] == 1 and normal["tumor_free_fraction"] == 1.0
    case = normal["per_case"][0]
    assert case["grade"] == "none" and case["WT"]["lesions"]["reference_lesions"] == 0
    wt = normal["structures"]["WT"]
    assert wt["cases_with_structure"] == 0 and wt["dice_mean"] is None and wt["lesion_sensitivity"] is None
    assert wt["empty_correct"] == (case["WT"]["lesions"]["predicted_lesions"] == 0)
    assert wt["false_positive_lesions_per_case"] == case["WT"]["lesions"]["false_positive"]
    with pytest.raises(InputError, match="tumor-free fraction 1.5"):
        evaluate_on_phantoms("brats-demo-unet", n_cases=1, tumor_free=1.5)
