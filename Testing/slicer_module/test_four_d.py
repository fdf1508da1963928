"""One 4D image holding several MRI sequences (the Decathlon's BRATS_xxx.nii.gz) as the module's inputs, in a real
headless Slicer scene: loaded by the engine (Slicer 5.10 cannot), or split from the volume sequence that Slicer's
own reader makes of it (5.11 and later); a sequence's proxy given as a channel is refused."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer")
import slicer  # noqa: E402
import slicer.util  # noqa: E402
import vtk  # noqa: E402
from conftest import ROOT  # noqa: E402
from slicer_scene import scene_fingerprint  # noqa: E402

from medcnncad.errors import InputError  # noqa: E402
from medcnncad.slicer.adaptor import segmentation_to_labels, volume_node_to_image  # noqa: E402
from medcnncad.slicer.logic import SecondReaderLogic  # noqa: E402

SAMPLE = ROOT / "Resources" / "SampleData"
TASK01_ORDER = ("FLAIR", "T1", "T1c", "T2")
"""The Decathlon's Task01 volume order (its dataset.json: FLAIR, T1w, t1gd, T2w)."""


@pytest.fixture(scope="module")
def sample_images():
    return {name: sitk.ReadImage(str(SAMPLE / f"MedCNNCADPhantom_{name}.nrrd"), sitk.sitkFloat32)
            for name in TASK01_ORDER}


def _task01_file(folder, sample_images, dataset_json: bool = True):
    """The sample phantom as one Task01-style 4D file (volumes FLAIR, T1, T1c, T2), with its dataset.json."""
    images = folder / "imagesTr"
    images.mkdir(parents=True)
    if dataset_json:
        (folder / "dataset.json").write_text(json.dumps(
            {"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
             "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}}))
    path = images / "BRATS_900.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sample_images[name] for name in TASK01_ORDER]), str(path))
    return path


def _same_volume(node, image: sitk.Image) -> None:
    """The node holds the image's voxels (K, J, I) on the image's grid."""
    read = volume_node_to_image(node)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(read), sitk.GetArrayViewFromImage(image))
    np.testing.assert_allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(read.GetDirection(), image.GetDirection(), atol=1e-6)


def _sequence_as_slicer_loads_it(scene, path):
    """A volume sequence read by Slicer's own reader, with a browser and its proxy, as Add Data makes one."""
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    storage.SetFileName(str(path))
    scene.AddNode(storage)
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "BRATS_900")
    sequence.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(sequence)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "BRATS_900 browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)
    return sequence, browser.GetProxyNode(sequence)


def test_a_4d_file_of_a_dataset_folder_loads_in_its_dataset_json_order(scene, sample_images, tmp_path):
    path = _task01_file(tmp_path / "Task01_BrainTumour", sample_images)
    nodes = SecondReaderLogic().load4DFile(str(path), "demo")
    assert {k: v.GetName() for k, v in nodes.items()} == {c: f"BRATS_900 {c}" for c in TASK01_ORDER}
    for channel, node in nodes.items():
        _same_volume(node, sample_images[channel])
        assert node.GetAttribute("MedCNNCAD.sourceVolume") == f"{path}#{TASK01_ORDER.index(channel)}"
    # the names are the channels': the module's automatic assignment proposes them as they are
    logic = SecondReaderLogic()
    assert logic.assignInputs(logic.describeModel("demo"), list(nodes.values())) == nodes


def test_a_typed_order_picks_volumes_and_one_against_the_dataset_json_adds_nothing(scene, sample_images, tmp_path):
    logic = SecondReaderLogic()
    path = _task01_file(tmp_path / "Task01_BrainTumour", sample_images)
    nodes = logic.load4DFile(str(path), "demo", ",,t1ce")  # an alias, in any case; volume 2 only
    assert list(nodes) == ["T1c"]
    _same_volume(nodes["T1c"], sample_images["T1c"])
    before = scene_fingerprint(scene)
    with pytest.raises(InputError, match=r"BRATS_900.nii.gz: volume 0 is FLAIR by its dataset.json, not T1 "
                                         r"\(its order: FLAIR, T1, T1c, T2\)"):
        logic.load4DFile(str(path), "demo", "T1,T1c,T2,FLAIR")  # the engine's order, not the file's
    assert scene_fingerprint(scene) == before


@pytest.mark.parametrize("order, message", [
    ("", r"4 volumes and no dataset.json beside it to say which is which; type their order"),
    ("T1,T1", r"volume order 'T1,T1' names T1 twice"),
    ("FLAIR,T1,T1c,T2,T2w", r"names T2 twice"),
    (",,,,FLAIR", r"names volume 4, but it holds 4 \(0 to 3\)"),
    ("FLAIR,PD", r"volume order names 'PD', not a channel of model brats-demo-unet \(T1, T1c, T2, FLAIR\)"),
    (" , ", r"volume order ' , ' names no channel"),
])
def test_an_order_that_cannot_be_right_is_refused_naming_the_file(scene, sample_images, tmp_path, order, message):
    path = _task01_file(tmp_path / "plain", sample_images, dataset_json=False)
    before = scene_fingerprint(scene)
    with pytest.raises(InputError, match=message) as refused:
        SecondReaderLogic().load4DFile(str(path), "demo", order)
    assert str(path) in str(refused.value)
    assert scene_fingerprint(scene) == before
    with pytest.raises(InputError, match="missing.nii.gz: file not found"):
        SecondReaderLogic().load4DFile(str(tmp_path / "missing.nii.gz"), "demo", "FLAIR")


def test_a_sequence_made_by_slicers_reader_splits_into_the_same_volumes(scene, sample_images, tmp_path):
    path = _task01_file(tmp_path / "Task01_BrainTumour", sample_images)
    sequence, proxy = _sequence_as_slicer_loads_it(scene, path)
    assert sequence.GetNumberOfDataNodes() == 4 and proxy is not None
    kept = [np.array(slicer.util.arrayFromVolume(sequence.GetNthDataNode(i))) for i in range(4)]
    nodes = SecondReaderLogic().splitSequence(sequence, "demo")  # its file's dataset.json gives the order
    assert {k: v.GetName() for k, v in nodes.items()} == {c: f"BRATS_900 {c}" for c in TASK01_ORDER}
    for channel, node in nodes.items():
        _same_volume(node, sample_images[channel])
        assert node.GetScene() is scene and node.GetID() != proxy.GetID()
    for index, before in enumerate(kept):  # the sequence is unchanged
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(sequence.GetNthDataNode(index)), before)
    with pytest.raises(InputError, match="select the 4D sequence"):
        SecondReaderLogic().splitSequence(None, "demo")
    empty = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "empty")
    with pytest.raises(InputError, match="sequence 'empty' holds nothing, not scalar volumes"):
        SecondReaderLogic().splitSequence(empty, "demo", "FLAIR")
    transforms = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "motion")
    transforms.SetDataNodeAtValue(slicer.vtkMRMLLinearTransformNode(), "0")
    with pytest.raises(InputError, match="sequence 'motion' holds vtkMRMLLinearTransformNode, not scalar volumes"):
        SecondReaderLogic().splitSequence(transforms, "demo", "FLAIR")


