"""Engine results as real Slicer MRML nodes (slicer-core), and back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer")
import slicer  # noqa: E402
import slicer.util  # noqa: E402
import vtk  # noqa: E402
from conftest import make_image  # noqa: E402
from slicer_scene import scene_fingerprint, volume_from_image  # noqa: E402

from medcnncad.errors import InputError  # noqa: E402
from medcnncad.inference.scoring import case_probability  # noqa: E402
from medcnncad.slicer import adaptor as sa  # noqa: E402


def test_volume_node_geometry_round_trip(scene):
    arr = np.random.default_rng(1).random((5, 6, 7)).astype(np.float32)
    image = make_image(arr, spacing=(0.7, 1.1, 2.5), origin=(10, -3, 40), direction=(0, -1, 0, 0, 0, 1, -1, 0, 0))
    node = volume_from_image(image, "oblique")
    back = sa.volume_node_to_image(node)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    assert back.GetSpacing() == pytest.approx(image.GetSpacing())
    assert back.GetOrigin() == pytest.approx(image.GetOrigin())
    assert back.GetDirection() == pytest.approx(image.GetDirection())
    # RAS of voxel (i, j, k) = (1, 2, 3) agrees with ITK's LPS point
    lps = image.TransformIndexToPhysicalPoint((1, 2, 3))
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ras = matrix.MultiplyPoint([1, 2, 3, 1])
    assert ras[:3] == pytest.approx((-lps[0], -lps[1], lps[2]))


def test_result_nodes(scene, demo_result):
    images, label, result = demo_result
    t1 = volume_from_image(images["T1"], "T1")
    nodes = sa.add_result_nodes(result, t1)
    seg = nodes.segmentation
    segmentation = seg.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(3)] == ["NCR", "ED", "ET"]
    assert segmentation.GetSegment("ET").GetColor() == pytest.approx((1.0, 0.9, 0.1))
    assert "SCT^6574001^Necrosis" in segmentation.GetSegment("NCR").GetTerminology()
    for name, value in (("NCR", 1), ("ED", 2), ("ET", 4)):
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg, name, t1)
        np.testing.assert_array_equal(mask > 0, result.label_map == value)
    assert seg.GetDisplayNode().GetVisibility3D()
    assert seg.GetAttribute("MedCNNCAD.modelId") == "brats-demo-unet"
    assert seg.GetAttribute("MedCNNCAD.weightsSHA256") == result.manifest.weights_sha256
    assert float(seg.GetAttribute("MedCNNCAD.caseAbnormalityProbability")) == pytest.approx(
        case_probability(result), abs=1e-4)
    assert seg.GetAttribute("MedCNNCAD.caseCalibration") == "uncalibrated score"  # the demo model has none
    assert json.loads(seg.GetAttribute("MedCNNCAD.notes")) == result.warnings
    assert "not for diagnosis" in seg.GetAttribute("MedCNNCAD.intendedUse")
    assert set(json.loads(seg.GetAttribute("MedCNNCAD.timings"))) >= {"inference", "preprocess"}
    prob = nodes.probabilities["ET"]
    np.testing.assert_allclose(slicer.util.arrayFromVolume(prob), result.probabilities["ET"])
    assert prob.GetDisplayNode().GetApplyThreshold() and prob.GetDisplayNode().GetLowerThreshold() == 0.5
    sa.set_probability_threshold(prob, 0.8)
    assert prob.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.8)
    with pytest.raises(InputError, match="between 0 and 1"):
        sa.set_probability_threshold(prob, 1.5)
    table = nodes.lesion_table.GetTable()
    assert table.GetNumberOfRows() == len(result.lesions)
    assert [table.GetColumnName(i) for i in range(3)] == ["structure", "id", "volume_ml"]
    first = result.lesions[0]
    assert table.GetValueByName(0, "volume_ml").ToDouble() == pytest.approx(first.volume_ml)
    assert table.GetValueByName(0, "R").ToDouble() == pytest.approx(first.centroid_ras_mm[0])


def test_jump_to_lesion_centres_slice_views(scene, demo_result):
    images, _, result = demo_result
    lesion = max(result.lesions, key=lambda x: x.voxel_count)
    sa.jump_to_ras(lesion.centroid_ras_mm)
    red = scene.GetFirstNode("Red", "vtkMRMLSliceNode")
    origin = [red.GetSliceToRAS().GetElement(r, 3) for r in range(3)]
    assert origin == pytest.approx(list(lesion.centroid_ras_mm), abs=1e-6)


def test_compare_with_reference(scene, demo_result):
    images, label, result = demo_result
    t1 = volume_from_image(images["T1"], "T1")
    ai = sa.add_segmentation_node(result.label_map, result.manifest, t1, "AI")
    ref_labels = sitk.GetArrayFromImage(label)
    reference = sa.add_segmentation_node(ref_labels, result.manifest, t1, "Reader")
    comparison = sa.compare_nodes(ai, reference, t1, result.manifest)
    from medcnncad.metrics.segmentation import compute_metrics

    expected = compute_metrics(result.label_map, ref_labels, images["T1"].GetSpacing(),
                               {"NCR": (1,), "ED": (2,), "ET": (4,), "WT": (1, 2, 4), "TC": (1, 4)})
    for name, m in expected.items():
        assert comparison.metrics[name].dice == pytest.approx(m.dice)
        assert comparison.metrics[name].hd95_mm == pytest.approx(m.hd95_mm)
    table = comparison.metrics_table.GetTable()
    assert table.GetNumberOfRows() == 5
    assert table.GetValueByName(3, "dice").ToDouble() == pytest.approx(expected["WT"].dice)
    brats = expected["WT"].lesions_brats2023
    assert table.GetValueByName(3, "missed_lesions_brats2023").ToInt() == brats.false_negative
    assert table.GetValueByName(3, "lesionwise_dice_brats2023").ToDouble() == pytest.approx(brats.lesionwise_dice)
    assert table.GetValueByName(3, "false_positive_lesions").ToInt() == expected["WT"].lesions.false_positive
    disc = comparison.discordance.GetSegmentation()
    ai_wt, ref_wt = np.isin(result.label_map, (1, 2, 4)), np.isin(ref_labels, (1, 2, 4))
    ai_only = slicer.util.arrayFromSegmentBinaryLabelmap(comparison.discordance, "AI_only", t1)
    ref_only = slicer.util.arrayFromSegmentBinaryLabelmap(comparison.discordance, "reference_only", t1)
    assert int(ai_only.sum()) == int((ai_wt & ~ref_wt).sum())
    assert int(ref_only.sum()) == int((ref_wt & ~ai_wt).sum())
    assert disc.GetSegment("AI_only").GetName() == "WT AI only"
    lesion_rows = comparison.discordant_lesion_table.GetTable()
    assert lesion_rows.GetNumberOfRows() == len(comparison.lesions_only_one_side)
    expected_one_sided = sa.lesion_concordance(ai_wt, ref_wt, images["T1"], "WT")
    assert [d.found_by for d in comparison.lesions_only_one_side] == [d.found_by for d in expected_one_sided]


def test_lesion_concordance_hand_built():
    ai = np.zeros((10, 10, 10), bool)
    ref = np.zeros_like(ai)
    ai[1:3, 1:3, 1:3] = True   # shared
    ref[2:4, 2:4, 2:4] = True
    ai[7:9, 7:9, 7:9] = True   # AI only
    ref[1, 8, 8] = True        # reference only
    out = sa.lesion_concordance(ai, ref, make_image(ai.astype(np.uint8)), "WT")
    assert sorted((x.found_by, round(x.volume_ml * 1000)) for x in out) == [("AI", 8), ("reference", 1)]


def test_unmatched_reference_segment_is_an_error(scene, demo_result):
    images, _, result = demo_result
    t1 = volume_from_image(images["T1"], "T1")
    other = sa._new_segmentation(t1, "reader")
    sa._add_segment(other, t1, "x", "Tumour", (1, 0, 0), result.label_map > 0)
    with pytest.raises(InputError, match="'Tumour'.*matches no label"):
        sa.segmentation_to_labels(other, t1, result.manifest)


def test_failure_leaves_scene_unchanged(scene, demo_result, monkeypatch):
    images, _, result = demo_result
    t1 = volume_from_image(images["T1"], "T1")
    existing = sa.add_segmentation_node(result.label_map, result.manifest, t1, "Reader's own")
    before = scene_fingerprint(scene)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sa, "add_lesion_table", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        sa.add_result_nodes(result, t1)
    assert scene_fingerprint(scene) == before
    assert existing.GetSegmentation().GetNumberOfSegments() == 3


def test_seg_nrrd_round_trip_through_slicer(scene, tmp_path, demo_result):
    images, _, result = demo_result
    from medcnncad.io.segfile import write_seg_nrrd

    path = write_seg_nrrd(result.label_map, result.reference, result.manifest, tmp_path / "ai.seg.nrrd")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert storage.ReadData(seg)
    segmentation = seg.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["NCR", "ED", "ET"]
    assert segmentation.GetSegment("ED").GetColor() == pytest.approx((0.2, 0.8, 0.2))
    assert "Edema" in segmentation.GetSegment("ED").GetTerminology()
    t1 = volume_from_image(images["T1"], "T1")
    for name, value in (("NCR", 1), ("ED", 2), ("ET", 4)):
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg, name, t1)
        np.testing.assert_array_equal(mask > 0, result.label_map == value)
    # and Slicer's own writer round-trips our node
    out = sa.add_segmentation_node(result.label_map, result.manifest, t1, "AI")
    writer = slicer.vtkMRMLSegmentationStorageNode()
    writer.SetFileName(str(tmp_path / "slicer.seg.nrrd"))
    assert writer.WriteData(out)
    again = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    reader = slicer.vtkMRMLSegmentationStorageNode()
    reader.SetFileName(str(tmp_path / "slicer.seg.nrrd"))
    assert reader.ReadData(again)
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(again, "ET", t1) > 0,
                                  result.label_map == 4)


def test_lesion_classes_and_uncertainty_in_the_scene(scene, tmp_path):
    """A classifier's P(class) columns and the TTA uncertainty volume reach the Slicer nodes."""
    from helpers import ThresholdNet, classifier_dict, write_classifier
    from helpers import blob_volume as _blob
    from helpers import classify_segmenter as _segmenter

    from medcnncad.classification.grade import attach_classification, load_classifier

    loaded = load_classifier(write_classifier(tmp_path / "clf", classifier_dict()))
    image = make_image(_blob())
    result = _segmenter(tmp_path, ThresholdNet()).run({"CT": image}, tta=True)
    attach_classification(result, loaded)
    nodes = sa.add_result_nodes(result, volume_from_image(image, "CT"))
    table = nodes.lesion_table.GetTable()
    names = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    assert names[6:11] == ["uncertainty", "P(low)", "P(high)", "predicted_class", "class_uncertainty"]
    assert names[-3:] == ["R", "A", "S"]
    row = next(i for i, les in enumerate(result.lesions) if les.structure == "blob")
    lesion = result.lesions[row]
    assert table.GetValueByName(row, "P(high)").ToDouble() == pytest.approx(lesion.class_probabilities["high"])
    assert table.GetValueByName(row, "predicted_class").ToString() == lesion.predicted_class
    uncertainty = nodes.probabilities["uncertainty"]
    np.testing.assert_allclose(slicer.util.arrayFromVolume(uncertainty), result.uncertainty)
    assert nodes.lesion_table.GetAttribute("MedCNNCAD.classifier") == "tiny-grade"


