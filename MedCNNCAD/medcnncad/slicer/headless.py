"""A headless Slicer scene from the ``slicer-core`` package (reports, docs and tests).

Recipe from shared/NOTES.md: application logic, colour logic with default colour nodes, module
logics for Volumes, Segmentations, Subject Hierarchy and Sequences, default slice views. Sets
``slicer.mrmlScene`` and a ``slicer.modules`` namespace whose entries have ``.logic()``.
Not for use inside a running Slicer (which has its own scene).
"""

from __future__ import annotations

import types

import slicer
import vtk

__all__ = ["new_scene", "application_logic"]


def application_logic():
    """The application logic of the scene made by :func:`new_scene`."""
    return slicer._medcnncad_keepalive[0]


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
                      ("subjecthierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
                      ("sequences", slicer.vtkSlicerSequencesLogic)):
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
