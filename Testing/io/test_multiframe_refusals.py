"""Multi-frame DICOM files the reader cannot place are refused, naming the file: frames without a position each (an
MR Image Storage object with NumberOfFrames, which GDCM stacked at a spacing the file does not give: 1 mm for 1.9 mm
slices), and an enhanced object whose frames differ in pixel spacing (GDCM took the first frame's)."""

from __future__ import annotations

import pydicom
import pytest
from test_images import _series

from medcnncad.errors import InputError
from medcnncad.io.images import read_volume


def _slices(tmp_path, count: int = 6, step: float = 1.9) -> list[pydicom.Dataset]:
    _series(tmp_path / "slices", [(0.0, 0.0, step * k) for k in range(count)])
    return [pydicom.dcmread(str(path)) for path in sorted((tmp_path / "slices").iterdir())]


def test_frames_without_a_position_each_are_refused(tmp_path):
    slices = _slices(tmp_path)
    legacy = slices[0]
    legacy.NumberOfFrames = len(slices)
    legacy.PixelData = b"".join(s.PixelData for s in slices)
    legacy.save_as(str(tmp_path / "frames.dcm"))
    with pytest.raises(InputError, match=r"frames.dcm: 6 frames without a position each: where its slices lie, and "
                                         r"how far apart, is not in the file"):
        read_volume(tmp_path / "frames.dcm")
    single = slices[1]  # one frame at one position is a slice the file places: read (inputs refuse single slices)
    single.NumberOfFrames = 1
    single.save_as(str(tmp_path / "one.dcm"))
    assert read_volume(tmp_path / "one.dcm").GetSize() == (10, 8, 1)


def test_an_enhanced_file_whose_frames_differ_in_pixel_spacing_is_refused(tmp_path):
    import highdicom as hd

    slices = _slices(tmp_path)
    dataset = hd.legacy.LegacyConvertedEnhancedMRImage(slices, series_instance_uid=hd.UID(), series_number=2,
                                                       sop_instance_uid=hd.UID(), instance_number=1)
    shared = dataset.SharedFunctionalGroupsSequence[0]
    for frame in dataset.PerFrameFunctionalGroupsSequence:  # pixel measures per frame, as Philips writes them
        frame.PixelMeasuresSequence = pydicom.Sequence([pydicom.Dataset()])
        frame.PixelMeasuresSequence[0].PixelSpacing = list(shared.PixelMeasuresSequence[0].PixelSpacing)
    del shared.PixelMeasuresSequence
    dataset.save_as(str(tmp_path / "same.dcm"))
    assert read_volume(tmp_path / "same.dcm").GetSpacing()[:2] == pytest.approx((0.9, 0.8))  # (x, y): columns, rows
    dataset.PerFrameFunctionalGroupsSequence[4].PixelMeasuresSequence[0].PixelSpacing = [1.6, 1.8]
    dataset.save_as(str(tmp_path / "mixed.dcm"))
    with pytest.raises(InputError, match=r"mixed.dcm: its frames differ in PixelSpacing \(frame 1: \[0.8, 0.9\], "
                                         r"frame 5: \[1.6, 1.8\]\): not one grid"):
        read_volume(tmp_path / "mixed.dcm")
