"""Slicer scene adaptor: engine results in, MRML nodes out (and back).

Imports only ``slicer``, ``slicer.util``, ``vtk``, numpy and the engine, so it runs in
3D Slicer and headless on the ``slicer-core`` package. Slicer arrays are (K, J, I);
``IJKToRAS`` matrices map voxel indices to RAS millimetres, the engine's SimpleITK
images are LPS — the conversion is done here and nowhere else.

Every function that adds nodes does so inside :class:`NodeTransaction`: if anything
fails, the nodes it added are removed, so the scene is exactly as before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk
import slicer
import slicer.util
import vtk

from medcnncad import INTENDED_USE
from medcnncad.errors import InputError
from medcnncad.inference.result import SegmentationResult
from medcnncad.inference.scoring import calibration_words, case_calibration_note, case_probability
from medcnncad.io.segfile import terminology_entry
from medcnncad.lesions.components import Lesion, components
from medcnncad.metrics.segmentation import StructureMetrics, compute_metrics
from medcnncad.models.manifest import Manifest
from medcnncad.preprocessing.brain_mask import voxel_index_map

__all__ = ["NodeTransaction", "volume_node_to_image", "ijk_to_ras_matrix", "add_segmentation_node",
           "add_probability_nodes", "add_lesion_table", "add_metrics_table", "set_provenance",
           "set_probability_threshold", "jump_to_ras", "segmentation_to_labels", "add_discordance_segmentation",
           "lesion_concordance", "LesionDiscordance", "add_result_nodes", "ResultNodes", "Comparison",
           "compare_nodes", "brain_mask_node_to_image"]

PROVENANCE_PREFIX = "MedCNNCAD."


class NodeTransaction:
    """Context manager that removes every node added to the scene if the block raises."""

    def __init__(self, scene: Any = None) -> None:
        self.scene = scene or slicer.mrmlScene
        self._before: set[str] = set()

    def _ids(self) -> set[str]:
        return {self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())}

    def __enter__(self) -> NodeTransaction:
        self._before = self._ids()
        return self

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        if exc_type is not None:
            for node_id in sorted(self._ids() - self._before, reverse=True):
                node = self.scene.GetNodeByID(node_id)
                if node is not None:
                    self.scene.RemoveNode(node)
        return False


def _matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_world(node: Any) -> np.ndarray:
    """A volume node's IJK-to-RAS matrix (4 x 4) in world coordinates: its own, times its parent transform's to the
    world when it is under one (a sequence registered by a transform that was not hardened is read where Slicer
    shows it).

    Raises:
        InputError: a non-linear transform, naming the node and the transform.
    """
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return _to_world(node, "volume") @ _matrix_to_numpy(matrix)


def _to_world(node: Any, kind: str) -> np.ndarray:
    """The 4 x 4 matrix from ``node``'s coordinates to the world: its parent transform's, the identity without one.

    Raises:
        InputError: a non-linear transform, naming the node (a ``kind``) and the transform.
    """
    transform = node.GetParentTransformNode()
    if transform is None:
        return np.eye(4)
    if not transform.IsTransformToWorldLinear():
        raise InputError(f"{kind} {node.GetName()!r} is under the non-linear transform {transform.GetName()!r}: "
                         f"harden it first (Data module: right-click the {kind}, 'Harden transform')")
    to_world = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(to_world)
    return _matrix_to_numpy(to_world)


@contextmanager
def world_geometry(volume: Any) -> Iterator[Any]:
    """A volume node with ``volume``'s grid in world coordinates, to write segments through: ``volume`` itself when
    it is not under a transform, else a temporary node (its voxels shared, no parent transform; removed afterwards).
    Slicer's array-to-segment import applies a reference volume's transform twice (measured with slicer-core), while
    its segment export onto a volume is transform-aware, so reading goes through ``volume`` itself."""
    if volume.GetParentTransformNode() is None:
        yield volume
        return
    matrix = _numpy_to_matrix(ijk_to_world(volume))
    scene = volume.GetScene() or slicer.mrmlScene
    temporary = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{volume.GetName()} (world geometry)")
    try:
        temporary.SetIJKToRASMatrix(matrix)
        temporary.SetAndObserveImageData(volume.GetImageData())
        yield temporary
    finally:
        scene.RemoveNode(temporary)


def volume_node_to_image(volume_node: Any) -> sitk.Image:
    """A scalar volume node as a SimpleITK image (LPS geometry in world coordinates: a linear parent transform
    applied, :func:`ijk_to_world`; voxels copied).

    Raises:
        InputError: a node without voxels, not 3D, or under a non-linear transform.
    """
    if volume_node is None or volume_node.GetImageData() is None:
        name = volume_node.GetName() if volume_node is not None else "None"
        raise InputError(f"volume {name!r} has no image data")
    array = slicer.util.arrayFromVolume(volume_node)
    if array.ndim != 3:
        raise InputError(f"volume {volume_node.GetName()!r}: expected a 3D scalar volume, got shape {array.shape}")
    return _on_volume_geometry(sitk.GetImageFromArray(np.array(array, copy=True)), volume_node)


def _on_volume_geometry(image: sitk.Image, volume_node: Any) -> sitk.Image:
    """``image`` (of ``volume_node``'s size) given the node's LPS geometry in world coordinates
    (:func:`ijk_to_world`)."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_world(volume_node)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    image.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
    return image


def ijk_to_ras_matrix(image: sitk.Image) -> vtk.vtkMatrix4x4:
    """The IJK-to-RAS matrix of a SimpleITK image."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps = np.eye(4)
    lps[:3, :3] = direction
    lps[:3, 3] = image.GetOrigin()
    return _numpy_to_matrix(np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps)


def _numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _add_segment(seg_node: Any, reference_volume: Any, segment_id: str, name: str,
                 color: Sequence[float], mask: np.ndarray, terminology: str = "") -> None:
    segmentation = seg_node.GetSegmentation()
    segmentation.AddEmptySegment(segment_id, name, list(color))
    segment = segmentation.GetSegment(segment_id)
    segment.SetNameAutoGenerated(False)
    segment.SetColorAutoGenerated(False)
    if terminology:
        segment.SetTerminology(terminology)
    with _no_leftover_label_displays():
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), seg_node, segment_id,
                                                         reference_volume)


@contextmanager
def _no_leftover_label_displays() -> Iterator[None]:
    """Remove the label map display nodes a block leaves behind without their volume: ``slicer.util``'s segment-array
    helper makes a temporary label map volume with ``CreateAndAddLabelVolume`` (which adds a display node) and removes
    the volume only, so each segment written left one ``LabelMapVolumeDisplay`` node in the scene (seen headless;
    where the application removes them with their volume, there is nothing left to remove)."""
    scene = slicer.mrmlScene
    before = {node.GetID() for node in _label_displays(scene)}
    try:
        yield
    finally:
        for node in _label_displays(scene):
            if node.GetID() not in before and node.GetDisplayableNode() is None:
                scene.RemoveNode(node)


def _label_displays(scene: Any) -> list[Any]:
    found = scene.GetNodesByClass("vtkMRMLLabelMapVolumeDisplayNode")
    return [found.GetItemAsObject(i) for i in range(found.GetNumberOfItems())]


def _new_segmentation(reference_volume: Any, name: str) -> Any:
    scene = slicer.mrmlScene
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    seg_node.CreateDefaultDisplayNodes()
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    return seg_node


def add_segmentation_node(label_map: np.ndarray, manifest: Manifest, reference_volume: Any,
                          name: str = "MedCNNCAD AI segmentation") -> Any:
    """A new segmentation node with one named, coloured, coded segment per manifest label.

    ``label_map`` is (K, J, I) on ``reference_volume``'s grid. Shown in 2D and 3D.
    """
    seg_node = _new_segmentation(reference_volume, name)
    for label in manifest.labels:
        _add_segment(seg_node, reference_volume, label.name, label.name, label.color, label_map == label.value,
                     terminology_entry(label.terminology))
    display = seg_node.GetDisplayNode()
    display.SetVisibility2D(True)
    display.SetVisibility3D(True)
    seg_node.CreateClosedSurfaceRepresentation()
    return seg_node


def add_probability_nodes(result: SegmentationResult, prefix: str = "MedCNNCAD") -> dict[str, Any]:
    """One scalar volume per output channel (probabilities 0-1), rainbow colour map, threshold 0.5."""
    scene = slicer.mrmlScene
    matrix = ijk_to_ras_matrix(result.reference)
    nodes = {}
    for channel, probs in result.probabilities.items():
        node = slicer.util.addVolumeFromArray(np.asarray(probs, dtype=np.float32), ijkToRAS=matrix,
                                              name=scene.GenerateUniqueName(f"{prefix} P({channel})"))
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        rainbow = scene.GetFirstNodeByName("Rainbow") or scene.GetFirstNodeByName("ColdToHotRainbow")
        if rainbow is not None:
            display.SetAndObserveColorNodeID(rainbow.GetID())
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, 1.0)
        set_probability_threshold(node, 0.5)
        node.SetAttribute(PROVENANCE_PREFIX + "channel", channel)
        nodes[channel] = node
    return nodes


def add_uncertainty_node(result: SegmentationResult, prefix: str = "MedCNNCAD") -> Any:
    """The test-time-augmentation uncertainty map (std of the foreground probability) as a volume."""
    node = slicer.util.addVolumeFromArray(np.asarray(result.uncertainty, dtype=np.float32),
                                          ijkToRAS=ijk_to_ras_matrix(result.reference),
                                          name=slicer.mrmlScene.GenerateUniqueName(f"{prefix} uncertainty"))
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 0.5)  # the std of a probability is at most 0.5
    display.SetApplyThreshold(False)  # every voxel shown: the probability threshold does not apply here
    node.SetAttribute(PROVENANCE_PREFIX + "channel", "uncertainty")
    node.SetAttribute(PROVENANCE_PREFIX + "method", f"test-time augmentation, {result.tta_passes} passes")
    return node


def set_probability_threshold(probability_node: Any, threshold: float) -> None:
    """Show only voxels with probability >= ``threshold`` (0-1) of a probability volume.

    The uncertainty volume (a standard deviation, at most 0.5) is not a probability: it stays unthresholded.
    """
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"probability threshold {threshold} must be between 0 and 1")
    display = probability_node.GetDisplayNode()
    if probability_node.GetAttribute(PROVENANCE_PREFIX + "channel") == "uncertainty":
        display.SetApplyThreshold(False)
        return
    display.SetApplyThreshold(True)
    display.SetThreshold(float(threshold), 1.0)


_LESION_COLUMNS = (("structure", "string"), ("id", "int"), ("volume_ml", "double"),
                   ("longest_diameter_mm", "double"), ("mean_probability", "double"),
                   ("max_probability", "double"), ("R", "double"), ("A", "double"), ("S", "double"))


def _table(name: str, columns: Iterable[tuple[str, str]], rows: Iterable[Sequence[Any]]) -> Any:
    scene = slicer.mrmlScene
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    arrays = []
    for column, kind in columns:
        array = {"string": vtk.vtkStringArray, "int": vtk.vtkIntArray, "double": vtk.vtkDoubleArray}[kind]()
        array.SetName(column)
        arrays.append((array, kind))
    for row in rows:
        for (array, kind), value in zip(arrays, row):
            if kind == "string":
                array.InsertNextValue(str(value))
            else:
                array.InsertNextValue(float("nan") if value is None else value)
    for array, _ in arrays:
        table.AddColumn(array)
    table.SetUseColumnTitleAsColumnHeader(True)
    return table


def add_lesion_table(lesions: Sequence[Lesion], name: str = "MedCNNCAD lesions") -> Any:
    """A table node, one row per lesion: volume (mL), longest axial diameter (mm), probability, RAS centroid;
    with test-time augmentation the mean uncertainty, and with a grade classifier one ``P(<class>)``
    column per class (calibrated), the predicted class and its uncertainty (empty for other structures)."""
    classes = list(next((les.class_probabilities for les in lesions if les.class_probabilities), {}))
    with_uncertainty = any(les.uncertainty is not None for les in lesions)
    columns = list(_LESION_COLUMNS[:6])
    columns += [("uncertainty", "double")] if with_uncertainty else []
    columns += [(f"P({c})", "double") for c in classes]
    columns += [("predicted_class", "string"), ("class_uncertainty", "double")] if classes else []
    columns += list(_LESION_COLUMNS[6:])
    rows = []
    for les in lesions:
        row: list[Any] = [les.structure, les.id, les.volume_ml, les.longest_diameter_mm, les.mean_probability,
                          les.max_probability]
        row += [les.uncertainty] if with_uncertainty else []
        row += [(les.class_probabilities or {}).get(c) for c in classes]
        row += [les.predicted_class or "", les.class_uncertainty] if classes else []
        rows.append(row + list(les.centroid_ras_mm))
    return _table(name, columns, rows)


def add_similar_table(neighbours: Sequence[Mapping[str, Any]], name: str = "MedCNNCAD similar cases") -> Any:
    """A table node, one row per similar library case or lesion (``Neighbour.to_json`` dicts, nearest first): rank,
    distance, case, lesion, volume (mL), one column per metadata key of the library, thumbnail file, and the note
    when the library case was segmented from other input sequences than this one (empty otherwise)."""
    keys = sorted({key for n in neighbours for key in n["metadata"]})
    columns = [("rank", "int"), ("distance", "double"), ("case", "string"), ("lesion", "int"),
               ("volume_ml", "double"), *((key, "string") for key in keys), ("thumbnail", "string"),
               ("note", "string")]
    rows = [[n["rank"], n["distance"], n["case_id"], n["lesion_id"], n["volume_ml"],
             *(n["metadata"].get(key, "") for key in keys), n["thumbnail"] or "", n.get("inputs_note") or ""]
            for n in neighbours]
    return _table(name, columns, rows)


def add_removed_table(result: SegmentationResult, name: str = "MedCNNCAD removed candidates") -> Any:
    """A table node, one row per component the model's post-processing removed from the label map
    (stage, volume mL, largest foreground probability, classifier probability, RAS centre in mm):
    still visible in the probability maps, for the reader to check."""
    columns = [("removed_by", "string"), ("volume_ml", "double"), ("max_probability", "double"),
               ("classifier_probability", "double"), ("R", "double"), ("A", "double"), ("S", "double")]
    rows = []
    for candidate in result.removed_candidates:  # largest first
        c = candidate.to_json(result.reference)
        rows.append([c["stage"], c["volume_ml"], c["max_probability"], c["classifier_probability"],
                     *c["centroid_ras_mm"]])
    return _table(name, columns, rows)


_METRIC_COLUMNS = ("dice", "jaccard", "precision", "recall", "specificity", "accuracy", "f1", "hd95_mm",
                   "assd_mm", "volume_diff_ml")


def add_metrics_table(metrics: Mapping[str, StructureMetrics], name: str = "MedCNNCAD metrics") -> Any:
    """A table node, one row per label/region, one column per metric (empty cells where undefined)."""
    columns = [("structure", "string")] + [(c, "double") for c in _METRIC_COLUMNS]
    for suffix in ("", "_brats2023"):  # any-overlap rule, then BraTS 2023 (docs/metrics.md)
        columns += [(f"reference_lesions{suffix}", "int"), (f"missed_lesions{suffix}", "int"),
                    (f"false_positive_lesions{suffix}", "int"), (f"lesionwise_dice{suffix}", "double")]
    rows = []
    for structure, m in metrics.items():
        row = [structure] + [getattr(m, c) for c in _METRIC_COLUMNS]
        for det in (m.lesions, m.lesions_brats2023):
            row += ([det.reference_lesions, det.false_negative, det.false_positive, det.lesionwise_dice] if det
                    else [0, 0, 0, None])
        rows.append(row)
    return _table(name, columns, rows)


def set_provenance(node: Any, result: SegmentationResult, extra: Mapping[str, Any] | None = None) -> None:
    """Model identity, version, weights SHA-256, device, timings, intended use, the case abnormality
    probability (with whether it is calibrated for the sequences given) and the run's warnings (``notes``,
    a JSON list) as node attributes."""

    m = result.manifest
    values = {"modelId": m.id, "modelVersion": m.version, "modelName": m.name, "weightsSHA256": m.weights_sha256,
              "trainedOn": m.trained_on, "device": result.device,
              "timings": json.dumps({k: round(v, 3) for k, v in result.timings.items()}),
              "intendedUse": m.intended_use or INTENDED_USE, "missingChannels": ",".join(result.missing_channels),
              "caseAbnormalityProbability": f"{case_probability(result):.4f}",
              "caseCalibration": calibration_words(case_calibration_note(result)),
              "notes": json.dumps(result.warnings)}  # e.g. labels the model's post-processing moved
    values.update({k: str(v) for k, v in (extra or {}).items()})
    for key, value in values.items():
        node.SetAttribute(PROVENANCE_PREFIX + key, str(value))


def jump_to_ras(ras: Sequence[float], scene: Any = None) -> None:
    """Centre every slice view of the scene on a RAS point (mm)."""
    scene = scene or slicer.mrmlScene
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        scene.GetNthNodeByClass(index, "vtkMRMLSliceNode").JumpSliceByCentering(*[float(v) for v in ras])


@dataclass
class ResultNodes:
    """The nodes one run added to the scene."""

    segmentation: Any
    probabilities: dict[str, Any]
    lesion_table: Any
    result: SegmentationResult
    removed_table: Any = None  # components post-processing removed; None when it removed none
    brain_mask: Any = None  # the clinical chain's brain mask ("brain" segment), when it extracted the brain

    @property
    def lesions(self) -> list[Lesion]:
        return self.result.lesions

    @property
    def timings(self) -> dict[str, float]:
        return self.result.timings


def add_result_nodes(result: SegmentationResult, reference_volume: Any, with_probabilities: bool = True) -> ResultNodes:
    """All result nodes of one run, added atomically (nothing is added if anything fails).

    Raises:
        InputError: ``reference_volume`` is not on the grid of the result (the engine's first input channel).
    """
    check_on_result_grid(result, reference_volume)
    with NodeTransaction(), world_geometry(reference_volume) as geometry:
        seg = add_segmentation_node(result.label_map, result.manifest, geometry)
        set_provenance(seg, result, {"referenceVolumeID": reference_volume.GetID()})
        probs = add_probability_nodes(result) if with_probabilities else {}
        if with_probabilities and result.uncertainty is not None:
            probs["uncertainty"] = add_uncertainty_node(result)
        table = add_lesion_table(result.lesions)
        if result.classification:
            table.SetAttribute(PROVENANCE_PREFIX + "classifier", result.classification["model"]["id"])
            table.SetAttribute(PROVENANCE_PREFIX + "caseRule", result.classification["case"]["rule"])
        removed = add_removed_table(result) if result.removed_candidates else None
        brain = add_brain_mask_node(result, geometry) if result.brain_mask is not None else None
        for node in (*probs.values(), table, *([removed] if removed else []), *([brain] if brain else [])):
            node.SetAttribute(PROVENANCE_PREFIX + "segmentation", seg.GetID())
    return ResultNodes(seg, probs, table, result, removed, brain)


def check_on_result_grid(result: SegmentationResult, volume: Any) -> None:
    """Refuse to place a result on a volume whose grid is not the result's (its size, IJK-to-RAS within 1e-3 mm):
    segments are written through the volume's geometry, probabilities through the result's."""
    shape = slicer.util.arrayFromVolume(volume).shape
    same = shape == result.label_map.shape and np.allclose(
        ijk_to_world(volume), _matrix_to_numpy(ijk_to_ras_matrix(result.reference)), atol=1e-3)
    if not same:
        raise InputError(f"volume {volume.GetName()!r} is not on the grid the result was computed on (shape {shape} "
                         f"vs {result.label_map.shape}): place the result on the model's first input channel")


BRAIN_COLOR = (0.85, 0.75, 0.6)


def add_brain_mask_node(result: SegmentationResult, reference_volume: Any,
                        name: str = "MedCNNCAD brain mask") -> Any:
    """The brain mask the model's clinical preprocessing computed, as a segmentation with one "brain"
    segment (outline only, so the reader can check what the model was shown); (K, J, I) on the reference."""
    if result.brain_mask is None:
        raise InputError("this run extracted no brain (the model's clinical preprocessing did not ask for it)")
    seg = _new_segmentation(reference_volume, name)
    _add_segment(seg, reference_volume, "brain", "brain", BRAIN_COLOR, result.brain_mask > 0)
    display = seg.GetDisplayNode()
    display.SetAllSegmentsOpacity2DFill(0.0)  # outline only: the tumor overlay stays readable
    display.SetAllSegmentsOpacity3D(0.0)
    step = next((s for s in result.preprocessing if s.get("step") == "brain_mask"), {})
    seg.SetAttribute(PROVENANCE_PREFIX + "brainMask", json.dumps(step))
    return seg


def brain_mask_node_to_image(node: Any, reference_volume: Any) -> tuple[sitk.Image, str]:
    """A reader's brain mask node as a SimpleITK image, and how messages and the report name it.

    A segmentation node gives its segment named "brain" (any case; the segment :func:`add_brain_mask_node` makes,
    perhaps edited in the Segment Editor) or its only segment, exported onto ``reference_volume``'s grid (both
    nodes' transforms applied) when its voxels are the reference's (:func:`_check_on_reference_voxels`). A label map
    or scalar volume node is taken as it is (non-zero = brain); the engine then refuses it if it is not on the
    reference's grid. Nothing in the scene changes.

    Raises:
        InputError: a segmentation with several segments none named "brain", or no segment, or drawn on another
            grid; a node of another kind.
    """
    if hasattr(node, "GetSegmentation"):
        return _segment_mask(node, reference_volume)
    if node is None or not hasattr(node, "GetImageData"):
        kind = type(node).__name__ if node is not None else "None"
        raise InputError(f"brain mask: a {kind} is neither a segmentation nor a volume node")
    return volume_node_to_image(node), f"brain mask volume {node.GetName()!r}"


def _segment_mask(node: Any, reference_volume: Any) -> tuple[sitk.Image, str]:
    """The brain segment of segmentation ``node`` on ``reference_volume``'s grid, and its name for messages."""
    segmentation = node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    names = [segmentation.GetSegment(i).GetName() for i in ids]
    chosen = [i for i, n in zip(ids, names) if n.strip().lower() == "brain"] or (ids if len(ids) == 1 else [])
    if not chosen:
        raise InputError(f"segmentation {node.GetName()!r} has segments {names}: name the brain mask's segment "
                         "'brain' (or keep only that segment)")
    label = f"segment {segmentation.GetSegment(chosen[0]).GetName()!r} of {node.GetName()!r}"
    _check_on_reference_voxels(node, chosen[0], reference_volume, label)
    array = slicer.util.arrayFromSegmentBinaryLabelmap(node, chosen[0], reference_volume)
    image = _on_volume_geometry(sitk.GetImageFromArray((np.asarray(array) != 0).astype(np.uint8)), reference_volume)
    return image, label


def _check_on_reference_voxels(node: Any, segment_id: str, reference_volume: Any, label: str) -> None:
    """Refuse a segment drawn on another grid than the reference's (another spacing, or a lattice shifted by part of
    a voxel, where it is shown): resampled by scanner coordinates it would not be the mask the reader drew (a T2 the
    engine registers onto the reference, another study), and the same mask as a file or label map is refused. A
    segment whose source is not a binary labelmap (a closed surface) has no grid of its own and passes; so does an
    empty one (the engine then refuses it as empty).

    Raises:
        InputError: naming the segment (``label``), the reference and both grids' spacing.
    """
    binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    segmentation = node.GetSegmentation()
    labelmap = segmentation.GetSegment(segment_id).GetRepresentation(binary)
    if segmentation.GetSourceRepresentationName() != binary or labelmap is None or labelmap.IsEmpty():
        return
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    drawn, reference = _to_world(node, "segmentation") @ _matrix_to_numpy(matrix), ijk_to_world(reference_volume)
    if voxel_index_map(drawn, reference) is None:
        spacing = lambda m: "(" + ", ".join(f"{v:.3g}" for v in np.linalg.norm(m[:3, :3], axis=0)) + ")"  # noqa: E731
        raise InputError(f"{label}: not on the voxels of {reference_volume.GetName()!r}, the run's reference "
                         f"(spacing {spacing(drawn)} mm against {spacing(reference)} mm, or shifted by part of a "
                         f"voxel): put it on them and check it there (Segment Editor: 'Specify geometry', source "
                         f"geometry {reference_volume.GetName()!r})")


# -- reference comparison -----------------------------------------------------------------

VALUE_NAMED_SEGMENT = re.compile(r"(?:segment_|label_)?(\d+)", re.IGNORECASE)
"""How Slicer names the segments of a label file it imports: ``Segment_4`` (Add Data as a segmentation),
``Label_4`` (Import labelmap without a colour table), ``4`` (with the default GenericColors table)."""


def segmentation_to_labels(segmentation_node: Any, reference_volume: Any, manifest: Manifest,
                           reference_labels: Mapping[int, int] | None = None) -> np.ndarray:
    """A segmentation node as a (K, J, I) label map of the manifest's values on ``reference_volume``'s grid.

    A segment named as a manifest label (case-insensitive) is that label. A segment named by a label value, as
    Slicer names an imported label file's segments (:data:`VALUE_NAMED_SEGMENT`), is that value after
    ``reference_labels`` (the file's convention, e.g. BraTS 2023's 3 -> 4; default the model's own values).
    Any other name, or a value that is none of the model's labels, is an error naming the segment, so nothing
    is compared silently wrongly.
    """
    by_name = {label.name.lower(): label.value for label in manifest.labels}
    segmentation = _segmentation_of(segmentation_node)
    shape = slicer.util.arrayFromVolume(reference_volume).shape
    labels = np.zeros(shape, dtype=np.uint8)
    owner = np.full(shape, -1, dtype=np.int16)  # which segment labelled each voxel: overlaps are refused
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        name = segment.GetName()
        value = by_name.get(name.lower())
        if value is None:
            value = _value_named(name, segment.GetLabelValue(), segmentation_node.GetName(), manifest,
                                 reference_labels)
        if value == 0:  # the convention reads it as background (BraTS 2024's resection cavity)
            continue
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, reference_volume) > 0
        _check_no_overlap(segmentation, segmentation_node.GetName(), owner, mask, index)
        labels[mask] = value
        owner[mask] = index
    return labels


