"""The module's Widget driven in real Qt on a real MRML scene: setup(), parameter-node binding, model choice,
Apply -> poll (QTimer) -> results, the threshold slider, Compare, exit()/enter()/cleanup(), and the module's
own self-test methods (console path; Apply -> Cancel -> Apply through the worker).

What is real and what is stood in for (and what that cannot prove) is listed in ``slicer_qt_harness.py``.
"""

from __future__ import annotations

import unittest

import pytest

pytest.importorskip("slicer")
from slicer_qt_harness import QtWidgets, make_widget, module_in_qt, process_events_until, unwrap  # noqa: E402

pytestmark = pytest.mark.slow  # three worker runs of the demo model


@pytest.fixture
def env():
    import slicer

    from medcnncad.slicer.headless import new_scene

    scene = new_scene()
    for view in ("Red", "Yellow", "Green"):  # Slicer's slice views each have a composite node (layers)
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(view)
        scene.AddNode(composite)
    with module_in_qt() as env:
        yield env


def _sample(env):
    import SampleData

    nodes = SampleData.downloadSamples("MedCNNCADPhantom")
    return nodes[:4], nodes[4]


def _select_model(widget, model_id: str) -> None:
    combo = unwrap(widget.ui.modelComboBox)
    index = combo.findData(model_id)
    assert index >= 0, [combo.itemData(i) for i in range(combo.count())]
    combo.setCurrentIndex(index)  # as a click: emits currentIndexChanged(int)


def test_setup_lists_models_binds_the_parameter_node_and_shows_the_intended_use(env):
    from medcnncad.models.defaults import DEFAULT_MODEL
    from medcnncad.models.registry import describe_model
    from medcnncad.slicer.logic import INTENDED_USE

    widget = make_widget(env)
    ui, p = widget.ui, widget._parameterNode
    assert ui.intendedUseLabel.text == INTENDED_USE and "not for diagnosis" in INTENDED_USE
    assert unwrap(ui.installFrame).isHidden() and ui.mainFrame.enabled  # torch and MONAI are installed here
    combo = unwrap(ui.modelComboBox)
    listed = [combo.itemData(i) for i in range(combo.count())]
    assert listed == [key for key, _ in widget.logic.availableModels()] and len(listed) >= 2
    assert ui.modelComboBox.currentData == DEFAULT_MODEL == p.model  # the default model is preselected
    # ... in the mode its lesion filters were chosen in (the parameter's default follows its manifest)
    assert p.testTimeAugmentation == describe_model(DEFAULT_MODEL).inference.test_time_augmentation
    assert unwrap(ui.testTimeAugmentationCheckBox).isChecked() == p.testTimeAugmentation
    assert "phantom" in ui.modelInfoLabel.text.lower()  # the model card says what it was trained on
    device = unwrap(ui.deviceComboBox)  # filled from the Choice annotation, as Slicer's connector does
    assert [device.itemText(i) for i in range(device.count())] == ["auto", "cpu", "cuda"]
    # parameter node -> GUI
    p.probabilityThreshold, p.device, p.trust = 0.3, "cpu", True
    assert unwrap(ui.probabilityThresholdSlider).property("value") == pytest.approx(0.3)
    assert device.currentText() == "cpu" and unwrap(ui.trustCheckBox).isChecked()
    # GUI -> parameter node
    unwrap(ui.probabilityThresholdSlider).setProperty("value", 0.65)
    unwrap(ui.testTimeAugmentationCheckBox).setChecked(not p.testTimeAugmentation)
    unwrap(ui.similarCountSpinBox).setValue(7)
    assert p.probabilityThreshold == pytest.approx(0.65) and p.similarCount == 7
    assert env.messages.errors == []