def test_a_sequence_proxy_given_as_a_channel_is_refused_before_anything_runs(scene, sample_images, tmp_path):
    """The proxy holds whichever volume the browser is at: the model would read T1c or FLAIR as the slider says."""
    path = _task01_file(tmp_path / "Task01_BrainTumour", sample_images)
    sequence, proxy = _sequence_as_slicer_loads_it(scene, path)
    logic = SecondReaderLogic()
    before = scene_fingerprint(scene)
    with pytest.raises(InputError, match=r"T1c: volume 'BRATS_900' shows one of the 4 volumes of sequence "
                                         r"'BRATS_900', whichever its browser is at; split the sequence"):
        logic.segment({"T1c": proxy}, model="demo", device="cpu")
    with pytest.raises(InputError, match="T1c: volume 'BRATS_900' shows one of the 4 volumes"):
        logic.startSegmentation({"T1c": proxy}, model="demo", device="cpu")
    assert scene_fingerprint(scene) == before
    one = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "one volume")  # a sequence of one volume is that volume
    one.SetDataNodeAtValue(sequence.GetNthDataNode(0), "0")
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "one browser")
    browser.SetAndObserveMasterSequenceNodeID(one.GetID())
    slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)
    from medcnncad.slicer.four_d import check_not_sequence_frames

    check_not_sequence_frames({"FLAIR": browser.GetProxyNode(one)})


