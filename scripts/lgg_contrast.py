"""Low-grade heldout test phantoms: how visible is the non-enhancing mass against its oedema?

For each low-grade case of the heldout 4-sequence test set, the difference between the mean signal
of the non-enhancing mass (label 1) and of the oedema (label 2), in units of their pooled standard
deviation, per sequence, next to the model's TC Dice from an ``evaluate-phantoms --json`` file.

    python scripts/lgg_contrast.py [docs/evaluations/robust_heldout.json]
"""

from __future__ import annotations

import json
import sys

import numpy as np
import SimpleITK as sitk

from medcnncad.phantom import SEQUENCES, make_phantom, preset


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
    summary = json.load(open(path))
    config = preset(summary["preset"])
    by_sign: dict[bool, list[float]] = {True: [], False: []}
    for c in summary["per_case"]:
        if c["grade"] != "LGG":
            continue
        d = contrast(make_phantom(c["seed"], config))
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
