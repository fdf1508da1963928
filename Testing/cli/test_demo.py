"""`medcnncad demo` end to end: a held-out phantom, the shipped model, Dice >= 0.80 for WT, TC, ET."""

from __future__ import annotations

import json

from medcnncad.cli import main


def test_demo_writes_outputs_and_reaches_dice(tmp_path, capsys, monkeypatch):
    from medcnncad.reporting.input_files import unchanged_inputs

    out = tmp_path / "demo"
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", "demo", "--device", "cpu"]) == 0  # relative, as typed
    for name in ("labels.nii.gz", "labels.seg.nrrd", "prob_NCR.nii.gz", "prob_ED.nii.gz", "prob_ET.nii.gz",
                 "overlay.png", "report.json", "inputs/T1c.nii.gz", "inputs/label.nii.gz"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    for region in ("WT", "TC", "ET"):
        assert report["metrics"][region]["dice"] >= 0.80, (region, report["metrics"][region]["dice"])
    assert "not for diagnosis" in report["intended_use"]
    # the copied input case, named by absolute path, is the one the run read (the HTML report's Slicer views show it)
    assert report["inputs"]["T1c"] == str((out / "inputs" / "T1c.nii.gz").resolve())
    assert unchanged_inputs(report) == (report, [])
    assert "phantom" in report["model"]["trained_on"]
    assert report["lesions"] and all(les["volume_ml"] > 0 for les in report["lesions"])
    printed = capsys.readouterr().out
    assert "WT" in printed and "Dice" in printed and "not for diagnosis" in printed
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind
    # the shipped lesion grade classifier grades the (high-grade pattern) demo tumor, with its rule
    classification = report["classification"]
    assert classification["model"]["id"] == "brats-grade-densenet"
    assert "phantom" in classification["model"]["trained_on"]
    assert classification["case"]["predicted"] == "HGG" and "largest probability" in classification["case"]["rule"]
    assert "P(HGG)" in printed


def test_the_realistic_demo_runs_the_default_model_on_a_patient_like_phantom(tmp_path):
    """`medcnncad demo --preset realistic`: an irregular, heterogeneous tumor with a scanner model, segmented
    by the shipped default model (not the demo model) and scored against its ground truth."""
    from medcnncad.models.defaults import DEFAULT_MODEL

    out = tmp_path / "demo"
    assert main(["demo", "--preset", "realistic", "--out", str(out), "--device", "cpu", "--no-tta",
                 "--classifier", "none"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["id"] == DEFAULT_MODEL and report["phantom"] == {"preset": "realistic", "seed": 900000}
    assert report["metrics"]["WT"]["dice"] >= 0.85, report["metrics"]["WT"]
    assert (out / "overlay.png").is_file() and "not for diagnosis" in report["intended_use"]
