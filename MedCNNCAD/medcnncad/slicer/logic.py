"""The Slicer module's Logic, Qt-free: everything the module can do without a GUI.

:class:`SecondReaderLogic` is the body of ``MedCNNCADLogic`` (the module file only adds
Slicer's ScriptedLoadableModuleLogic base and the parameter node). It imports ``slicer``
(MRML), never ``qt``, and imports torch/MONAI lazily, so the module loads in a Slicer
where they are not installed yet. Slicer-facing, hence camelCase. Arrays are (K, J, I).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union, cast

import slicer

from medcnncad import INTENDED_USE
from medcnncad.errors import InputError, MedCNNCADError, RunCancelled
from medcnncad.models.defaults import DEFAULT_GRADE_CLASSIFIER as DEFAULT_CLASSIFIER
from medcnncad.slicer.dependencies import TORCH_VERSION, missing_requirements, pip_install_arguments

# Everything else of the engine is imported inside the methods that use it: this module loads when
# Slicer starts, before torch, MONAI, jsonschema and scikit-learn exist in Slicer's Python (the module
# then offers to install them); the modules above need none of them.

if TYPE_CHECKING:  # the engine's heavy modules load lazily (torch may not be installed yet)
    from medcnncad.models.manifest import Manifest
    from medcnncad.slicer.adaptor import Comparison, ResultNodes
    from medcnncad.slicer.worker import WorkerClient

VolumeInputs = Union[Sequence[Any], Mapping[str, Any]]
"""Volume nodes in the model's channel order, or channel name -> volume node."""

__all__ = ["SecondReaderLogic", "INTENDED_USE", "RunCancelled"]


def firstNonEmptyVolume(volumeNodes: Any) -> Any:
    """The first volume node that has voxels (an optional input may be an empty node), else None."""
    for node in volumeNodes:
        if node is None:
            continue
        image = node.GetImageData()
        if image is not None and image.GetNumberOfPoints() > 0:
            return node
    return None