def test_choosing_a_model_shows_its_inputs_and_proposes_volumes(env):
    volumes, _ = _sample(env)
    widget = make_widget(env)
    ui, p = widget.ui, widget._parameterNode
    assert p.testTimeAugmentation  # the preselected default model starts in its own (augmented) mode
    _select_model(widget, "brats-demo-unet")
    assert p.model == "brats-demo-unet" and not p.testTimeAugmentation
    _select_model(widget, "brats-robust-unet")
    labels = [getattr(ui, f"inputVolume{i}Label").text for i in range(4)]
    assert labels == ["T1 (optional)", "T1c (optional)", "T2 (optional)", "FLAIR (optional)"]
    assert p.testTimeAugmentation  # a model picked by hand starts in the mode its filters were chosen in
    _select_model(widget, "brats-demo-unet")
    assert p.model == "brats-demo-unet" and not p.testTimeAugmentation
    assert [getattr(ui, f"inputVolume{i}Label").text for i in range(4)] == ["T1", "T1c", "T2", "FLAIR"]
    for i, node in enumerate(volumes):  # proposed from the names, shown in the selectors through the binding
        assert getattr(p, f"inputVolume{i}") is node
        assert unwrap(getattr(ui, f"inputVolume{i}Selector")).currentNode() is node
    assert "brats-grade-densenet" not in [unwrap(ui.modelComboBox).itemData(i)
                                          for i in range(unwrap(ui.modelComboBox).count())]


def test_apply_polls_the_worker_shows_results_thresholds_and_compares(env):
    import slicer

    volumes, reference = _sample(env)
    widget = make_widget(env)
    ui, p = widget.ui, widget._parameterNode
    _select_model(widget, "brats-demo-unet")
    p.device, p.classifyLesions = "cpu", True
    unwrap(ui.applyButton).click()
    assert ui.applyButton.text == "Cancel" and widget.timer.isActive()
    process_events_until(env.app, lambda: widget._job is None)
    assert env.messages.errors == [], env.messages.errors
    assert ui.applyButton.text == "Apply" and ui.statusLabel.text.startswith("Done: WT "), ui.statusLabel.text
    table = p.lesionTable.GetTable() if p.lesionTable else None
    wt = sum(table.GetValueByName(r, "structure").ToString() == "WT" for r in range(table.GetNumberOfRows()))
    assert ui.statusLabel.text.startswith(f"Done: WT {wt} lesion(s) (NCR "), ui.statusLabel.text
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 2  # reference + result
    assert p.resultSegmentation is not None and p.resultSegmentation is not reference
    assert unwrap(ui.lesionTableView).mrmlTableNode() is p.lesionTable
    assert p.lesionTable.GetTable().GetColumnByName("predicted_class") is not None  # classifier ran
    assert "BraTS demo UNet" in ui.provenanceLabel.text and ui.exportDicomButton.enabled
    composite = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert composite.GetBackgroundVolumeID() == volumes[0].GetID()
    probability = slicer.mrmlScene.GetNodeByID(composite.GetForegroundVolumeID())
    assert probability.GetDisplayNode().GetApplyThreshold()
    unwrap(ui.probabilityThresholdSlider).setProperty("value", 0.8)  # the slider re-thresholds the maps
    assert probability.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.8) and p.probabilityThreshold == 0.8
    unwrap(ui.referenceSelector).setCurrentNode(reference)  # the reader picks the reference
    assert p.referenceSegmentation is reference
    unwrap(ui.compareButton).click()
    assert env.messages.errors == [], env.messages.errors
    assert unwrap(ui.metricsTableView).mrmlTableNode() is p.metricsTable
    assert p.metricsTable.GetTable().GetNumberOfRows() == 5  # NCR, ED, ET, WT, TC
    assert "concordant" in ui.discordanceLabel.text or "only one reader" in ui.discordanceLabel.text
    assert reference.GetSegmentation().GetNumberOfSegments() == 3  # the reader's node is untouched



