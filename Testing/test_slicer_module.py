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
from slicer_scene import new_scene, scene_fingerprint  # noqa: E402

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
def scene():
    return new_scene()


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
    assert len((MODULE_DIR / "MedCNNCAD.py").read_text().splitlines()) <= 400
