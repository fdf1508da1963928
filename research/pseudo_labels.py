"""Label unlabelled BraTS 2023 cases with a model's four-sequence segmentation (pseudo-labels for training).

For each case folder given (BraTS 2023 names: ``<case>-t1c.nii.gz``, ``-t1n``, ``-t2w``, ``-t2f``), runs
``medcnncad segment`` with every sequence (``--precision manifest``, the model's own test-time augmentation),
keeps the label map's largest connected component (26-connectivity; satellites and specks dropped) and writes
``<out>/<case>/``: links to the four images and ``<case>-seg.nii.gz`` in the BraTS 2023 convention
(1 NETC, 2 SNFH, 3 ET), which ``describe_case`` reads as a labelled case (``train segmentation --real-from``), and
``pseudo_label.json`` (how it was made), which makes it read the reference as a model's, not an expert's.

The output is derived from patients' scans: write it outside the repository.

    .venv/bin/python research/pseudo_labels.py --out /tmp/pseudo ../shared/realdata/BraTS-GLI-00001-000_unlabelled \
        ../shared/realdata/BraTS-MET-00110-000_unlabelled [--model brats-robust-unet]

Plan and numbers: docs/evaluations/robust-pseudo-labels_plan.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medcnncad.cli.app import main as cli_main
from medcnncad.data.real_cases import BRATS2023_FILES, PSEUDO_LABEL_MARKER

TO_BRATS2023 = np.array([0, 1, 2, 0, 3], np.uint8)  # engine values 0, 1 NCR, 2 ED, 4 ET -> 0, 1, 2, 3


def largest_component(labels: np.ndarray) -> np.ndarray:
    """``labels`` (K, J, I) with everything outside its largest 26-connected foreground component set to 0."""
    components, n = ndimage.label(labels > 0, np.ones((3, 3, 3), bool))
    if n == 0:
        return labels
    sizes = np.bincount(components.ravel())[1:]
    return np.where(components == int(np.argmax(sizes)) + 1, labels, 0).astype(labels.dtype)


def pseudo_label(folder: Path, out: Path, model: str) -> dict:
    case_id = folder.name.removesuffix("_unlabelled")
    inputs = {channel: sorted(folder.glob(patterns[0]))[0] for channel, patterns in BRATS2023_FILES.items()}
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["segment", "--model", model, "--out", tmp, "--device", "cpu", "--precision", "manifest"]
        for channel, path in inputs.items():
            argv += ["--input", f"{channel}={path}"]
        if cli_main(argv) != 0:
            raise SystemExit(f"{folder}: segment failed")
        image = sitk.ReadImage(str(Path(tmp) / "labels.nii.gz"))
    labels = sitk.GetArrayFromImage(image)
    kept = largest_component(labels)
    case_out = out / case_id
    case_out.mkdir(parents=True, exist_ok=True)
    for path in inputs.values():
        link = case_out / path.name.replace(folder.name, case_id)
        if not link.exists():
            link.symlink_to(path.resolve())
    seg = sitk.GetImageFromArray(TO_BRATS2023[kept])
    seg.CopyInformation(image)
    sitk.WriteImage(seg, str(case_out / f"{case_id}-seg.nii.gz"))
    ml = float(np.prod(image.GetSpacing())) / 1000
    record = {"case": case_id, "teacher": model, "inputs": sorted(inputs), "precision": "manifest",
              "kept": "largest 26-connected component", "predicted_ml": round(float((labels > 0).sum()) * ml, 2),
              "kept_ml": round(float((kept > 0).sum()) * ml, 2),
              "kept_ml_by_label": {name: round(float((kept == v).sum()) * ml, 2)
                                   for name, v in (("NCR", 1), ("ED", 2), ("ET", 4))}}
    # the marker makes describe_case read the reference as a model's, not an expert's
    (case_out / PSEUDO_LABEL_MARKER).write_text(json.dumps(record, indent=1) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--model", default="brats-robust-unet")
    args = parser.parse_args()
    for folder in args.folders:
        print(json.dumps(pseudo_label(folder, args.out, args.model)), flush=True)


if __name__ == "__main__":
    main()
