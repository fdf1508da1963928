"""The Slicer module's Logic on real MRML (slicer-core); only ScriptedLoadableModule base classes are stood in.

Also checks that every widget the module file uses exists in the .ui, and that every
parameter bound in the .ui is a field of the typed parameter node.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")
import slicer  # noqa: E402
import slicer.util  # noqa: E402
from conftest import ROOT  # noqa: E402
from slicer_scene import scene_fingerprint  # noqa: E402

MODULE_DIR = ROOT / "MedCNNCAD"
SAMPLE = ROOT / "Resources" / "SampleData"


def _import_module_file():
    """Import MedCNNCAD.py with stand-ins for the ScriptedLoadableModule base classes only."""
    stand_in = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                 "ScriptedLoadableModuleTest"):
        setattr(stand_in, name, type(name, (), {"__init__": lambda self, *a, **k: None}))
    sys.modules["slicer.ScriptedLoadableModule"] = stand_in
    slicer.ScriptedLoadableModule = stand_in
    sys.path.insert(0, str(MODULE_DIR))
    import MedCNNCAD

    return MedCNNCAD


@pytest.fixture
def module():
    return _import_module_file()


def _load_sample(scene):
    volumes_logic = slicer.modules.volumes.logic()
    volumes = {}
    for name in ("T1", "T1c", "T2", "FLAIR"):
        node = volumes_logic.AddArchetypeVolume(str(SAMPLE / f"MedCNNCADPhantom_{name}.nrrd"), f"Phantom {name}")
        assert node is not None, name
        volumes[name] = node
    reference = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Phantom reference")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(SAMPLE / "MedCNNCADPhantom_reference.seg.nrrd"))
    assert storage.ReadData(reference)
    return volumes, reference


def test_sample_data_checksums_match_the_index():
    import json

    from medcnncad.models.manifest import sha256_file

    index = json.loads((SAMPLE / "MedCNNCADPhantom.json").read_text())
    assert set(index["files"]) == {"T1", "T1c", "T2", "FLAIR", "reference"}
    for entry in index["files"].values():
        assert sha256_file(SAMPLE / entry["file"]) == entry["sha256"]


def test_console_api_segment_and_compare(scene, module):
    from medcnncad.errors import InputError

    volumes, reference = _load_sample(scene)
    logic = module.MedCNNCADLogic()
    manifest = logic.describeModel("demo")
    proposal = logic.assignInputs(manifest, list(volumes.values()))
    assert {k: v.GetName() for k, v in proposal.items()} == {n: f"Phantom {n}" for n in ("T1", "T1c", "T2", "FLAIR")}
    before = set(scene_fingerprint(scene))
    run = logic.segment([volumes[n] for n in ("T1", "T1c", "T2", "FLAIR")], model="demo", device="cpu")
    added = set(scene_fingerprint(scene)) - before
    assert run.segmentation.GetID() in added and run.lesion_table.GetID() in added
    assert reference.GetSegmentation().GetNumberOfSegments() == 3  # the reader's node is untouched
    assert run.segmentation.GetAttribute("MedCNNCAD.referenceVolumeID") == volumes["T1"].GetID()
    comparison = logic.compare(run.segmentation, reference)
    for region in ("WT", "TC", "ET"):
        assert comparison.metrics[region].dice >= 0.80, region
    assert comparison.metrics_table.GetTable().GetNumberOfRows() == 5
    # the same reference with its segments named by their label values (1, 2, 4), as Slicer names an imported
    # label file's: the same numbers; a convention applies to them (here one swapping NCR and ED)
    renamed = {"NCR": "Segment_1", "ED": "Label_2", "ET": "4"}
    segmentation = reference.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        segment.SetName(renamed[segment.GetName()])
    by_value = logic.compare(run.segmentation, reference)
    for region in ("WT", "TC", "ET", "NCR", "ED"):
        assert by_value.metrics[region].dice == pytest.approx(comparison.metrics[region].dice), region
    with pytest.raises(InputError, match="label map 'brats2032'"):
        logic.compare(run.segmentation, reference, referenceLabels="brats2032")
    swapped = logic.compare(run.segmentation, reference, referenceLabels="1=2,2=1,4=4")
    assert swapped.metrics["WT"].dice == pytest.approx(comparison.metrics["WT"].dice)
    assert swapped.metrics["ED"].dice < comparison.metrics["ED"].dice - 0.3
    with pytest.raises(InputError, match="label value 4 is none of model brats-demo-unet's"):
        logic.compare(run.segmentation, reference, referenceLabels="1=1,2=2,4=3")
    assert "not for diagnosis" in run.segmentation.GetAttribute("MedCNNCAD.intendedUse")
    assert "BraTS demo UNet" in logic.provenanceText(run.segmentation)
    assert re.search(r"case abnormality probability [01]\.\d{4} \(uncalibrated score\)",
                     logic.provenanceText(run.segmentation))
    assert " | note: " not in logic.provenanceText(run.segmentation)  # the demo run warns of nothing
    run.segmentation.SetAttribute("MedCNNCAD.notes", json.dumps(["tumor core re-read", "ET relabelled"]))
    assert logic.provenanceText(run.segmentation).endswith(" | note: tumor core re-read | note: ET relabelled")


def test_worker_run_matches_console_run_and_cancel_changes_nothing(scene, module):
    volumes, _ = _load_sample(scene)
    logic = module.MedCNNCADLogic()
    try:
        job = logic.startSegmentation(volumes, model="demo", device="cpu")
        stages = []
        nodes = None
        while nodes is None:
            nodes = logic.pollSegmentation(job, lambda s, f: stages.append(s))
        assert "inference" in stages and not Path(job["folder"]).exists()
        local = logic.segment(volumes, model="demo", device="cpu")
        for name in ("NCR", "ED", "ET"):
            a = slicer.util.arrayFromSegmentBinaryLabelmap(nodes.segmentation, name, volumes["T1"])
            b = slicer.util.arrayFromSegmentBinaryLabelmap(local.segmentation, name, volumes["T1"])
            np.testing.assert_array_equal(a, b)
        # cancel: the scene is exactly as before, nothing is left in the temp folder
        from medcnncad.slicer.worker import WorkerCancelled

        before = scene_fingerprint(scene)
        job = logic.startSegmentation(volumes, model="demo", device="cpu")
        logic.cancelSegmentation()
        with pytest.raises(WorkerCancelled):
            while logic.pollSegmentation(job) is None:
                pass
        assert scene_fingerprint(scene) == before and not Path(job["folder"]).exists()
        # a failed run reports one clear error and changes nothing; the next run works
        far = slicer.util.addVolumeFromArray(np.zeros((5, 5, 5), np.float32), name="elsewhere")
        before = scene_fingerprint(scene)
        job = logic.startSegmentation(dict(volumes, T2=far), model="demo", device="cpu")
        from medcnncad.slicer.worker import WorkerError

        with pytest.raises(WorkerError, match="not in the same physical space"):
            while logic.pollSegmentation(job) is None:
                pass
        assert scene_fingerprint(scene) == before
    finally:
        logic.shutdown()


def test_compare_refuses_nodes_that_are_not_results(scene, module):
    from medcnncad.errors import InputError

    logic = module.MedCNNCADLogic()
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reader")
    with pytest.raises(InputError, match="not a MedCNNCAD result"):
        logic.compare(seg, seg)
    with pytest.raises(InputError, match="select both"):
        logic.compare(None, seg)


def _ui_names() -> set[str]:
    text = (MODULE_DIR / "Resources" / "UI" / "MedCNNCAD.ui").read_text()
    return set(re.findall(r'<widget class="[^"]+" name="([^"]+)"', text))


def test_every_widget_used_by_the_module_exists_in_the_ui():
    source = (MODULE_DIR / "MedCNNCAD.py").read_text()
    used = set(re.findall(r"self\.ui\.([A-Za-z0-9_]+)", source))
    max_channels = int(re.search(r"MAX_CHANNELS = (\d+)", source).group(1))
    for pattern in re.findall(r'getattr\(self\.ui, f"([A-Za-z0-9_{}]+)"\)', source):
        used |= {pattern.replace("{i}", str(i)) for i in range(max_channels)}
    missing = used - _ui_names()
    assert not missing, missing
    assert "applyButton" in used and "inputVolume3Selector" in used


def test_ui_parameter_bindings_are_parameter_node_fields():
    text = (MODULE_DIR / "Resources" / "UI" / "MedCNNCAD.ui").read_text()
    bound = set(re.findall(r'name="SlicerParameterName"[^>]*>\s*<string>([^<]+)</string>', text))
    source = (MODULE_DIR / "MedCNNCAD.py").read_text()
    body = source[source.index("class MedCNNCADParameterNode"):source.index("return MedCNNCADParameterNode")]
    fields = set(re.findall(r"^\s+([A-Za-z0-9_]+):", body, re.M))
    assert bound and bound <= fields, bound - fields
    assert {"inputVolume0", "device", "probabilityThreshold", "referenceSegmentation", "trust"} <= bound


def test_module_file_stays_thin():
    # 400 + the wiring of Similar cases (5), of DICOM export (10), of the 4D input (30) and of a scene closed
    # during a run (12: cancel it, clear the tables) and of the reader's brain mask (2)
    assert len((MODULE_DIR / "MedCNNCAD.py").read_text().splitlines()) <= 459


# -- issue #23: the extension as a clinician's first install meets it -----------------------------------------------

def test_model_listing_survives_broken_and_vanished_model_folders(module, tmp_path, monkeypatch):
    from medcnncad.models import registry

    (tmp_path / "bad-json").mkdir()
    (tmp_path / "bad-json" / "manifest.json").write_text("{")
    (tmp_path / "bad-bundle" / "configs").mkdir(parents=True)
    (tmp_path / "bad-bundle" / "configs" / "metadata.json").write_text("{}")
    monkeypatch.setenv("MEDCNNCAD_MODEL_PATH", str(tmp_path))
    real = registry.describe_model

    def flaky(folder):  # a model on a share that vanished between listing and reading
        if "robust" in str(folder):
            raise FileNotFoundError(f"{folder}/manifest.json")
        return real(folder)

    monkeypatch.setattr(registry, "describe_model", flaky)
    labels = dict(module.MedCNNCADLogic.availableModels())
    assert "brats-demo-unet" in labels and not any("robust" in k for k in labels)
    monkeypatch.setattr(registry, "list_models", lambda: (_ for _ in ()).throw(PermissionError("models")))
    assert module.MedCNNCADLogic.availableModels() == []

    def missing(*_):
        raise OSError("share gone")

    monkeypatch.setattr(registry, "find_model", missing)
    assert module.MedCNNCADLogic.lesionClassifier(True) is None


def test_first_open_without_torch_does_not_touch_models(module):
    """populateModels runs during setup(), when no widget is visible yet: it must ask the Logic."""
    widget = module.MedCNNCADWidget()

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the model list was touched ({name}) while dependencies are missing")

    widget.logic = types.SimpleNamespace(dependenciesMissing=lambda: True)
    widget.ui = types.SimpleNamespace(installFrame=types.SimpleNamespace(visible=False),  # as during setup()
                                      modelComboBox=Untouchable())
    widget._parameterNode = types.SimpleNamespace(model="demo")
    widget.populateModels()


def test_logic_reports_missing_torch_without_importing_it(tmp_path):
    import subprocess

    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'monai'): raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import importlib.util; importlib.util.find_spec = (lambda f: lambda n, *a: None if n.split('.')[0] in "
            "('torch', 'monai') else f(n, *a))(importlib.util.find_spec)\n"
            "from medcnncad.slicer.logic import SecondReaderLogic as L\n"
            "asked = []\n"
            "assert L.dependenciesMissing()\n"
            "assert L().installDependencies(askConfirmation=lambda t: asked.append(t) or False) is False\n"
            "assert 'PyTorch' in asked[0] and 'monai' in asked[0]\n"
            "assert 'torch' not in sys.modules and 'monai' not in sys.modules\n")
    env = dict(__import__("os").environ, PYTHONPATH=str(MODULE_DIR))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr


def test_logic_opens_no_dialog():
    source = (MODULE_DIR / "medcnncad" / "slicer" / "logic.py").read_text()
    for dialog in ("confirmOkCancelDisplay", "errorDisplay", "infoDisplay", "messageBox", "QMessageBox"):
        assert dialog not in source, dialog


def test_uncertainty_volume_is_never_thresholded_as_a_probability(scene):
    from helpers import small_phantom
    from slicer_scene import volume_from_image

    from medcnncad.inference.segmenter import Segmenter
    from medcnncad.models.registry import load_model
    from medcnncad.slicer.adaptor import add_result_nodes, set_probability_threshold

    images, _ = small_phantom()
    result = Segmenter(load_model("demo"), "cpu").run(images, tta=True)
    assert result.uncertainty is not None and 0 < float(result.uncertainty.max()) < 0.5
    reference = volume_from_image(images["T1"], "T1")
    nodes = add_result_nodes(result, reference)
    uncertainty = nodes.probabilities["uncertainty"]
    for threshold in (None, 0.5, 0.9):
        if threshold is not None:  # what the widget's slider does to every map it shows
            set_probability_threshold(uncertainty, threshold)
        display = uncertainty.GetDisplayNode()
        shown_from = display.GetLowerThreshold() if display.GetApplyThreshold() else -np.inf
        assert (slicer.util.arrayFromVolume(uncertainty) > 0).any()
        assert shown_from <= 0, "the uncertainty volume is hidden by a probability threshold"
    prob = next(n for c, n in nodes.probabilities.items() if c != "uncertainty")
    set_probability_threshold(prob, 0.7)
    assert prob.GetDisplayNode().GetApplyThreshold() and prob.GetDisplayNode().GetLowerThreshold() == 0.7


def test_background_is_the_first_non_empty_input_and_never_cleared(scene, module):
    from medcnncad.slicer.logic import firstNonEmptyVolume

    volumes, _ = _load_sample(scene)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "not loaded")
    assert firstNonEmptyVolume([None, empty, volumes["T1c"], volumes["T1"]]) is volumes["T1c"]
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    composite.SetBackgroundVolumeID(volumes["FLAIR"].GetID())
    logic = module.MedCNNCADLogic()
    run = logic.segment({"T1": volumes["T1"], "T1c": volumes["T1c"], "T2": volumes["T2"],
                         "FLAIR": volumes["FLAIR"]}, model="demo", device="cpu")
    run.segmentation.SetAttribute("MedCNNCAD.referenceVolumeID", "")  # e.g. the volume was removed since
    logic.showResultLayers(run)
    assert composite.GetBackgroundVolumeID() == volumes["FLAIR"].GetID()  # kept, not cleared
    run.segmentation.SetAttribute("MedCNNCAD.referenceVolumeID", volumes["T1c"].GetID())
    logic.showResultLayers(run)
    assert composite.GetBackgroundVolumeID() == volumes["T1c"].GetID()
    assert composite.GetForegroundVolumeID() == run.probabilities["NCR"].GetID()
    source = (MODULE_DIR / "MedCNNCAD.py").read_text()
    assert "background=p.inputVolume0" not in source


def test_worker_knows_models_added_after_it_started(scene, module, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("MEDCNNCAD_MODEL_PATH", "")  # restored afterwards (addModelFolder extends it)
    volumes, _ = _load_sample(scene)
    copy = tmp_path / "site-models" / "my-unet"
    shutil.copytree(ROOT / "Resources" / "Models" / "brats-demo-unet", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(id="site-demo-unet", aliases=[])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    logic = module.MedCNNCADLogic()
    try:
        job = logic.startSegmentation(volumes, model="demo", device="cpu")  # the worker starts now
        while logic.pollSegmentation(job) is None:
            pass
        key = logic.addModelFolder(str(copy))  # "Add model folder" while the worker runs
        assert key in dict(logic.availableModels())
        job = logic.startSegmentation(volumes, model=key, device="cpu")
        assert job["model"] == str(copy.resolve())
        nodes = None
        while nodes is None:
            nodes = logic.pollSegmentation(job)
        assert nodes.segmentation.GetAttribute("MedCNNCAD.modelId") == "site-demo-unet"
    finally:
        logic.shutdown()


def test_add_model_folder_of_another_format_shows_format_and_weights(scene, module, tmp_path, monkeypatch):
    """"Add model folder" with an Auto3DSeg (SlicerMONAIAuto3DSeg) folder: listed under its folder, the
    model card names the format and where the weights are, and it segments the sample case."""
    from helpers import write_auto3dseg_model

    monkeypatch.setenv("MEDCNNCAD_MODEL_PATH", "")
    model = write_auto3dseg_model(tmp_path / "a3d" / "brain-a3d", 4, {1: "tumor", 2: "edema"})
    (model / "medcnncad.json").write_text(json.dumps({"inputs": ["T1", "T1c", "T2", "FLAIR"]}))
    logic = module.MedCNNCADLogic()
    key = logic.addModelFolder(str(model))
    assert key == str(model) and key in dict(logic.availableModels())
    card = logic.modelCard(key)
    assert "Auto3DSeg SegResNet" in card and str(model / "model.pt") in card
    volumes, _ = _load_sample(scene)
    nodes = logic.segment(volumes, model=key, device="cpu")
    assert nodes.segmentation.GetSegmentation().GetNumberOfSegments() >= 1


@pytest.mark.skipif(sys.platform == "win32", reason="the stand-in launcher is a POSIX shell script")
def test_cancel_through_a_launcher_adds_nothing_and_the_next_run_works(scene, module, tmp_path):
    import psutil
    from stand_ins.launcher import make_launcher

    from medcnncad.slicer.worker import WorkerCancelled, WorkerClient

    volumes, _ = _load_sample(scene)
    logic = module.MedCNNCADLogic()
    logic._worker = WorkerClient(python=make_launcher(tmp_path))  # as PythonSlicer: launcher -> python-real
    try:
        before = scene_fingerprint(scene)
        job = logic.startSegmentation(volumes, model="demo", device="cpu")
        stages = []
        while not stages:
            assert logic.pollSegmentation(job, lambda s, f: stages.append(s)) is None
        real = psutil.Process(logic._worker.process.pid).children(recursive=True)
        assert len(real) == 1
        logic.cancelSegmentation()
        with pytest.raises(WorkerCancelled):
            while logic.pollSegmentation(job) is None:
                pass
        gone, alive = psutil.wait_procs(real, timeout=10)
        assert not alive, "the real worker survived cancel"
        assert scene_fingerprint(scene) == before and not Path(job["folder"]).exists()
        job = logic.startSegmentation(volumes, model="demo", device="cpu")
        nodes = None
        while nodes is None:
            nodes = logic.pollSegmentation(job)
        assert nodes.segmentation.GetSegmentation().GetNumberOfSegments() == 3
    finally:
        logic.shutdown()


def test_console_api_similar_cases(scene, module, tmp_path):
    from medcnncad.errors import InputError
    from medcnncad.retrieval.library import Library

    volumes, _ = _load_sample(scene)
    logic = module.MedCNNCADLogic()
    with pytest.raises(InputError, match="no similar-case library"):
        logic.similarCases()
    with pytest.raises(InputError, match="run segment"):
        logic.similarCases(library=str(tmp_path / "lib"))
    logic.segment(volumes, model="demo", device="cpu")
    logic.libraryPath = str(tmp_path / "lib")
    with pytest.raises(InputError, match="not a case library"):
        logic.similarCases()
    # the library: this very case twice (its descriptors as a case folder would hold them), two metadata sets
    described = logic._lastDescriptors  # computed on demand by the first query
    case = tmp_path / "case"
    case.mkdir()
    assert described["retrieval"]["structure"] == "WT" and described["retrieval"]["lesions"]
    (case / "report.json").write_text(json.dumps(described))
    library = Library.create(tmp_path / "lib", described["model"], described["retrieval"]["radiomics_names"])
    library.add_case(case, "same-a", {"grade": "HGG"})
    library.add_case(case, "same-b", {"grade": "LGG"})
    largest = max(described["retrieval"]["lesions"], key=lambda les: les["volume_ml"])["lesion_id"]
    found = logic.similarCases(k=2)  # the largest lesion: itself in both library cases, at distance 0
    assert [(n["case_id"], n["lesion_id"], n["distance"]) for n in found] == \
        [("same-a", largest, 0.0), ("same-b", largest, 0.0)]
    assert found[0]["metadata"] == {"grade": "HGG"} and found[0]["thumbnail"] is None  # no PNG in that folder
    table = logic.similarCasesTable(k=2).GetTable()
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == \
        ["rank", "distance", "case", "lesion", "volume_ml", "grade", "thumbnail", "note"]
    assert table.GetNumberOfRows() == 2 and table.GetValueByName(1, "grade").ToString() == "LGG"
    with pytest.raises(InputError, match="k = 100"):
        logic.similarCases(k=100)


def _run_beside_a_library(scene, module, tmp_path, cases):
    """A demo run in the console Logic and the library ``tmp_path/lib`` of ``cases`` (case id -> a function making
    its report.json from the run's own descriptors), added in that order; the Logic and the run's descriptors."""
    from medcnncad.errors import InputError
    from medcnncad.retrieval.library import Library

    volumes, _ = _load_sample(scene)
    logic = module.MedCNNCADLogic()
    logic.segment(volumes, model="demo", device="cpu")
    logic.libraryPath = str(tmp_path / "lib")
    with pytest.raises(InputError, match="not a case library"):
        logic.similarCases()
    described = logic._lastDescriptors
    library = Library.create(tmp_path / "lib", described["model"], described["retrieval"]["radiomics_names"])
    for name, make in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(make(described)))
        library.add_case(tmp_path / name, name)
    return logic, described


def _largest(described):
    return max(described["retrieval"]["lesions"], key=lambda les: les["volume_ml"])


def _twice(described):
    """The run's largest lesion twice (ids 1 and 2, the second half as large)."""
    largest = _largest(described)
    return {**described, "retrieval": {**described["retrieval"], "lesions": [
        {**largest, "lesion_id": 1}, {**largest, "lesion_id": 2, "volume_ml": largest["volume_ml"] / 2}]}}


def test_console_similar_cases_are_distinct_library_cases(scene, module, tmp_path):
    """A library case holding the query lesion twice filled both rows of k=2 ("twice", lesions 1 and 2); the
    panel's table now shows two cases, each with its nearest lesion, and the lesion list stays available."""
    logic, described = _run_beside_a_library(scene, module, tmp_path, {"twice": _twice, "once": lambda d: d})
    table = logic.similarCasesTable(k=2).GetTable()
    assert [table.GetValueByName(r, "case").ToString() for r in range(table.GetNumberOfRows())] == ["twice", "once"]
    assert [(n["case_id"], n["lesion_id"], n["distance"]) for n in logic.lastSimilarCases] == \
        [("twice", 1, 0.0), ("once", _largest(described)["lesion_id"], 0.0)]
    assert [(n["case_id"], n["lesion_id"]) for n in logic.similarCases(k=2, distinctCases=False)] == \
        [("twice", 1), ("twice", 2)]
    assert len(logic.similarCases(k=5, atMost=True)) == 2


def _t1c_only(described):
    return {**described, "retrieval": {**described["retrieval"], "given_inputs": ["T1c"]}}


def test_console_similar_cases_note_a_library_case_from_other_sequences(scene, module, tmp_path):
    """The run's descriptors record the sequences it was given; a library case segmented from T1c alone was
    listed beside the four-sequence run without a word, in the Logic's rows and the panel's table."""
    logic, described = _run_beside_a_library(scene, module, tmp_path, {"t1c-only": _t1c_only, "same": lambda d: d})
    assert sorted(described["retrieval"]["given_inputs"]) == ["FLAIR", "T1", "T1c", "T2"]
    table = logic.similarCasesTable(k=2).GetTable()
    note = "library case t1c-only was segmented from T1c only, this case from FLAIR+T1+T1c+T2"
    assert [(n["case_id"], n["given_inputs"], n["inputs_note"]) for n in logic.lastSimilarCases] == \
        [("t1c-only", ["T1c"], note), ("same", described["retrieval"]["given_inputs"], None)]
    assert [table.GetValueByName(r, "note").ToString() for r in range(2)] == [note, ""]
