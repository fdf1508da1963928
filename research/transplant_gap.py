"""Does the shipped model's real-patient gap show on real tumors transplanted into template anatomy?

Segments N transplant phantoms (seeds 900000...; donors: the labelled BraTS-preprocessed cases of a realdata
folder, each case one donor at random) with a model and prints whole-tumor / tumor-core Dice per case and
their means. Numbers quoted in docs/phantoms.md ("Measured"). No model was trained on these donors.

Usage: .venv/bin/python research/transplant_gap.py REALDATA_DIR [N] [MODEL]
"""

import json
import sys

import numpy as np
import SimpleITK as sitk

from medcnncad.data.phantom import preset
from medcnncad.data.real_cases import discover_real_cases
from medcnncad.data.transplant import transplant_phantom
from medcnncad.inference.segmenter import Segmenter
from medcnncad.metrics.segmentation import dice
from medcnncad.models.registry import load_model

root = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 6
model = sys.argv[3] if len(sys.argv) > 3 else "brats-robust-unet"
donors = [str(c.inputs[next(iter(c.inputs))].parent) if c.source != "TCGA-BraTSToolkit" else
          str(c.inputs[next(iter(c.inputs))].parent.parent)
          for c in discover_real_cases(root)
          if c.labelled and c.preprocessed and set(c.regions) == {"WT", "TC", "ET"}]
segmenter = Segmenter(load_model(model), device="cpu")
rows = []
for seed in range(900_000, 900_000 + n):
    case = transplant_phantom(seed, donors, preset("realistic"))
    result = segmenter.run(dict(case.images))
    ref = sitk.GetArrayFromImage(case.label)
    pred = result.label_map
    row = {"seed": seed, "donor": case.info["donor"], "skull": case.info["skull"],
           "spacing_mm": [round(v, 2) for v in case.info["spacing_mm"]],
           "WT": dice(np.isin(pred, (1, 2, 4)), np.isin(ref, (1, 2, 4))),
           "TC": dice(np.isin(pred, (1, 4)), np.isin(ref, (1, 4)))}
    rows.append(row)
    print(json.dumps(row), flush=True)
print(json.dumps({"model": model, "cases": n, "WT_mean": float(np.mean([r["WT"] for r in rows])),
                  "TC_mean": float(np.mean([r["TC"] for r in rows]))}))
