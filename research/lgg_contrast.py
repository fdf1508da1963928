"""Low-grade heldout test phantoms: how visible is the non-enhancing mass against its oedema?

For each low-grade case of the heldout 4-sequence test set, the difference between the mean signal
of the non-enhancing mass (label 1) and of the oedema (label 2), in units of their pooled standard
deviation, per sequence, next to the model's TC Dice from an ``evaluate-phantoms --json`` file.

    python scripts/lgg_contrast.py [docs/evaluations/robust_heldout.json]
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import SimpleITK as sitk

from medcnncad.data.phantom import SEQUENCES, PhantomCase, make_phantom, preset


def low_grade_cases(path: str) -> Iterator[tuple[dict[str, Any], PhantomCase]]:
    """Each low-grade case of an ``evaluate-phantoms --json`` file with its phantom made again, from the
    run's preset and, when the run replaced it (``--tumor-free``), its tumor-free share."""
    summary = json.load(open(path))
    config = preset(summary["preset"])
    if summary.get("tumor_free_fraction") is not None:
        config = dataclasses.replace(config, tumor_free_fraction=summary["tumor_free_fraction"])
    for entry in summary["per_case"]:
        if entry["grade"] == "LGG":
            yield entry, make_phantom(entry["seed"], config)


def contrast(case) -> dict[str, float]:
    """(mean mass - mean oedema) / pooled SD per sequence, on the phantom's own grid."""
    labels = sitk.GetArrayFromImage(case.label)  # K, J, I
    out = {}
    for name in SEQUENCES:
        image = sitk.GetArrayFromImage(case.images[name]).astype(np.float64)
        mass, oedema = image[labels == 1], image[labels == 2]
        out[name] = float((mass.mean() - oedema.mean()) / np.sqrt(0.5 * (mass.var() + oedema.var())))
    return out


def main(path: str = "docs/evaluations/robust_heldout.json") -> None:
    by_sign: dict[bool, list[float]] = {True: [], False: []}
    for c, case in low_grade_cases(path):
        d = contrast(case)
        ratio = c["TC"]["predicted_volume_ml"] / c["TC"]["reference_volume_ml"]
        by_sign[d["FLAIR"] < 0].append(c["TC"]["dice"])
        print(f"{c['seed']}  TC Dice {c['TC']['dice']:.3f}  predicted/reference TC volume {ratio:.2f}  " +
              "  ".join(f"{k} {v:+.2f}" for k, v in d.items()))
    for darker, dice in by_sign.items():
        if dice:
            print(f"mass {'darker' if darker else 'brighter'} than oedema on FLAIR: {len(dice)} cases, "
                  f"mean TC Dice {np.mean(dice):.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
