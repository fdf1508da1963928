"""DICOM series in a folder: list them, pick one by UID or description, list its files.

Reading uses SimpleITK/GDCM (slices sorted by position, so frame k of a (K, J, I) array is
the k-th file of :func:`series_files`). Writing DICOM SEG lives in
:mod:`medcnncad.reporting.dicom_seg`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from medcnncad.errors import InputError

__all__ = ["SeriesInfo", "list_series", "select_series", "series_files"]


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
