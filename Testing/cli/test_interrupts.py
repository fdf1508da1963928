"""SIGINT/SIGTERM mid-run: exit code 130, the output folder exactly as it was, no staging left."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import SimpleITK as sitk
from bad_inputs import _brain, _image
from conftest import ROOT

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {engine!r})
    import medcnncad.reporting.case_outputs as report
    import medcnncad.inference.segmenter as inference
    stage, sig = sys.argv[1], getattr(signal, sys.argv[2])
    if stage == "write":
        original = report.write_seg_nrrd
        def write_then_signal(*a, **k):
            path = original(*a, **k)          # one output file is already staged
            os.kill(os.getpid(), sig)          # a real signal, delivered mid-write
            return path
        report.write_seg_nrrd = write_then_signal
    else:
        original = inference.infer              # the sliding-window stage the Segmenter runs
        def infer_then_signal(*a, **k):
            os.kill(os.getpid(), sig)
            return original(*a, **k)
        inference.infer = infer_then_signal
    from medcnncad.cli import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize("stage", ["inference", "write"])
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_leaves_output_folder_as_it_was(tmp_path, stage, sig):
    args = []
    for i, name in enumerate(("T1", "T1c", "T2", "FLAIR")):
        path = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(_image(_brain(seed=i)), str(path))
        args += ["--input", f"{name}={path}"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "labels.nii.gz").write_text("an earlier result")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(engine=str(ROOT / "MedCNNCAD")))
    done = subprocess.run([sys.executable, str(script), stage, sig, "segment", "--model", "demo", "--device", "cpu",
                           *args, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr
    assert "interrupted; no partial outputs were kept" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["labels.nii.gz"]
    assert (out / "labels.nii.gz").read_text() == "an earlier result"


def test_ctrl_c_while_the_command_loads_is_one_line(monkeypatch, capsys):
    """A helper's Ctrl-C one second after start landed while torch was being imported, before main's handlers,
    and printed a 70-line traceback."""
    from medcnncad.cli import app

    def loading(command):
        raise KeyboardInterrupt

    monkeypatch.setattr(app, "build_parser", loading)
    assert app.main(["segment", "--help"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["medcnncad: interrupted before the command started; nothing was written"]


def test_an_interrupted_training_run_says_its_checkpoint_is_kept(monkeypatch, capsys):
    """Training keeps checkpoint.pt after each epoch on purpose (--resume); the message must not say otherwise."""
    from medcnncad.cli import train

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_segmentation", interrupted)
    from medcnncad.cli import app

    assert app.main(["train", "segmentation", "--template", "t.json", "--out", "x"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("medcnncad: interrupted; the --out folder keeps the last finished epoch's checkpoint")
