"""The phantom generator: deterministic, BraTS labels, characteristic contrast."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from helpers import small_phantom
from medcnncad.phantom import SEQUENCES, make_phantom


def test_same_seed_same_case_and_labels_are_brats():
    images, label = small_phantom()
    from medcnncad.phantom import make_phantom as again

    case = again(900_001)
    lab = sitk.GetArrayFromImage(case.label)
    assert set(np.unique(lab)) <= {0, 1, 2, 4} and {2, 4} <= set(np.unique(lab))
    assert sorted(case.images) == sorted(SEQUENCES)
    for name, img in case.images.items():
        assert img.GetSize() == case.label.GetSize()
        assert img.GetSpacing() == case.label.GetSpacing()
    other = make_phantom(900_001)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(other.images["T1c"]),
                                  sitk.GetArrayFromImage(case.images["T1c"]))
    assert not np.array_equal(sitk.GetArrayFromImage(make_phantom(900_002).label), lab)


def test_sequence_contrast_is_characteristic():
    images, label = small_phantom()
    lab = sitk.GetArrayFromImage(label)
    arr = {n: sitk.GetArrayFromImage(img) for n, img in images.items()}
    brain = (arr["T1"] > 0) & (lab == 0)

    def ratio(seq, value):
        return arr[seq][lab == value].mean() / np.median(arr[seq][brain])

    assert ratio("T1c", 4) > 1.3 * ratio("T1", 4)     # enhancement only after contrast
    assert ratio("FLAIR", 2) > 1.3                    # oedema bright on FLAIR
    assert ratio("T2", 2) > 1.2                       # and on T2
    assert (arr["T1"][lab == 0] >= 0).all()
    spacing = label.GetSpacing()
    assert spacing[2] >= spacing[0]                  # anisotropic grid
