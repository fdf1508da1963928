"""Writing small but complete DICOM MR series for tests (SimpleITK/GDCM, one file per slice), and one series as an
enhanced multi-frame MR file (highdicom)."""

from __future__ import annotations

import copy
from pathlib import Path

import SimpleITK as sitk

_UID_ROOT = "1.2.826.0.1.3680043.8.498."


def write_mr_series(image: sitk.Image, folder: Path, description: str, series_number: int = 1,
                    study_uid: str = _UID_ROOT + "1", frame_uid: str = _UID_ROOT + "2") -> Path:
    """Write a 3D image as an MR series with patient, study, series and frame-of-reference tags."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(sitk.RescaleIntensity(image, 0, 4000), sitk.sitkInt16)
    direction = image.GetDirection()
    series_uid = f"{_UID_ROOT}3.{series_number}"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        tags = {
            "0010|0010": "Phantom^MedCNNCAD", "0010|0020": "PHANTOM-900001", "0010|0030": "20000101",
            "0010|0040": "O", "0008|0020": "20261127", "0008|0030": "120000", "0008|0050": "1",
            "0020|000d": study_uid, "0020|0010": "1", "0020|000e": series_uid, "0020|0011": str(series_number),
            "0020|0052": frame_uid, "0008|0060": "MR", "0008|103e": description,
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0037": "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                          direction[1], direction[4], direction[7])),
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0013": str(k + 1), "0018|0050": f"{image.GetSpacing()[2]:.6f}",
            "0028|0030": f"{image.GetSpacing()[1]:.6f}\\\\{image.GetSpacing()[0]:.6f}",
        }
        for key, value in tags.items():
            s.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{description.replace(' ', '_')}_{k:03d}.dcm"))
        writer.Execute(s)
    return folder


def write_enhanced_mr(files: list[str], path: Path, per_frame: tuple[str, ...] = (),
                      spacing_between_slices: str | None = None) -> Path:
    """The single-frame MR files of one series as one enhanced MR file (highdicom's legacy conversion, frames in
    spatial order). ``per_frame``: shared functional groups (e.g. ``PlaneOrientationSequence``) written into every
    frame's own groups instead, as Philips scanners write them; ``spacing_between_slices``: the value the shared pixel
    measures give (a scanner's own, which may not be the frames' step)."""
    import highdicom as hd
    import pydicom

    dataset = hd.legacy.LegacyConvertedEnhancedMRImage(
        [pydicom.dcmread(f) for f in files], series_instance_uid=hd.UID(), series_number=12,
        sop_instance_uid=hd.UID(), instance_number=1)
    shared = dataset.SharedFunctionalGroupsSequence[0]
    if spacing_between_slices is not None:
        shared.PixelMeasuresSequence[0].SpacingBetweenSlices = spacing_between_slices
    for name in per_frame:
        for frame in dataset.PerFrameFunctionalGroupsSequence:
            setattr(frame, name, copy.deepcopy(shared[name].value))
        del shared[name]
    dataset.save_as(str(path))
    return path
