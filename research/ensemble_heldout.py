"""Does averaging several models' probabilities help? Heldout validation-side phantoms, raw output.

For each tumor case of the heldout preset (seeds ``--seed-base`` .. + ``--n``, validation side by
default: never the test seeds from 900000), every model given segments the four sequences once (no
test-time augmentation, no lesion filters, no second stage), and the mean of their NCR / ED / ET
probabilities is turned into a label map by the first model's rule (arg-max). Prints per case the
TC Dice of each model and of the mean (last column), then WT / TC / ET Dice per grade (over the
cases whose reference has the structure). The models must be softmax models with the same output channels.

    python scripts/ensemble_heldout.py brats-robust-unet train_runs/run6_model train_runs/run7_model
"""

from __future__ import annotations

import argparse

import numpy as np
import SimpleITK as sitk

from medcnncad.data.phantom import make_phantom, preset
from medcnncad.inference.segmenter import Segmenter, label_map_from_probabilities
from medcnncad.metrics.segmentation import dice
from medcnncad.models.registry import load_model

REPORTED = ("WT", "TC", "ET")  # structures of the first model's manifest (labels or regions)


def case_rows(segmenters: list[Segmenter], seed: int) -> tuple[str, list[list[float]]] | None:
    """(grade, [WT, TC, ET] Dice per model and for the mean) of one phantom; None if tumor-free."""
    case = make_phantom(seed, preset("heldout"))
    if case.grade == "none":
        return None
    ref = sitk.GetArrayFromImage(case.label)  # (K, J, I), on the images' grid
    names = [c.name for c in segmenters[0].manifest.postprocessing.channels]
    probs = []
    for s in segmenters:
        r = s.run(case.images, tta=False)  # probabilities leave out the softmax background channel
        rest = 1 - sum(r.probabilities.values())
        probs.append(np.stack([r.probabilities.get(n, rest) for n in names]))
    labels = [label_map_from_probabilities(p, segmenters[0].manifest) for p in probs + [np.mean(probs, 0)]]
    values = [segmenters[0].manifest.structures()[name] for name in REPORTED]
    return case.grade, [[dice(np.isin(lab, v), np.isin(ref, v), float("nan")) for v in values] for lab in labels]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--seed-base", type=int, default=250600)
    p.add_argument("--n", type=int, default=20)
    args = p.parse_args()
    segmenters = [Segmenter(load_model(m)) for m in args.models]
    rows = []
    for seed in range(args.seed_base, args.seed_base + args.n):
        row = case_rows(segmenters, seed)
        if row is not None:
            rows.append(row)
            print(seed, row[0], " | ".join(f"TC {r[1]:.3f}" for r in row[1]), flush=True)
    print("columns:", ", ".join([*args.models, "mean of all"]))
    for grade in ("HGG", "LGG", None):
        sel = np.array([r for g, r in rows if grade in (None, g)])
        means = np.nanmean(sel, axis=0)
        print(grade or "all", len(sel), " | ".join("WT %.3f TC %.3f ET %.3f" % tuple(m) for m in means))


if __name__ == "__main__":
    main()
