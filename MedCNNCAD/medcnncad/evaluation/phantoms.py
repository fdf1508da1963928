"""Evaluation of a model on held-out phantoms (seeds never used in training).

Per case: Dice and HD95 per label/region and lesion-wise detection; summarised as
mean, median, minimum, lesion sensitivity and false-positive lesions per case.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from medcnncad.data.phantom import make_phantom
from medcnncad.data.phantom import preset as get_preset
from medcnncad.errors import InputError
from medcnncad.inference.scoring import case_probability, case_score
from medcnncad.inference.segmenter import Segmenter
from medcnncad.metrics.calibration import (
    apply_case_calibration,
    binary_report,
    fit_case_calibration_block,
    leave_one_out_calibrated,
)
from medcnncad.metrics.segmentation import compute_metrics, detection_by_content, pooled_detection
from medcnncad.models.manifest import parse_manifest
from medcnncad.models.registry import load_model

__all__ = ["evaluate_on_phantoms", "format_table"]


def evaluate_on_phantoms(model_id: str, n_cases: int = 20, seed_base: int = 900_000,
                         device: str = "auto", preset: str = "classic",
                         channels: list[str] | None = None, tta: bool | None = None,
                         tumor_free: float | None = None) -> dict[str, Any]:
    """Segment ``n_cases`` phantoms (seeds ``seed_base`` ..., generator ``preset``) and summarise.

    ``channels`` restricts the sequences given to the model (the others are absent, e.g.
    ``["T1c"]`` for a post-contrast-only exam); Dice of a structure absent from both the
    reference and the prediction counts as 1 (tumor-free cases). ``tta``: average the
    test-time augmentation passes (:data:`medcnncad.inference.segmenter.TTA_FLIPS`, 4x the network time);
    ``None``: the model's default. ``tumor_free``: replaces the preset's share of tumor-free cases
    (1.0: a set of normal heads, to count false-positive lesions where there is nothing to find).
    """
    config = get_preset(preset)
    if tumor_free is not None:
        if not 0.0 <= tumor_free <= 1.0:
            raise InputError(f"tumor-free fraction {tumor_free}: choose a value between 0 and 1")
        config = dataclasses.replace(config, tumor_free_fraction=tumor_free)
    segmenter = Segmenter(load_model(model_id), device=device)
    manifest = segmenter.manifest
    given = _given_channels(manifest, channels)
    structures = manifest.structures()
    nested = nested_regions(manifest)
    per_case: list[dict[str, Any]] = []
    seconds = []
    tta = manifest.inference.test_time_augmentation if tta is None else tta
    for seed in tqdm(range(seed_base, seed_base + n_cases), desc="phantoms", unit="case"):
        case = make_phantom(seed, config)
        t0 = time.perf_counter()
        result = segmenter.run({name: case.images[name] for name in given}, tta=tta)
        seconds.append(time.perf_counter() - t0)
        reference = sitk.GetArrayFromImage(case.label)
        metrics = compute_metrics(result.label_map, reference, case.label.GetSpacing(), structures)
        entry = {"seed": seed, "grade": case.grade, "abnormality_probability": case_probability(result),
                 "abnormality_score_uncalibrated": case_score(result), **{k: v.to_json() for k, v in metrics.items()}}
        for outer, inner in nested.items():
            entry[outer]["lesions_by_content"] = {"inner": inner, **detection_by_content(
                np.isin(result.label_map, structures[outer]), np.isin(reference, structures[outer]),
                np.isin(reference, structures[inner]))}
        per_case.append(entry)
    summary: dict[str, Any] = {"model": manifest.id, "version": manifest.version, "cases": n_cases,
                               "preset": preset, "channels": given, "tta": tta,
                               "tumor_free_fraction": config.tumor_free_fraction,
                               "tumor_free_cases": sum(c["grade"] == "none" for c in per_case),
                               "seeds": [seed_base, seed_base + n_cases - 1],
                               "seconds_per_case_median": float(np.median(seconds)), "structures": {}}
    for name in structures:
        present = [c for c in per_case if c[name]["lesions"]["reference_lesions"] > 0]
        absent = [c for c in per_case if c[name]["lesions"]["reference_lesions"] == 0]
        dice = np.array([c[name]["dice"] for c in present], dtype=float)
        hd95 = np.array([c[name]["hd95_mm"] for c in present if c[name]["hd95_mm"] is not None], dtype=float)
        summary["structures"][name] = {  # Dice None when no case has the structure (e.g. all tumor-free)
            "cases_with_structure": len(present),
            "dice_mean": float(dice.mean()) if present else None,
            "dice_median": float(np.median(dice)) if present else None,
            "dice_min": float(dice.min()) if present else None,
            "empty_correct": (sum(c[name]["lesions"]["predicted_lesions"] == 0 for c in absent) / len(absent)
                              if absent else None),
            "hd95_mm_median": float(np.median(hd95)) if len(hd95) else None,  # of the cases with a prediction
            "hd95_mm_missed": len(present) - len(hd95),  # nothing predicted: no distance, not in the median
            **pooled_detection([c[name]["lesions"] for c in per_case]),
            **pooled_detection([c[name]["lesions_brats2023"] for c in per_case], "_brats2023"),
        }
        if name in nested:
            summary["structures"][name]["lesions_by_content"] = _pooled_by_content(
                [c[name]["lesions_by_content"] for c in per_case])
    labels = [int(c["grade"] != "none") for c in per_case]
    if len(set(labels)) == 2:
        summary["abnormality"] = binary_report([c["abnormality_probability"] for c in per_case], labels, 0.5)
    summary["per_case"] = per_case
    return summary


def nested_regions(manifest: Any) -> dict[str, str]:
    """Region name -> the largest other region inside it (e.g. WT -> TC); regions with none are left out."""
    out = {}
    for outer in manifest.regions:
        inside = [r for r in manifest.regions if set(r.labels) < set(outer.labels)]
        if inside:
            out[outer.name] = max(inside, key=lambda r: len(r.labels)).name
    return out


def _pooled_by_content(counts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum :func:`medcnncad.metrics.segmentation.detection_by_content` counts over cases, with the two sensitivities."""
    total = {k: sum(c[k] for c in counts) for k in ("with_reference", "with_detected", "without_reference",
                                                     "without_detected")}
    return {"inner": counts[0]["inner"], **total,
            "sensitivity_with": total["with_detected"] / total["with_reference"] if total["with_reference"] else None,
            "sensitivity_without": (total["without_detected"] / total["without_reference"]
                                    if total["without_reference"] else None)}


