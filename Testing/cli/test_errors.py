"""Every command of the command line, given a bad option value or a bad file: exit code 2 and one line
that names the value or file, never a traceback or an "internal error" (the CLI's error contract)."""

from __future__ import annotations

import pytest
from conftest import ROOT

from medcnncad.cli import main
from medcnncad.cli.app import COMMANDS

TEMPLATE = str(ROOT / "Resources" / "ModelTemplates" / "brats-demo-unet.json")
SAMPLE_REF = str(ROOT / "Resources" / "SampleData" / "MedCNNCADPhantom_reference.seg.nrrd")

# command -> (arguments, a word the one-line message must contain); each fails before any real work
BAD = {
    "demo": (["--device", "quantum"], "quantum"),
    "segment": (["--model", "demo", "--input", "T1", "--out", "{tmp}/o"], "NAME=PATH"),
    "evaluate": (["--pred", "{tmp}/missing.nii.gz", "--ref", "{tmp}/missing.nii.gz"], "missing.nii.gz"),
    "phantom": (["--out", "{tmp}/p", "--preset", "nonsense"], "nonsense"),
    "batch": (["--cases", "{tmp}/missing.csv", "--out", "{tmp}/b"], "missing.csv"),
    "report": (["{tmp}/missing"], "missing"),
    "evaluate-phantoms": (["--n", "-3"], "-3"),
    "evaluate-real": (["--data", "{tmp}/missing"], "missing"),
    "compare-real": (["--before", "{tmp}/missing.json", "--after", "{tmp}/missing.json"], "missing.json"),
    "sample-data": (["--out", "{tmp}/s", "--model", "no-such-model"], "no-such-model"),
    "models": (["--format", "xml"], "--format"),
    "trust": (["{tmp}"], "not a MONAI bundle"),
    "train": (["segmentation", "--template", TEMPLATE, "--out", "{tmp}/t", "--channel-drop", "2"], "'2'"),
    "calibrate-case": (["--tumor-free", "1.5"], "1.5"),
    "calibrate-classifier": (["--model", "no-such-model"], "no-such-model"),
    "evaluate-classifier": (["--workers", "0"], "'0'"),
    "evaluate-retrieval": (["--n", "-1"], "-1"),
    "library": (["query", "--library", "{tmp}/missing", "--case", "{tmp}"], "missing"),
}

