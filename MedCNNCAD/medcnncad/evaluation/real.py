"""Evaluation on real patients, end to end: every case of a realdata folder through the full engine
(reading, the model's clinical preprocessing, segmentation, post-processing), against its reference.

Per case and input variant (all sequences given, post-contrast T1 alone, FLAIR alone): Dice and HD95
per region the reference supports (WT, TC, ET), whether the tumor was found (any overlap of the
predicted and reference whole tumor) and how much of it was marked (whole-tumor sensitivity: a 0.3 mL
speck inside a 217 mL tumor is "found" at sensitivity 0.001), the largest predicted whole-tumor component outside the
reference (mL; the issue's limit is 1 mL), and the case abnormality probability. A row of a patient the model's
training record names (transplant donors, whole real scans) is marked ``training_patient``: it is not a
held-out result. Arrays (K, J, I).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medcnncad.classification.grade import attach_classification
from medcnncad.data.dataset_json import reference_convention
from medcnncad.data.real_cases import RealCase, discover_real_cases, load_reference, reference_sha256
from medcnncad.errors import InputError
from medcnncad.inference.machine_policy import build_segmenter
from medcnncad.inference.scoring import case_probability
from medcnncad.io.images import geometry_text, same_space
from medcnncad.lesions.components import components
from medcnncad.metrics.intervals import patient_bootstrap_interval
from medcnncad.metrics.segmentation import compute_metrics
from medcnncad.models.grade_classifier import load_classifier
from medcnncad.models.registry import load_model

__all__ = ["VARIANTS", "REGIONS", "evaluate_real", "variant_channels", "score_case", "format_real_table",
           "training_patients", "is_training_patient", "compare_real_reports", "format_comparison", "read_real_report"]

VARIANTS = ("all", "T1c", "FLAIR")
"""Input variants: every sequence the case has, the post-contrast T1 alone, the FLAIR alone."""
REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
"""BraTS regions in BraTS label values."""


def variant_channels(case: RealCase, variant: str) -> list[str] | None:
    """The channels of ``case`` that input ``variant`` gives, or None when that variant is not run (its channel
    absent, or the case's only one, so that "all" is that run already)."""
    if variant == "all":
        return list(case.inputs)
    if variant not in case.inputs or len(case.inputs) == 1:
        return None
    return [variant]


def training_patients(training: dict[str, Any]) -> set[str]:
    """Case ids of the real patients a model's training record names: its last run's transplant donors
    (``training.config.transplant_from``, folder names) and whole real scans (``training.real_patients``, the case
    ids, which a data-root or dataset ``--real-from`` expands to; records before it: the ``real_from`` folder names).
    Earlier runs that a fine-tune started from are not in the record; the model card names them."""
    config = training.get("config") or {}
    folders = [*(config.get("transplant_from") or ()), *(config.get("real_from") or ())]
    return {Path(str(f)).name for f in folders} | {str(i) for i in training.get("real_patients") or ()}


def is_training_patient(case: RealCase, names: set[str], references: set[str]) -> bool:
    """Whether ``case`` is a patient of a model's training record: by its id (:func:`training_patients`) or, for a
    record with ``real_patient_references``, by its reference file's SHA-256 (a training patient's folder copied
    under another name)."""
    if case.case_id in names:
        return True
    return bool(references) and reference_sha256(case) in references


def _largest_outside_ml(pred_wt: np.ndarray, ref_wt: np.ndarray, voxel_ml: float) -> float:
    """Volume (mL) of the largest predicted whole-tumor component that does not touch the reference."""
    labelled, count = components(pred_wt)
    if not count:
        return 0.0
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)
    touching = np.unique(labelled[ref_wt & (labelled > 0)])
    sizes[0] = 0
    sizes[touching] = 0
    return float(sizes.max() * voxel_ml)


