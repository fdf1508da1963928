"""MedCNNCAD: an AI second reader in 3D Slicer. Research use only, not for diagnosis.

Four classes, four jobs: the Module (metadata), the Widget (wires the parameter node to
the Logic), the Logic (a thin facade over the Qt-free ``medcnncad`` engine; usable from
the Python console) and the Test. All work lives in the engine package next to this file.
"""

import functools
import logging
import pathlib
from typing import Annotated

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from medcnncad.models.defaults import DEFAULT_MODEL
from medcnncad.slicer.logic import INTENDED_USE, RunCancelled, SecondReaderLogic

MAX_CHANNELS = 4  # input selectors in the .ui


class MedCNNCAD(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedCNNCAD"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedCNNCAD team"]
        self.parent.helpText = (
            "AI second reader: MONAI 3D CNNs segment tumors, show voxel and lesion probabilities, and measure "
            "agreement (Dice, HD95, ...) with a reference segmentation.<br><b>" + INTENDED_USE + "</b><br>"
            "The shipped demo model was trained on synthetic phantoms only.")
        self.parent.acknowledgementText = (
            "Built on 3D Slicer, MONAI, PyTorch and SimpleITK. Phantom anatomy: MNI152 2009 template (nilearn).")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Register the shipped phantom case (checksummed local files) with the Sample Data module."""
    SecondReaderLogic.registerSampleData()


@functools.cache
def parameterNodeClass():
    """The typed parameter node (created on first use: it needs Slicer's parameterNodeWrapper)."""
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

    @parameterNodeWrapper
    class MedCNNCADParameterNode:
        model: str = DEFAULT_MODEL
        trust: bool = False
        device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
        classifyLesions: bool = True
        testTimeAugmentation: bool = True  # the default model's own mode (a test checks the manifest)
        inputVolume0: slicer.vtkMRMLScalarVolumeNode
        inputVolume1: slicer.vtkMRMLScalarVolumeNode
        inputVolume2: slicer.vtkMRMLScalarVolumeNode
        inputVolume3: slicer.vtkMRMLScalarVolumeNode
        inputSequence: slicer.vtkMRMLSequenceNode  # a 4D input to split into the channels above
        volumeOrder: str = ""  # its volumes' channels in order (FLAIR,T1,T1c,T2); empty: from its dataset.json
        brainMask: slicer.vtkMRMLSegmentationNode  # the reader's own brain mask for a run; None: the model's
        probabilityThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
        referenceSegmentation: slicer.vtkMRMLSegmentationNode
        referenceLabels: str = ""  # the reference's label convention when not the model's: brats2023, msd, 3=4
        resultSegmentation: slicer.vtkMRMLSegmentationNode
        lesionTable: slicer.vtkMRMLTableNode
        metricsTable: slicer.vtkMRMLTableNode
        libraryFolder: str = ""
        similarCount: Annotated[int, WithinRange(1, 50)] = 5

    return MedCNNCADParameterNode


class MedCNNCADWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the .ui to the parameter node and the Logic; no computation here."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._lastNodes = None
        self._probabilityNodes = {}
        self._queryLesion = None  # the lesion-table choice for similar cases (None: the largest)

    def setup(self):
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedCNNCAD.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedCNNCADLogic()
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.timeout.connect(self.onPoll)
        self.ui.intendedUseLabel.text = INTENDED_USE
        self.ui.applyButton.clicked.connect(self.onApplyOrCancel)
        self.ui.compareButton.clicked.connect(self.onCompare)
        self.ui.exportDicomButton.clicked.connect(self.onExportDicom)
        self.ui.installButton.clicked.connect(self.onInstall)
        self.ui.addModelButton.clicked.connect(self.onAddModel)
        self.ui.load4DFileButton.clicked.connect(self.onLoad4DFile)
        self.ui.splitSequenceButton.clicked.connect(self.onSplitSequence)
        # volume sequences only (the parameter node's binding sets the node type, not this filter)
        sequenceItems = ("DataNodeClassName", "vtkMRMLScalarVolumeNode")
        self.ui.inputSequenceSelector.addAttribute("vtkMRMLSequenceNode", *sequenceItems)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.lesionTableView.clicked.connect(self.onLesionClicked)
        self.ui.discordanceTableView.clicked.connect(self.onDiscordantLesionClicked)
        self.ui.probabilityThresholdSlider.valueChanged.connect(self.onThresholdChanged)
        self.ui.similarButton.clicked.connect(self.onFindSimilar)
        self.ui.similarTableView.clicked.connect(self.onSimilarCaseClicked)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.updateDependencyState()
        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()
        if self.logic:
            self.timer.stop()  # a poll after shutdown would report the closed worker as a crash
            self.logic.shutdown()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event):
        if self._job is not None:  # its result belongs to the patient being closed (the Logic discards it too)
            self.logic.cancelSegmentation()
        self._lastNodes, self._probabilityNodes, self._queryLesion = None, {}, None
        self.ui.exportDicomButton.enabled = False
        self.clearTables()
        self.setParameterNode(None)

    def clearTables(self):
        for view in (self.ui.lesionTableView, self.ui.metricsTableView, self.ui.discordanceTableView,
                     self.ui.similarTableView):
            view.setMRMLTableNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameterNode):
        if self._parameterNode and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.populateModels()

    # -- dependencies, models, inputs ---------------------------------------------------
    def updateDependencyState(self):
        torchMissing, missing = self.logic.missingDependencies()
        needed = (["torch (PyTorch extension)"] if torchMissing else []) + missing
        self.ui.installFrame.visible = bool(needed)
        self.ui.installLabel.text = "Not installed yet: " + ", ".join(needed) if needed else ""
        self.ui.mainFrame.enabled = not needed
        if not needed:
            self.ui.deviceInfoLabel.text = self.logic.detectedDevice()

    def onInstall(self):
        with slicer.util.tryWithErrorDisplay("Installing MedCNNCAD dependencies failed.", waitCursor=True):
            # the Widget asks (the Logic opens no dialog); nothing is installed unless the user confirms
            if self.logic.installDependencies(askConfirmation=lambda text: slicer.util.confirmOkCancelDisplay(
                    text, windowTitle="MedCNNCAD")):
                self.updateDependencyState()
                self.populateModels()

    def populateModels(self):
        # ask the Logic, not the install frame: widgets are not visible yet while setup() runs
        if self.logic.dependenciesMissing():
            return
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        for modelId, label in self.logic.availableModels():
            combo.addItem(label, modelId)
        combo.setCurrentIndex(max(0, combo.findData(self._parameterNode.model)))
        combo.blockSignals(False)
        self.onModelChanged()

    def onAddModel(self):
        import qt

        folder = qt.QFileDialog.getExistingDirectory(
            None, "Model folder: manifest.json, MONAI bundle, nnU-Net v2 (dataset.json) or Auto3DSeg (model.pt)")
        if folder:
            with slicer.util.tryWithErrorDisplay("Cannot add this model."):
                self._parameterNode.model = self.logic.addModelFolder(folder)
                self.populateModels()

    def onLoad4DFile(self):
        import qt

        path = qt.QFileDialog.getOpenFileName(
            None, "4D file holding several MRI sequences (e.g. the Decathlon's BRATS_001.nii.gz)", "",
            "Volumes (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd);;All files (*)")
        path = path[0] if isinstance(path, (tuple, list)) else path  # PythonQt: the path; other bindings: a pair
        if path:
            with slicer.util.tryWithErrorDisplay("Cannot load this 4D file."):
                p = self._parameterNode
                self.useInputs(self.logic.load4DFile(path, p.model, p.volumeOrder))

    def onSplitSequence(self):
        with slicer.util.tryWithErrorDisplay("Cannot split this sequence."):
            p = self._parameterNode
            self.useInputs(self.logic.splitSequence(p.inputSequence, p.model, p.volumeOrder))

    def useInputs(self, volumes):
        """Select channel -> volume node as the inputs; channels it does not name are cleared (one patient)."""
        manifest = self.logic.describeModel(self._parameterNode.model)
        for i, channel in enumerate(manifest.inputs[:MAX_CHANNELS]):
            setattr(self._parameterNode, f"inputVolume{i}", volumes.get(channel.name))

    def onModelChanged(self, index=None):
        modelId = self.ui.modelComboBox.currentData
        if not modelId or not self._parameterNode:
            return
        self._parameterNode.model = modelId
        manifest = self.logic.describeModel(modelId)
        self.ui.modelInfoLabel.text = self.logic.modelCard(modelId)
        if index is not None:  # a model picked by hand starts in the mode its lesion filters were chosen in
            self._parameterNode.testTimeAugmentation = manifest.inference.test_time_augmentation
        self.ui.brainMaskLabel.visible = self.ui.brainMaskSelector.visible = self.logic.takesBrainMask(modelId)
        volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        proposal = self.logic.assignInputs(manifest, volumes)
        for i in range(MAX_CHANNELS):
            used = i < len(manifest.inputs)
            getattr(self.ui, f"inputVolume{i}Label").visible = used
            getattr(self.ui, f"inputVolume{i}Selector").visible = used
            if used:
                channel = manifest.inputs[i]
                suffix = "" if channel.required else " (optional)"
                getattr(self.ui, f"inputVolume{i}Label").text = channel.name + suffix
                if channel.name in proposal and not getattr(self._parameterNode, f"inputVolume{i}"):
                    setattr(self._parameterNode, f"inputVolume{i}", proposal[channel.name])

    # -- running ------------------------------------------------------------------------
    def onApplyOrCancel(self):
        if self._job is not None:
            self.logic.cancelSegmentation()
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Cannot start the segmentation."):
            manifest = self.logic.describeModel(p.model)  # a model folder that went away: the dialog says so
            volumes = {c.name: getattr(p, f"inputVolume{i}") for i, c in enumerate(manifest.inputs[:MAX_CHANNELS])}
            mask = p.brainMask if self.logic.takesBrainMask(p.model) else None  # its selector is hidden otherwise
            self._job = self.logic.startSegmentation({k: v for k, v in volumes.items() if v}, p.model, p.device,
                                                     p.trust, self.logic.lesionClassifier(p.classifyLesions),
                                                     p.testTimeAugmentation, p.libraryFolder or None, brainMask=mask)
            self.ui.applyButton.text = "Cancel"
            self.ui.progressBar.value = 0
            self.timer.start()

    def onProgress(self, stage, fraction):
        self.ui.statusLabel.text = f"{stage}..."
        self.ui.progressBar.value = int(100 * fraction)

    def onPoll(self):
        try:
            nodes = self.logic.pollSegmentation(self._job, self.onProgress)
        except RunCancelled:  # asked for: no dialog; the scene is unchanged
            self.finishRun()
            self.ui.statusLabel.text = "Cancelled; nothing was added to the scene."
            return
        except Exception as exc:  # shown once; the scene is unchanged
            self.finishRun()
            self.ui.statusLabel.text = str(exc)
            slicer.util.errorDisplay(str(exc))
            return
        if nodes is not None:
            self.finishRun()
            self.showResult(nodes)

    def finishRun(self):
        self.timer.stop()
        self._job = None
        self.ui.applyButton.text = "Apply"

    def showResult(self, nodes):
        p = self._parameterNode
        p.resultSegmentation = nodes.segmentation
        p.lesionTable = nodes.lesion_table
        self._probabilityNodes = nodes.probabilities
        self.clearTables()  # the previous run's comparison and similar cases are not this run's
        self.ui.lesionTableView.setMRMLTableNode(nodes.lesion_table)
        self.ui.provenanceLabel.text = self.logic.provenanceText(nodes.segmentation)
        self._lastNodes, self._queryLesion = nodes, None
        self.ui.exportDicomButton.enabled = True
        removed = len(nodes.result.removed_candidates)
        self.ui.statusLabel.text = f"Done: {self.logic.lesionSummary(nodes)}" + (
            f"; {removed} candidate(s) removed by the model's post-processing (table "
            f"'{nodes.removed_table.GetName()}'; still in the probability maps)" if removed else "")
        self.logic.showResultLayers(nodes)  # background: the first non-empty input (input 0 may be empty)
        self.onThresholdChanged(p.probabilityThreshold)

    def onThresholdChanged(self, value):
        for node in self._probabilityNodes.values():
            if slicer.mrmlScene.IsNodePresent(node):
                self.logic.setProbabilityThreshold(node, float(value))

    def onLesionClicked(self, index):
        if self._parameterNode.lesionTable:
            self.logic.jumpToLesion(self._parameterNode.lesionTable, index.row())
        if self._lastNodes and self._parameterNode.lesionTable is self._lastNodes.lesion_table:
            self._queryLesion = self.logic.similarQueryLesion(self._lastNodes, index.row()) or self._queryLesion

    def onDiscordantLesionClicked(self, index):
        table = self.ui.discordanceTableView.mrmlTableNode()
        if table:
            self.logic.jumpToLesion(table, index.row())

    def onExportDicom(self):
        inputs = [getattr(self._parameterNode, f"inputVolume{i}") for i in range(MAX_CHANNELS)]
        with slicer.util.tryWithErrorDisplay("DICOM export failed.", waitCursor=True):
            ask = slicer.util.confirmOkCancelDisplay
            files = self.logic.exportToDicomDatabase(self._lastNodes, inputs, askInstall=ask)
            self.ui.statusLabel.text = f"Exported: {', '.join(pathlib.Path(f).name for f in files)}"

    def onFindSimilar(self):
        with slicer.util.tryWithErrorDisplay("Similar-case search failed.", waitCursor=True):
            self.ui.similarTableView.setMRMLTableNode(self.logic.similarCasesTable(
                self._parameterNode.similarCount, self._parameterNode.libraryFolder or None, self._queryLesion))
            self.ui.statusLabel.text = f"Similar cases for lesion {self._queryLesion or 'the largest'}"

    def onSimilarCaseClicked(self, index):
        import qt

        with slicer.util.tryWithErrorDisplay("Cannot show this similar case.", waitCursor=True):
            self.logic.loadSimilarCase(index.row())  # checks the row first
            self.ui.similarThumbnailLabel.setPixmap(qt.QPixmap(self.logic.lastSimilarCases[index.row()]["thumbnail"]
                                                               or ""))

    def onCompare(self):
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Comparison failed.", waitCursor=True):
            comparison = self.logic.compare(p.resultSegmentation, p.referenceSegmentation,
                                            referenceLabels=p.referenceLabels)
            p.metricsTable = comparison.metrics_table
            self.ui.metricsTableView.setMRMLTableNode(comparison.metrics_table)
            self.ui.discordanceTableView.setMRMLTableNode(comparison.discordant_lesion_table)
            count = len(comparison.lesions_only_one_side)
            self.ui.discordanceLabel.text = (f"{count} lesion(s) found by only one reader (click to view)"
                                             if count else "All lesions concordant")


