"""DICOM series in a folder: list them, pick one by UID or description, list its files, check that they make one grid.

Reading uses SimpleITK/GDCM (slices sorted by position, so frame k of a (K, J, I) array is
the k-th file of :func:`series_files`). GDCM stacks whatever files share a SeriesInstanceUID onto an even grid
without complaint (a warning on stderr at most), so :func:`check_series_geometry` first refuses what would land on
the wrong voxels: slices of several orientations, several images at one position (echoes, phases), missing or
unevenly spaced slices, and a stack offset sideways (gantry tilt). Positions are in mm, LPS. Writing DICOM SEG lives
in :mod:`medcnncad.reporting.dicom_seg`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medcnncad.errors import InputError

__all__ = ["SeriesInfo", "list_series", "select_series", "series_files", "check_series_geometry", "check_stack",
           "check_multiframe_geometry", "FrameGrid"]

ORIENTATION_TOLERANCE = 1e-3  # direction cosines: more apart than this is another orientation
SPACING_TOLERANCE = 0.1  # a slice step more than 10 % away from the median step: missing or uneven slices


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
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM's "No Series were found" is said by the caller, once
    try:
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    for uid in uids:
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


def _numbers(reader: sitk.ImageFileReader, tag: str) -> list[float] | None:
    if not reader.HasMetaDataKey(tag):
        return None
    try:
        return [float(v) for v in reader.GetMetaData(tag).strip().split("\\") if v.strip()]
    except ValueError:
        return None


def _slice_headers(files: Sequence[str]) -> list[dict[str, list[float] | None]]:
    """Position (0020,0032), orientation (0020,0037), pixel spacing (0028,0030), rescale slope and intercept of each
    file (None where a tag is absent or unreadable), from the headers only."""
    tags = {"position": "0020|0032", "orientation": "0020|0037", "spacing": "0028|0030", "slope": "0028|1053",
            "intercept": "0028|1052"}
    headers = []
    for path in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.LoadPrivateTagsOff()
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            headers.append(dict.fromkeys(tags))
            continue
        headers.append({name: _numbers(reader, tag) for name, tag in tags.items()})
    return headers


def check_series_geometry(folder: str | Path, files: Sequence[str]) -> bool:
    """Refuse a series whose files do not make one evenly spaced grid; return whether their rescale slopes or
    intercepts differ from file to file (then read as float: GDCM would take the first file's integer pixel type
    and truncate the others' scaled values).

    Files without position or orientation (or a single file) are not checked here.

    Raises:
        InputError: naming ``folder``: slices of several orientations, images sharing a position, missing or
            unevenly spaced slices, or a stack offset sideways by more than half a pixel (gantry tilt).
    """
    headers = _slice_headers(files)
    rescale = {(tuple(h["slope"] or [1.0]), tuple(h["intercept"] or [0.0])) for h in headers}
    if len(files) >= 2 and all(len(h["position"] or ()) == 3 and len(h["orientation"] or ()) == 6 for h in headers):
        check_stack(folder, np.array([h["position"] for h in headers]), np.array([h["orientation"] for h in headers]),
                    min(headers[0]["spacing"] or [1.0]), in_order=False)
    return len(rescale) > 1


def check_stack(source: str | Path, positions: np.ndarray, orientations: np.ndarray, pixel_mm: float,
                in_order: bool) -> None:
    """Refuse slices that are not one evenly spaced grid: (N, 3) ``positions`` (LPS mm) and (N, 6) ``orientations``
    (row and column cosines) of the N slices, ``pixel_mm`` their smallest in-plane spacing; ``in_order``: the slices
    are read in the given order (the frames of one file), so they must also be stored in spatial order.

    Raises:
        InputError: naming ``source`` (see :func:`check_series_geometry`; and frames out of spatial order).
    """
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        kinds = len({tuple(np.round(o, 2)) for o in orientations})
        raise InputError(f"{source}: the series holds slices of {kinds} orientations, not one volume (e.g. axial and "
                         "sagittal images under one SeriesInstanceUID); export each stack as its own series")
    normal = np.cross(orientations[0, :3], orientations[0, 3:])
    along = positions @ normal
    steps = np.diff(along if in_order else np.sort(along))
    if in_order and not (np.all(steps > 0) or np.all(steps < 0)) and np.all(np.abs(steps) >= 1e-3):
        shown = ", ".join(f"{v:.2f}" for v in along[:8]) + (", ..." if len(along) > 8 else "")
        raise InputError(f"{source}: its {len(along)} frames are not stored in spatial order (positions along the "
                         f"slice normal {shown} mm): they would be stacked out of place")
    steps = np.abs(steps)
    if np.any(steps < 1e-3):
        _, counts = np.unique(np.round(along, 3), return_counts=True)
        raise InputError(f"{source}: {int(counts[counts > 1].sum())} of its {len(along)} images share a slice "
                         "position with another (several echoes, phases or b-values in one series?): not one volume; "
                         "select or export one of them as its own series")
    median = float(np.median(steps))
    # positions written to one decimal (0.625 mm slices: steps 0.6 and 0.7) or whole mm (2.5 mm: 2 and 3) pass;
    # a missing slice (a step of twice the median) never does
    if np.abs(steps - median).max() > max(SPACING_TOLERANCE * median, min(0.5, 0.45 * median)):
        raise InputError(f"{source}: slices are unevenly spaced (steps {steps.min():.2f} to {steps.max():.2f} mm "
                         f"along the slice normal, median {median:.2f} mm): missing slices? Not read onto an even "
                         "grid")
    span = positions[np.argmax(along)] - positions[np.argmin(along)]
    sideways = float(np.linalg.norm(span - (span @ normal) * normal))
    if sideways > 0.5 * pixel_mm:
        tilt = float(np.degrees(np.arctan2(sideways, float(span @ normal))))
        raise InputError(f"{source}: the slices are offset sideways along the stack ({sideways:.1f} mm over "
                         f"{float(span @ normal):.1f} mm: gantry tilt {tilt:.1f} degrees); a tilted stack is not one "
                         "grid: resample it first (3D Slicer's DICOM import regularises the acquisition geometry)")


def _frame_item(dataset, shared, name: str):  # noqa: ANN001, ANN202 - pydicom datasets
    """A frame's functional group ``name`` item, from the frame's own groups or the shared ones (None if absent)."""
    for groups in (dataset, shared):
        if groups is not None and name in groups and len(groups[name].value):
            return groups[name].value[0]
    return None


@dataclass(frozen=True)
class FrameGrid:
    """The grid an enhanced multi-frame file's frames lie on, in SimpleITK's terms (LPS mm): the first frame's position,
    the voxel size (x, y from the pixel spacing, None where the file gives none; z the mean step between frames) and
    the direction (row-major 3 x 3: the row and column cosines and the way the frames are stacked)."""

    origin: tuple[float, float, float]
    spacing: tuple[float | None, float | None, float]
    direction: tuple[float, ...]


def _frame_grid(positions: np.ndarray, orientation: np.ndarray, pixel: Sequence[float] | None) -> FrameGrid:
    """The grid of frames at ``positions`` (N, 3) stored in spatial order with row and column cosines
    ``orientation`` (6,) and pixel spacing ``pixel`` (row, column: DICOM's order)."""
    row, column = orientation[:3] / np.linalg.norm(orientation[:3]), orientation[3:] / np.linalg.norm(orientation[3:])
    normal = np.cross(row, column)
    along = positions @ normal
    stack = normal if along[-1] >= along[0] else -normal
    step = float(abs(along[-1] - along[0]) / (len(along) - 1))
    axes = np.column_stack([row, column, stack])
    x, y = (float(pixel[1]), float(pixel[0])) if pixel is not None and len(pixel) == 2 else (None, None)
    origin = (float(positions[0, 0]), float(positions[0, 1]), float(positions[0, 2]))
    return FrameGrid(origin, (x, y, step), tuple(float(v) for v in axes.ravel()))


def _unplaced(path: str | Path, count: int) -> str:
    """The message for a file of ``count`` frames that do not each carry a position."""
    return (f"{path}: {count} frames without a position each: where its slices lie, and how far apart, is not in the "
            "file; export the series as one file per slice or as an enhanced MR object")


def _one_pixel_spacing(path: str | Path, pixels: list[tuple[int, list[float]]]) -> list[float] | None:
    """The frames' common pixel spacing (row, column mm) from (frame number, spacing) pairs; None when no frame gives
    one.

    Raises:
        InputError: frames that differ in pixel spacing by more than 1e-4 mm (not one grid), naming two of them.
    """
    if not pixels:
        return None
    (first_number, first), *rest = pixels
    for number, values in rest:
        if len(values) != len(first) or np.abs(np.subtract(values, first)).max() > 1e-4:
            raise InputError(f"{path}: its frames differ in PixelSpacing (frame {first_number}: {first}, frame "
                             f"{number}: {values}): not one grid")
    return first


def check_multiframe_geometry(path: str | Path) -> FrameGrid | None:
    """Refuse an enhanced multi-frame DICOM file whose frames are not one evenly spaced grid in stored order (GDCM
    reads the frames in file order onto an even grid), and return that grid (GDCM's own may not be it: it gives
    spacing (1, 1, 1) mm when the frames' steps differ by rounding). Files that are no multi-frame object are not
    checked (None).

    Raises:
        InputError: naming ``path``: frames that are not one evenly spaced grid in stored order (see
            :func:`check_stack`), frames that differ in pixel spacing, or several frames without a position each (an MR
            Image Storage object with NumberOfFrames: GDCM stacks them at a spacing the file does not give).
    """
    import pydicom

    try:
        dataset = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not a DICOM file pydicom reads: left to ITK
        return None
    frames = dataset.get("PerFrameFunctionalGroupsSequence")
    count = int(dataset.get("NumberOfFrames") or 1)
    if not frames or len(frames) < 2:
        if count > 1:
            raise InputError(_unplaced(path, count))
        return None
    shared_groups = dataset.get("SharedFunctionalGroupsSequence")
    shared = shared_groups[0] if shared_groups else None
    positions, orientations, pixels = [], [], []
    for number, frame in enumerate(frames, start=1):
        plane, orientation = _frame_item(frame, shared, "PlanePositionSequence"), _frame_item(
            frame, shared, "PlaneOrientationSequence")
        measures = _frame_item(frame, shared, "PixelMeasuresSequence")
        if plane is None or orientation is None or "ImagePositionPatient" not in plane:
            raise InputError(_unplaced(path, len(frames)))
        positions.append([float(v) for v in plane.ImagePositionPatient])
        orientations.append([float(v) for v in orientation.ImageOrientationPatient])
        if measures is not None and "PixelSpacing" in measures:
            pixels.append((number, [float(v) for v in measures.PixelSpacing]))
    pixel = _one_pixel_spacing(path, pixels)
    check_stack(path, np.array(positions), np.array(orientations), min(pixel or [1.0]), in_order=True)
    return _frame_grid(np.array(positions), np.array(orientations[0]), pixel)