def score_case(pred: np.ndarray, ref: np.ndarray, spacing_xyz: Sequence[float],
               regions: Sequence[str]) -> dict[str, Any]:
    """Scores of one predicted (K, J, I) BraTS label map against a reference on the same grid.

    ``regions`` are those the reference describes in full. Without the whole tumor (a reference of the core or
    the enhancing tumor only), the tumor is found when the prediction touches the largest region it describes,
    and the whole-tumor scores (Dice, share marked, reference volume, largest false positive outside it) are
    ``None``: a predicted component away from that region may be oedema the reference does not draw."""
    metrics = compute_metrics(pred, ref, spacing_xyz, {r: REGIONS[r] for r in regions})
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    whole = "WT" in regions
    pred_wt, ref_tumor = np.isin(pred, REGIONS["WT"]), np.isin(ref, REGIONS["WT" if whole else regions[0]])
    out: dict[str, Any] = {f"dice_{r}": metrics[r].dice for r in ("WT", "TC", "ET") if r in regions}
    if not whole:
        out["dice_WT"] = None
    out.update({f"hd95_mm_{r}": metrics[r].hd95_mm for r in regions})
    out.update(found=bool((pred_wt & ref_tumor).any()), sensitivity_WT=metrics["WT"].sensitivity if whole else None,
               predicted_wt_ml=float(pred_wt.sum() * voxel_ml),
               reference_wt_ml=float(ref_tumor.sum() * voxel_ml) if whole else None,
               largest_outside_ml=_largest_outside_ml(pred_wt, ref_tumor, voxel_ml) if whole else None)
    return out


def evaluate_real(root: str, model_id: str, device: str = "auto", variants: Sequence[str] = VARIANTS,
                  tta: bool | None = None, cases: Sequence[str] | None = None,
                  grade_classifier: str | None = None, precision: str = "manifest",
                  reference_labels: Mapping[int, int] | None = None) -> dict[str, Any]:
    """Run the model on every labelled real case of ``root`` and score it.

    Args:
        root: the realdata folder.
        model_id: model id or folder.
        device: ``auto``, ``cpu`` or ``cuda``.
        variants: input variants (:data:`VARIANTS`).
        tta: test-time augmentation (None: the model's default).
        cases: only these case ids (default every labelled case).
        grade_classifier: also grade the lesions with this classifier (id or folder): the case
            probability of its positive class (e.g. P(HGG)) next to the case's known grade.
        precision: the execution policy (:data:`medcnncad.inference.precisions.CASE_PRECISIONS`); default the
            model's own setting, so scores compare across machines; ``measured`` scores what a user's run gets.
        reference_labels: the label convention of every case's reference (reference value -> BraTS value, e.g.
            BraTS 2024's, whose 4 is the resection cavity), instead of the one each case's layout says; refused
            for a dataset folder's label file whose dataset.json says otherwise.

    Returns:
        ``{"model", "version", "trained_on", "rows": [...], "summary": {...}}``; one row per case and variant.

    Raises:
        InputError: ``root`` is not a folder, an unknown variant, or no labelled case.
    """
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise InputError(f"variants {unknown}: choose from {list(VARIANTS)}")
    labelled = _chosen_cases(root, cases)
    if reference_labels is not None:
        for case in labelled:  # a dataset folder's label files mean what its dataset.json says: not overridden
            if case.reference is not None:
                reference_convention(case.reference, reference_labels)
        labelled = [replace(c, label_map=dict(reference_labels),
                            notes=f"label convention given: {dict(reference_labels)}") for c in labelled]
    segmenter = build_segmenter(load_model(model_id), device, precision)
    trained = training_patients(segmenter.manifest.training)
    trained_references = set(segmenter.manifest.training.get("real_patient_references") or ())
    grader = load_classifier(grade_classifier) if grade_classifier else None
    rows = []
    not_run: dict[str, list[str]] = {}
    for case in labelled:
        reference = load_reference(case)
        training_patient = is_training_patient(case, trained, trained_references)
        sources = case.input_sources()  # a 4D file's volumes read once for every variant
        for variant in variants:
            channels = variant_channels(case, variant)
            if channels is None:
                not_run.setdefault(variant, []).append(_why_not_run(case, variant))
                continue
            start = time.perf_counter()
            result = segmenter.run({name: sources[name] for name in channels}, tta=tta)
            grading = attach_classification(result, grader) if grader is not None else None
            ref = _reference_on(reference, result.reference, case.reference)
            row = {"case": case.case_id, "source": case.source, "variant": variant, "inputs": sorted(channels),
                   "reference_is_expert": case.reference_is_expert, "training_patient": training_patient,
                   "notes": case.notes,
                   **score_case(result.label_map, sitk.GetArrayViewFromImage(ref), result.reference.GetSpacing(),
                                case.regions),
                   "case_probability": case_probability(result), "seconds": time.perf_counter() - start,
                   "preprocessing": [s["step"] for s in result.preprocessing if s["applied"]]}
            if grading is not None:
                positive = grading["positive_class"]
                row.update(known_grade=case.grade, positive_class=positive,
                           grade_probability=grading["case"][f"probability_{positive}"],
                           predicted_grade=grading["case"]["predicted"])
            rows.append(row)
    m = segmenter.manifest
    return {"model": m.id, "version": m.version, "trained_on": m.trained_on, "rows": rows,
            "summary": _summary(rows), "pooled": _pooled(rows), "variants_not_run": not_run,
            "execution_policy": segmenter.policy_note()}


