"""A case's output folder: never the run's own input files, and one run's files only."""

from __future__ import annotations

import hashlib
import json

import SimpleITK as sitk
from helpers import small_phantom

from medcnncad.cli import main


def _case(folder):
    images, label = small_phantom()
    args = ["segment", "--model", "demo", "--device", "cpu"]
    for name, image in images.items():
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
        args += ["--input", f"{name}={folder / f'{name}.nii.gz'}"]
    sitk.WriteImage(label, str(folder / "labels.nii.gz"))  # the reference, named as the run names its labels
    return args


def test_a_run_that_would_replace_its_own_reference_is_refused_before_it_runs(tmp_path, capsys):
    """A helper's reproduction: --out the folder holding the reference labels.nii.gz replaced the user's file with
    the prediction (exit 0, and the report named the replaced file as the reference)."""
    args = _case(tmp_path)
    digest = hashlib.md5((tmp_path / "labels.nii.gz").read_bytes()).hexdigest()
    assert main(args + ["--reference", str(tmp_path / "labels.nii.gz"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "labels.nii.gz: this run would replace it with its own labels.nii.gz" in err[0]
    assert hashlib.md5((tmp_path / "labels.nii.gz").read_bytes()).hexdigest() == digest
    assert not (tmp_path / "report.json").exists()
    assert main(args + ["--out", ""]) == 2
    assert "output folder: empty path" in capsys.readouterr().err


def test_a_second_run_leaves_none_of_the_first_runs_extra_files(tmp_path):
    """With test-time augmentation the run writes uncertainty.nii.gz; a run without it into the same folder removes
    it (a reader would take the old map for this run's); files the runs did not write stay."""
    args = _case(tmp_path) + ["--out", str(tmp_path / "out")]
    assert main(args + ["--tta"]) == 0
    assert (tmp_path / "out" / "uncertainty.nii.gz").is_file()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main(args + ["--no-tta"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "uncertainty" not in report["outputs"] and not (tmp_path / "out" / "uncertainty.nii.gz").exists()
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*report["outputs"].values(), "notes.txt"])


def test_an_input_reached_through_a_symlink_or_in_another_case_is_spared(tmp_path):
    """A helper's review: case/labels.nii.gz -> /store/ref.nii.gz with --out case was let through (the check compared
    the link's target), and os.replace would have swapped the link for the prediction."""
    import pytest

    from medcnncad.errors import InputError
    from medcnncad.reporting.case_outputs import check_inputs_spared

    (tmp_path / "store").mkdir()
    (tmp_path / "case").mkdir()
    (tmp_path / "store" / "ref.nii.gz").write_bytes(b"x")
    (tmp_path / "case" / "labels.nii.gz").symlink_to(tmp_path / "store" / "ref.nii.gz")
    (tmp_path / "case" / "Report.JSON").write_bytes(b"{}")
    for given in ("labels.nii.gz", "Report.JSON"):
        with pytest.raises(InputError, match=f"{given}: this run would replace it"):
            check_inputs_spared(tmp_path / "case", [tmp_path / "case" / given])
    check_inputs_spared(tmp_path / "out", [tmp_path / "case" / "labels.nii.gz"])  # another folder: fine


def test_an_output_name_taken_by_a_folder_is_refused_before_anything_is_replaced(tmp_path, capsys):
    """The final move replaced files one by one: with a folder named like a later output, os.replace failed there
    and left the case folder half this run's, half the earlier run's."""
    args = _case(tmp_path) + ["--out", str(tmp_path / "out")]
    assert main(args + ["--no-tta"]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    (tmp_path / "out" / "uncertainty.nii.gz").mkdir()  # sorts after report.json and the others
    (tmp_path / "out" / "uncertainty.nii.gz" / "mine.txt").write_text("mine")
    assert main(args + ["--tta"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "uncertainty.nii.gz: an output's name is taken by a folder" in err[0]
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()}
    assert after == before and (tmp_path / "out" / "uncertainty.nii.gz" / "mine.txt").read_text() == "mine"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".medcnncad-staging")]


def test_a_channel_whose_origin_differs_by_rounding_takes_the_first_channels_grid(tmp_path):
    """A helper's reproduction: T1c's origin 2e-5 mm off the other channels' (a converter's rounding) passed the
    same-grid test, kept its own origin, and ITK refused the retrieval descriptors ("Inputs do not occupy the same
    physical space"): exit 1. The channel now takes the first channel's geometry exactly."""
    from medcnncad.inference.inputs import on_one_grid

    args = _case(tmp_path)
    t1c = sitk.ReadImage(str(tmp_path / "T1c.nii.gz"))
    first = sitk.ReadImage(str(tmp_path / "T1.nii.gz"))
    t1c.SetOrigin(tuple(o + 2e-5 for o in t1c.GetOrigin()))
    sitk.WriteImage(t1c, str(tmp_path / "T1c.nii.gz"))
    nudged = sitk.ReadImage(str(tmp_path / "T1c.nii.gz"))
    assert nudged.GetOrigin() != first.GetOrigin()
    warnings: list[str] = []
    grid = on_one_grid({"T1": first, "T1c": nudged}, warnings)
    assert grid["T1c"].GetOrigin() == first.GetOrigin() and grid["T1c"].GetSpacing() == first.GetSpacing()
    assert grid["T1c"].GetDirection() == first.GetDirection() and warnings == []
    assert nudged.GetOrigin() != first.GetOrigin()  # the caller's image is left as it was
    assert main(args + ["--out", str(tmp_path / "out"), "--grade-classifier", "none"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["grid"]["origin_lps_mm"] == list(first.GetOrigin()) and report["retrieval"]["lesions"]


def test_a_new_run_removes_the_earlier_runs_html_and_pdf_report(tmp_path):
    """A helper's reproduction: report.html of case A stayed beside case B's outputs (its lesion table A's volumes).
    The new run removes report.html and report.pdf (what ``medcnncad report`` writes) with the earlier run's files,
    in the same step as its own appear; a folder without an earlier report.json keeps its report.html."""
    from medcnncad.reporting.html import case_report

    args = _case(tmp_path) + ["--grade-classifier", "none", "--no-tta"]
    out = tmp_path / "out"
    assert main(args + ["--out", str(out)]) == 0
    case_report(out)
    (out / "report.pdf").write_bytes(b"%PDF-1.4 case A")
    assert main(args + ["--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "report.html" not in names and "report.pdf" not in names
    assert names == sorted(json.loads((out / "report.json").read_text())["outputs"].values())
    other = tmp_path / "other"
    other.mkdir()
    (other / "report.html").write_text("<p>mine</p>")
    assert main(args + ["--out", str(other)]) == 0
    assert (other / "report.html").read_text() == "<p>mine</p>"
