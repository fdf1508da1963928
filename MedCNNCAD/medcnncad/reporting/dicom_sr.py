"""Segment measurements as a DICOM Structured Report (TID 1500 Measurement Report, highdicom), for PACS.

One measurement group (TID 1411, volumetric ROI) per segment of the DICOM SEG written beside it (one per manifest
label, numbered in manifest order) that the result contains, referencing that segment and the source series
(QuantitativeReporting's conventions: Slicer's QuantitativeReporting reads such reports with their SEG). A group's
ROI is its whole segment, so every measurement describes the whole segment:

- volume (mm3): the label's voxel count x the voxel volume; the sum of the label's lesion volumes in
  ``report.json`` (lesions are all the label's 26-connected components of the same final label map, none dropped);
- number of lesions (SCT 246206008 "Number of lesions", no unit): the label's 26-connected components, as
  :func:`medcnncad.lesions.components.find_lesions` counts them;
- the model's probability of the label, mean over the segment's voxels (DCM 122157 with derivation Mean, CID
  7464; no unit), when the result's probabilities give it
  (:func:`medcnncad.lesions.components.structure_probability`).

Tracking identifier: a UID and "<label> (<n> lesion(s))". No diameter: the longest diameter of a segment with
several lesions is no lesion's, and DICOM has no modifier to state "of its largest component" (CID 7464 modifiers
are statistics over the ROI; the numeric value qualifier, CID 42, is for NaN, overflow and the like); the per-lesion
diameters are in ``report.json``. The algorithm is named with the model's id and version; the series description
says it is research use only, and the content description (ContentDescription, LO: 64 characters, cut at a word)
says so with what the model was trained on (the SEG's segment descriptions hold the whole text). Label maps are
(K, J, I) on the SEG's grid.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from medcnncad import __version__
from medcnncad.errors import InputError
from medcnncad.inference.result import SegmentationResult
from medcnncad.io.images import atomic_path
from medcnncad.lesions.components import components, structure_probability
from medcnncad.models.manifest import LabelDef
from medcnncad.reporting.dicom_seg import lo_text, property_type, research_statement

__all__ = ["write_dicom_sr", "segment_groups"]

_PROBABILITY = codes.DCM.Probability  # DCM 122157
_MEAN = codes.cid7464.Mean  # derivation (CID 7464): the mean over the ROI's voxels
_LESION_COUNT = codes.SCT.NumberOfLesions  # SCT 246206008 "Number of lesions (observable entity)"
_Group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations  # TID 1411


def segment_groups(result: SegmentationResult, seg: pydicom.Dataset, source_series_uid: str) -> list[_Group]:
    """The TID 1411 groups of the result's non-empty SEG segments, in segment order (manifest label order, from 1),
    each describing its whole segment (see the module's docstring). When every segment is empty (nothing found; the
    SEG then holds every segment's empty frames), one group per segment states 0 mm3 and 0 lesions: a report needs
    a group, and "nothing found" is the finding."""
    algorithm = hd.sr.AlgorithmIdentification(name=result.manifest.id, version=result.manifest.version)
    nothing_found = not np.any(np.isin(result.label_map, [label.value for label in result.manifest.labels]))
    groups = []
    for number, label in enumerate(result.manifest.labels, start=1):
        mask = result.label_map == label.value
        if not mask.any() and not nothing_found:
            continue
        segment = hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
            source_series=hd.sr.SourceSeriesForSegmentation(source_series_uid))
        groups.append(_segment_group(result, label, mask, segment, algorithm))
    return groups


def _segment_group(result: SegmentationResult, label: LabelDef, mask: np.ndarray, segment: hd.sr.ReferencedSegment,
                   algorithm: hd.sr.AlgorithmIdentification) -> _Group:
    """The group of ``label``'s segment, whose voxels are ``mask`` (K, J, I) on the result's grid (finding type: the
    segment's property type, e.g. Edema): its volume
    (mm3, 3 decimals), its number of 26-connected lesions and the model's mean probability of the label over it (0-1,
    4 decimals; left out for an empty segment and when the result's probabilities do not give it)."""
    name, count = label.name, components(mask)[1]
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(),
                                        identifier=f"{name} ({count} {'lesion' if count == 1 else 'lesions'})")
    voxel_mm3 = float(np.prod(result.reference.GetSpacing()))
    measurements = [
        hd.sr.Measurement(name=codes.SCT.Volume, value=round(int(np.count_nonzero(mask)) * voxel_mm3, 3),
                          unit=codes.UCUM.CubicMillimeter, algorithm_id=algorithm),
        hd.sr.Measurement(name=_LESION_COUNT, value=count, unit=codes.UCUM.NoUnits, algorithm_id=algorithm)]
    probability = structure_probability(name, result.manifest, result.probabilities) if count else None
    if probability is not None:
        mean = float(probability[mask].mean(dtype=np.float64))
        measurements.append(hd.sr.Measurement(name=_PROBABILITY, value=round(mean, 4), unit=codes.UCUM.NoUnits,
                                              derivation=_MEAN, algorithm_id=algorithm))
    return _Group(
        tracking_identifier=tracking, referenced_segment=segment, finding_type=property_type(label),
        algorithm_id=algorithm, measurements=measurements)


def write_dicom_sr(result: SegmentationResult, seg_path: str | Path, source_files: list[str],
                   out_path: str | Path) -> Path:
    """Write the TID 1500 report of a result whose DICOM SEG is ``seg_path``, on the series ``source_files``.

    Args:
        result: the segmentation run (its label map on the SEG's grid, probabilities, manifest).
        seg_path: the DICOM SEG written for it (:func:`medcnncad.reporting.dicom_seg.write_dicom_seg`).
        source_files: the files of the source series (the SEG's reference).
        out_path: where the SR goes (written atomically).

    Returns:
        ``out_path``.

    Raises:
        InputError: the SEG does not reference these source files.
    """
    seg = pydicom.dcmread(str(seg_path))
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files]
    if sources[0].SeriesInstanceUID != seg.ReferencedSeriesSequence[0].SeriesInstanceUID:
        raise InputError(f"{seg_path}: the DICOM SEG references another series than {source_files[0]}")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="MedCNNCAD", model_name=result.manifest.id[:64], manufacturer_name="MedCNNCAD"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=(codes.LN.CTUnspecifiedBodyRegion if sources[0].Modality == "CT" else
                            codes.LN.MRIUnspecifiedBodyRegion),
        imaging_measurements=segment_groups(result, seg, sources[0].SeriesInstanceUID))
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, seg], content=report, series_instance_uid=hd.UID(), series_number=9002,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="MedCNNCAD", is_complete=True,
        series_description="MedCNNCAD AI measurements (research use only)"[:64],
        software_versions=__version__)
    sr.ContentDescription = lo_text(research_statement(result.manifest))
    with atomic_path(out_path) as tmp:
        sr.save_as(str(tmp))
    return Path(out_path)