def _missed(structure: dict[str, Any]) -> str:
    """" (k missed)" when the HD95 median leaves out cases where nothing was predicted, else ""."""
    k = structure.get("hd95_mm_missed") or 0
    return f" ({k} missed)" if k else ""


def format_table(summary: dict[str, Any]) -> str:
    """Markdown table of a summary from :func:`evaluate_on_phantoms`."""
    lines = [f"model {summary['model']} {summary['version']}, {summary['cases']} held-out phantoms "
             f"(seeds {summary['seeds'][0]}-{summary['seeds'][1]}), median {summary['seconds_per_case_median']:.1f} "
             "s per case", "",
             f"preset {summary.get('preset', 'classic')}, sequences given: {', '.join(summary.get('channels', []))}; "
             f"{summary.get('tumor_free_cases', 0)} tumor-free cases. Dice over the cases whose reference has the "
             "structure; 'empty ok' = share of the other cases where the prediction is empty too. HD95 over the cases "
             "with a prediction; '(k missed)': cases with nothing predicted, which have no distance.", "",
             "Lesions: 'any overlap' counts every reference component and one shared voxel; 'BraTS 2023' "
             "merges reference components within 3 mm, matches within 3 mm and ignores reference lesions "
             "of 0.05 mL or less; its lesion-wise Dice is averaged over all cases, as the challenge ranks.", "",
             "| structure | cases | Dice mean | Dice median | Dice min | HD95 median (mm) | lesion sensitivity "
             "| FP lesions / case | BraTS 2023 sensitivity | BraTS 2023 FP / case | BraTS 2023 lesion-wise Dice "
             "| empty ok |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary["structures"].items():
        f = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
        lines.append(f"| {name} | {s.get('cases_with_structure', '')} | {f(s['dice_mean'])} | {f(s['dice_median'])} | "
                     f"{f(s['dice_min'])} | {f(s['hd95_mm_median'], 2)}{_missed(s)} | "
                     f"{f(s['lesion_sensitivity'], 2)} | "
                     f"{s['false_positive_lesions_per_case']:.2f} | {f(s.get('lesion_sensitivity_brats2023'), 2)} | "
                     f"{f(s.get('false_positive_lesions_per_case_brats2023'), 2)} | "
                     f"{f(s.get('lesionwise_dice_mean_brats2023'))} | {f(s.get('empty_correct'), 2)} |")
    for name, s in summary["structures"].items():
        split = s.get("lesions_by_content")
        if split:
            lines += ["", f"{name} lesions (any overlap) holding {split['inner']}: {split['with_detected']} of "
                          f"{split['with_reference']} detected; without {split['inner']}: "
                          f"{split['without_detected']} of {split['without_reference']}"]
    if summary.get("abnormality"):
        a = summary["abnormality"]
        lines += ["", f"case abnormality (any tumor) from the segmentation: AUC {f(a['auc'])}, sensitivity "
                      f"{f(a['sensitivity'], 2)} and specificity {f(a['specificity'], 2)} at 0.5, "
                      f"Brier {a['brier']:.3f}, "
                      f"ECE {a['ece_10_bins']:.3f}"]
    return "\n".join(lines)


CASE_CALIBRATION_SEED_BASE = 250_000  # validation-side seeds: never training, never held-out test


def fit_case_calibration(model_id: str, n_cases: int = 40, preset: str = "robust", tumor_free: float = 0.5,
                         seed_base: int = CASE_CALIBRATION_SEED_BASE, device: str = "auto",
                         channels: list[str] | None = None) -> dict[str, Any]:
    """Platt scaling of a model's case abnormality score, fitted on phantoms half of which are tumor-free.

    ``channels``: the sequences given to the model (default all its inputs); the block records
    them as ``inputs`` and applies only to runs given exactly those. The model runs in its own
    default inference mode. Returns the fitted block with AUC/Brier/log loss/ECE of the score
    ``before``, ``after`` calibration on the same cases and ``leave_one_out`` (each case calibrated
    by a fit on the others: what :func:`calibration_helps` judges), and the per-case scores.
    """
    if not 0.0 < tumor_free < 1.0:
        raise InputError(f"tumor-free fraction {tumor_free}: calibration needs cases with and without tumor "
                         "(choose a value between 0 and 1)")
    config = dataclasses.replace(get_preset(preset), tumor_free_fraction=tumor_free)
    segmenter = Segmenter(load_model(model_id), device=device)
    given = _given_channels(segmenter.manifest, channels)
    scores, labels = [], []
    for seed in tqdm(range(seed_base, seed_base + n_cases), desc="calibration phantoms", unit="case"):
        case = make_phantom(seed, config)
        scores.append(case_score(segmenter.run({name: case.images[name] for name in given})))
        labels.append(int(case.grade != "none"))
    if len(set(labels)) < 2:
        raise InputError(f"{n_cases} calibration phantoms from seed {seed_base} are all "
                         f"{'tumor-free' if labels[0] == 0 else 'tumor-bearing'}: use more cases (--n)")
    block = fit_case_calibration_block(scores, labels)
    mode = "with" if segmenter.manifest.inference.test_time_augmentation else "without"
    return {**block, "inputs": given,
            "fitted_on": f"{n_cases} '{preset}' phantoms with tumor-free fraction {tumor_free} "
                         f"(seeds {seed_base}-{seed_base + n_cases - 1}; {sum(labels)} with a tumor), given "
                         f"{'+'.join(given)}, {mode} test-time augmentation",
            "before": binary_report(scores, labels, 0.5),
            "after": binary_report(apply_case_calibration(np.array(scores), block), labels, 0.5),
            "leave_one_out": binary_report(leave_one_out_calibrated(scores, labels), labels, 0.5),
            "cases": [{"seed": seed_base + i, "score": s, "tumor": y} for i, (s, y) in enumerate(zip(scores, labels))]}


def calibration_helps(calibration: dict[str, Any]) -> bool:
    """Whether a fit from :func:`fit_case_calibration` beats the raw score on cases it was not fitted
    on: its leave-one-out log loss is lower than the uncalibrated score's."""
    return calibration["leave_one_out"]["log_loss"] < calibration["before"]["log_loss"]


def _given_channels(manifest: Any, channels: list[str] | None) -> list[str]:
    """The model's inputs in manifest order, restricted to ``channels`` (InputError naming unknown ones)."""
    given = [name for name in manifest.input_names if channels is None or name in channels]
    unknown = sorted(set(channels or []) - set(manifest.input_names))
    if unknown or not given:
        raise InputError(f"channels {channels}: model {manifest.id} has inputs {manifest.input_names}")
    return given


def write_case_calibration(model_folder: str, calibration: dict[str, Any]) -> None:
    """Store a ``case_calibration`` block in a model folder's manifest (atomically; weights untouched).

    The block replaces one fitted with the same inputs and keeps those fitted with other inputs.
    """
    path = Path(model_folder) / "manifest.json"
    raw = json.loads(path.read_text())
    block = {k: calibration[k] for k in ("method", "a", "b", "no_candidate_probability", "inputs", "fitted_on")
             if k in calibration}
    current = parse_manifest(raw, path.parent, where=str(path)).case_calibration  # each block with its inputs
    raw["case_calibration"] = [b for b in current if set(b["inputs"]) != set(block["inputs"])] + [block]
    parse_manifest(raw, path.parent, where=str(path))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(raw, indent=2) + "\n")
    tmp.replace(path)
