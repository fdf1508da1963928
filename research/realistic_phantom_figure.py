"""Example slices of realistic phantoms (docs/phantoms.md): one axial slice through each tumor, four sequences + label.

Usage: .venv/bin/python research/realistic_phantom_figure.py OUT.png [SEED ...] [--donor CASE_DIR ...]
(with --donor: real tumors transplanted from those case folders instead of synthetic ones)
"""

import dataclasses
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from medcnncad.data.phantom import SEQUENCES, make_phantom, preset  # noqa: E402
from medcnncad.data.transplant import transplant_phantom  # noqa: E402

args = sys.argv[2:]
donors = args[args.index("--donor") + 1:] if "--donor" in args else []
args = args[:args.index("--donor")] if "--donor" in args else args
out = sys.argv[1]
seeds = [int(s) for s in args] or [1, 2, 4, 5]
# 1 mm, untilted, skull-stripped, tumor always present: the tumor model alone, as the network would see it at 1 mm
config = dataclasses.replace(preset("realistic"), tumor_free_fraction=0.0, tilt_deg=0.0, skull_fraction=0.0,
                             output_spacing_mm=((1.0, 1.0), (1.0, 1.0)), random_slice_axis=False)
fig, axes = plt.subplots(len(seeds), 5, figsize=(12, 2.6 * len(seeds)))
for row, seed in zip(np.atleast_2d(axes), seeds):
    case = transplant_phantom(seed, donors, config) if donors else make_phantom(seed, config)
    label = sitk.GetArrayFromImage(case.label)
    k = int(np.argmax((label > 0).sum((1, 2))))
    for ax, name in zip(row, [*SEQUENCES, "label"]):
        array = label if name == "label" else sitk.GetArrayFromImage(case.images[name])
        sl = array[k][::-1]
        if name == "label":
            ax.imshow(sl, cmap="jet", vmin=0, vmax=4, interpolation="nearest")
        else:
            ax.imshow(sl, cmap="gray", vmin=0, vmax=np.percentile(array[array > 0], 99.5))
        ax.set_axis_off()
        ax.set_title(f"{name}" + (f"  seed {seed}: {case.info['kind']}" if name == "T1" else ""), fontsize=8)
fig.tight_layout()
fig.savefig(out, dpi=70)
