"""The AI segmentation as a DICOM Segmentation (highdicom) that references its source series.

Segment labels are coded from the manifest's terminology (SNOMED-CT) and the algorithm is
identified by the model's id and version. Label maps are (K, J, I) on the source series' grid:
frame k is the k-th file of :func:`medcnncad.io.dicom_series.series_files`.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from medcnncad import __version__
from medcnncad.errors import InputError
from medcnncad.io.images import atomic_path
from medcnncad.models.manifest import Code, Manifest

__all__ = ["write_dicom_seg"]


def _coded(code: Code) -> CodedConcept:
    return CodedConcept(value=code.code, scheme_designator=code.scheme, meaning=code.meaning)


_DEFAULT_CATEGORY = Code("SCT", "49755003", "Morphologically Altered Structure")
_DEFAULT_TYPE = Code("SCT", "108369006", "Neoplasm")


def write_dicom_seg(label_map: np.ndarray, manifest: Manifest, source_files: list[str], out_path: str | Path,
                    series_description: str = "MedCNNCAD AI segmentation") -> Path:
    """Write a (K, J, I) label map on the source series' grid as a DICOM Segmentation (binary).

    One segment per manifest label (value -> segment number in manifest order); empty frames
    are omitted. Raises InputError when the label map does not match the series.
    """
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
    with atomic_path(out_path) as tmp:
        seg.save_as(str(tmp))
    return Path(out_path)