def test_segmenting_the_split_volumes_equals_segmenting_the_separate_files(scene, sample_images, tmp_path):
    logic = SecondReaderLogic()
    path = _task01_file(tmp_path / "Task01_BrainTumour", sample_images)
    separate = {name: slicer.modules.volumes.logic().AddArchetypeVolume(
        str(SAMPLE / f"MedCNNCADPhantom_{name}.nrrd"), f"Phantom {name}") for name in TASK01_ORDER}
    direct = logic.segment(separate, model="demo", device="cpu", precision="manifest")
    split = logic.segment(logic.load4DFile(str(path), "demo"), model="demo", device="cpu", precision="manifest")
    np.testing.assert_array_equal(split.result.label_map, direct.result.label_map)
    assert direct.result.label_map.any()
    sequence, _ = _sequence_as_slicer_loads_it(scene, path)
    from_sequence = logic.segment(logic.splitSequence(sequence, "demo"), model="demo", device="cpu",
                                  precision="manifest")
    np.testing.assert_array_equal(from_sequence.result.label_map, direct.result.label_map)
    matrix, other = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    separate["FLAIR"].GetIJKToRASMatrix(matrix)
    slicer.mrmlScene.GetNodeByID(split.segmentation.GetAttribute("MedCNNCAD.referenceVolumeID")).GetIJKToRASMatrix(other)
    assert all(abs(matrix.GetElement(r, c) - other.GetElement(r, c)) < 1e-4 for r in range(4) for c in range(4))

    # the Decathlon's label file (1 oedema, 2 non-enhancing, 3 enhancing) loaded as Add Data does: compared in its
    # dataset.json's convention without being told, as the BraTS-named reference is
    named = _segmentation_file(scene, SAMPLE / "MedCNNCADPhantom_reference.seg.nrrd")
    expected = logic.compare(split.segmentation, named)
    labels = segmentation_to_labels(named, separate["FLAIR"], logic.describeModel("demo"))
    msd = sitk.GetImageFromArray(np.select([labels == 2, labels == 1, labels == 4], [1, 2, 3], 0).astype(np.uint8))
    msd.CopyInformation(sample_images["FLAIR"])
    (path.parent.parent / "labelsTr").mkdir()
    sitk.WriteImage(msd, str(path.parent.parent / "labelsTr" / "BRATS_900.nii.gz"))
    own = _segmentation_file(scene, path.parent.parent / "labelsTr" / "BRATS_900.nii.gz")
    assert sorted(own.GetSegmentation().GetNthSegment(i).GetName() for i in range(3)) == \
        ["Segment_1", "Segment_2", "Segment_3"]
    compared = logic.compare(split.segmentation, own)
    for region in ("NCR", "ED", "ET", "WT", "TC"):
        assert compared.metrics[region].dice == pytest.approx(expected.metrics[region].dice, abs=1e-9), region
    assert expected.metrics["ET"].dice > 0.5
    with pytest.raises(InputError, match="its dataset.json maps label 1 to 2, not 1"):
        logic.compare(split.segmentation, own, referenceLabels="brats2023")


def _dataset_file(folder, modality: dict, name: str, volumes: list[sitk.Image]):
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps({"modality": modality, "labels": {"0": "background"}}))
    image = volumes[0] if len(volumes) == 1 else sitk.JoinSeries(volumes)
    sitk.WriteImage(image, str(folder / "imagesTr" / name))
    return folder / "imagesTr" / name


