"""Evaluation of a model on held-out phantoms (seeds never used in training).

Per case: Dice and HD95 per label/region and lesion-wise detection; summarised as
mean, median, minimum, lesion sensitivity and false-positive lesions per case.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import SimpleITK as sitk

__all__ = ["evaluate_on_phantoms", "format_table"]


def evaluate_on_phantoms(model_id: str, n_cases: int = 20, seed_base: int = 900_000,
                         device: str = "auto") -> dict[str, Any]:
    """Segment ``n_cases`` phantoms (seeds ``seed_base`` ...) and summarise the metrics."""
    from tqdm import tqdm

    from .inference import Segmenter
    from .metrics import compute_metrics
    from .models import load_model
    from .phantom import make_phantom

    segmenter = Segmenter(load_model(model_id), device=device)
    manifest = segmenter.manifest
    structures = manifest.structures()
    per_case: list[dict[str, Any]] = []
    seconds = []
    for seed in tqdm(range(seed_base, seed_base + n_cases), desc="phantoms", unit="case"):
        case = make_phantom(seed)
        t0 = time.perf_counter()
        result = segmenter.run({c.name: case.images[c.name] for c in manifest.inputs})
        seconds.append(time.perf_counter() - t0)
        metrics = compute_metrics(result.label_map, sitk.GetArrayFromImage(case.label), case.label.GetSpacing(),
                                  structures)
        per_case.append({"seed": seed, **{k: v.to_json() for k, v in metrics.items()}})
    summary: dict[str, Any] = {"model": manifest.id, "version": manifest.version, "cases": n_cases,
                               "seeds": [seed_base, seed_base + n_cases - 1],
                               "seconds_per_case_median": float(np.median(seconds)), "structures": {}}
    for name in structures:
        dice = np.array([c[name]["dice"] for c in per_case], dtype=float)
        hd95 = np.array([c[name]["hd95_mm"] for c in per_case if c[name]["hd95_mm"] is not None], dtype=float)
        lesions = [c[name]["lesions"] for c in per_case]
        n_ref = sum(x["reference_lesions"] for x in lesions)
        summary["structures"][name] = {
            "dice_mean": float(dice.mean()), "dice_median": float(np.median(dice)), "dice_min": float(dice.min()),
            "hd95_mm_median": float(np.median(hd95)) if len(hd95) else None,
            "lesion_sensitivity": sum(x["true_positive"] for x in lesions) / n_ref if n_ref else None,
            "false_positive_lesions_per_case": sum(x["false_positive"] for x in lesions) / n_cases,
        }
    summary["per_case"] = per_case
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """Markdown table of a summary from :func:`evaluate_on_phantoms`."""
    lines = [f"model {summary['model']} {summary['version']}, {summary['cases']} held-out phantoms "
             f"(seeds {summary['seeds'][0]}-{summary['seeds'][1]}), median {summary['seconds_per_case_median']:.1f} "
             "s per case", "",
             "| structure | Dice mean | Dice median | Dice min | HD95 median (mm) | lesion sensitivity "
             "| FP lesions / case |",
             "|---|---|---|---|---|---|---|"]
    for name, s in summary["structures"].items():
        f = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
        lines.append(f"| {name} | {f(s['dice_mean'])} | {f(s['dice_median'])} | {f(s['dice_min'])} | "
                     f"{f(s['hd95_mm_median'], 2)} | {f(s['lesion_sensitivity'], 2)} | "
                     f"{s['false_positive_lesions_per_case']:.2f} |")
    return "\n".join(lines)
