"""Every case of the bad-input corpus: a correct result or one clear error, never a traceback,
never partial outputs, and the output folder left as it was."""

from __future__ import annotations

import json

import pytest
from bad_inputs import all_cases

from medcnncad.cli import main

CASES = all_cases()
OUTPUTS = {"labels.nii.gz", "labels.seg.nrrd", "prob_NCR.nii.gz", "prob_ED.nii.gz", "prob_ET.nii.gz",
           "overlay.png", "report.json"}


def test_corpus_size():
    assert len(CASES) >= 200
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, tmp_path, capsys):
    argv = case.build(tmp_path)
    out = tmp_path / "out"
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    code = main(argv)  # an exception escaping here is a traceback for the user: the test fails
    captured = capsys.readouterr()
    assert code in (0, 2), (code, captured.err)
    if case.expect != "any":
        assert code == (0 if case.expect == "ok" else 2), captured.err
    if code == 2:
        err = captured.err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("medcnncad: error: "), err
        assert case.fragment in err, err
        after = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
        assert after == before, "a failed run changed the output folder"
    elif argv[0] == "segment":
        assert OUTPUTS <= {p.name for p in out.iterdir()}
        assert not [p for p in out.iterdir() if p.name.startswith(".")], "staging left behind"
        report = json.loads((out / "report.json").read_text())
        assert report["model"]["id"] == "brats-demo-unet"
    else:
        assert "Traceback" not in captured.err
