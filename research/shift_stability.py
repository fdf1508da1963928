"""Shift stability of brats-robust-unet: segment each held-out phantom as given and with its content moved
0.75 mm (half a model voxel) along the image's first axis by linear resampling on the same grid, and
compare the two whole-tumor masks voxel for voxel, next to the reference compared with itself moved.

    python research/shift_stability.py PRESET INPUTS N [MODEL]  # e.g. clinical-like T1c 30, heldout all 24

MODEL (default brats-robust-unet) runs in its own default mode (manifest inference.test_time_augmentation).
"""
import sys

import numpy as np
import SimpleITK as sitk
import torch

torch.set_num_threads(2)
from medcnncad.data.phantom import make_phantom, preset
from medcnncad.inference.segmenter import Segmenter
from medcnncad.metrics.segmentation import dice
from medcnncad.models.registry import load_model

pre, chans, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
seg = Segmenter(load_model(sys.argv[4] if len(sys.argv) > 4 else "brats-robust-unet"), "cpu")


rows = []
for seed in range(900000, 900000 + n):
    c = make_phantom(seed, preset(pre))
    given = list(c.images) if chans == "all" else [chans]
    imgs = {k: c.images[k] for k in given}
    moved = {}
    d = np.array(c.label.GetDirection()).reshape(3, 3)
    shift = sitk.TranslationTransform(3, tuple(float(v) for v in 0.75 * d[:, 0]))  # content moves 0.75 mm
    for k, img in imgs.items():
        moved[k] = sitk.Resample(img, img, shift, sitk.sitkLinear, 0.0)
    ref0 = sitk.GetArrayFromImage(c.label) > 0
    ref1 = sitk.GetArrayFromImage(sitk.Resample(c.label, c.label, shift, sitk.sitkNearestNeighbor, 0)) > 0
    r1, r2 = seg.run(imgs), seg.run(moved)
    w1, w2 = r1.label_map > 0, r2.label_map > 0
    rows.append((seed, dice(w1, w2), dice(ref0, ref1), dice(w1, ref0), dice(w2, ref1),
                 sum(x.structure == "WT" for x in r1.lesions), sum(x.structure == "WT" for x in r2.lesions)))
    _, agree, ref_agree, dice1, dice2, n1, n2 = rows[-1]
    print(f"{seed} WT agreement {agree:.3f} (reference with itself {ref_agree:.3f})  WT Dice {dice1:.3f} / "
          f"{dice2:.3f}  WT lesions {n1} / {n2}", flush=True)
a = np.array([r[1:] for r in rows], float)
print(f"{pre} {chans}: WT agreement median {np.median(a[:,0]):.3f} (reference {np.median(a[:,1]):.3f}), "
      f"min {a[:,0].min():.3f}, "
      f"below 0.9 in {(a[:,0] < 0.9).sum()} of {len(a)}; mean WT Dice {a[:,2].mean():.3f} / {a[:,3].mean():.3f}; "
      f"cases whose WT lesion count changed {(a[:,4] != a[:,5]).sum()}")