def _why_not_run(case: RealCase, variant: str) -> str:
    """The case id and why ``variant`` was not run on it (:func:`variant_channels`)."""
    if variant not in case.inputs:
        return f"{case.case_id} (no {variant})"
    return f"{case.case_id} ({variant} is its only sequence: scored once, as 'all')"


def _chosen_cases(root: str, cases: Sequence[str] | None) -> list[RealCase]:
    """The labelled cases of ``root`` (only ``cases``, when given).

    Raises:
        InputError: no labelled case, or a case id of ``cases`` that is not a labelled case of ``root`` (a
            mistyped id would otherwise leave its patient out of every mean without a word).
    """
    found = discover_real_cases(root)
    labelled = [c for c in found if c.labelled and (cases is None or c.case_id in cases)]
    if cases is not None:
        ids = {c.case_id for c in found}
        absent = [c for c in cases if c not in ids]
        unlabelled = [c for c in cases if c in ids and c not in {case.case_id for case in labelled}]
        if absent or unlabelled:
            raise InputError(f"--cases: {', '.join(absent)}{' not in ' + str(root) if absent else ''}"
                             f"{'; ' if absent and unlabelled else ''}"
                             f"{', '.join(unlabelled)}{' without a reference' if unlabelled else ''}")
    if not labelled:
        raise InputError(f"{root}: no labelled real case found")
    return labelled


