"""DICOM in and out: series selection in a folder, and the AI segmentation as DICOM SEG.

Reading uses SimpleITK/GDCM (slices sorted by position, so frame k of a (K, J, I) array is
the k-th file of :func:`series_files`). Writing uses highdicom: a DICOM Segmentation that
references the source series, with segment labels coded from the manifest's terminology
(SNOMED-CT) and the algorithm identified by the model's id and version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .errors import InputError
from .manifest import Code, Manifest

__all__ = ["SeriesInfo", "list_series", "select_series", "series_files", "write_dicom_seg"]


@dataclass(frozen=True)
class SeriesInfo:
    uid: str
    description: str
    modality: str
    files: int


def _tag(path: str, tag: str) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
        return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""
    except RuntimeError:
        return ""


def list_series(folder: str | Path) -> list[SeriesInfo]:
    """Every DICOM series in a folder: SeriesInstanceUID, SeriesDescription, modality, file count."""
    out = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        out.append(SeriesInfo(uid, _tag(files[0], "0008|103e"), _tag(files[0], "0008|0060"), len(files)))
    return out


def select_series(folder: str | Path, selector: str | None = None) -> str:
    """The SeriesInstanceUID to read: the only series, or the one whose UID or description matches."""
    series = list_series(folder)
    if not series:
        raise InputError(f"{folder}: folder holds no DICOM series")
    if selector is None:
        if len(series) == 1:
            return series[0].uid
        listing = "; ".join(f"{s.uid} '{s.description}' ({s.files} files)" for s in series)
        raise InputError(f"{folder}: {len(series)} DICOM series, choose one by UID or description: {listing}")
    matches = [s for s in series if selector == s.uid or selector.lower() == s.description.lower()]
    if len(matches) != 1:
        listing = "; ".join(f"{s.uid} '{s.description}'" for s in series)
        raise InputError(f"{folder}: series selector {selector!r} matches {len(matches)} series ({listing})")
    return matches[0].uid


def series_files(folder: str | Path, selector: str | None = None) -> list[str]:
    """Files of the selected series, sorted as SimpleITK stacks them into K."""
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), select_series(folder, selector)))


def _coded(code: Code):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=code.code, scheme_designator=code.scheme, meaning=code.meaning)


_DEFAULT_CATEGORY = Code("SCT", "49755003", "Morphologically Altered Structure")
_DEFAULT_TYPE = Code("SCT", "108369006", "Neoplasm")


def write_dicom_seg(label_map: np.ndarray, manifest: Manifest, source_files: list[str], out_path: str | Path,
                    series_description: str = "MedCNNCAD AI segmentation") -> Path:
    """Write a (K, J, I) label map on the source series' grid as a DICOM Segmentation (binary).

    One segment per manifest label (value -> segment number in manifest order); empty frames
    are omitted. Raises InputError when the label map does not match the series.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in source_files]
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if label_map.shape != (len(sources), rows, cols):
        raise InputError(f"label map shape {label_map.shape} does not match the DICOM series "
                         f"({len(sources)} slices of {rows} x {cols})")
    algorithm = hd.AlgorithmIdentificationSequence(name=manifest.id, version=manifest.version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    numbers = np.zeros(256, dtype=np.uint8)
    descriptions = []
    for number, label in enumerate(manifest.labels, start=1):
        numbers[label.value] = number
        term = label.terminology
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label.name,
            segmented_property_category=_coded(term.category if term else _DEFAULT_CATEGORY),
            segmented_property_type=_coded(term.type if term else _DEFAULT_TYPE),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            anatomic_regions=[_coded(term.anatomic_region)] if term and term.anatomic_region else None))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=numbers[label_map], segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9001,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="MedCNNCAD",
        manufacturer_model_name=manifest.id[:64], software_versions=__version__, device_serial_number="0",
        content_description="AI segmentation, research use only - not for diagnosis"[:64],
        content_label="MEDCNNCAD", series_description=series_description[:64])
    from .io import atomic_path

    with atomic_path(out_path) as tmp:
        seg.save_as(str(tmp))
    return Path(out_path)
