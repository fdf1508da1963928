"""A result lands on the volume, the patient and the grid it was computed from, and a reference is compared only
when it means one label per voxel (a review's reproductions, in a real headless Slicer scene)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer")
import slicer  # noqa: E402
import slicer.util  # noqa: E402
import vtk  # noqa: E402
from slicer_scene import scene_fingerprint, volume_from_image  # noqa: E402

from medcnncad.errors import InputError  # noqa: E402
from medcnncad.inference.inputs import read_inputs  # noqa: E402
from medcnncad.io.segfile import write_seg_nrrd  # noqa: E402
from medcnncad.models.registry import load_model  # noqa: E402
from medcnncad.slicer import adaptor as sa  # noqa: E402
from medcnncad.slicer.logic import SecondReaderLogic  # noqa: E402
from medcnncad.slicer.similar_view import SIMILAR_VIEW, load_similar_case, show_side_by_side  # noqa: E402


def _translated(scene, node, mm=(30.0, -20.0, 10.0)):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    matrix = vtk.vtkMatrix4x4()
    for axis, value in enumerate(mm):
        matrix.SetElement(axis, 3, value)
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    return transform


def _segments_on(segmentation, volume, manifest) -> np.ndarray:
    labels = np.zeros(slicer.util.arrayFromVolume(volume).shape, np.uint8)
    for label in manifest.labels:
        labels[slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, label.name, volume) > 0] = label.value
    return labels


def test_volumes_under_a_linear_transform_are_read_and_answered_where_slicer_shows_them(scene, demo_result):
    """The engine read a volume's own geometry while Slicer showed it moved: the result landed 37 mm away, and a
    FLAIR registered by a transform that was not hardened was read unregistered (ED Dice 0.74)."""
    images, label, result = demo_result
    shift = np.array([30.0, -20.0, 10.0])  # RAS mm
    nodes = {c: volume_from_image(images[c], c) for c in ("T1", "T1c", "T2", "FLAIR")}
    for node in nodes.values():
        _translated(scene, node, tuple(shift))
    flair = sitk.Image(images["FLAIR"])  # stored 6 mm off, brought back by its own registration transform
    flair.SetOrigin(tuple(np.add(flair.GetOrigin(), (6.0, 0.0, 0.0))))  # LPS: +6 mm L, i.e. R -6 mm
    nodes["FLAIR"] = volume_from_image(flair, "FLAIR registered")
    _translated(scene, nodes["FLAIR"], tuple(shift + (6.0, 0.0, 0.0)))
    run = SecondReaderLogic().segment(nodes, model="demo", device="cpu", tta=False)
    assert np.array_equal(run.result.label_map, result.label_map)  # the same voxels as the untransformed run
    # the probabilities, the lesions and the segments sit where the volumes are shown (moved by the transform)
    probability = next(iter(run.probabilities.values()))
    matrix = vtk.vtkMatrix4x4()
    probability.GetIJKToRASMatrix(matrix)
    assert probability.GetParentTransformNode() is None
    assert np.allclose(sa._matrix_to_numpy(matrix), sa.ijk_to_world(nodes["T1"]))
    for moved, still in zip(run.result.lesions, result.lesions):
        assert np.allclose(np.subtract(moved.centroid_ras_mm, still.centroid_ras_mm), shift)
    assert np.array_equal(_segments_on(run.segmentation, nodes["T1"], result.manifest), result.label_map)
    assert scene.GetFirstNodeByName("T1 (world geometry)") is None  # the temporary geometry node went away
    # a reference drawn on the shown volume scores as on the untransformed one
    unmoved = volume_from_image(images["T1"], "T1 unmoved")
    expected = sa.compare_nodes(sa.add_segmentation_node(result.label_map, result.manifest, unmoved, "AI"),
                                sa.add_segmentation_node(sitk.GetArrayFromImage(label), result.manifest, unmoved,
                                                         "reader"), unmoved, result.manifest).metrics
    with sa.world_geometry(nodes["T1"]) as geometry:
        reader = sa.add_segmentation_node(sitk.GetArrayFromImage(label), result.manifest, geometry, "reader")
    got = sa.compare_nodes(run.segmentation, reader, nodes["T1"], result.manifest).metrics
    assert {k: m.dice for k, m in got.items()} == pytest.approx({k: m.dice for k, m in expected.items()})


def test_a_volume_under_a_non_linear_transform_is_refused(scene, demo_result):
    images, _, _ = demo_result
    nodes = {c: volume_from_image(images[c], c) for c in ("T1", "T1c", "T2", "FLAIR")}
    warp = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    nodes["T2"].SetAndObserveTransformNodeID(warp.GetID())
    before = scene_fingerprint(scene)
    with pytest.raises(InputError, match="volume 'T2' is under the non-linear transform 'warp': harden it first"):
        SecondReaderLogic().segment(nodes, model="demo", device="cpu", tta=False)
    assert scene_fingerprint(scene) == before


def test_the_result_is_placed_on_the_models_first_channel_whatever_the_order_of_a_dict(scene, demo_result):
    """Given {FLAIR: ..., T1: ...} with FLAIR on another grid, the segments were written through FLAIR's geometry
    while the probabilities (and the engine's label map) were on T1's: 28,000 voxels apart."""
    images, _, result = demo_result
    flair = sitk.Image(images["FLAIR"])
    flair.SetOrigin(tuple(np.add(flair.GetOrigin(), (6.0, 0.0, 0.0))))
    nodes = {"FLAIR": volume_from_image(flair, "FLAIR"), "T2": volume_from_image(images["T2"], "T2"),
             "T1c": volume_from_image(images["T1c"], "T1c"), "T1": volume_from_image(images["T1"], "T1")}
    manifest = load_model("brats-demo-unet").manifest
    assert list(SecondReaderLogic()._namedInputs(nodes, manifest)) == ["T1", "T1c", "T2", "FLAIR"]
    run = SecondReaderLogic().segment(nodes, model="demo", device="cpu", tta=False)
    assert run.segmentation.GetAttribute("MedCNNCAD.referenceVolumeID") == nodes["T1"].GetID()
    for label in run.result.manifest.labels:
        drawn = slicer.util.arrayFromSegmentBinaryLabelmap(run.segmentation, label.name, nodes["T1"]) > 0
        assert np.array_equal(drawn, run.result.label_map == label.value), label.name
    before = scene_fingerprint(scene)
    with pytest.raises(InputError, match="volume 'FLAIR' is not on the grid the result was computed on"):
        sa.add_result_nodes(run.result, nodes["FLAIR"])
    assert scene_fingerprint(scene) == before


def test_a_dicom_export_references_the_volume_the_run_read_not_what_is_selected_now(scene, demo_result):
    images, _, result = demo_result
    ran = volume_from_image(images["T1"], "patient A T1")
    other = volume_from_image(images["T1"], "patient B T1")
    nodes = sa.add_result_nodes(result, ran)
    logic = SecondReaderLogic()
    with pytest.raises(InputError, match="computed on 'patient A T1', not on the selected volumes "
                                         r"\(patient B T1\)"):
        logic.exportToDicomDatabase(nodes, [other], database=object())
    assert logic._exportReference(nodes, [None, ran]) is ran and logic._exportReference(nodes, ran) is ran
    scene.RemoveNode(ran)
    with pytest.raises(InputError, match="no longer in the scene"):
        logic._exportReference(nodes, None)


def test_a_worker_result_whose_volume_left_the_scene_is_discarded(scene, demo_result, tmp_path):
    """Closing the scene during a worker run put the old patient's result into the next patient's scene (the
    node ID was reused by the new patient's T1)."""
    images, _, result = demo_result
    reference = volume_from_image(images["T1"], "patient A T1")
    logic = SecondReaderLogic()

    class Finished:
        def poll(self, request, progress):
            return {"event": "done", "out": str(tmp_path / "out")}

    logic._worker = Finished()  # type: ignore[assignment]
    (tmp_path / "job").mkdir()
    job = {"id": 1, "folder": str(tmp_path / "job"), "manifest": result.manifest, "reference": reference}
    scene.Clear(0)
    volume_from_image(images["T1"], "patient B T1")
    before = scene_fingerprint(scene)
    with pytest.raises(InputError, match="left the scene while the run was going"):
        logic.pollSegmentation(job)
    assert scene_fingerprint(scene) == before and not (tmp_path / "job").exists()


def _reference(volume, manifest, masks: dict[str, np.ndarray]):
    node = sa._new_segmentation(volume, "reader")
    for name, mask in masks.items():
        sa._add_segment(node, volume, name, name, (1, 0, 0), mask)
    return node


def test_overlapping_empty_or_labelmap_references_are_refused_by_name(scene, demo_result):
    """Overlapping segments were written one over another, so the metrics depended on the segments' order (NCR
    0.000 or 0.957 for the same drawing); an empty reference scored every Dice 0; a labelmap node crashed."""
    images, label, result = demo_result
    t1 = volume_from_image(images["T1"], "T1")
    truth = sitk.GetArrayFromImage(label)
    ai = sa.add_segmentation_node(result.label_map, result.manifest, t1, "AI")
    whole_tumor_as_ed = {"NCR": truth == 1, "ET": truth == 4, "ED": truth > 0}
    with pytest.raises(InputError, match=r"segments '(NCR|ET)' and 'ED' overlap \(\d+ voxels\)"):
        sa.compare_nodes(ai, _reference(t1, result.manifest, whole_tumor_as_ed), t1, result.manifest)
    empty = _reference(t1, result.manifest, {"NCR": truth < 0, "ED": truth < 0})
    with pytest.raises(InputError, match="reference 'reader_1' has no labelled voxel on 'T1'"):
        sa.compare_nodes(ai, empty, t1, result.manifest)
    labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "my labels")
    with pytest.raises(InputError, match="'my labels' is a vtkMRMLLabelMapVolumeNode, not a segmentation node"):
        sa.compare_nodes(ai, labelmap, t1, result.manifest)
    disjoint = {"NCR": truth == 1, "ET": truth == 4, "ED": truth == 2}
    assert sa.compare_nodes(ai, _reference(t1, result.manifest, disjoint), t1, result.manifest).metrics["WT"].dice > 0


def test_a_single_slice_is_refused_as_not_a_3d_volume(demo_result):
    images, _, _ = demo_result
    manifest = load_model("brats-demo-unet").manifest
    sliced = {name: image[:, :, 10:11] for name, image in images.items()}
    with pytest.raises(InputError, match=r"input T1: \d+ x \d+ x 1 voxels, 1 along K: a single slice"):
        read_inputs(manifest, sliced)
    assert set(read_inputs(manifest, {n: image[:, :, 10:13] for n, image in images.items()})) == set(images)


def test_nothing_of_the_current_patient_is_drawn_over_a_library_case(scene, demo_result):
    images, label, result = demo_result
    for layout in ("Red", "Yellow", "Green"):
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(layout)
        scene.AddNode(composite)
    t1 = volume_from_image(images["T1"], "T1")
    nodes = sa.add_result_nodes(dataclasses.replace(
        result, brain_mask=(sitk.GetArrayFromImage(images["T1"]) > 0).astype(np.uint8)), t1)
    reader = sa.add_segmentation_node(sitk.GetArrayFromImage(label), result.manifest, t1, "my reference")
    library = volume_from_image(images["T2"], "library case image")
    library_seg = sa.add_segmentation_node(sitk.GetArrayFromImage(label), result.manifest, library, "library seg")
    for node in (library, library_seg):
        node.SetAttribute("MedCNNCAD.similarCase", "X")
    show_side_by_side(library, library_seg)
    yellow = next(scene.GetNthNodeByClass(i, "vtkMRMLSliceNode") for i in range(
        scene.GetNumberOfNodesByClass("vtkMRMLSliceNode"))
        if scene.GetNthNodeByClass(i, "vtkMRMLSliceNode").GetLayoutName() == SIMILAR_VIEW)

    def in_yellow(segmentation):
        ids = segmentation.GetDisplayNode().GetViewNodeIDs()
        return not ids or yellow.GetID() in ids

    assert [in_yellow(s) for s in (nodes.segmentation, nodes.brain_mask, reader)] == [False, False, False]
    assert in_yellow(library_seg)


def test_a_case_id_from_another_library_is_loaded_from_its_own_files(scene, demo_result, tmp_path):
    """Loaded nodes were reused by case id alone: after switching to another library holding a case of the same id
    (case_001 in two libraries), clicking it showed the first library's patient."""
    images, label, result = demo_result
    rows = []
    for name, channel in (("first", "T1"), ("second", "FLAIR")):
        folder = tmp_path / name / "entries" / "case_001"
        folder.mkdir(parents=True)
        sitk.WriteImage(images[channel], str(folder / "view_image.nrrd"))
        write_seg_nrrd(sitk.GetArrayFromImage(label), images[channel], result.manifest, folder / "labels.seg.nrrd")
        rows.append({"case_id": "case_001", "lesion_id": 1, "view": {"image": str(folder / "view_image.nrrd"),
                                                                     "segmentation": str(folder / "labels.seg.nrrd")}})
    first, _ = load_similar_case(rows[0], scene)
    again, _ = load_similar_case(rows[0], scene)
    second, _ = load_similar_case(rows[1], scene)
    assert again is first and second is not first  # a second click reuses; another library's case is its own
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(second), sitk.GetArrayFromImage(images["FLAIR"]))
    assert not np.array_equal(sitk.GetArrayFromImage(images["FLAIR"]), sitk.GetArrayFromImage(images["T1"]))


def test_a_run_leaves_no_display_node_without_its_volume(scene, demo_result):
    """Each segment written through slicer.util's segment-array helper left a LabelMapVolumeDisplay node behind (its
    temporary label map volume removed, the display node kept): three per run with the demo model."""
    images, _, _ = demo_result
    nodes = {c: volume_from_image(images[c], c) for c in ("T1", "T1c", "T2", "FLAIR")}

    def orphans() -> list[str]:
        found = scene.GetNodesByClass("vtkMRMLDisplayNode")
        return [found.GetItemAsObject(i).GetID() for i in range(found.GetNumberOfItems())
                if found.GetItemAsObject(i).GetDisplayableNode() is None]

    assert orphans() == []
    run = SecondReaderLogic().segment(nodes, model="demo", device="cpu", tta=False)
    assert run.segmentation.GetSegmentation().GetNumberOfSegments() >= 3
    assert orphans() == []
