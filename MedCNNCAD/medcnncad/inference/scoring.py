"""Case-level scores: how likely a case holds any lesion, and which calibration produced it.

Shared by the report writer, evaluation and the Slicer adaptor. Probabilities are 0-1.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from medcnncad.inference.postprocess import softmax_background
from medcnncad.inference.result import SegmentationResult
from medcnncad.metrics.calibration import apply_case_calibration

__all__ = ["CASE_RULE", "case_score", "given_inputs", "case_probability", "calibration_words",
           "case_calibration_note"]


CASE_RULE = ("case abnormality score = the largest foreground probability of any voxel (softmax: 1 - P(background)); "
             "it is at least every lesion's maximum probability. For a model with a lesion filter (a second-stage "
             "logistic model) it is instead the largest probability of being a true lesion that the filter gave any "
             "candidate component (0 when none survived the floors), so it agrees with what is shown: a lesion is "
             "kept when its probability reaches the filter's threshold. Reported as a probability after the model's "
             "Platt scaling (sigmoid(a * logit(score) + b); a score of 0, no candidate, gets its own probability), "
             "fitted on validation phantoms given the same sequences, when its manifest has one; otherwise the "
             "uncalibrated score")


def case_score(result: SegmentationResult) -> float:
    """The uncalibrated case abnormality score of :data:`CASE_RULE` (0-1)."""
    if result.lesion_filter_max is not None:
        return result.lesion_filter_max
    if not result.probabilities:
        return 0.0
    if softmax_background(result.manifest) is not None:  # foreground = 1 - background = sum of the others
        foreground = cast(np.ndarray, sum(p.astype(np.float32) for p in result.probabilities.values()))
        return float(np.clip(foreground.max(), 0.0, 1.0))
    return float(max(p.max() for p in result.probabilities.values()))


def given_inputs(result: SegmentationResult) -> list[str]:
    """The model's inputs that this run was given (manifest order): every input but the missing ones."""
    return [name for name in result.manifest.input_names if name not in result.missing_channels]


def case_probability(result: SegmentationResult) -> float:
    """Case-level probability that the case holds any lesion, under :data:`CASE_RULE` (0-1).

    Platt-scaled by the manifest's calibration for exactly the sequences this run was given;
    the uncalibrated score when the model has none for them.
    """
    score = case_score(result)
    cal = result.manifest.case_calibration_for(given_inputs(result))
    return float(apply_case_calibration(score, cal)) if cal is not None else score


def calibration_words(case: dict[str, Any]) -> str:
    """'platt-calibrated for inputs T1c' or 'uncalibrated score', from report.json's ``case`` block."""
    if case.get("calibration", "none") == "none":
        return "uncalibrated score"
    inputs = case.get("calibration_inputs")  # absent in reports of MedCNNCAD before per-input calibration
    return f"{case['calibration']}-calibrated for inputs {'+'.join(inputs)}" if inputs else \
        f"{case['calibration']}-calibrated"


def case_calibration_note(result: SegmentationResult) -> dict[str, Any]:
    """report.json's account of the case calibration: method, the inputs it was fitted with, or why none."""
    given = given_inputs(result)
    cal = result.manifest.case_calibration_for(given)
    if cal is not None:
        return {"calibration": cal["method"], "calibration_inputs": list(cal["inputs"]),
                "calibration_fitted_on": cal.get("fitted_on", "")}
    note = {"calibration": "none"}
    fitted = [sorted(b["inputs"]) for b in result.manifest.case_calibration]
    if fitted:
        note["calibration_note"] = (f"uncalibrated: the model's case calibration was fitted with inputs "
                                    f"{' / '.join('+'.join(f) for f in fitted)}, not {'+'.join(sorted(given))}")
    return note
