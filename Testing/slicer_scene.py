"""A real, headless Slicer MRML scene from the slicer-core package (never a mock).

Recipe from shared/NOTES.md: application logic, colour logic with default colour nodes,
module logics for Volumes, Segmentations and Subject Hierarchy, default slice views.
"""

from __future__ import annotations

import hashlib
import types

import numpy as np

import slicer
import slicer.util
import vtk


def new_scene():
    """Install a fresh scene as ``slicer.mrmlScene`` with the module logics the engine uses."""
    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetName("default")
    scene.AddNode(crosshair)
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    app.GetColorLogic().SetMRMLScene(scene)
    app.GetColorLogic().AddDefaultColorNodes()
    app.SetModuleLogic("Colors", app.GetColorLogic())
    app.SetSliceLogics(vtk.vtkCollection())
    app.SetViewLogics(vtk.vtkCollection())
    logics = {}
    for name, cls in (("volumes", slicer.vtkSlicerVolumesLogic),
                      ("segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("subjecthierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic)):
        logic = cls()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name.capitalize(), logic)
        logics[name] = logic
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    for layout_name in ("Red", "Yellow", "Green"):
        slice_node = slicer.vtkMRMLSliceNode()
        slice_node.SetName(layout_name)
        slice_node.SetLayoutName(layout_name)
        slice_node.SetDefaultOrientation({"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}[layout_name])
        scene.AddNode(slice_node)
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(**{k: types.SimpleNamespace(logic=(lambda lg=v: lg))
                                              for k, v in logics.items()})
    slicer._medcnncad_keepalive = (app, logics)  # keep the logics alive with the scene
    return scene


def volume_from_image(image, name: str):
    """Add a SimpleITK image as a scalar volume node (KJI array, full IJK-to-RAS)."""
    import SimpleITK as sitk

    from medcnncad.slicer_adaptor import ijk_to_ras_matrix

    return slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(image), ijkToRAS=ijk_to_ras_matrix(image),
                                          name=name)


def scene_fingerprint(scene) -> dict[str, str]:
    """Node ID -> hash of its name, attributes and (for volumes/segmentations) voxels."""
    out = {}
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        digest = hashlib.sha256(f"{node.GetClassName()}|{node.GetName()}".encode())
        for key in sorted(node.GetAttributeNames() or ()):
            digest.update(f"{key}={node.GetAttribute(key)}".encode())
        if node.IsA("vtkMRMLScalarVolumeNode") and node.GetImageData() is not None:
            digest.update(np.ascontiguousarray(slicer.util.arrayFromVolume(node)).tobytes())
        if node.IsA("vtkMRMLSegmentationNode"):
            seg = node.GetSegmentation()
            for i in range(seg.GetNumberOfSegments()):
                digest.update(seg.GetNthSegmentID(i).encode())
        out[node.GetID()] = digest.hexdigest()
    return out
