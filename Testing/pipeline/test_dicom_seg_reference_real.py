"""A real clinical DICOM SEG as ``segment --reference`` (ReMIND-022 of ../shared/realdata; skipped where it is absent):
its one "Glioma" segment lands on the T1c grid where evaluate-real puts it, and is refused without a label map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medcnncad.data.real_cases import dicom_seg_segments, read_dicom_seg_labels_on_grid, read_dicom_seg_on_grid
from medcnncad.errors import InputError
from medcnncad.io.images import read_volume
from medcnncad.models.registry import describe_model
from medcnncad.pipeline.case import _dicom_seg_labels, _read_reference

REMIND = Path(__file__).resolve().parents[2].parent / "shared" / "realdata" / "ReMIND-022"
pytestmark = pytest.mark.skipif(not (REMIND / "Tumor_segmentation.dcm").is_file(),
                                reason="../shared/realdata/ReMIND-022 is not here")


def test_the_remind_outline_is_read_on_the_t1c_grid_and_needs_its_label_map():
    seg = str(REMIND / "Tumor_segmentation.dcm")
    manifest = describe_model("brats-robust-unet")
    assert dicom_seg_segments(seg) == {1: "Glioma"}
    with pytest.raises(InputError, match="not named as the model's labels"):
        _dicom_seg_labels(seg, None, manifest)
    assert _dicom_seg_labels(seg, {1: 2}, manifest) == {1: 2}
    image, values = _read_reference(seg, {1: 2}, manifest)
    assert image is None and values.tolist() == [2]
    grid = read_volume(REMIND / "3DAXT1postcontrast_MRI")
    labels = sitk.GetArrayFromImage(read_dicom_seg_labels_on_grid(seg, grid))
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(read_dicom_seg_on_grid(seg, grid)))
    assert 700 < int(labels.sum()) < 900  # about 0.8 mL of ~0.95 mm3 voxels (the realdata README)