def _segmentation_of(node: Any) -> Any:
    """The vtkSegmentation of a segmentation node (its export onto a volume applies both nodes' transforms);
    anything else is refused by name."""
    if node is None or not hasattr(node, "GetSegmentation"):
        kind = type(node).__name__ if node is not None else "None"
        name = node.GetName() if hasattr(node, "GetName") else kind
        raise InputError(f"{name!r} is a {kind}, not a segmentation node: import it as a segmentation first "
                         f"(Segmentations module, Import labelmap)")
    return node.GetSegmentation()


def _check_no_overlap(segmentation: Any, node_name: str, owner: np.ndarray, mask: np.ndarray, index: int) -> None:
    """Refuse a segment that overlaps an earlier one: one label per voxel, else the metrics would depend on the
    order of the segments (a later one overwriting an earlier)."""
    earlier = owner[mask]
    earlier = earlier[earlier >= 0]
    if earlier.size:
        other = segmentation.GetSegment(segmentation.GetNthSegmentID(int(earlier[0]))).GetName()
        this = segmentation.GetSegment(segmentation.GetNthSegmentID(index)).GetName()
        raise InputError(f"segmentation {node_name!r}: segments {other!r} and {this!r} overlap ({earlier.size} "
                         f"voxels); a reference needs one label per voxel (Segment Editor: masking 'Overwrite "
                         f"other segments')")


