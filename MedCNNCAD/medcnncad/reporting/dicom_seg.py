"""The AI segmentation as a DICOM Segmentation (highdicom) that references its source series.

Segment labels are coded from the manifest's terminology (SNOMED-CT) and the algorithm is
identified by the model's id and version. What a PACS shows of the object says it is research use only and what the
model was trained on: the series description, the content description (both LO, 64 characters: cut at a word, with
"...") and each segment's description (ST) with the model's whole intended-use and trained-on text. Label maps are
(K, J, I) on the source series' grid: frame k is the k-th file of :func:`medcnncad.io.dicom_series.series_files`.
"""

from __future__ import annotations

import re
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from medcnncad import __version__
from medcnncad.errors import InputError
from medcnncad.io.images import atomic_path
from medcnncad.models.manifest import Code, LabelDef, Manifest

__all__ = ["write_dicom_seg", "lo_text", "research_statement", "property_type", "source_slices"]


def _coded(code: Code) -> CodedConcept:
    return CodedConcept(value=code.code, scheme_designator=code.scheme, meaning=code.meaning)


def lo_text(text: str, limit: int = 64) -> str:
    """``text`` as a DICOM LO value (default character repertoire): ASCII (others -> "?"), no backslash, at most
    ``limit`` characters (64 for LO), cut at a word with "..." when longer."""
    text = " ".join(text.encode("ascii", "replace").decode("ascii").replace("\\", "/").split())
    if len(text) <= limit:
        return text
    cut = text[:limit - 3]
    if " " in cut[limit // 2:]:
        cut = cut[:cut.rindex(" ")]
    return cut.rstrip(" ,;:(-") + "..."


def research_statement(manifest: Manifest) -> str:
    """"Research use only; trained on <the manifest's trained_on without its parenthesised details>", for a short
    (LO) value: "Research use only; trained on synthetic phantoms - not on..." for the demo model."""
    trained = " ".join(re.sub(r"\s*\([^)]*\)", "", manifest.trained_on).split())
    return "Research use only" + (f"; trained on {trained}" if trained else ", not for diagnosis")


def _segment_text(label_name: str, manifest: Manifest) -> str:
    """A segment's description (ST, 1024 characters): the label, the model and its intended use and training data."""
    intended = manifest.intended_use.strip() or "Research use only - not for diagnosis."
    trained = f" Trained on: {manifest.trained_on.strip()}." if manifest.trained_on.strip() else ""
    return lo_text(f"{label_name} by {manifest.id} {manifest.version}, AI segmentation. {intended}{trained}", 1024)


_DEFAULT_CATEGORY = Code("SCT", "49755003", "Morphologically Altered Structure")
_DEFAULT_TYPE = Code("SCT", "108369006", "Neoplasm")


def property_type(label: LabelDef) -> CodedConcept:
    """A label's segmented property type (its terminology's, else Neoplasm): the SEG segment's, and the finding type
    of the SR group that measures it."""
    return _coded(label.terminology.type if label.terminology else _DEFAULT_TYPE)


def _without_spacing_between_slices(source: pydicom.Dataset) -> pydicom.Dataset:
    """The source file's dataset (read for this SEG only) without its SpacingBetweenSlices (an enhanced multi-frame
    file's: in its shared pixel measures), so that highdicom measures the spacing from the slices' or frames'
    positions: a source's own value is not trusted (GDCM writes 1 mm for 1.9 mm slices) and highdicom would copy it
    into the SEG unchecked."""
    if "SpacingBetweenSlices" in source:
        del source.SpacingBetweenSlices
    shared = source.get("SharedFunctionalGroupsSequence")
    measures = shared[0].get("PixelMeasuresSequence") if shared else None
    if measures and "SpacingBetweenSlices" in measures[0]:
        del measures[0].SpacingBetweenSlices
    return source


_SHARED_GROUPS = {"PlaneOrientationSequence": ("ImageOrientationPatient", 1e-3),  # group: (its values, tolerance)
                  "PixelMeasuresSequence": ("PixelSpacing", 1e-4)}


def _with_shared_groups(source: pydicom.Dataset, path: str) -> pydicom.Dataset:
    """An enhanced multi-frame source (read for this SEG only) with its plane orientation and pixel measures in the
    shared functional groups, where highdicom reads them: a scanner may write them in every frame's own groups instead
    (Philips; PS3.3 C.7.6.16 allows either). Other sources are returned as they are.

    Raises:
        InputError: naming ``path``, when its frames' orientations or pixel spacings differ (not one grid).
    """
    frames = source.get("PerFrameFunctionalGroupsSequence")
    if not frames:
        return source
    if not source.get("SharedFunctionalGroupsSequence"):
        source.SharedFunctionalGroupsSequence = [pydicom.Dataset()]
    shared = source.SharedFunctionalGroupsSequence[0]
    for group, (values, tolerance) in _SHARED_GROUPS.items():
        found = [[float(v) for v in item[0].get(values) or ()] if item else [] for item in
                 (frame.get(group) for frame in frames)]
        if group in shared or not all(found) or len({len(v) for v in found}) > 1:
            continue  # left as it is: highdicom refuses it
        numbers = np.array(found)
        odd = int(np.abs(numbers - numbers[0]).max(axis=1).argmax())
        if np.abs(numbers[odd] - numbers[0]).max() > tolerance:
            raise InputError(f"{path}: its frames differ in {values} (frame 1: {numbers[0].tolist()}, frame "
                             f"{odd + 1}: {numbers[odd].tolist()}): not one grid a DICOM SEG can reference")
        shared[group] = frames[0][group]
        for frame in frames:
            del frame[group]
    return source


def source_slices(sources: list[pydicom.Dataset]) -> int:
    """How many slices the source series has: one per file, or the frames of one enhanced multi-frame file (the label
    map's K follows their stored order, as the volume was read)."""
    if len(sources) == 1:
        return int(getattr(sources[0], "NumberOfFrames", 1) or 1)
    return len(sources)


def write_dicom_seg(label_map: np.ndarray, manifest: Manifest, source_files: list[str], out_path: str | Path,
                    series_description: str = "MedCNNCAD AI segmentation (research use only)") -> Path:
    """Write a (K, J, I) label map on the source series' grid as a DICOM Segmentation (binary). ``source_files``: the
    series' files in K order, or one enhanced multi-frame file whose frames are K (the SEG then references its frames).

    One segment per manifest label (value -> segment number in manifest order); empty frames
    are omitted. Raises InputError when the label map does not match the series. The spacing between slices is
    highdicom's measurement from the files' (or frames') positions, not the source's SpacingBetweenSlices.
    """
    sources = [_without_spacing_between_slices(_with_shared_groups(pydicom.dcmread(f), f)) for f in source_files]
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    slices = source_slices(sources)
    if label_map.shape != (slices, rows, cols):
        raise InputError(f"label map shape {label_map.shape} does not match the DICOM series "
                         f"({slices} slices of {rows} x {cols})")
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
            segmented_property_type=property_type(label),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            anatomic_regions=[_coded(term.anatomic_region)] if term and term.anatomic_region else None))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=numbers[label_map], segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9001,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="MedCNNCAD",
        manufacturer_model_name=manifest.id[:64], software_versions=__version__, device_serial_number="0",
        content_description=lo_text(research_statement(manifest)),
        content_label="MEDCNNCAD", series_description=lo_text(series_description))
    for item, label in zip(seg.SegmentSequence, manifest.labels):
        item.SegmentDescription = _segment_text(label.name, manifest)
    with atomic_path(out_path) as tmp:
        seg.save_as(str(tmp))
    return Path(out_path)
