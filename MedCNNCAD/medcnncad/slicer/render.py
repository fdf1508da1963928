"""Headless screenshots through Slicer's own slice pipeline (no GPU, no OpenGL).

Each view is a ``vtkMRMLSliceLogic`` (Red/Yellow/Green orientations) blending the volume
with the segmentation exported to a label map on the label layer, exactly as Slicer's
slice views composite a label layer; the three views are written side by side as PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

__all__ = ["render_slice_views"]

_VIEWS = (("Red", "Axial"), ("Green", "Coronal"), ("Yellow", "Sagittal"))


def _label_node(segmentation_node: Any, volume_node: Any) -> Any:
    scene = slicer.mrmlScene
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("screenshot labels"))
    ids = vtk.vtkStringArray()
    segmentation_node.GetDisplayNode().GetVisibleSegmentIDs(ids)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, label, volume_node)
    return label


def _view(app_logic: Any, layout: str, orientation: str, volume_node: Any, label_node: Any,
          center_ras: Sequence[float], size: int, opacity: float) -> vtk.vtkImageData:
    scene = slicer.mrmlScene
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(app_logic)
    logic.SetMRMLScene(scene)
    slice_node = logic.AddSliceNode(f"MedCNNCADShot{layout}")
    slice_node.SetOrientation(orientation)
    slice_node.SetDimensions(size, size, 1)
    composite = logic.GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(volume_node.GetID())
    composite.SetLabelVolumeID(label_node.GetID())
    composite.SetLabelOpacity(opacity)
    logic.FitSliceToAll()
    slice_node.JumpSliceByCentering(*[float(v) for v in center_ras])
    connection = logic.GetImageDataConnection()
    connection.GetProducer().Update()
    image = connection.GetProducer().GetOutputDataObject(connection.GetIndex())
    dims = image.GetDimensions()
    rgba = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[1], dims[0], -1)
    rgb = rgba[..., :3].astype(np.float32) * (rgba[..., 3:4] / 255.0 if rgba.shape[-1] == 4 else 1.0)
    return rgb[::-1].astype(np.uint8)  # VTK rows run bottom-up


def render_slice_views(volume_node: Any, segmentation_node: Any, out_png: str | Path,
                       center_ras: Sequence[float], size: int = 320, opacity: float = 0.6,
                       app_logic: Any = None) -> Path:
    """Axial, coronal and sagittal views through ``center_ras`` (mm) with the segmentation filled.

    ``app_logic``: Slicer's application logic (``slicer.app.applicationLogic()`` in Slicer).
    Temporary nodes are removed again; the scene keeps only what it had.
    """
    if app_logic is None:
        app_logic = slicer.app.applicationLogic()
    import matplotlib.image

    scene = slicer.mrmlScene
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        label = _label_node(segmentation_node, volume_node)
        views = [_view(app_logic, layout, orientation, volume_node, label, center_ras, size, opacity)
                 for layout, orientation in _VIEWS]
        height = max(v.shape[0] for v in views)
        padded = [np.pad(v, ((0, height - v.shape[0]), (0, 4), (0, 0))) for v in views]
        matplotlib.image.imsave(str(out_png), np.concatenate(padded, axis=1))
    finally:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in added:
            if node.GetID() not in before:
                scene.RemoveNode(node)
    return Path(out_png)
