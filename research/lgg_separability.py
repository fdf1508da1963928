"""Low-grade heldout test phantoms: how well could tumor core be told from oedema at all?

An upper bound that is told the answer. For each low-grade case of an ``evaluate-phantoms --json``
run, inside the reference whole tumor, a logistic regression (scikit-learn) is fitted **on that
same case's reference** to separate tumor core (labels 1, 4) from oedema (label 2), and the tumor
core Dice of its own prediction is reported, for three feature sets:

- ``intensity``: the four sequences, each smoothed (Gaussian, sigma 1 mm) and z-scored within the
  whole tumor;
- ``depth``: the distance (mm) from the whole tumor's boundary alone (a shape prior: the core is
  the inner part);
- ``both``: the two together;
- ``pooled``: intensities and depth, but one regression fitted on all the low-grade cases together
  (still told the answer, but one rule for every case, as a network must be: what is lost against
  ``both`` is what differs from case to case, e.g. contrast that flips sign).

A network sees more context than one voxel's intensities and depth, so this is not a strict bound,
but where even this in-sample fit cannot separate the core, the image does not show it.

    python scripts/lgg_separability.py [docs/evaluations/robust_heldout.json]
"""

from __future__ import annotations

import sys

import numpy as np
import SimpleITK as sitk
from lgg_contrast import low_grade_cases  # scripts/ is on the path when this script runs
from sklearn.linear_model import LogisticRegression

from medcnncad.data.phantom import SEQUENCES
from medcnncad.metrics.segmentation import dice


def _features(case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per whole-tumor voxel: smoothed z-scored intensities (n, 4), depth in mm (n,), is-core (n,)."""
    label = case.label
    labels = sitk.GetArrayFromImage(label)  # K, J, I
    wt = labels > 0
    depth = -sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        sitk.Cast(label > 0, sitk.sitkUInt8), insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
    columns = []
    for name in SEQUENCES:
        smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(case.images[name], sitk.sitkFloat32), 1.0)
        values = sitk.GetArrayFromImage(smooth)[wt].astype(np.float64)
        columns.append((values - values.mean()) / (values.std() + 1e-9))
    return np.stack(columns, 1), depth[wt].astype(np.float64), np.isin(labels[wt], (1, 4))


def oracle_dice(x: np.ndarray, core: np.ndarray) -> float:
    """TC Dice of a logistic regression fitted and evaluated on the same voxels."""
    return dice(LogisticRegression(max_iter=2000).fit(x, core).predict(x).astype(bool), core)


def main(path: str = "docs/evaluations/robust_heldout.json") -> None:
    rows, cases = [], []
    for c, case in low_grade_cases(path):
        intensity, depth, core = _features(case)
        cases.append((np.column_stack([intensity, depth]), core))
        rows.append({"intensity": oracle_dice(intensity, core), "depth": oracle_dice(depth[:, None], core),
                     "both": oracle_dice(cases[-1][0], core), "model": c["TC"]["dice"], "seed": c["seed"]})
    pooled = LogisticRegression(max_iter=2000).fit(np.concatenate([x for x, _ in cases]),
                                                   np.concatenate([y for _, y in cases]))
    for row, (x, core) in zip(rows, cases):
        row["pooled"] = dice(pooled.predict(x).astype(bool), core)
        print(f"{row.pop('seed')}  TC Dice: model {row['model']:.3f}  told-the-answer fits: intensity "
              f"{row['intensity']:.3f}  depth {row['depth']:.3f}  both {row['both']:.3f}  pooled {row['pooled']:.3f}")
    means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    print(f"mean over {len(rows)} low-grade cases: " + "  ".join(f"{k} {v:.3f}" for k, v in means.items()))


if __name__ == "__main__":
    main(*sys.argv[1:])