def _reference_on(reference: sitk.Image, grid: sitk.Image, path: Any) -> sitk.Image:
    """The reference on the images' grid: as it is when it shares it, else resampled (nearest neighbour): another
    session's tilt, another resolution or a cropped label file (Slicer saves the labelled region only) are fine.

    Raises:
        InputError: naming the reference file when fewer than half of its labelled millilitres land inside the
            images (another scan's label file would score a Dice near 0 without a word).
    """
    if same_space(reference, grid):
        return reference
    mapped = sitk.Resample(reference, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    before = np.count_nonzero(sitk.GetArrayViewFromImage(reference)) * float(np.prod(reference.GetSpacing()))
    after = np.count_nonzero(sitk.GetArrayViewFromImage(mapped)) * float(np.prod(grid.GetSpacing()))
    if before > 0 and after < 0.5 * before:
        raise InputError(f"{path}: only {after / 1000:.3g} of its {before / 1000:.3g} labelled mL lie inside the "
                         f"images ({geometry_text(grid)}); its own grid: {geometry_text(reference)}: not this scan's "
                         "label file?")
    return mapped


def _mean_of(rows: list[dict[str, Any]], key: str) -> float | None:
    """Mean of ``key`` over the rows where it is defined (None when none is): a row without a whole-tumor reference
    has no WT Dice and no share marked, and counts as neither 0 nor 1."""
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for variant in VARIANTS:
        sel = [r for r in rows if r["variant"] == variant]
        if not sel:
            continue
        out[variant] = {"cases": len(sel), "found": sum(r["found"] for r in sel),
                        "mean_dice_WT": _mean_of(sel, "dice_WT"),
                        "mean_sensitivity_WT": _mean_of(sel, "sensitivity_WT"),
                        "rows_without_WT": sum(r.get("dice_WT") is None for r in sel),
                        "fp_over_1ml": sum((r["largest_outside_ml"] or 0.0) > 1.0 for r in sel),
                        "case_probability_below_0.9": sum(r["case_probability"] < 0.9 for r in sel),
                        "training_patient_rows": sum(bool(r.get("training_patient")) for r in sel),
                        "dice_WT_ci95": _interval(sel)}
    return out


def _pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every row together (the headline mean), with its interval resampling patients."""
    return {"rows": len(rows), "patients": len({r["case"] for r in rows}), "mean_dice_WT": _mean_of(rows, "dice_WT"),
            "rows_without_WT": sum(r.get("dice_WT") is None for r in rows), "dice_WT_ci95": _interval(rows)}


def _interval(rows: list[dict[str, Any]]) -> list[float] | None:
    """95 % bootstrap interval of the mean WT Dice of the rows that have one, resampling patients
    (:mod:`medcnncad.metrics.intervals`)."""
    rows = [r for r in rows if r.get("dice_WT") is not None]
    if not rows:
        return None
    values = [r["dice_WT"] for r in rows]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):  # the mean is undefined too
        return None
    found = patient_bootstrap_interval([r["case"] for r in rows], values)
    return None if found is None else [found[0], found[1]]


def _percent(share: float | None) -> str:
    """0.0123 -> "1.2 %"; None (no reference tumor) -> "-"."""
    return "-" if share is None else f"{100 * share:.1f} %"


def format_real_table(report: dict[str, Any]) -> str:
    """The per-case rows and the summary as a markdown table."""
    def f(v: float | None, d: int = 3) -> str:
        return "-" if v is None else f"{v:.{d}f}"
    lines = [f"{report['model']} {report['version']} (trained on: {report['trained_on']})", "",
             "| case | inputs | WT | TC | ET | found (WT marked) | pred/ref WT mL | largest FP mL | P(case) | s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        name = f"{r['case']} (training)" if r.get("training_patient") else r["case"]
        lines.append(f"| {name} | {'+'.join(r['inputs'])} | {f(r.get('dice_WT'))} | {f(r.get('dice_TC'))} | "
                     f"{f(r.get('dice_ET'))} | {'yes' if r['found'] else 'NO'} ({_percent(r.get('sensitivity_WT'))}) | "
                     f"{r['predicted_wt_ml']:.1f}/{f(r['reference_wt_ml'], 1)} | {f(r['largest_outside_ml'], 2)} | "
                     f"{r['case_probability']:.3f} | {r['seconds']:.0f} |")
    if any(r.get("training_patient") for r in report["rows"]):
        lines += ["", "(training): a patient the model was trained on (its training record names it) - not held out; "
                      "the means below include those rows"]
    graded = [r for r in report["rows"] if "known_grade" in r]
    if graded:
        lines += ["", "| case | inputs | known grade | P(positive class) | predicted |", "|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {'+'.join(r['inputs'])} | {r['known_grade'] or 'unknown'} | "
                  f"{f(r['grade_probability'])} | {r['predicted_grade']} |" for r in graded]
    lines += ["", "| inputs | cases | tumor found | mean WT marked | mean WT Dice (95 % interval) | FP lesions > 1 mL "
                  "| P(case) < 0.9 |", "|---|---|---|---|---|---|---|"]
    for variant, s in report["summary"].items():
        lines.append(f"| {variant} | {s['cases']} | {s['found']} | {_percent(s.get('mean_sensitivity_WT'))} | "
                     f"{f(s['mean_dice_WT'])}{_ci(s.get('dice_WT_ci95'))}{_without_wt(s)} | {s['fp_over_1ml']} | "
                     f"{s['case_probability_below_0.9']} |")
    pooled = report.get("pooled")
    if pooled and pooled["rows"]:
        lines += ["", f"Every row: mean WT Dice {f(pooled['mean_dice_WT'])}{_ci(pooled['dice_WT_ci95'])}"
                      f"{_without_wt(pooled)} over "
                      f"{pooled['rows']} rows of {pooled['patients']} patients. Intervals: 95 % percentile bootstrap "
                      "resampling patients (each with all its rows); with so few patients they are rough, and they "
                      "do not include the optimism of choosing a model on these same patients."]
    for variant, why in (report.get("variants_not_run") or {}).items():
        lines.append(f"Not run with {variant} alone: {', '.join(why)}.")
    return "\n".join(lines)


def _without_wt(summary: dict[str, Any]) -> str:
    """" (k rows without a whole-tumor reference left out)" when there are such rows."""
    k = summary.get("rows_without_WT") or 0
    return f" ({k} row{'s' if k > 1 else ''} without a whole-tumor reference left out)" if k else ""


def _ci(interval: Sequence[float] | None, signed: bool = False) -> str:
    """" (low to high)" of a 95 % interval ("" without one); ``signed`` for changes."""
    if not interval:
        return ""
    return f" ({interval[0]:+.3f} to {interval[1]:+.3f})" if signed else f" ({interval[0]:.3f} to {interval[1]:.3f})"


_REPORT_ROW_KEYS = {"case", "variant", "dice_WT", "found", "largest_outside_ml", "case_probability"}


def read_real_report(path: str | Path) -> dict[str, Any]:
    """An ``evaluate-real --out`` report read back for :func:`compare_real_reports`: model, version, and rows with
    finite scores, each case and inputs once.

    Raises:
        InputError: naming the file and what is wrong with it.
    """
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a JSON file ({exc})") from None
    rows = report.get("rows") if isinstance(report, dict) else None
    if (not isinstance(rows, list) or not isinstance(report.get("model"), str)
            or not isinstance(report.get("version"), str)
            or not all(isinstance(r, dict) and _REPORT_ROW_KEYS <= set(r) for r in rows)):
        raise InputError(f"{path}: not an evaluate-real report "
                         f"(model, version, rows with {', '.join(sorted(_REPORT_ROW_KEYS))})")
    for row in rows:  # a row of a reference without the whole tumor has no WT Dice nor false positive outside it
        if not all((row[k] is None and k != "case_probability") or (isinstance(row[k], (int, float))
                                                                     and math.isfinite(row[k]))
                   for k in ("dice_WT", "largest_outside_ml", "case_probability")):
            raise InputError(f"{path}: row {row['case']} {row['variant']} has a score that is not a finite number")
    seen = [(r["case"], r["variant"]) for r in rows]
    twice = sorted({k for k in seen if seen.count(k) > 1})
    if twice:
        raise InputError(f"{path}: rows given twice: {', '.join(' '.join(map(str, k)) for k in twice)}")
    return report


def compare_real_reports(before: dict[str, Any], after: dict[str, Any],
                         names: tuple[str, str] = ("before", "after")) -> dict[str, Any]:
    """Two ``evaluate-real`` reports row by row (same case and inputs): the mean change of WT Dice per input
    variant and over every shared row, each with a 95 % interval resampling patients (the change of a patient's
    rows together, :mod:`medcnncad.metrics.intervals`), and the rows whose tumor-found, false-positive (> 1 mL) or
    case-probability (< 0.9) outcome changed. Rows in only one report are named and left out; ``names`` (e.g.
    the files) name the reports in errors. A row pairs with a row of the same case, variant and inputs (the "all"
    variant of a case read with other sequences is another row), and a row of a training patient in either report
    (``training_patient``) is not a held-out comparison: it is named (``training_patient_rows``) and left out."""
    old, new = {_row_key(r): r for r in before["rows"]}, {_row_key(r): r for r in after["rows"]}
    paired = [k for k in old if k in new]
    trained = [k for k in paired if old[k].get("training_patient") or new[k].get("training_patient")]
    shared = [k for k in paired if k not in trained]
    if not shared:
        raise InputError(f"{names[0]} and {names[1]} share no held-out row (same case and inputs)")

    def change(keys: list[tuple[str, str, str]]) -> dict[str, Any]:
        keys = [k for k in keys if old[k]["dice_WT"] is not None and new[k]["dice_WT"] is not None]
        if not keys:
            return {"rows": 0, "patients": 0, "mean_change_dice_WT": None, "change_ci95": None}
        deltas = [new[k]["dice_WT"] - old[k]["dice_WT"] for k in keys]
        interval = patient_bootstrap_interval([k[0] for k in keys], deltas)
        return {"rows": len(keys), "patients": len({k[0] for k in keys}),
                "mean_change_dice_WT": float(np.mean(deltas)),
                "change_ci95": None if interval is None else [interval[0], interval[1]]}

    outcomes = {"found": lambda r: bool(r["found"]), "fp_over_1ml": lambda r: (r["largest_outside_ml"] or 0.0) > 1.0,
                "case_probability_below_0.9": lambda r: r["case_probability"] < 0.9}
    return {"before": f"{before['model']} {before['version']}", "after": f"{after['model']} {after['version']}",
            "variants": {v: change([k for k in shared if k[1] == v]) for v in VARIANTS
                         if any(k[1] == v for k in shared)},
            "every_row": change(shared),
            "outcome_changes": {name: [{"case": k[0], "variant": k[1], "before": test(old[k]), "after": test(new[k])}
                                       for k in shared if test(old[k]) != test(new[k])]
                                for name, test in outcomes.items()},
            "only_before": [list(k) for k in old if k not in new], "only_after": [list(k) for k in new if k not in old],
            "training_patient_rows": [list(k) for k in trained]}


def _row_key(row: dict[str, Any]) -> tuple[str, str, str]:
    """(case, variant, inputs joined by "+") of an ``evaluate-real`` row: what makes two rows comparable."""
    return row["case"], row["variant"], "+".join(sorted(str(i) for i in row.get("inputs") or ()))


def format_comparison(comparison: dict[str, Any]) -> str:
    """:func:`compare_real_reports` as a markdown table and lines."""
    lines = [f"{comparison['after']} against {comparison['before']}, row by row (same case and inputs)", "",
             "| inputs | rows | patients | mean change of WT Dice (95 % interval) |", "|---|---|---|---|"]
    for name, c in [*comparison["variants"].items(), ("every row", comparison["every_row"])]:
        mean = "-" if c["mean_change_dice_WT"] is None else f"{c['mean_change_dice_WT']:+.3f}"
        lines.append(f"| {name} | {c['rows']} | {c['patients']} | {mean}{_ci(c['change_ci95'], signed=True)} |")
    lines.append("")
    for name, changed in comparison["outcome_changes"].items():
        lines.append(f"{name}: " + (", ".join(f"{c['case']} {c['variant']} {c['before']} -> {c['after']}"
                                              for c in changed) or "no row changed"))
    for side in ("only_before", "only_after"):
        if comparison[side]:
            lines.append(f"{side.replace('_', ' ')} (left out): " + ", ".join(" ".join(k) for k in comparison[side]))
    if comparison.get("training_patient_rows"):
        lines.append("training patients' rows (not held out, left out): "
                     + ", ".join(" ".join(k) for k in comparison["training_patient_rows"]))
    lines += ["", "Intervals: 95 % percentile bootstrap resampling patients (a patient's rows together); they do not "
                  "include the optimism of choosing between models on these same patients."]
    return "\n".join(lines)