def test_removed_candidates_table(scene, tmp_path):
    """A classifier-removed component gets a row (its RAS centre, so jumpToLesion works on it too)."""
    from helpers import blob_segmenter

    seg = blob_segmenter(tmp_path, lesion_filter={"features": ["mean_probability"], "mean": [0.0], "scale": [1.0],
                                                      "coefficients": [1.0], "intercept": -0.8, "min_probability": 0.5})
    vol = np.zeros((20, 20, 20), np.float32)
    vol[2:6, 2:6, 2:6] = 1.0
    vol[2:6, 12:16, 2:6] = 0.52  # mean probability 0.690: classifier P 0.47 < 0.5, removed
    image = make_image(vol)
    result = seg.run({"CT": image})
    nodes = sa.add_result_nodes(result, volume_from_image(image, "CT"))
    table = nodes.removed_table.GetTable()
    assert table.GetNumberOfRows() == 1 and table.GetValueByName(0, "removed_by").ToString() == "lesion filter"
    assert table.GetValueByName(0, "volume_ml").ToDouble() == pytest.approx(0.064)
    ras = [table.GetValueByName(0, axis).ToDouble() for axis in ("R", "A", "S")]
    assert ras == pytest.approx([-3.5, -13.5, 3.5])  # LPS (i, j, k) centre (3.5, 13.5, 3.5) at 1 mm, origin 0
    assert nodes.removed_table.GetAttribute("MedCNNCAD.segmentation") == nodes.segmentation.GetID()
    vol[2:6, 12:16, 2:6] = 1.0
    assert sa.add_result_nodes(seg.run({"CT": make_image(vol)}), volume_from_image(image, "CT2")).removed_table is None