def _value_named(name: str, label_value: int, node_name: str, manifest: Manifest,
                 reference_labels: Mapping[int, int] | None) -> int:
    """The model's label value (0: background) of a segment named by a label value (``Segment_3`` under BraTS
    2023: 4). The number in the name must be the segment's own label value: Slicer's import of an image without a
    colour table numbers segments by position (``Label_2`` for the second value present), which is refused."""
    labels = ", ".join(f"{x.name} {x.value}" for x in manifest.labels)
    match = VALUE_NAMED_SEGMENT.fullmatch(name.strip())
    if match is None:
        raise InputError(f"reference segment {name!r} of {node_name!r} matches no label of model {manifest.id} "
                         f"({labels}); name it as one, or by its label value (e.g. Segment_4)")
    source = int(match.group(1))
    if source != label_value:
        raise InputError(f"reference segment {name!r} of {node_name!r}: its name says value {source} but its label "
                         f"value is {label_value}; rename it as one of model {manifest.id}'s labels ({labels})")
    mapping = reference_labels or {}
    if source not in mapping and source in mapping.values():
        raise InputError(f"reference segment {name!r} of {node_name!r}: label value {source} is not in the "
                         f"reference labels {dict(mapping)} and would merge with a value mapped to {source}")
    value = mapping.get(source, source)
    if value != 0 and value not in {x.value for x in manifest.labels}:
        raise InputError(f"reference segment {name!r} of {node_name!r}: label value {source} is none of model "
                         f"{manifest.id}'s ({labels}); name the file's label convention (reference labels "
                         "brats2023, msd or 3=4-style pairs)")
    return value


