"""Shape of every whole-tumour component of 1 mL or more on the real scans that are NOT held out (the four training
patients, two unlabelled BraTS 2023 cases): largest inscribed radius, length, enhancing share, fill ratio, depth.
Usage: .venv/bin/python research/vessel_filter_features.py brats-robust-unet out.json (reads ../shared/realdata)."""
import sys, json
import numpy as np, SimpleITK as sitk
from scipy import ndimage
from medcnncad.inference.segmenter import Segmenter
from medcnncad.models.registry import load_model
import glob
R = "../shared/realdata"
G = f"{R}/BraTS-GLI-00001-000_unlabelled/BraTS-GLI-00001-000"
M = f"{R}/BraTS-MET-00110-000_unlabelled/BraTS-MET-00110-000"
B = f"{R}/BraTS2021_00006/BraTS2021_00006"
def p13(n, kind):
    import glob
    return glob.glob(f"{R}/brats_2013_pat000{n}_1/*{kind}*subtrMeanDivStd*")[0]
cases = {
    "glioma all": ({"T1": f"{G}-t1n.nii.gz", "T1c": f"{G}-t1c.nii.gz", "T2": f"{G}-t2w.nii.gz", "FLAIR": f"{G}-t2f.nii.gz"}, None),
    "glioma T1c": ({"T1c": f"{G}-t1c.nii.gz"}, None),
    "met all": ({"T1": f"{M}-t1n.nii.gz", "T1c": f"{M}-t1c.nii.gz", "T2": f"{M}-t2w.nii.gz", "FLAIR": f"{M}-t2f.nii.gz"}, None),
    "met T1c": ({"T1c": f"{M}-t1c.nii.gz"}, None),
    "00006 all": ({"T1": f"{B}_t1.nii.gz", "T1c": f"{B}_t1ce.nii.gz", "T2": f"{B}_t2.nii.gz", "FLAIR": f"{B}_flair.nii.gz"}, f"{B}_seg.nii.gz"),
    "00006 T1c": ({"T1c": f"{B}_t1ce.nii.gz"}, f"{B}_seg.nii.gz"),
}
import glob
for n in (1, 3, 5):
    lab = glob.glob(f"{R}/brats_2013_pat000{n}_1/*OTMultiClass*")[0]
    cases[f"pat000{n} all"] = ({"T1c": p13(n, "T1c"), "FLAIR": p13(n, "Flair")}, lab)
    cases[f"pat000{n} T1c"] = ({"T1c": p13(n, "T1c")}, lab)
seg = Segmenter(load_model(sys.argv[1]), "cpu", precision="fp32")
rows = []
for name, (inputs, label) in cases.items():
    res = seg.run({k: sitk.ReadImage(v) for k, v in inputs.items()})
    sp = np.array(res.reference.GetSpacing()[::-1])  # K, J, I mm
    vml = float(np.prod(sp)) / 1000
    if res.brain_mask is not None:
        brain = res.brain_mask > 0
    else:
        brain = np.zeros(res.label_map.shape, bool)
        for img in res.images.values():
            brain |= sitk.GetArrayViewFromImage(img) != 0
        brain = ndimage.binary_fill_holes(brain)
    depth = ndimage.distance_transform_edt(brain, sampling=sp)  # mm from outside the brain
    ref = None if label is None else sitk.GetArrayFromImage(sitk.ReadImage(label)) > 0
    lab, n = ndimage.label(res.label_map > 0, np.ones((3, 3, 3)))
    for i, box in enumerate(ndimage.find_objects(lab), start=1):
        comp = lab[box] == i
        v = comp.sum() * vml
        if v < 1.0:
            continue
        thick = ndimage.distance_transform_edt(np.pad(comp, 1), sampling=sp)[1:-1, 1:-1, 1:-1]
        d = depth[box][comp]
        lm = res.label_map[box][comp]
        kji = np.argwhere(comp) + [b.start for b in box]
        ijk_c = kji.mean(0)[::-1]
        lps = res.reference.TransformContinuousIndexToPhysicalPoint(ijk_c.tolist())
        pts = kji * sp
        ev = np.sqrt(np.clip(np.linalg.eigvalsh(np.cov(pts.T)), 0, None))[::-1]
        row = dict(sd_mm=[round(float(x), 1) for x in ev], long_mm=round(float(np.ptp(pts @ np.linalg.eigh(np.cov(pts.T))[1][:, -1])), 1), case=name, ml=round(v, 2), enh=round(float((lm == 4).mean()), 2),
                   thick_mm=round(float(thick.max()), 1), depth_med=round(float(np.median(d)), 1),
                   depth_p90=round(float(np.percentile(d, 90)), 1), within8=round(float((d <= 8).mean()), 2),
                   ras_x=round(-lps[0], 1), tumour=None if ref is None else bool((ref[box] & comp).any()), overlap=None if ref is None else round(float((ref[box] & comp).sum() / comp.sum()), 2), fill=round(float(np.mean([ndimage.binary_fill_holes(comp[k]).sum() for k in range(comp.shape[0]) if comp[k].any()]) / np.mean([comp[k].sum() for k in range(comp.shape[0]) if comp[k].any()])), 2))
        rows.append(row)
        print(row, flush=True)
json.dump(rows, open(sys.argv[2], "w"), indent=1)