def test_the_brain_mask_becomes_an_outlined_brain_segment(scene, demo_result):
    """A run whose clinical preprocessing extracted the brain shows the mask as a "brain" segment (outline
    only) with the step's report; a run without one adds no such node."""
    import dataclasses

    images, _, result = demo_result
    t1 = volume_from_image(images["T1"], "T1")
    assert sa.add_result_nodes(result, t1).brain_mask is None  # the demo model extracts no brain
    mask = np.zeros_like(result.label_map)
    mask[2:-2, 3:-3, 4:-4] = 1
    step = {"step": "brain_mask", "applied": True, "source": "T1", "brain_ml": 1.0}
    with_brain = dataclasses.replace(result, brain_mask=mask, preprocessing=[step])
    node = sa.add_result_nodes(with_brain, t1).brain_mask
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(node, "brain", t1) > 0, mask > 0)
    assert node.GetDisplayNode().GetSegmentOpacity2DFill("brain") == 0.0
    assert json.loads(node.GetAttribute("MedCNNCAD.brainMask")) == step


def _loaded_as_slicer_loads(scene, values: np.ndarray, image: sitk.Image, folder) -> object:
    """A label file brought in as Add Data does (vtkMRMLSegmentationStorageNode on a plain NIfTI): one segment per
    value, named ``Segment_<value>``."""
    label = sitk.GetImageFromArray(values.astype(np.uint8))
    label.CopyInformation(image)
    path = str(folder / "reference.nii.gz")
    sitk.WriteImage(label, path)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(path)
    assert storage.ReadData(node)
    return node