def add_discordance_segmentation(ai_mask: np.ndarray, reference_mask: np.ndarray, reference_volume: Any,
                                 structure: str) -> Any:
    """Segments of voxels found only by the AI (orange) and only by the reference (blue)."""
    seg_node = _new_segmentation(reference_volume, f"MedCNNCAD discordance {structure}")
    _add_segment(seg_node, reference_volume, "AI_only", f"{structure} AI only", (1.0, 0.5, 0.0),
                 ai_mask & ~reference_mask)
    _add_segment(seg_node, reference_volume, "reference_only", f"{structure} reference only", (0.2, 0.4, 1.0),
                 reference_mask & ~ai_mask)
    seg_node.GetDisplayNode().SetVisibility2D(True)
    return seg_node


@dataclass
class LesionDiscordance:
    """A lesion found by one reader only (``found_by`` = "AI" or "reference")."""

    structure: str
    found_by: str
    volume_ml: float
    centroid_ras_mm: tuple[float, float, float]


def lesion_concordance(ai_mask: np.ndarray, reference_mask: np.ndarray, image: sitk.Image,
                       structure: str) -> list[LesionDiscordance]:
    """Lesions (26-connected) of one side with no voxel on the other side."""
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    out = []
    for found_by, mine, other in (("AI", ai_mask, reference_mask), ("reference", reference_mask, ai_mask)):
        labelled, count = components(mine)
        for index in range(1, count + 1):
            lesion = labelled == index
            if (lesion & other).any():
                continue
            centroid = np.argwhere(lesion).mean(0)[::-1]
            lps = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in centroid])
            out.append(LesionDiscordance(structure, found_by, float(lesion.sum()) * voxel_ml,
                                         (-lps[0], -lps[1], lps[2])))
    return out


