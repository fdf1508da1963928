"""Usage: .venv/bin/python research/vessel_filter_phantom_survey.py out.json realistic-head-vessels-wide:910000:15 clinical-like:911000:10

Phantom survey (not held out): components of 2.10.1's pre-filter shape class (>= 1 mL, radius <= 6 mm, >= 50 %
enhancing, solid) whatever their length: tumour or not, and how long."""
import sys, json
import numpy as np, SimpleITK as sitk
from scipy import ndimage
from medcnncad.inference.segmenter import Segmenter
from medcnncad.models.registry import load_model
from medcnncad.data.phantom import make_phantom, preset as get_preset
from medcnncad.lesions.vessel_filter import tube_shape
import dataclasses
loaded = load_model("brats-robust-unet")
raw = dataclasses.replace(loaded.manifest.postprocessing, vessel_filter=None)
seg = Segmenter(dataclasses.replace(loaded, manifest=dataclasses.replace(loaded.manifest, postprocessing=raw)), "cpu", precision="fp32")
out = []
for preset, seeds in [(p, range(int(a), int(a) + int(n))) for p, a, n in (x.split(":") for x in sys.argv[2:])]:
    cfg = get_preset(preset)
    for seed in seeds:
        case = make_phantom(seed, cfg)
        res = seg.run({"T1c": case.images["T1c"]})
        ref = sitk.GetArrayFromImage(case.label) > 0
        sp = tuple(float(v) for v in res.reference.GetSpacing()[::-1]); vml = float(np.prod(sp)) / 1000
        lab, n = ndimage.label(res.label_map > 0, np.ones((3, 3, 3)))
        for i, box in enumerate(ndimage.find_objects(lab), start=1):
            comp = lab[box] == i
            if comp.sum() * vml < 1.0: continue
            s = tube_shape(comp, res.label_map[box][comp], sp, (4,))
            row = dict(preset=preset, seed=seed, ml=round(float(comp.sum() * vml), 2), radius=round(s.radius_mm, 2),
                       length=round(s.length_mm, 1), enh=round(s.enhancing_fraction, 2), fill=round(s.fill_ratio, 2),
                       overlap=round(float((ref[box] & comp).sum() / comp.sum()), 2))
            out.append(row)
            if row["radius"] <= 6 and row["enh"] >= 0.5 and row["fill"] <= 1.2: print(row, flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
print("components", len(out))
