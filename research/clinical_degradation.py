"""How much of a held-out patient's whole-tumor Dice survives clinical-style acquisition of the other sequences?

The BraTS-preprocessed held-out patients come co-registered at 1 mm. Clinical scans do not: the post-contrast T1
is often a 3D 1 mm acquisition while FLAIR and T2 are 2D with thick slices, and the series are not aligned. This
takes each held-out patient with two or more sequences, keeps the first sequence in the model's channel order as
given (the engine's reference grid, so Dice is measured on the same grid as in ``evaluate-real``), and re-acquires
every other sequence (fixed before any run, the same for every patient), after setting a z-scored volume's
constant background to 0 as a scanner's would be:

- a 2D axial acquisition: slice profile a Gaussian of FWHM 5 mm along z, then sampled at 5 mm slices and
  0.9 x 0.9 mm in plane (linear interpolation);
- misaligned by a rigid motion about the volume centre: the second sequence by rotations (3, -2, 4) degrees about
  x, y, z and a shift (4, -3, 5) mm, the third by (-4, 3, -2) degrees and (-5, 2, -4) mm, the fourth by
  (2, 4, -3) degrees and (3, 5, -2) mm.

The engine (the model's clinical chain: registration onto the first sequence, brain mask where needed) then runs as
``evaluate-real`` runs it (``--precision manifest``, the model's test-time augmentation), and the whole-tumor Dice is
compared with the same patient's undegraded row. The degraded images are real patients' scans, simulated thick
and misaligned: the result says what thick slices and misregistration cost, not how a real clinical scan does (no
skull, scanner or contrast differences are simulated).

    .venv/bin/python research/clinical_degradation.py ../shared/realdata --cases ID ... [--model ID] [--out X.json]

Numbers: docs/models.md, "Thick, misaligned sequences".
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from medcnncad.data.acquisition import reacquire
from medcnncad.data.real_cases import discover_real_cases, load_reference
from medcnncad.evaluation.real import score_case
from medcnncad.inference.machine_policy import build_segmenter
from medcnncad.io.images import read_volume, same_space
from medcnncad.models.registry import DEFAULT_MODEL, load_model
from medcnncad.preprocessing.background import zero_constant_background

MOTIONS = [((3, -2, 4), (4, -3, 5)), ((-4, 3, -2), (-5, 2, -4)), ((2, 4, -3), (3, 5, -2))]
SLICE_MM, IN_PLANE_MM = 5.0, 0.9


def reacquired(image: sitk.Image, motion: tuple[tuple[float, ...], tuple[float, ...]]) -> sitk.Image:
    """``image`` as a 5 mm axial acquisition of the same head moved by ``motion`` (degrees, mm)."""
    return reacquire(image, SLICE_MM, IN_PLANE_MM, motion[0], motion[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--cases", nargs="*")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--out")
    parser.add_argument("--no-motion", action="store_true", help="thick slices only, every sequence in place")
    parser.add_argument("--thick-first", action="store_true",
                        help="re-acquire only the first sequence (the output grid), in place; the others as given")
    args = parser.parse_args()
    motions = [((0, 0, 0), (0, 0, 0))] * len(MOTIONS) if args.no_motion else MOTIONS
    segmenter = build_segmenter(load_model(args.model), "cpu", "manifest")
    order = [channel.name for channel in segmenter.manifest.inputs]
    rows = []
    for case in discover_real_cases(args.root):
        if not case.labelled or len(case.inputs) < 2 or (args.cases and case.case_id not in args.cases):
            continue
        names = [name for name in order if name in case.inputs]
        reference = load_reference(case)
        row: dict = {"case": case.case_id, "inputs": names, "kept": names[0]}
        with tempfile.TemporaryDirectory() as tmp:
            if args.thick_first:
                _thick_first(segmenter, case, names, reference, Path(tmp), row)
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            given = {names[0]: str(case.inputs[names[0]])}
            for name, motion in zip(names[1:], motions):
                path = Path(tmp) / f"{name}.nii.gz"
                head, _, _ = zero_constant_background(read_volume(case.inputs[name]))  # a scanner's 0 around the head
                sitk.WriteImage(reacquired(head, motion), str(path))
                given[name] = str(path)
            for label, inputs in (("as given", {n: str(case.inputs[n]) for n in names}), ("re-acquired", given)):
                start = time.perf_counter()
                result = segmenter.run(inputs)
                ref = reference if same_space(reference, result.reference) else sitk.Resample(
                    reference, result.reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
                scores = score_case(result.label_map, sitk.GetArrayViewFromImage(ref),
                                    result.reference.GetSpacing(), case.regions)
                registration = [s for s in result.preprocessing if s["step"] == "registration"]
                row[label] = {"dice_WT": round(scores["dice_WT"], 3), "found": scores["found"],
                              "largest_outside_ml": round(scores["largest_outside_ml"], 2),
                              "seconds": round(time.perf_counter() - start, 1),
                              "registration": registration[0] if registration else None}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "motion": not args.no_motion,
                                              "thick_first": args.thick_first, "rows": rows}, indent=1) + "\n")


def _on(label: sitk.Image, grid: sitk.Image) -> sitk.Image:
    return label if same_space(label, grid) else sitk.Resample(label, grid, sitk.Transform(),
                                                               sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _thick_first(segmenter, case, names: list[str], reference: sitk.Image, tmp: Path, row: dict) -> None:
    """The first sequence re-acquired at 5 mm in place, the others as given; Dice on the thick grid for the engine
    run on that case, and for the labels of the run on the case as given, resampled onto the thick grid."""
    head, _, _ = zero_constant_background(read_volume(case.inputs[names[0]]))
    thick = reacquire(head, SLICE_MM, IN_PLANE_MM, (0, 0, 0), (0, 0, 0))
    sitk.WriteImage(thick, str(tmp / "first.nii.gz"))
    ref = sitk.GetArrayFromImage(_on(reference, thick))
    for label, inputs in (("as given, labels onto the thick grid", {n: str(case.inputs[n]) for n in names}),
                          ("first thick", {names[0]: str(tmp / "first.nii.gz"),
                                           **{n: str(case.inputs[n]) for n in names[1:]}})):
        start = time.perf_counter()
        result = segmenter.run(inputs)
        labels = sitk.GetImageFromArray(result.label_map)
        labels.CopyInformation(result.reference)
        scores = score_case(sitk.GetArrayFromImage(_on(labels, thick)), ref, thick.GetSpacing(), case.regions)
        registration = [s for s in result.preprocessing if s["step"] == "registration"]
        row[label] = {"dice_WT": round(scores["dice_WT"], 3), "found": scores["found"],
                      "largest_outside_ml": round(scores["largest_outside_ml"], 2),
                      "seconds": round(time.perf_counter() - start, 1),
                      "registration": registration[0] if registration else None}


if __name__ == "__main__":
    main()