@dataclass
class Comparison:
    """Result of comparing the AI with a reference segmentation."""

    metrics: dict[str, StructureMetrics]
    metrics_table: Any
    discordance: Any
    lesions_only_one_side: list[LesionDiscordance] = field(default_factory=list)
    discordant_lesion_table: Any = None


def compare_nodes(ai_segmentation: Any, reference_segmentation: Any, reference_volume: Any, manifest: Manifest,
                  discordance_structure: str | None = None,
                  reference_labels: Mapping[int, int] | None = None) -> Comparison:
    """Metrics per label/region, a discordance segmentation and lesion concordance (added atomically).
    ``reference_labels`` maps the label values of a reference's value-named segments onto the model's
    (:func:`segmentation_to_labels`)."""
    image = volume_node_to_image(reference_volume)
    ai = segmentation_to_labels(ai_segmentation, reference_volume, manifest)
    ref = segmentation_to_labels(reference_segmentation, reference_volume, manifest, reference_labels)
    if not ref.any():  # an empty reference (Segment Editor's new segmentation) would score every Dice 0
        raise InputError(f"reference {reference_segmentation.GetName()!r} has no labelled voxel on "
                         f"{reference_volume.GetName()!r}: nothing to compare")
    structures = manifest.structures()
    metrics = compute_metrics(ai, ref, image.GetSpacing(), structures)
    name = discordance_structure or (manifest.regions[0].name if manifest.regions else manifest.labels[0].name)
    ai_mask, ref_mask = np.isin(ai, structures[name]), np.isin(ref, structures[name])
    one_sided = lesion_concordance(ai_mask, ref_mask, image, name)
    with NodeTransaction():
        table = add_metrics_table(metrics)
        with world_geometry(reference_volume) as geometry:
            discordance = add_discordance_segmentation(ai_mask, ref_mask, geometry, name)
        lesions = _table("MedCNNCAD discordant lesions",
                         (("structure", "string"), ("found_by", "string"), ("volume_ml", "double"),
                          ("R", "double"), ("A", "double"), ("S", "double")),
                         [(d.structure, d.found_by, d.volume_ml, *d.centroid_ras_mm) for d in one_sided])
    return Comparison(metrics, table, discordance, one_sided, lesions)
