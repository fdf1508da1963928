"""Tumor core refinement (``postprocessing.core_refinement``) swept over its settings on phantoms.

For each tumor case of a preset (validation side by default: seeds 250600-250619 of ``heldout``, never
the test seeds from 900000), the model segments the case once (single pass, no test-time augmentation,
the manifest's other post-processing applied), then :func:`medcnncad.inference.refine.refine_core` is applied with
each setting below, always with every input required and ungated by the enhancing share (so every case
shows what the refinement would do); unless a setting says otherwise, a case whose core would change
volume more than 2x either way keeps the network's labels. Prints TC Dice per case and the mean per
grade for the network and each setting, plus each case's enhancing share of the predicted core (the
manifest's gate).

    python scripts/core_refinement_sweep.py [--model brats-robust-unet] [--preset heldout] [--seed-base 250600]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import SimpleITK as sitk

from medcnncad.data.phantom import make_phantom, preset
from medcnncad.inference.refine import refine_core
from medcnncad.inference.segmenter import Segmenter
from medcnncad.metrics.segmentation import dice
from medcnncad.models.manifest import CoreRefinement
from medcnncad.models.registry import load_model

SETTINGS = {"k2": {"components": 2}, "k3": {"components": 3}, "k4": {"components": 4},
            "k4 no volume limit": {"components": 4, "max_volume_change": float("inf")},
            "k4 votes alone": {"components": 4, "network_weight": 0.0}}
NAN = float("nan")  # Dice of a case without the structure: left out of the means


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="brats-robust-unet")
    p.add_argument("--preset", default="heldout")
    p.add_argument("--seed-base", type=int, default=250600)
    p.add_argument("--n", type=int, default=20)
    args = p.parse_args()
    model = load_model(args.model)
    manifest = model.manifest
    base = replace(manifest.postprocessing, core_refinement=None)
    segmenter = Segmenter(model)
    segmenter.manifest = replace(manifest, postprocessing=base)  # the network's own labels
    values = {x.name: x.value for x in manifest.labels}
    spec = CoreRefinement(values["NCR"], values["ED"], (values["ET"],), tuple(manifest.input_names), float("inf"))
    core = [i for i, c in enumerate(manifest.postprocessing.channels) if c.value in (values["NCR"], values["ET"])]
    names = [c.name for c in manifest.postprocessing.channels]
    rows: list[tuple[str, list[float]]] = []
    for seed in range(args.seed_base, args.seed_base + args.n):
        case = make_phantom(seed, preset(args.preset))
        if case.grade == "none":
            continue
        ref = np.isin(sitk.GetArrayFromImage(case.label), (values["NCR"], values["ET"]))
        result = segmenter.run(case.images, tta=False)
        probabilities = [result.probabilities[names[i]] for i in core]
        voxel_ml = float(np.prod(result.reference.GetSpacing())) / 1000
        scores, share = [dice(np.isin(result.label_map, spec.fixed_labels + (spec.core_label,)), ref, NAN)], None
        for setting in SETTINGS.values():
            labels = result.label_map.copy()
            outcome = refine_core(labels, probabilities, result.images, replace(spec, **setting), voxel_ml)
            share = outcome.fixed_share
            scores.append(dice(np.isin(labels, spec.fixed_labels + (spec.core_label,)), ref, NAN))
        rows.append((case.grade, scores))
        print(seed, case.grade, f"ET share {share if share is not None else float('nan'):.2f}",
              "  ".join(f"{n} {s:.3f}" for n, s in zip(["network", *SETTINGS], scores)), flush=True)
    for grade in ("HGG", "LGG", None):
        sel = np.array([s for g, s in rows if grade in (None, g)])
        if not len(sel):
            continue
        print(grade or "all", len(sel), "  ".join(f"{n} {m:.3f}" for n, m in zip(["network", *SETTINGS],
                                                                                 np.nanmean(sel, 0))))


if __name__ == "__main__":
    main()