class SecondReaderLogic:
    """Segment volume nodes, show results, compare with a reference; no dialogs, errors name the value."""

    def __init__(self) -> None:
        self._worker: WorkerClient | None = None
        self.libraryPath: str | None = None
        """Similar-case library folder (``medcnncad library build``); set it before a worker run so that the
        worker computes the lesions' descriptors too."""
        self._lastRun: Any = None  # (result, segmenter) of the last console run, for similarCases
        self._lastDescriptors: dict[str, Any] | None = None  # the last run's model + retrieval block
        self.lastSimilarCases: list[dict[str, Any]] = []  # rows of the last similarCasesTable

    # -- environment --------------------------------------------------------------------
    @staticmethod
    def missingDependencies() -> tuple[bool, list[str]]:
        return missing_requirements()

    @classmethod
    def dependenciesMissing(cls) -> bool:
        """True while torch or a pip requirement is not installed (then nothing may import the engine's models)."""
        torchMissing, missing = cls.missingDependencies()
        return torchMissing or bool(missing)

    @classmethod
    def installationText(cls) -> str:
        torchMissing, missing = cls.missingDependencies()
        return ("MedCNNCAD needs: " + ", ".join(([f"PyTorch {TORCH_VERSION} (PyTorch extension)"] if torchMissing
                                                 else []) + missing)
                + ". Packages Slicer ships (numpy, SimpleITK, pydicom, ...) are not changed. Install now?")

    def installDependencies(self, askConfirmation: Callable[[str], bool] | None = None) -> bool:
        """Install what is missing. ``askConfirmation(text)`` (the Widget's dialog; the Logic opens none)
        is asked first; False from it installs nothing. Returns whether it installed."""
        torchMissing, missing = self.missingDependencies()
        if not torchMissing and not missing:
            return True
        if askConfirmation is not None and not askConfirmation(self.installationText()):
            return False
        if torchMissing:
            import PyTorchUtils

            if not PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                                 torchVersionRequirement=TORCH_VERSION):
                raise RuntimeError("PyTorch could not be installed; use the PyTorch Utils module.")
        if missing:
            slicer.util.pip_install(pip_install_arguments(missing))
        return True

    @staticmethod
    def registerSampleData() -> None:
        """Register the shipped phantom case with Slicer's Sample Data module (local, checksummed files)."""
        from medcnncad.slicer.sample_data import register_sample_data

        register_sample_data()

    @staticmethod
    def lesionClassifier(enabled: bool = True) -> str | None:
        """The installed lesion grade classifier's id when ``enabled`` and installed, else None."""
        if not enabled:
            return None
        from medcnncad.models.registry import find_model

        try:
            find_model(DEFAULT_CLASSIFIER)
        except (MedCNNCADError, OSError) as exc:  # not installed, or an unreadable model folder
            logging.info("lesion grade classifier not available: %s", exc)
            return None
        return DEFAULT_CLASSIFIER

    @staticmethod
    def detectedDevice() -> str:
        import torch

        if torch.cuda.is_available():
            return f"CUDA available: {torch.cuda.get_device_name(0)} (auto uses it)"
        return "No CUDA GPU detected: auto runs on the CPU"

    # -- models and inputs --------------------------------------------------------------
    @staticmethod
    def availableModels() -> list[tuple[str, str]]:
        """(key, label) of every usable segmentation model; a broken model folder is logged and skipped."""
        from medcnncad.models.registry import describe_model, list_models, model_key

        out: list[tuple[str, str]] = []
        try:
            folders = list_models()
        except OSError as exc:  # an unreadable search path (MEDCNNCAD_MODEL_PATH, ~/.medcnncad/models)
            logging.warning("cannot list models: %s", exc)
            return out
        for folder in folders:
            try:
                m = describe_model(folder)
            except ImportError:
                raise  # a missing dependency is not a broken model: the module offers to install it
            except Exception as exc:  # noqa: BLE001 - ModelError, FileNotFoundError, OSError, bad JSON, ...
                logging.warning("model %s skipped: %s", folder, exc)
                continue
            if m.task != "segmentation":  # grade classifiers run with a segmentation model, not alone
                continue
            out.append((model_key(m), f"{m.name} ({m.version})"))
        return out

    @staticmethod
    def describeModel(model: str) -> Manifest:
        from medcnncad.models.registry import describe_model

        return cast("Manifest", describe_model(model))  # the module offers segmentation models only

    @staticmethod
    def takesBrainMask(model: str) -> bool:
        """Whether ``model``'s clinical preprocessing extracts the brain, so takes a reader's brain mask (``brainMask``
        of :meth:`segment`; the panel offers its selector for such a model only)."""
        from medcnncad.models.manifest import extracts_brain

        return extracts_brain(SecondReaderLogic.describeModel(model).clinical)

    @staticmethod
    def modelCard(model: str) -> str:
        """One line for the panel: name, version, format, where the weights came from, training data."""
        from medcnncad.models.registry import describe_model, model_source

        m = describe_model(model)
        return f"{m.name} {m.version} - {model_source(m)} - trained on: {m.trained_on}"

    @staticmethod
    def addModelFolder(folder: str) -> str:
        """Check a model folder of any format (MedCNNCAD manifest, MONAI bundle, nnU-Net v2 folder, Auto3DSeg
        ``model.pt`` + ``labels.csv``); it is then listed (``MEDCNNCAD_MODEL_PATH``). Returns its key."""
        from medcnncad.models.registry import describe_model, model_key

        manifest = describe_model(folder)
        parent = os.path.dirname(os.path.abspath(folder))
        paths = [p for p in os.environ.get("MEDCNNCAD_MODEL_PATH", "").split(os.pathsep) if p]
        os.environ["MEDCNNCAD_MODEL_PATH"] = os.pathsep.join(paths + [parent])
        return model_key(manifest)

    @staticmethod
    def assignInputs(manifest: Manifest, volumeNodes: Sequence[Any]) -> dict[str, Any]:
        """Proposed channel name -> volume node, from node names and DICOM series descriptions."""
        from medcnncad.models.channels import assign_channels

        texts = {n.GetID(): [n.GetName(), n.GetAttribute("DICOM.SeriesDescription") or ""] for n in volumeNodes}
        return {channel: slicer.mrmlScene.GetNodeByID(nodeId)
                for channel, nodeId in assign_channels(manifest, texts).items()}

    def _namedInputs(self, inputVolumeNodes: VolumeInputs, manifest: Manifest) -> dict[str, Any]:
        from medcnncad.slicer.four_d import check_declared_channels, check_not_sequence_frames

        if isinstance(inputVolumeNodes, dict):  # in the model's order: the engine's reference is its first channel
            order = [c.name for c in manifest.inputs]
            named = dict(sorted(inputVolumeNodes.items(), key=lambda item: (
                order.index(item[0]) if item[0] in order else len(order))))
        else:
            named = {c.name: node for c, node in zip(manifest.inputs, inputVolumeNodes) if node is not None}
        check_not_sequence_frames(named)
        check_declared_channels(named, manifest)
        return named

    @staticmethod
    def brainMaskChoice(brainMask: Any = None, brainMaskFrom: str | None = None,
                        referenceVolumeNode: Any = None) -> Any:
        """The engine's ``BrainMaskChoice`` for a run: ``brainMask`` (segmentation node: its "brain" or only
        segment, exported onto ``referenceVolumeNode``'s grid when drawn on its voxels; or a label map volume node) or
        ``brainMaskFrom`` (a channel name); None when neither. The scene is not changed.

        Raises:
            InputError: both given, or a node that is no brain mask or is drawn on another grid (naming it).
        """
        from medcnncad.preprocessing.brain_mask import BrainMaskChoice
        from medcnncad.slicer.adaptor import brain_mask_node_to_image

        if brainMask is not None and brainMaskFrom:
            raise InputError(f"brain mask {brainMask.GetName()!r} and brain mask from {brainMaskFrom}: give one, "
                             "not both")
        if brainMask is not None:
            image, name = brain_mask_node_to_image(brainMask, referenceVolumeNode)
            return BrainMaskChoice(image=image, name=name)
        return BrainMaskChoice(source=brainMaskFrom) if brainMaskFrom else None

    # -- 4D inputs (one file or sequence holding several MRI sequences) ----------------------
    def load4DFile(self, path: str, model: str = "demo", volumeOrder: str = "") -> dict[str, Any]:
        """Add one scalar volume node per channel of ``model`` that the 4D file's volumes hold; channel -> node.

        ``volumeOrder`` names the 0-based volumes in order (``FLAIR,T1,T1c,T2``; an empty entry skips one); empty
        for a file of a dataset folder, whose ``dataset.json`` says. Slicer 5.10 cannot load such a file as volumes.
        """
        from medcnncad.slicer.four_d import load_4d_file

        return load_4d_file(path, self.describeModel(model), volumeOrder)

    def splitSequence(self, sequenceNode: Any, model: str = "demo", volumeOrder: str = "") -> dict[str, Any]:
        """Copy the items of a volume sequence (a 4D file loaded by Slicer 5.11 or later) into one scalar volume
        node per channel of ``model``; channel -> node. ``volumeOrder`` as for :meth:`load4DFile`."""
        from medcnncad.slicer.four_d import split_sequence

        return split_sequence(sequenceNode, self.describeModel(model), volumeOrder)

    # -- segmentation ---------------------------------------------------------------------
    def segment(self, inputVolumeNodes: VolumeInputs, model: str = "demo", device: str = "auto", trust: bool = False,
                progress: Callable[[str, float], None] | None = None, classifier: str | None = None,
                tta: bool | None = None, precision: str | None = None, brainMask: Any = None,
                brainMaskFrom: str | None = None) -> ResultNodes:
        """Segment in this process (blocking). Volumes as a list in channel order or a name -> node dict.

        ``classifier`` (model id) adds calibrated lesion class probabilities to the lesion table;
        ``tta`` adds test-time augmentation (4x the network time) and an uncertainty volume; ``None``
        follows the model (manifest ``inference.test_time_augmentation``). ``precision`` (None: measured once
        per machine and model, ``medcnncad.inference.machine_policy.default_precision``) sets the execution policy.
        ``brainMask`` (a segmentation node with a "brain" segment, e.g. an earlier run's "MedCNNCAD brain mask"
        edited in the Segment Editor, or a label map volume) or ``brainMaskFrom`` (a channel name, e.g. "T1c")
        replaces the model's brain extraction for this run (:meth:`brainMaskChoice`).
        """
        from medcnncad.inference.machine_policy import cached_segmenter
        from medcnncad.slicer.adaptor import add_result_nodes, volume_node_to_image

        segmenter = cached_segmenter(model, device, trust, precision)
        volumes = self._namedInputs(inputVolumeNodes, segmenter.manifest)
        choice = self.brainMaskChoice(brainMask, brainMaskFrom, firstNonEmptyVolume(volumes.values()))
        result = segmenter.run({k: volume_node_to_image(v) for k, v in volumes.items()}, progress=progress, tta=tta,
                               brain_mask=choice)
        if classifier:
            from medcnncad.classification.grade import attach_classification, cached_classifier

            attach_classification(result, cached_classifier(classifier))
        self._lastRun, self._lastDescriptors = (result, segmenter), None
        return add_result_nodes(result, firstNonEmptyVolume(volumes.values()))

    def startSegmentation(self, inputVolumeNodes: VolumeInputs, model: str = "demo", device: str = "auto",
                          trust: bool = False, classifier: str | None = None,
                          tta: bool | None = None, library: str | None = None,
                          precision: str | None = None, brainMask: Any = None,
                          brainMaskFrom: str | None = None) -> dict[str, Any]:
        """Start a run in the persistent worker process; poll it with :meth:`pollSegmentation`. With ``library``
        (it becomes :attr:`libraryPath`) or :attr:`libraryPath` set, the worker also describes the lesions for
        :meth:`similarCases`. ``precision``, ``brainMask`` and ``brainMaskFrom`` as for :meth:`segment` (a brain
        mask the case cannot take is refused here, before the worker starts)."""
        self.libraryPath = library or self.libraryPath
        import SimpleITK as sitk

        from medcnncad.inference.inputs import check_channels
        from medcnncad.models.registry import find_model
        from medcnncad.preprocessing.chain import check_choice
        from medcnncad.slicer.adaptor import volume_node_to_image
        from medcnncad.slicer.worker import WorkerClient

        # the worker gets the model's folder, not its id: it does not know folders added after it started
        modelFolder = str(find_model(model).resolve())
        manifest = self.describeModel(modelFolder)
        volumes = self._namedInputs(inputVolumeNodes, manifest)
        check_channels(manifest, volumes)  # refused here, before a worker starts or a file is written
        images = {name: volume_node_to_image(node) for name, node in volumes.items()}  # refused before any file
        choice = self.brainMaskChoice(brainMask, brainMaskFrom, firstNonEmptyVolume(volumes.values()))
        check_choice(images, manifest.clinical, choice, f"model {manifest.id}")
        folder = tempfile.mkdtemp(prefix="medcnncad-")
        inputs = {}
        mask: dict[str, Any] = {"brain_mask_from": choice.source if choice is not None else None}
        try:
            for name, image in images.items():
                inputs[name] = os.path.join(folder, f"{name}.nrrd")
                sitk.WriteImage(image, inputs[name])
            if choice is not None and choice.image is not None:
                mask.update(brain_mask=os.path.join(folder, "brain_mask.nrrd"), brain_mask_name=choice.name)
                sitk.WriteImage(choice.image, mask["brain_mask"])
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._worker = self._worker or WorkerClient()
        requestId = self._worker.submit({"cmd": "segment", "model": modelFolder, "device": device, "trust": trust,
                                         "classifier": classifier or None, "tta": None if tta is None else bool(tta),
                                         "inputs": inputs, "out": os.path.join(folder, "out"),
                                         "describe": bool(self.libraryPath), "precision": precision, **mask})
        return {"id": requestId, "folder": folder, "manifest": manifest, "model": modelFolder,
                "reference": firstNonEmptyVolume(volumes.values())}

    def pollSegmentation(self, job: dict[str, Any],
                         progress: Callable[[str, float], None] | None = None) -> ResultNodes | None:
        """None while running; the result nodes when done. Raises on failure or cancel (scene unchanged)."""
        from medcnncad.slicer.adaptor import add_result_nodes, volume_node_to_image
        from medcnncad.slicer.worker import WorkerError, load_result

        finished = True
        try:
            assert self._worker is not None  # startSegmentation made it
            event = self._worker.poll(job["id"], progress)
            if event is None:
                finished = False
                return None
            if event["event"] == "error":
                raise WorkerError(event["message"])
            if not slicer.mrmlScene.IsNodePresent(job["reference"]):  # the scene was closed (or the input removed)
                raise InputError("the input volume left the scene while the run was going (scene closed?): its "
                                 "result was discarded")
            result = load_result(pathlib.Path(event["out"]), job["manifest"], volume_node_to_image(job["reference"]))
            described = pathlib.Path(event["out"]) / "retrieval.json"
            self._lastRun = None
            self._lastDescriptors = json.loads(described.read_text()) if described.is_file() else None
            return add_result_nodes(result, job["reference"])
        finally:
            if finished:
                shutil.rmtree(job["folder"], ignore_errors=True)

    def cancelSegmentation(self) -> None:
        if self._worker:
            self._worker.cancel()

    # -- DICOM database --------------------------------------------------------------------
    @staticmethod
    def loadDicomSeries(seriesInstanceUids: Sequence[str]) -> list[Any]:
        """Load series picked in Slicer's DICOM database (``DICOMUtils.loadSeriesByUID``); returns the
        volume nodes, which keep ``DICOM.instanceUIDs`` so the result can be exported back as SEG + SR.
        Channels are then proposed from their series descriptions (:meth:`assignInputs`)."""
        from DICOMLib import DICOMUtils  # Slicer's DICOM module: only inside Slicer

        if not seriesInstanceUids:
            raise InputError("no DICOM series picked")
        nodeIds = DICOMUtils.loadSeriesByUID(list(seriesInstanceUids))
        nodes = [slicer.mrmlScene.GetNodeByID(i) for i in nodeIds]
        return [n for n in nodes if n is not None and n.IsA("vtkMRMLScalarVolumeNode")]

    @staticmethod
    def dicomExportPackagesInstalled() -> bool:
        """Whether highdicom + pydicom 3 sit in the export process's private folder."""
        from medcnncad.slicer.dicom_export import export_packages_installed

        return export_packages_installed()

    @staticmethod
    def installDicomExportPackages() -> None:
        """Install highdicom + pydicom 3 into the private folder only (call after the user agreed):
        Slicer's own pydicom stays as it is."""
        from medcnncad.slicer.dicom_export import install_arguments

        slicer.util.pip_install(install_arguments())

    def exportToDicomDatabase(self, nodes: ResultNodes, referenceVolumeNode: Any, database: Any = None,
                              askInstall: Callable[[str], bool] | None = None) -> list[str]:
        """Write the run's DICOM SEG and DICOM SR (TID 1500, one measurement group per SEG segment) and import
        both into the DICOM database, referencing the series the run's reference volume was loaded from (the volume
        the result's grid is on, recorded on the segmentation; ``referenceVolumeNode``, a node or the list of
        inputs the user has selected, must hold it).
        Returns the written files; none when the export packages are missing and ``askInstall(question)``
        (the Widget's confirmation) declines their installation into the private folder.

        Raises:
            InputError: the reference volume did not come from the DICOM database, is no longer in the scene, or
                is not among the selected volumes.
            MedCNNCADError: writing or importing failed (the message says why).
        """
        from medcnncad.models.registry import model_key
        from medcnncad.slicer.dicom_export import export_to_database, source_files

        if askInstall is not None and not self.dicomExportPackagesInstalled():
            if not askInstall("DICOM SEG/SR export needs highdicom and pydicom 3. Install them into MedCNNCAD's own "
                              "folder (Slicer's pydicom is not changed)?"):
                return []
            self.installDicomExportPackages()
        database = database if database is not None else slicer.dicomDatabase
        referenceVolumeNode = self._exportReference(nodes, referenceVolumeNode)
        sources = source_files(referenceVolumeNode, database)
        out = pathlib.Path(tempfile.mkdtemp(prefix="MedCNNCAD-DICOM-"))
        try:
            files = export_to_database(nodes.result, sources, model_key(nodes.result.manifest), out,
                                       python=shutil.which("PythonSlicer"))
            self._importDicom(out, database)
        finally:
            shutil.rmtree(out, ignore_errors=True)  # the database keeps its own copies
        return [str(f) for f in files]

    @staticmethod
    def _exportReference(nodes: ResultNodes, given: Any) -> Any:
        """The volume the run's result is on (the segmentation's ``referenceVolumeID``), checked against what the
        caller selected (a node or the list of inputs): the export must reference the series the run read, not
        whatever is selected now."""
        from medcnncad.slicer.adaptor import check_on_result_grid

        ran = slicer.mrmlScene.GetNodeByID(nodes.segmentation.GetAttribute("MedCNNCAD.referenceVolumeID") or "")
        if ran is None:
            raise InputError(f"the volume {nodes.segmentation.GetName()!r} was computed on is no longer in the scene")
        selected = list(given) if isinstance(given, (list, tuple)) else [given]
        if given is not None and ran not in selected:
            names = ", ".join(n.GetName() for n in selected if n is not None) or "none"
            raise InputError(f"{nodes.segmentation.GetName()!r} was computed on {ran.GetName()!r}, not on the "
                             f"selected volumes ({names}): select that run's inputs, or segment these")
        check_on_result_grid(nodes.result, ran)
        return ran

    @staticmethod
    def _importDicom(folder: pathlib.Path, database: Any) -> None:
        from DICOMLib import DICOMUtils

        if not DICOMUtils.importDicom(str(folder), database, copyFiles=True):
            raise MedCNNCADError(f"the DICOM database did not import {folder}")

    def shutdown(self) -> None:
        if self._worker:
            self._worker.close()

    # -- similar cases --------------------------------------------------------------------
    def similarCases(self, lesion: int | None = None, k: int = 5, library: str | None = None,
                     features: str | None = None, atMost: bool = False,
                     distinctCases: bool = True) -> list[dict[str, Any]]:
        """The ``k`` library cases most similar to a lesion of the last run, one row each (console API, blocking).

        Args:
            lesion: the lesion's id among the whole-tumor (retrieval structure) lesions of the lesion table;
                ``None``: the largest.
            k: how many (1 .. cases in the library; lesions with ``distinctCases=False``).
            library: a library folder (``medcnncad library build``); default :attr:`libraryPath`.
            features: ``combined`` (default), ``deep`` or ``radiomics``.
            atMost: ``k`` is an upper bound (a smaller library returns all it holds) instead of an error.
            distinctCases: one row per library case, its lesion nearest to the query (default); False: the ``k``
                nearest library lesions, several possibly of one case.

        Returns:
            One dict per neighbour, nearest first: rank, distance, case_id, lesion_id, volume_ml, metadata
            (the library CSV's columns), thumbnail (PNG path).

        Raises:
            InputError: no run yet, no library, a library of another model, ``k`` out of range, a tampered library.
        """
        from medcnncad.retrieval.library import DEFAULT_FEATURES, Library

        folder = library or self.libraryPath
        if not folder:
            raise InputError("no similar-case library: set logic.libraryPath or pass library=")
        if self._lastDescriptors is None:
            if self._lastRun is None:
                raise InputError("no segmentation with lesion descriptors yet: run segment() first (or set "
                                 "libraryPath before a worker run)")
            from medcnncad.retrieval.descriptors import case_descriptors, retrieval_report

            result, segmenter = self._lastRun
            self._lastDescriptors = retrieval_report(case_descriptors(result, segmenter.model, segmenter.device),
                                                     result)
        neighbours = Library.open(folder).query(self._lastDescriptors, k, lesion, features or DEFAULT_FEATURES,
                                                where="the last run", at_most=atMost,
                                                distinct_cases=distinctCases)
        return [n.to_json() for n in neighbours]

    def similarCasesTable(self, k: int = 5, library: str | None = None, lesion: int | None = None,
                          distinctCases: bool = True) -> Any:
        """:meth:`similarCases` as a table node (rank, distance, case, lesion, volume, metadata, thumbnail);
        up to ``k`` rows, one per library case (``distinctCases=False``: per lesion; a smaller library gives all
        it holds), kept in :attr:`lastSimilarCases` for :meth:`loadSimilarCase`."""
        from medcnncad.slicer.adaptor import add_similar_table

        self.lastSimilarCases = self.similarCases(lesion, k, library, atMost=True, distinctCases=distinctCases)
        return add_similar_table(self.lastSimilarCases)

    def loadSimilarCase(self, row: int) -> tuple[Any, Any]:
        """Show row ``row`` of the last similar-cases table beside the current case: its view image and
        segmentation (loaded once) alone in the Yellow view of the side-by-side layout. Returns the volume and
        segmentation nodes. Raises InputError for a bad row or a library case stored without a view image."""
        from medcnncad.slicer.similar_view import load_similar_case, show_side_by_side

        if not 0 <= row < len(self.lastSimilarCases):
            raise InputError(f"similar case row {row}: the last table has {len(self.lastSimilarCases)} row(s)")
        volume, segmentation = load_similar_case(self.lastSimilarCases[row])
        show_side_by_side(volume, segmentation)
        return volume, segmentation

    @staticmethod
    def lesionSummary(nodes: ResultNodes) -> str:
        """One line for the panel, e.g. "WT 4 lesion(s) (NCR 1, ED 4, ET 1, TC 1)": lesions are counted per
        structure; the structure a reader counts tumors in (whole tumor for BraTS models) comes first."""
        from medcnncad.retrieval.descriptors import retrieval_structure

        counts: dict[str, int] = {}
        for lesion in nodes.lesions:
            counts[lesion.structure] = counts.get(lesion.structure, 0) + 1
        main = retrieval_structure(nodes.result.manifest)
        others = ", ".join(f"{name} {count}" for name, count in counts.items() if name != main)
        return f"{main} {counts.get(main, 0)} lesion(s)" + (f" ({others})" if others else "")

    @staticmethod
    def similarQueryLesion(nodes: ResultNodes, row: int) -> int | None:
        """The lesion id :meth:`similarCases` takes for row ``row`` of a run's lesion table: the row's id when
        it is a lesion of the structure the descriptors describe (whole tumor for BraTS models), else None."""
        from medcnncad.retrieval.descriptors import retrieval_structure

        table = nodes.lesion_table.GetTable()
        if table.GetValueByName(row, "structure").ToString() != retrieval_structure(nodes.result.manifest):
            return None
        return int(table.GetValueByName(row, "id").ToInt())

    # -- viewing and comparison -----------------------------------------------------------
    @staticmethod
    def setProbabilityThreshold(probabilityNode: Any, threshold: float) -> None:
        from medcnncad.slicer.adaptor import set_probability_threshold

        set_probability_threshold(probabilityNode, threshold)

    @staticmethod
    def showResultLayers(nodes: ResultNodes) -> None:
        """Slice views: the volume the run was aligned to (first non-empty input) as background, the first
        probability map as foreground. A layer is left as it is rather than cleared when there is no node. A
        library case shown in the Yellow view (:meth:`loadSimilarCase`) stays there, alone."""
        from medcnncad.slicer.similar_view import keep_similar_view

        background = slicer.mrmlScene.GetNodeByID(nodes.segmentation.GetAttribute("MedCNNCAD.referenceVolumeID") or "")
        foreground = next((node for channel, node in nodes.probabilities.items() if channel != "uncertainty"), None)
        with keep_similar_view():  # a library case shown beside this one stays alone in its view
            slicer.util.setSliceViewerLayers(background=background if background is not None else "keep-current",
                                             foreground=foreground if foreground is not None else "keep-current",
                                             foregroundOpacity=0.4)

    @staticmethod
    def jumpToLesion(lesionTableNode: Any, row: int) -> None:
        from medcnncad.slicer.adaptor import jump_to_ras

        table = lesionTableNode.GetTable()
        jump_to_ras([table.GetValueByName(row, axis).ToDouble() for axis in ("R", "A", "S")])

    @staticmethod
    def provenanceText(segmentationNode: Any) -> str:
        get = lambda key: segmentationNode.GetAttribute("MedCNNCAD." + key) or ""  # noqa: E731
        case = (f"case abnormality probability {get('caseAbnormalityProbability')} ({get('caseCalibration')}) | "
                if get("caseAbnormalityProbability") else "")
        notes = "".join(f" | note: {note}" for note in json.loads(get("notes") or "[]"))
        return (f"{get('modelName')} {get('modelVersion')} | {case}weights SHA-256 {get('weightsSHA256')[:12]}... | "
                f"device {get('device')} | timings {get('timings')} | trained on: {get('trainedOn')}{notes}")

    def compare(self, segmentationNode: Any, referenceNode: Any, referenceVolumeNode: Any = None,
                referenceLabels: str = "") -> Comparison:
        """Metrics per label/region, discordance segments and lesion concordance vs a reference.

        The reference's segments are named as the model's labels, or by label value as Slicer names an imported
        label file's (``Segment_4``, ``Label_4``, ``4``); ``referenceLabels`` names that file's convention when it
        is not the model's (``brats2023``, ``msd`` or ``3=4``-style pairs, as ``segment --reference-labels``).
        """
        from medcnncad.data.dataset_json import reference_convention
        from medcnncad.metrics.label_conventions import parse_label_map
        from medcnncad.slicer.adaptor import compare_nodes

        if segmentationNode is None or referenceNode is None:
            raise InputError("select both the AI segmentation and a reference segmentation")
        modelId = segmentationNode.GetAttribute("MedCNNCAD.modelId")
        if not modelId:
            raise InputError(f"{segmentationNode.GetName()!r} is not a MedCNNCAD result (no model attribute)")
        volume = referenceVolumeNode or slicer.mrmlScene.GetNodeByID(
            segmentationNode.GetAttribute("MedCNNCAD.referenceVolumeID") or "")
        if volume is None:
            raise InputError("the volume the AI segmented is no longer in the scene; pass referenceVolumeNode")
        mapping = parse_label_map(referenceLabels) if referenceLabels.strip() else None
        manifest = self.describeModel(modelId)
        storage = referenceNode.GetStorageNode()
        if storage is not None and storage.GetFileName():  # a dataset folder's label file: its dataset.json's
            mapping = reference_convention(storage.GetFileName(), mapping, manifest)
        return compare_nodes(segmentationNode, referenceNode, volume, manifest, reference_labels=mapping)