@pytest.mark.parametrize(("model", "offered"), [("brats-robust-unet", True), ("brats-demo-unet", False)])
def test_the_brain_mask_selector_is_offered_and_passed_only_for_a_model_that_extracts_the_brain(env, monkeypatch,
                                                                                                  model, offered):
    """A reader's mask left selected after a brats-robust-unet run is not a brats-demo-unet input: its selector is
    hidden for that model and Apply does not hand it on (the run was refused: that model extracts no brain)."""
    import slicer

    from medcnncad.errors import InputError

    _sample(env)
    widget = make_widget(env)
    ui, p = widget.ui, widget._parameterNode
    mask = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "edited brain")
    p.brainMask = mask
    assert unwrap(ui.brainMaskSelector).currentNode() is mask  # bound to the parameter node
    _select_model(widget, model)
    assert unwrap(ui.brainMaskSelector).isHidden() is not offered
    assert unwrap(ui.brainMaskLabel).isHidden() is not offered
    started: list[dict] = []

    def start(*args, **kwargs):
        started.append(kwargs)
        raise InputError("stopped here")

    monkeypatch.setattr(widget.logic, "startSegmentation", start)
    with pytest.raises(InputError):
        widget.onApplyOrCancel()
    assert started[0]["brainMask"] is (mask if offered else None)
    assert p.brainMask is mask  # kept for when a model that takes it is chosen again

def test_a_failed_start_is_shown_once_and_leaves_the_scene_alone(env):
    import slicer

    widget = make_widget(env)
    _select_model(widget, "brats-demo-unet")  # all four inputs required; none given
    before = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(Exception) as raised:  # tryWithErrorDisplay shows the error, then re-raises (Slicer logs it)
        widget.onApplyOrCancel()
    assert len(env.messages.errors) == 1 and str(raised.value) in env.messages.errors[0]
    assert "model brats-demo-unet needs input channel(s) ['T1', 'T1c', 'T2', 'FLAIR']" in env.messages.errors[0]
    assert widget._job is None and widget.ui.applyButton.text == "Apply"
    assert widget.logic._worker is None  # refused before a worker was started or a file written
    assert slicer.mrmlScene.GetNumberOfNodes() == before


def test_exit_disconnects_enter_reconnects_cleanup_ends_a_running_worker(env):
    _sample(env)
    widget = make_widget(env)
    ui, p = widget.ui, widget._parameterNode
    widget.exit()
    p.probabilityThreshold = 0.9
    assert unwrap(ui.probabilityThresholdSlider).property("value") != pytest.approx(0.9)  # not bound while away
    widget.enter()
    assert unwrap(ui.probabilityThresholdSlider).property("value") == pytest.approx(0.9)
    _select_model(widget, "brats-demo-unet")
    p.device = "cpu"
    unwrap(ui.applyButton).click()
    worker = widget.logic._worker
    assert worker.alive
    widget.cleanup()  # Slicer closing, or the module reloaded, while a run is going
    assert not worker.alive and not widget.timer.isActive()
    process_events_until(env.app, lambda: True)
    env.app.processEvents()
    assert env.messages.errors == []  # no "worker stopped" dialog from a poll after cleanup


def test_first_open_without_torch_shows_the_install_frame_and_imports_no_model(env, monkeypatch):
    from medcnncad.slicer.logic import SecondReaderLogic

    monkeypatch.setattr(SecondReaderLogic, "missingDependencies", staticmethod(lambda: (True, ["monai"])))
    widget = make_widget(env)
    ui = widget.ui
    assert not unwrap(ui.installFrame).isHidden()  # shown once the panel is shown
    assert "torch" in ui.installLabel.text and "monai" in ui.installLabel.text and not ui.mainFrame.enabled
    assert unwrap(ui.modelComboBox).count() == 0 and env.messages.errors == []
    env.messages.confirm_answer = False  # the user says no: nothing is installed
    unwrap(ui.installButton).click()
    assert len(env.messages.confirmations) == 1 and "PyTorch" in env.messages.confirmations[0]
    assert not ui.mainFrame.enabled and env.messages.errors == []