MORE = [
    (["segment", "--model", "demo", "--input", "T1=x", "--out", "o", "--device", "tpu"], "tpu"),
    (["segment", "--model", "brats-robust-unet", "--input", "T1c={tmp}/missing.nii.gz", "--out", "{tmp}/o"],
     "missing.nii.gz"),
    (["segment", "--model", "demo", "--input", "T1=a", "--input", "T1=b", "--out", "{tmp}/o"], "given twice"),
    (["segment", "--model", "demo", "--input", "T1=a", "--out", "o", "--precision", "fp8"], "fp8"),
    (["segment", "--model", "demo", "--input", "T1,T1=a", "--out", "o"], "distinct channel names"),
    (["segment", "--model", "demo", "--input", "T1,T2=a", "--input", "T2=b", "--out", "o"], "--input T2: given twice"),
    (["segment", "--model", "demo", "--input", "T1,T2=a", "--series", "T2=1", "--out", "o"],
     "already named by --input's order"),
    (["train", "segmentation", "--template", TEMPLATE, "--out", "{tmp}/t", "--patch", "0", "0", "0"], "'0'"),
    (["train", "segmentation", "--template", TEMPLATE, "--out", "{tmp}/t", "--val-fraction", "1.5"], "1.5"),
    (["train", "segmentation", "--template", "{tmp}/missing.json", "--out", "{tmp}/t"], "missing.json"),
    (["train", "classification", "--template", TEMPLATE, "--out", "{tmp}/t", "--lr", "-1"], "-1"),
    (["evaluate-phantoms", "--preset", "nonsense", "--n", "1"], "nonsense"),
    (["phantom", "--out", "{tmp}/p", "--transplant-from", "{tmp}/missing"], "missing"),
    (["train", "segmentation", "--template", TEMPLATE, "--out", "{tmp}/t", "--transplant-share", "0.5"],
     "--transplant-from"),
    (["nonsense-command"], "nonsense-command"),
    (["library", "query", "--library", "{tmp}/l", "--case", "{tmp}", "-k", "0"], "'0'"),
    (["library", "query", "--library", "{tmp}/l", "--case", "{tmp}", "--features", "colour"], "colour"),
    (["library", "build", "--cases", "{tmp}/missing.csv", "--out", "{tmp}/l"], "missing.csv"),
    (["library", "add", "--library", "{tmp}/missing", "--case", "{tmp}"], "missing"),
    (["evaluate", "--pred", SAMPLE_REF, "--ref", SAMPLE_REF, "--model", "brats-grade-densenet"],
     "is a classification model"),
    (["library", "add", "--library", "{tmp}/missing", "--case", "{tmp}", "--view-image", "{tmp}/t1.nrrd"], "missing"),
    # a helper's fuzzing (helper-25): these were tracebacks ("internal error") before
    (["phantom", "--out", "{tmp}/p", "--seed", "-1"], "'-1'"),
    (["evaluate-phantoms", "--seed-base", "-5", "--n", "1"], "'-5'"),
    (["train", "segmentation", "--template", "{tmp}/bad.json", "--out", "{tmp}/t"], "bad.json: not a JSON file"),
    (["report", "{tmp}/truncated"], "truncated/report.json: not a JSON file"),
    (["report", "{tmp}/foreign"], "foreign/report.json: not a MedCNNCAD case report.json (no model)"),
    (["report", "{tmp}/cohort"], "cohort.csv: line 3: expected a case_id and a label 0, 1 or blank, got label 'yes'"),
    (["library", "build", "--cases", "{tmp}/lib.csv", "--out", "{tmp}/l"], "truncated/report.json: not a JSON file"),
    (["evaluate-real", "--data", "{tmp}", "--out", "{tmp}/cohort"], "cohort: a folder; give a file name"),
    (["evaluate", "--pred", "{tmp}/seven.nrrd", "--ref", SAMPLE_REF, "--model", "demo"],
     "seven.nrrd: label values [7] are not the model's ([1, 2, 4]); a prediction of another model?"),
]


@pytest.fixture(autouse=True)
def _bad_files(tmp_path):
    """Files the cases above name: a manifest template that is no JSON, a truncated case report.json, a JSON
    report.json of another tool, a cohort folder whose cohort.csv has a label 'yes'."""
    (tmp_path / "bad.json").write_text("case,T1\n")
    for name, text in (("truncated", '{"model": {"id": "m"'), ("foreign", '{"retrieval": 5}')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(text)
    (tmp_path / "cohort").mkdir()
    (tmp_path / "cohort" / "summary.json").write_text('{"structures": {}, "cases": 0, "completed": 0}')
    (tmp_path / "cohort" / "cohort.csv").write_text("case_id,label\na,1\nb,yes\n")
    (tmp_path / "lib.csv").write_text("case_id,result\nc1,truncated\n")
    import SimpleITK as sitk  # a prediction on the sample reference's grid holding a value no model label has

    reference = sitk.ReadImage(SAMPLE_REF)
    seven = sitk.Cast(sitk.Image(reference.GetSize(), sitk.sitkUInt8) + 0, sitk.sitkUInt8)
    seven.CopyInformation(reference)
    seven[0, 0, 0] = 7
    sitk.WriteImage(seven, str(tmp_path / "seven.nrrd"))


def test_every_command_has_a_bad_input_case():
    assert sorted(BAD) == sorted(COMMANDS)


@pytest.mark.parametrize("argv, word", [([name, *args], word) for name, (args, word) in BAD.items()] + MORE,
                         ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, word):
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if "phantom case seed" not in line]  # the demo's progress note
    assert code == 2, err
    assert len(err) == 1 and "error:" in err[0] and word in err[0], err
    assert "Traceback" not in err[0] and "internal error" not in err[0]
