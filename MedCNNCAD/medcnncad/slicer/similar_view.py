"""A similar library case beside the current one: its view image and segmentation in the Yellow slice view of
Slicer's side-by-side layout, the current case left in the Red view.

The library case is another patient in its own scanner coordinates: it is shown only in the Yellow view (its
segmentation's display is restricted to it), and every other segmentation shown in all views (MedCNNCAD's
results, brain masks and discordance, and the reader's own, e.g. a reference) is restricted to the other views
so that nothing of the current patient is drawn over it. That view restriction is the only change to the reader's
nodes (Segmentations module, Display, Views, undoes it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import slicer

from medcnncad.errors import InputError

__all__ = ["SIMILAR_VIEW", "keep_similar_view", "load_similar_case", "show_side_by_side"]

SIMILAR_VIEW = "Yellow"
"""The slice view that shows the library case (the right-hand view of the side-by-side layout)."""
_IMAGE_ATTRIBUTE = "MedCNNCAD.similarImage"  # the library's view image file a similar case's nodes were loaded from


def load_similar_case(neighbour: Mapping[str, Any], scene: Any = None) -> tuple[Any, Any]:
    """New volume and segmentation nodes for a library case (a ``Neighbour.to_json`` dict with ``view``).

    Raises:
        InputError: the case was added without a view image, or its files cannot be read (naming them).
    """
    scene = scene or slicer.mrmlScene
    view = neighbour.get("view")
    if not view:
        raise InputError(f"library case {neighbour['case_id']} was added without a view image (add it with "
                         f"'medcnncad library add --view-image' or build with --with-images)")
    name = f"Similar case {neighbour['case_id']}"
    loaded = _loaded(scene, str(neighbour["case_id"]), str(view["image"]))
    if loaded is not None:
        return loaded
    logic = slicer.modules.volumes.logic()
    volume = logic.AddArchetypeVolume(str(view["image"]), f"{name} image")
    if volume is None:
        raise InputError(f"{view['image']}: cannot be read as a volume")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} segmentation")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(view["segmentation"]))
    if not storage.ReadData(segmentation):
        scene.RemoveNode(segmentation)
        scene.RemoveNode(volume)
        raise InputError(f"{view['segmentation']}: cannot be read as a segmentation")
    segmentation.CreateDefaultDisplayNodes()
    for node in (volume, segmentation):
        node.SetAttribute("MedCNNCAD.similarCase", str(neighbour["case_id"]))
        node.SetAttribute("MedCNNCAD.similarLesion", str(neighbour["lesion_id"]))
        node.SetAttribute(_IMAGE_ATTRIBUTE, str(view["image"]))
    return volume, segmentation


def _loaded(scene: Any, case_id: str, image: str) -> tuple[Any, Any] | None:
    """The volume and segmentation of a library case loaded before from the view image file ``image`` (a second
    click shows them again); a case of the same id from another library (another file) is not it."""
    found = {}
    for cls in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode"):
        for i in range(scene.GetNumberOfNodesByClass(cls)):
            node = scene.GetNthNodeByClass(i, cls)
            if node.GetAttribute("MedCNNCAD.similarCase") == case_id and node.GetAttribute(_IMAGE_ATTRIBUTE) == image:
                found[cls] = node
    return (found["vtkMRMLScalarVolumeNode"], found["vtkMRMLSegmentationNode"]) if len(found) == 2 else None


def _views(scene: Any) -> list[Any]:
    nodes = [scene.GetNthNodeByClass(i, "vtkMRMLSliceNode") for i in range(scene.GetNumberOfNodesByClass(
        "vtkMRMLSliceNode"))]
    return nodes + [scene.GetNthNodeByClass(i, "vtkMRMLViewNode") for i in range(scene.GetNumberOfNodesByClass(
        "vtkMRMLViewNode"))]


def _slice_node(scene: Any, layout_name: str) -> Any:
    return next((n for n in _views(scene) if n.IsA("vtkMRMLSliceNode") and n.GetLayoutName() == layout_name), None)


def _composite(scene: Any, layout_name: str) -> Any:
    composites = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                  for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    return next((c for c in composites if c.GetLayoutName() == layout_name), None)


def _keep_off(segmentation: Any, yellow: Any, scene: Any) -> None:
    """Restrict a segmentation of the current patient shown in every view (the AI result, its brain mask and
    discordance, the reader's own reference) to the views other than ``yellow``: drawn over the library case it
    would sit on another patient's anatomy. Library cases' segmentations are left as they are."""
    display = segmentation.GetDisplayNode()
    if not segmentation.GetAttribute("MedCNNCAD.similarCase") and display is not None and \
            not display.GetViewNodeIDs():
        display.SetViewNodeIDs([n.GetID() for n in _views(scene) if n is not yellow])


@contextmanager
def keep_similar_view(scene: Any = None) -> Iterator[None]:
    """While the Yellow view shows a library case, keep it that way across the block: a new result's layers
    (set in every view by ``slicer.util.setSliceViewerLayers``) are taken back out of the Yellow view and every
    segmentation but the library case's is restricted to the other views. Does nothing when no library case is shown."""
    scene = scene or slicer.mrmlScene
    composite = _composite(scene, SIMILAR_VIEW)
    shown = scene.GetNodeByID(composite.GetBackgroundVolumeID() or "") if composite is not None else None
    yield
    if shown is None or not shown.GetAttribute("MedCNNCAD.similarCase"):
        return
    composite.SetBackgroundVolumeID(shown.GetID())
    composite.SetForegroundVolumeID(None)
    composite.SetLabelVolumeID(None)
    yellow = _slice_node(scene, SIMILAR_VIEW)
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        _keep_off(scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode"), yellow, scene)


def show_side_by_side(volume: Any, segmentation: Any, scene: Any = None) -> None:
    """Side-by-side layout (when the scene has a layout node): the library case alone in the Yellow view,
    axial and centred on its segmentation; every other segmentation kept to the other views."""
    scene = scene or slicer.mrmlScene
    yellow = _slice_node(scene, SIMILAR_VIEW)
    composite = _composite(scene, SIMILAR_VIEW)
    if yellow is None or composite is None:
        raise InputError(f"the scene has no {SIMILAR_VIEW} slice view to show the similar case in")
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout is not None:
        layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
    segmentation.GetDisplayNode().SetViewNodeIDs([yellow.GetID()])
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        _keep_off(scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode"), yellow, scene)  # never over it
    composite.SetBackgroundVolumeID(volume.GetID())
    composite.SetForegroundVolumeID(None)
    composite.SetLabelVolumeID(None)
    yellow.SetOrientation("Axial")
    bounds = [0.0] * 6
    segmentation.GetRASBounds(bounds)
    if bounds[0] <= bounds[1]:
        yellow.JumpSliceByCentering(*[(bounds[2 * i] + bounds[2 * i + 1]) / 2 for i in range(3)])