@pytest.mark.parametrize("method", ["test_SegmentAndCompare", "test_WidgetApplyCancelApply"])
def test_the_module_self_test_passes(env, method):
    widget = make_widget(env)  # Slicer creates the widget when the module is first opened
    assert widget is not None
    result = unittest.TestResult()
    env.module.MedCNNCADTest(method).run(result)
    assert result.testsRun == 1 and not result.skipped
    assert result.wasSuccessful(), result.errors + result.failures
    assert any(m.startswith("delayDisplay: MedCNNCAD") for m in env.messages.confirmations)
    assert isinstance(unwrap(widget.ui.applyButton), QtWidgets.QPushButton)


def _library_with_the_sample(tmp_path):
    """A library (demo model) holding the sample case, segmented by the CLI, with its T1 as view image."""
    from slicer_qt_harness import SAMPLE

    from medcnncad.cli import main
    from medcnncad.retrieval.library import Library

    files = {n: str(SAMPLE / f"MedCNNCADPhantom_{n}.nrrd") for n in ("T1", "T1c", "T2", "FLAIR")}
    out = tmp_path / "case"
    import json

    inputs = [arg for n, path in files.items() for arg in ("--input", f"{n}={path}")]
    assert main(["segment", *inputs, "--model", "brats-demo-unet", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    library = Library.create(tmp_path / "lib", report["model"], report["retrieval"]["radiomics_names"])
    library.add_case(out, "phantom-1", {"grade": "HGG"}, view_image=files["T1"])
    return tmp_path / "lib"


def test_similar_cases_for_the_chosen_lesion_and_one_shown_side_by_side(env, tmp_path):
    import slicer

    library = _library_with_the_sample(tmp_path)
    _sample(env)
    layout = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLayoutNode")  # Slicer's scene has one
    widget = make_widget(env)
    ui, p = widget.ui, widget._parameterNode
    _select_model(widget, "brats-demo-unet")
    p.device, p.libraryFolder = "cpu", str(library)
    unwrap(ui.applyButton).click()
    process_events_until(env.app, lambda: widget._job is None)
    assert env.messages.errors == [] and ui.statusLabel.text.startswith("Done: ")
    table = p.lesionTable.GetTable()
    rows = [r for r in range(table.GetNumberOfRows()) if table.GetValueByName(r, "structure").ToString() == "WT"]
    smallest = min(rows, key=lambda r: table.GetValueByName(r, "volume_ml").ToDouble())
    lesion_id = table.GetValueByName(smallest, "id").ToInt()
    view = unwrap(ui.lesionTableView)
    view.clicked.emit(view.model().index(smallest, 0))
    unwrap(ui.similarButton).click()
    assert env.messages.errors == [], env.messages.errors
    assert ui.statusLabel.text == f"Similar cases for lesion {lesion_id}"
    similar = unwrap(ui.similarTableView).mrmlTableNode()
    assert similar.GetTable().GetValueByName(0, "case").ToString() == "phantom-1"
    assert widget.logic.lastSimilarCases[0]["view"] is not None
    result = p.resultSegmentation
    view = unwrap(ui.similarTableView)
    view.clicked.emit(view.model().index(0, 0))
    assert env.messages.errors == [], env.messages.errors
    volume = slicer.mrmlScene.GetFirstNode("Similar case phantom-1 image")
    segmentation = slicer.mrmlScene.GetFirstNode("Similar case phantom-1 segmentation")
    assert volume is not None and segmentation.GetSegmentation().GetNumberOfSegments() >= 1
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    composites = {slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode").GetLayoutName():
                  slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(3)}
    assert composites["Yellow"].GetBackgroundVolumeID() == volume.GetID()
    assert composites["Yellow"].GetForegroundVolumeID() is None  # no probability map of the other patient
    assert composites["Red"].GetBackgroundVolumeID() != volume.GetID()  # the current case stays on the left
    yellow = next(n for n in slicer.util.getNodesByClass("vtkMRMLSliceNode") if n.GetLayoutName() == "Yellow")
    assert list(segmentation.GetDisplayNode().GetViewNodeIDs()) == [yellow.GetID()]
    assert yellow.GetID() not in list(result.GetDisplayNode().GetViewNodeIDs())  # our result, not over it
    assert not unwrap(ui.similarThumbnailLabel).pixmap().isNull()
    count = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    view.clicked.emit(view.model().index(0, 0))
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == count  # loaded once
    unwrap(ui.applyButton).click()  # a new run while the library case is shown
    process_events_until(env.app, lambda: widget._job is None)
    assert p.resultSegmentation is not result and env.messages.errors == []
    assert composites["Yellow"].GetBackgroundVolumeID() == volume.GetID()
    assert composites["Yellow"].GetForegroundVolumeID() is None
    assert composites["Red"].GetForegroundVolumeID() is not None  # the new probability map, left
    assert yellow.GetID() not in list(p.resultSegmentation.GetDisplayNode().GetViewNodeIDs())
    assert len(p.resultSegmentation.GetDisplayNode().GetViewNodeIDs()) > 0
    assert view.mrmlTableNode() is None  # the previous run's similar cases are not shown beside the new run
    unwrap(ui.similarButton).click()
    widget.logic.lastSimilarCases[0]["view"] = None  # a library case stored without a view image
    view.clicked.emit(view.model().index(0, 0))
    assert env.messages.errors and "added without a view image" in env.messages.errors[-1]


def test_a_4d_file_and_a_sequence_become_the_channel_inputs(env, tmp_path):
    """Load 4D file... (Slicer 5.10 cannot load one as volumes) and Split into inputs (a sequence, as 5.11 and
    later load one): the volumes the order names are selected as the inputs; a refused order changes nothing."""
    import numpy as np
    import SimpleITK as sitk
    import slicer

    widget = make_widget(env)
    _select_model(widget, "brats-demo-unet")
    ui, p = widget.ui, widget._parameterNode
    path = tmp_path / "BRATS_900.nii.gz"
    stacked = np.stack([np.full((5, 6, 7), value, np.float32) for value in (10, 20, 30, 40)])
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(v) for v in stacked]), str(path))
    env.messages.file_to_choose = str(path)
    p.volumeOrder = "FLAIR,T1,T1c,T2"
    unwrap(ui.load4DFileButton).click()
    assert env.messages.errors == []
    chosen = [getattr(p, f"inputVolume{i}") for i in range(4)]  # the model's order: T1, T1c, T2, FLAIR
    assert [n.GetName() for n in chosen] == ["BRATS_900 T1", "BRATS_900 T1c", "BRATS_900 T2", "BRATS_900 FLAIR"]
    assert [float(slicer.util.arrayFromVolume(n).mean()) for n in chosen] == [20.0, 30.0, 40.0, 10.0]
    assert unwrap(ui.inputVolume3Selector).currentNode() is chosen[3]

    storage = slicer.vtkMRMLVolumeSequenceStorageNode()  # the same file as Slicer's sequence reader makes it
    storage.SetFileName(str(path))
    slicer.mrmlScene.AddNode(storage)
    sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "BRATS_900 sequence")
    sequence.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(sequence)
    assert sequence.GetAttribute("DataNodeClassName") == "vtkMRMLScalarVolumeNode"  # the selector's filter
    p.inputSequence = sequence
    assert unwrap(ui.inputSequenceSelector).currentNode() is sequence
    p.volumeOrder = ",,T1c"
    unwrap(ui.splitSequenceButton).click()
    assert env.messages.errors == []
    assert [getattr(p, f"inputVolume{i}") for i in (0, 2, 3)] == [None, None, None]  # one patient's inputs only
    assert p.inputVolume1.GetName() == "BRATS_900 sequence T1c"
    assert float(slicer.util.arrayFromVolume(p.inputVolume1).mean()) == 30.0

    before, selected = slicer.mrmlScene.GetNumberOfNodes(), p.inputVolume1
    p.volumeOrder = "T1,T1"
    with pytest.raises(Exception, match="names T1 twice"):  # shown, then re-raised as tryWithErrorDisplay does
        widget.onSplitSequence()
    assert len(env.messages.errors) == 1 and "volume order 'T1,T1' names T1 twice" in env.messages.errors[0]
    assert slicer.mrmlScene.GetNumberOfNodes() == before and p.inputVolume1 is selected