def test_a_label_file_imported_into_slicer_is_compared_by_its_values(scene, demo_result, tmp_path):
    """Slicer names an imported label file's segments by value (Segment_4 from Add Data, Label_4 from Import
    labelmap): they are read as those values, after the file's convention (BraTS 2023 stores ET as 3)."""
    images, label, result = demo_result
    t1 = volume_from_image(images["T1"], "T1")
    ref_labels = sitk.GetArrayFromImage(label)
    assert set(np.unique(ref_labels)) == {0, 1, 2, 4}
    by_name = sa.segmentation_to_labels(sa.add_segmentation_node(ref_labels, result.manifest, t1, "named"), t1,
                                        result.manifest)
    as_2021 = _loaded_as_slicer_loads(scene, ref_labels, images["T1"], tmp_path)
    seg = as_2021.GetSegmentation()
    assert sorted(seg.GetNthSegment(i).GetName() for i in range(3)) == ["Segment_1", "Segment_2", "Segment_4"]
    np.testing.assert_array_equal(sa.segmentation_to_labels(as_2021, t1, result.manifest), by_name)
    as_2023 = _loaded_as_slicer_loads(scene, np.where(ref_labels == 4, 3, ref_labels), images["T1"], tmp_path)
    with pytest.raises(InputError, match=r"'Segment_3'.*label value 3 is none of model brats-demo-unet's.*brats2023"):
        sa.segmentation_to_labels(as_2023, t1, result.manifest)
    np.testing.assert_array_equal(sa.segmentation_to_labels(as_2023, t1, result.manifest, {0: 0, 1: 1, 2: 2, 3: 4}),
                                  by_name)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    slicer.util.updateVolumeFromArray(labelmap, np.where(ref_labels == 4, 3, ref_labels).astype(np.uint8))
    labelmap.SetIJKToRASMatrix(t1_matrix(t1))
    imported = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, imported)
    names = sorted(imported.GetSegmentation().GetNthSegment(i).GetName() for i in range(3))
    assert names == ["Label_1", "Label_2", "Label_3"]
    np.testing.assert_array_equal(sa.segmentation_to_labels(imported, t1, result.manifest, {0: 0, 1: 1, 2: 2, 3: 4}),
                                  by_name)
    cavity = _loaded_as_slicer_loads(scene, np.where(ref_labels == 2, 4, ref_labels), images["T1"], tmp_path)
    with pytest.raises(InputError, match=r"'Segment_4'.*not in the reference labels.*would merge"):
        sa.segmentation_to_labels(cavity, t1, result.manifest, {0: 0, 1: 1, 2: 2, 3: 4})
    # BraTS 2024: 4 is the resection cavity, read as background (no segment refused, no voxel labelled)
    post = _loaded_as_slicer_loads(scene, np.where(ref_labels == 4, 3, ref_labels) + 4 * (ref_labels == 0) *
                                   (np.arange(ref_labels.size).reshape(ref_labels.shape) % 97 == 0),
                                   images["T1"], tmp_path)
    np.testing.assert_array_equal(sa.segmentation_to_labels(post, t1, result.manifest, {0: 0, 1: 1, 2: 2, 3: 4, 4: 0}),
                                  by_name)
    # the image import without a colour table numbers segments by position: Label_1 holds 2, Label_2 holds 4
    positional = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    slicer.util.updateVolumeFromArray(labelmap, np.where(ref_labels == 1, 0, ref_labels).astype(np.uint8))
    oriented = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(labelmap)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(oriented, positional, "Label")
    with pytest.raises(InputError, match=r"'Label_1'.*its name says value 1 but its label value is 2"):
        sa.segmentation_to_labels(positional, t1, result.manifest)


def t1_matrix(volume) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return matrix
