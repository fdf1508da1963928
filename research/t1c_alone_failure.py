"""Where does post-contrast T1 alone fail: in the network's probabilities, or in the post-processing?

Runs the default model (or ``--model``) on the T1c of each labelled real case, as ``evaluate-real`` does
(the clinical chain, test-time augmentation by the manifest), and reports per case: the shipped
whole-tumor Dice; the Dice of the foreground probability map thresholded at 0.5, 0.3 and 0.1 before any
post-processing floor or filter (the probability maps keep removed candidates; inside the brain mask);
the mean and 95th percentile of the foreground probability inside the reference tumor; and the
candidates post-processing removed that touch the reference tumor (stage, mL, probabilities).

Diagnostic only: it reads the real cases (never copied) and changes nothing.

    .venv/bin/python research/t1c_alone_failure.py ../shared/realdata [--cases ID ...] [--model ID]

Numbers: docs/models.md, "Where T1c alone fails".
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import SimpleITK as sitk

from medcnncad.data.real_cases import discover_real_cases, load_reference
from medcnncad.evaluation.real import REGIONS
from medcnncad.inference.segmenter import Segmenter
from medcnncad.io.images import same_space
from medcnncad.models.registry import DEFAULT_MODEL, load_model


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--cases", nargs="*")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    segmenter = Segmenter(load_model(args.model), "cpu")
    rows = []
    for case in discover_real_cases(args.root):
        if not case.labelled or "T1c" not in case.inputs or (args.cases and case.case_id not in args.cases):
            continue
        result = segmenter.run({"T1c": str(case.inputs["T1c"])})
        reference = load_reference(case, result.reference)
        if not same_space(reference, result.reference):
            reference = sitk.Resample(reference, result.reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                      sitk.sitkUInt8)
        ref = sitk.GetArrayFromImage(reference)
        ref_wt = np.isin(ref, REGIONS["WT"])
        foreground = np.sum([p.astype(np.float32) for p in result.probabilities.values()], axis=0)
        shipped = np.isin(result.label_map, [v for v in (1, 2, 4)])
        touching = []
        for removed in result.removed_candidates:
            k, j, i = (int(round(c)) for c in removed.centroid_kji)
            near = ref_wt[max(k - 3, 0):k + 4, max(j - 3, 0):j + 4, max(i - 3, 0):i + 4].any()
            if near:
                touching.append({"stage": removed.stage, "ml": round(removed.volume_ml, 2),
                                 "max_p": removed.max_probability, "filter_p": removed.classifier_probability})
        inside = foreground[ref_wt]
        row = {"case": case.case_id, "reference_ml": round(float(ref_wt.sum() * np.prod(result.reference.GetSpacing())
                                                                / 1000), 1),
               "dice_shipped": round(dice(shipped, ref_wt), 3),
               **{f"dice_p>{t}": round(dice(foreground > t, ref_wt), 3) for t in (0.5, 0.3, 0.1)},
               "p_in_tumor_mean": round(float(inside.mean()), 3) if inside.size else None,
               "p_in_tumor_p95": round(float(np.percentile(inside, 95)), 3) if inside.size else None,
               "removed_near_tumor": touching}
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
