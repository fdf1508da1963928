"""Lesion measurements as a DICOM Structured Report (TID 1500 Measurement Report, highdicom), for PACS.

One measurement group (TID 1411, volumetric ROI) per lesion of each manifest label: the lesion's tracking
identifier (UID and "<label> lesion <id>"), its volume (mm3), longest diameter (mm) and the model's mean
probability of its label inside it, each referencing the label's segment of the DICOM SEG written beside it
and the source series (QuantitativeReporting's conventions: Slicer's QuantitativeReporting reads such
reports with their SEG). The algorithm is named with the model's id and version; the series description says it is
research use only, and the content description (ContentDescription, LO: 64 characters, cut at a word) says so with
what the model was trained on (the SEG's segment descriptions hold the whole text). Lesions are (K, J, I) components
of the label map.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes

from medcnncad import __version__
from medcnncad.errors import InputError
from medcnncad.inference.result import SegmentationResult
from medcnncad.io.images import atomic_path
from medcnncad.reporting.dicom_seg import lo_text, research_statement

__all__ = ["write_dicom_sr", "lesion_groups"]

_PROBABILITY = codes.DCM.Probability  # DCM 122157
_LONGEST_DIAMETER = codes.SCT.Diameter  # qualified below as the longest, as 3D Slicer reports it
_MAXIMUM = codes.SCT.Maximum


def lesion_groups(result: SegmentationResult, seg: pydicom.Dataset,
                  source_series_uid: str) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """The TID 1411 groups of the result's label lesions (one per connected component of each label)."""
    numbers = {label.name: n for n, label in enumerate(result.manifest.labels, start=1)}
    algorithm = hd.sr.AlgorithmIdentification(name=result.manifest.id, version=result.manifest.version)
    groups = []
    for lesion in result.lesions:
        if lesion.kind != "label" or lesion.structure not in numbers:
            continue
        tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{lesion.structure} lesion {lesion.id}")
        measurements = [
            hd.sr.Measurement(name=codes.SCT.Volume, value=round(lesion.volume_ml * 1000.0, 3),
                              unit=codes.UCUM.CubicMillimeter, algorithm_id=algorithm),
            hd.sr.Measurement(name=_LONGEST_DIAMETER, value=round(lesion.longest_diameter_mm, 3),
                              unit=codes.UCUM.Millimeter, qualifier=_MAXIMUM, algorithm_id=algorithm)]
        if lesion.mean_probability is not None:
            measurements.append(hd.sr.Measurement(name=_PROBABILITY, value=round(lesion.mean_probability, 4),
                                                  unit=codes.UCUM.NoUnits, algorithm_id=algorithm))
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                segment_number=numbers[lesion.structure],
                source_series=hd.sr.SourceSeriesForSegmentation(source_series_uid)),
            finding_type=codes.SCT.Neoplasm, algorithm_id=algorithm, measurements=measurements))
    return groups


def write_dicom_sr(result: SegmentationResult, seg_path: str | Path, source_files: list[str],
                   out_path: str | Path) -> Path:
    """Write the TID 1500 report of a result whose DICOM SEG is ``seg_path``, on the series ``source_files``.

    Args:
        result: the segmentation run (its lesions, manifest).
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
        imaging_measurements=lesion_groups(result, seg, sources[0].SeriesInstanceUID))
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, seg], content=report, series_instance_uid=hd.UID(), series_number=9002,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="MedCNNCAD", is_complete=True,
        series_description="MedCNNCAD AI measurements (research use only)"[:64],
        software_versions=__version__)
    sr.ContentDescription = lo_text(research_statement(result.manifest))
    with atomic_path(out_path) as tmp:
        sr.save_as(str(tmp))
    return Path(out_path)