def test_what_a_dataset_json_says_of_each_volume_is_never_overridden(scene, sample_images, tmp_path):
    """An nnU-Net file is the channel its _XXXX suffix names; a volume of a channel the engine does not read (ADC)
    is not taken for another; a file holding another number of volumes than declared is refused."""
    logic = SecondReaderLogic()
    nnunet = {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
    t1c = _dataset_file(tmp_path / "Dataset137", nnunet, "BraTS_001_0001.nii.gz", [sample_images["T1c"]])
    nodes = logic.load4DFile(str(t1c), "demo")
    assert list(nodes) == ["T1c"]
    _same_volume(nodes["T1c"], sample_images["T1c"])
    assert list(logic.load4DFile(str(t1c), "demo", "t1c")) == ["T1c"]
    with pytest.raises(InputError, match="volume 0 is T1c by its dataset.json, not FLAIR"):
        logic.load4DFile(str(t1c), "demo", "FLAIR")
    two = [sample_images["T1"], sample_images["FLAIR"]]
    adc = _dataset_file(tmp_path / "mixed", {"0": "T1w", "1": "ADC"}, "case_1.nii.gz", two)
    assert list(logic.load4DFile(str(adc), "demo")) == ["T1"]
    with pytest.raises(InputError, match=r"volume 1 is ADC by its dataset.json, not T2 \(its order: T1, ADC\)"):
        logic.load4DFile(str(adc), "demo", ",T2")
    three = _dataset_file(tmp_path / "short", {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}, "case_1.nii.gz",
                          [sample_images[c] for c in TASK01_ORDER[:3]])
    before = scene_fingerprint(scene)
    with pytest.raises(InputError, match=r"case_1.nii.gz: 3 volumes, but its dataset.json declares 4 channels"):
        logic.load4DFile(str(three), "demo")
    assert scene_fingerprint(scene) == before


def test_a_volume_loaded_from_an_nnunet_file_is_only_the_channel_its_suffix_names(scene, sample_images, tmp_path):
    nnunet = {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
    path = _dataset_file(tmp_path / "Dataset137", nnunet, "BraTS_001_0001.nii.gz", [sample_images["T1c"]])
    node = slicer.modules.volumes.logic().AddArchetypeVolume(str(path), "BraTS_001_0001")
    logic = SecondReaderLogic()
    manifest = logic.describeModel("demo")
    assert logic._namedInputs({"T1c": node}, manifest) == {"T1c": node}
    before = scene_fingerprint(scene)
    with pytest.raises(InputError, match=r"FLAIR: volume 'BraTS_001_0001' \(.*BraTS_001_0001.nii.gz\) is T1c by its "
                                         r"dataset.json, not FLAIR"):
        logic.segment({"FLAIR": node}, model="demo", device="cpu")
    assert scene_fingerprint(scene) == before


def test_a_sequence_whose_items_differ_from_its_files_dataset_json_is_refused(scene, sample_images, tmp_path):
    path = _task01_file(tmp_path / "Task01_BrainTumour", sample_images)
    sequence, _ = _sequence_as_slicer_loads_it(scene, path)
    sequence.RemoveDataNodeAtValue(sequence.GetNthIndexValue(0))  # FLAIR removed in Sequences: the rest would shift
    with pytest.raises(InputError, match=r"sequence 'BRATS_900': 3 volumes, but its dataset.json declares 4"):
        SecondReaderLogic().splitSequence(sequence, "demo")


def test_channel_names_and_aliases_of_other_models(sample_images, tmp_path):
    """A model's channel is matched by name before alias (any case, separators ignored), an alias of two channels is
    refused, and a model naming its post-contrast channel T1Gd reads a dataset.json's t1gd volume."""
    from dataclasses import replace

    from medcnncad.models.registry import describe_model
    from medcnncad.slicer.four_d import volume_order

    demo = describe_model("demo")
    inputs = {c.name: c for c in demo.inputs}
    shared = replace(demo, inputs=(replace(inputs["T1c"], aliases=("t1", "post")), inputs["T1"],
                                   replace(inputs["T2"], aliases=("post",)), inputs["FLAIR"]))
    assert volume_order("T1,FLAIR", shared, "f", 2) == {0: "T1", 1: "FLAIR"}
    # any case, separators ignored, as the manifest's own name check and the automatic assignment read names
    assert volume_order(" Flair,t1,T1-CE,t_2", demo, "f", 4) == {0: "FLAIR", 1: "T1", 2: "T1c", 3: "T2"}
    with pytest.raises(InputError, match="volume order names 'T1-X', not a channel of model brats-demo-unet"):
        volume_order("T1-X", demo, "f", 1)
    with pytest.raises(InputError, match="'post', an alias of model brats-demo-unet's channels T1c and T2"):
        volume_order("post", shared, "f", 1)
    gd = replace(demo, inputs=(inputs["T1"], replace(inputs["T1c"], name="T1Gd", aliases=()), inputs["T2"],
                               inputs["FLAIR"]))
    task01 = {0: "FLAIR", 1: "T1", 2: "T1c", 3: "T2"}
    assert volume_order("", gd, "f", 4, task01) == {0: "FLAIR", 1: "T1", 2: "T1Gd", 3: "T2"}
    assert volume_order(",,t1gd", gd, "f", 4, task01) == {2: "T1Gd"}


def test_a_slicer_sequence_file_is_named_for_what_it_is(scene, sample_images, tmp_path):
    path = _task01_file(tmp_path / "Task01_BrainTumour", sample_images)
    sequence, _ = _sequence_as_slicer_loads_it(scene, path)
    saved = tmp_path / "BRATS_900.seq.nrrd"
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    storage.SetFileName(str(saved))
    assert storage.WriteData(sequence)
    with pytest.raises(InputError, match=r"BRATS_900.seq.nrrd: 4 components per voxel \(a Slicer sequence file"):
        SecondReaderLogic().load4DFile(str(saved), "demo", "FLAIR")


def _segmentation_file(scene, path):
    """A label or .seg.nrrd file read into a segmentation node as Add Data does."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(node)
    return node


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
