"""The .seg.nrrd writer keeps names, colours, values and terminology in Slicer's header fields."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from conftest import make_image
from helpers import DEMO_MODEL

from medcnncad.io.segfile import terminology_entry, write_seg_nrrd
from medcnncad.models.manifest import load_manifest


def test_seg_nrrd_round_trip(tmp_path):
    manifest = load_manifest(DEMO_MODEL)
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1, 1:3, 2:4] = 4
    labels[2, 2, 2] = 1
    ref = make_image(labels, spacing=(0.5, 0.6, 2.0), origin=(1, 2, 3))
    path = write_seg_nrrd(labels, ref, manifest, tmp_path / "x.seg.nrrd")
    back = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)
    assert back.GetSpacing() == ref.GetSpacing() and back.GetOrigin() == ref.GetOrigin()
    meta = {k: back.GetMetaData(k) for k in back.GetMetaDataKeys()}
    assert meta["Segment2_Name"] == "ET" and meta["Segment2_LabelValue"] == "4"
    assert meta["Segment0_Color"] == "0.9 0.2 0.2"
    assert "SCT^6574001^Necrosis" in meta["Segment0_Tags"]
    assert meta["Segment0_Extent"] == "0 5 0 4 0 3"
    assert meta["Segmentation_MasterRepresentation"] == "Binary labelmap"


def test_terminology_entry_format():
    term = load_manifest(DEMO_MODEL).labels[1].terminology
    assert terminology_entry(term) == (
        "Segmentation category and type - 3D Slicer General Anatomy list"
        "~SCT^49755003^Morphologically Altered Structure~SCT^79654002^Edema~^^"
        "~Anatomic codes - DICOM master list~SCT^12738006^Brain~^^")
    assert terminology_entry(None) == ""