class MedCNNCADLogic(ScriptedLoadableModuleLogic, SecondReaderLogic):
    """Console API (all methods in :class:`medcnncad.slicer.logic.SecondReaderLogic`). Example::

        logic = slicer.util.getModuleLogic("MedCNNCAD")
        run = logic.segment([t1, t1c, t2, flair], model="demo", device="auto")
        comparison = logic.compare(run.segmentation, referenceSegmentationNode)
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        SecondReaderLogic.__init__(self)

    def getParameterNode(self):
        return parameterNodeClass()(super().getParameterNode())


class MedCNNCADTest(ScriptedLoadableModuleTest):
    """Inside Slicer, on the phantom sample case with the demo model: the console path (segment, classify,
    compare: Dice >= 0.80), the widget path (Apply -> result nodes; Cancel -> nothing added; Apply again)
    through the worker. Without torch/MONAI it logs why and passes (Reload and Test shows SkipTest as an
    error); under ctest each test_* method is reported as skipped."""

    SKIP_MESSAGE = "MedCNNCAD self-test skipped: torch/MONAI not installed (open the module and click Install)"

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        if MedCNNCADLogic.dependenciesMissing():
            logging.warning(self.SKIP_MESSAGE)
            self.delayDisplay(self.SKIP_MESSAGE)
            return
        for test in (self.test_SegmentAndCompare, self.test_WidgetApplyCancelApply):
            self.setUp()
            test()

    def _requireDependencies(self):
        if MedCNNCADLogic.dependenciesMissing():
            self.skipTest(self.SKIP_MESSAGE)

    def _loadSample(self):
        import SampleData

        registerSampleData()
        nodes = SampleData.downloadSamples("MedCNNCADPhantom")
        return nodes[:4], nodes[4]

    def test_SegmentAndCompare(self):
        self._requireDependencies()
        volumes, reference = self._loadSample()
        logic = MedCNNCADLogic()
        classifier = logic.lesionClassifier(True)
        self.assertIsNotNone(classifier, "the shipped lesion classifier is not installed")
        run = logic.segment(volumes, model="demo", device="cpu", classifier=classifier)
        self.assertEqual(run.segmentation.GetSegmentation().GetNumberOfSegments(), 3)
        self.assertTrue(run.lesion_table.GetTable().GetColumnByName("predicted_class"))
        comparison = logic.compare(run.segmentation, reference)
        for region in ("WT", "TC", "ET"):
            self.assertGreaterEqual(comparison.metrics[region].dice, 0.80, region)
        self.delayDisplay("MedCNNCAD console path passed")

    def _waitForRun(self, widget, seconds=300):
        import time

        deadline = time.monotonic() + seconds
        while widget._job is not None:
            self.assertLess(time.monotonic(), deadline, "the worker did not finish")
            slicer.app.processEvents()  # the widget's QTimer polls the worker
            time.sleep(0.05)

    def test_WidgetApplyCancelApply(self):
        self._requireDependencies()
        volumes, _ = self._loadSample()
        slicer.util.selectModule("MedCNNCAD")
        widget = slicer.modules.medcnncad.widgetRepresentation().self()
        p = widget._parameterNode
        p.model, p.device, p.classifyLesions, p.testTimeAugmentation = "demo", "cpu", True, False
        for i, node in enumerate(volumes):
            setattr(p, f"inputVolume{i}", node)
        before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")  # the sample's reference
        count = lambda: slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") - before  # noqa: E731
        widget.onApplyOrCancel()  # Apply
        self._waitForRun(widget)
        self.assertEqual(count(), 1, widget.ui.statusLabel.text)
        self.assertEqual(slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode").GetBackgroundVolumeID(),
                         volumes[0].GetID())
        widget.onApplyOrCancel()  # Apply
        widget.onApplyOrCancel()  # Cancel
        self._waitForRun(widget)
        self.assertEqual(count(), 1, "a cancelled run added nodes")
        widget.onApplyOrCancel()  # Apply again: a new worker
        self._waitForRun(widget)
        self.assertEqual(count(), 2, widget.ui.statusLabel.text)
        self.delayDisplay("MedCNNCAD widget and worker paths passed")
