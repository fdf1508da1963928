"""How high does the registration quality figure (gradient-magnitude correlation) go for images of DIFFERENT
patients, by each registration the clinical chain can try? Sets the gradient try's 0.5 floor
(``preprocessing/chain.py: GRADIENT_TRY_MIN_QUALITY``).

Measured 2026-12-04 (quality before -> after, three pairs of real cases, all skull-stripped in BraTS space):
TCGA T1 vs pat0002 T1c: mutual information 0.247 -> 0.225, from moments 0.224, gradient correlation 0.306;
pat0006 T1c vs pat0002 FLAIR: 0.138 -> 0.119, 0.084, 0.232; TCGA FLAIR vs pat0002 FLAIR: 0.357 -> 0.031, 0.040,
0.440. The same patient's 5 mm T2 (TCGA, Testing/preprocessing/test_chain.py): gradient correlation 0.80.

    .venv/bin/python research/registration_floor.py    (reads ../shared/realdata; about a minute)

Numbers: docs/models.md, "Thick, misaligned sequences".
"""

import SimpleITK as sitk
from medcnncad.data.real_cases import describe_case
from medcnncad.io.images import read_volume
from medcnncad.preprocessing.registration import register_rigid
R = "../shared/realdata/"
tc = describe_case(R + "TCGA-DU-7294"); p2 = describe_case(R + "brats_2013_pat0002_1"); p6 = describe_case(R + "brats_2013_pat0006_1")
for label, f, m in (("TCGA T1 vs pat0002 T1c", tc.inputs["T1"], p2.inputs["T1c"]), ("pat0006 T1c vs pat0002 FLAIR", p6.inputs["T1c"], p2.inputs["FLAIR"]), ("TCGA FLAIR vs pat0002 FLAIR", tc.inputs["FLAIR"], p2.inputs["FLAIR"])):
    f, m = read_volume(f), read_volume(m)
    for init, metric in (("identity", "mattes"), ("moments", "mattes"), ("identity", "gradient-correlation")):
        r = register_rigid(f, m, initialiser=init, metric=metric, min_gradient_correlation=-2)
        print(label, init, metric, round(r.gradient_correlation_before, 3), "->", round(r.gradient_correlation_after, 3), "nmi", round(r.nmi_before, 3), round(r.nmi_after, 3))
