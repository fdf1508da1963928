"""Slicer slice views of a case folder's AI segmentation and reference, for the HTML case report.

Rendered headless through Slicer's own slice pipeline (``slicer-core``); pass
:func:`case_screenshots` to :func:`medcnncad.reporting.html.case_report`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer
import slicer.util

from medcnncad.models.channels import display_channel
from medcnncad.models.manifest import Manifest
from medcnncad.models.registry import describe_model
from medcnncad.slicer.adaptor import add_segmentation_node, ijk_to_ras_matrix
from medcnncad.slicer.headless import application_logic, new_scene
from medcnncad.slicer.render import render_slice_views

__all__ = ["case_screenshots"]


def case_screenshots(case_dir: Path, report: dict) -> list[tuple[str, bytes]]:
    """Slicer slice views of the AI segmentation and the reference (needs slicer-core).

    ``report``: the case's report.json with only the files still as the run read them
    (:func:`medcnncad.reporting.input_files.unchanged_inputs`, as :func:`medcnncad.reporting.html.case_report`
    passes it); a relative path is never read against the current folder."""
    new_scene()
    inputs = report.get("inputs") or {}
    shown = display_channel(list(inputs))
    image_path = inputs[shown] if shown is not None else None
    if image_path is None or not Path(image_path).is_absolute() or Path(image_path).is_dir():
        raise FileNotFoundError("no image file to render")
    volume = slicer.modules.volumes.logic().AddArchetypeVolume(str(image_path), "image")
    if volume is None:
        raise FileNotFoundError(f"{image_path}: cannot be loaded for the screenshots")
    shots = []
    largest = max(report["lesions"], key=lambda les: les["voxel_count"], default=None)
    center = largest["centroid_ras_mm"] if largest else [0.0, 0.0, 0.0]
    segmentations = [("AI segmentation", _read_segmentation(case_dir / "labels.seg.nrrd", "AI segmentation"))]
    if report.get("reference") and Path(report["reference"]).is_absolute() and Path(report["reference"]).is_file():
        segmentations.append(("Reference", _reference_segmentation(report)))
    for title, seg in segmentations:
        with tempfile.TemporaryDirectory() as tmp:
            png = render_slice_views(volume, seg, Path(tmp) / "shot.png", center, size=260,
                                     app_logic=application_logic())
            shots.append((f"{title} (Slicer slice views)", png.read_bytes()))
    return shots


def _read_segmentation(path: Path, name: str) -> Any:
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.CreateDefaultDisplayNodes()
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    storage.ReadData(seg)
    return seg


def _reference_segmentation(report: dict) -> Any:
    """The reference label map as a segmentation named and coloured like the model's labels."""
    image = sitk.ReadImage(report["reference"])
    labels = sitk.GetArrayFromImage(image).astype(np.uint8)
    grid = slicer.util.addVolumeFromArray(labels, ijkToRAS=ijk_to_ras_matrix(image), name="reference grid")
    manifest = describe_model(report["model"]["folder"])
    assert isinstance(manifest, Manifest)  # the report of a segmentation model
    return add_segmentation_node(labels, manifest, grid, "Reference")
