"""``medcnncad segment --brain-mask FILE`` / ``--brain-mask-from NAME``: a reader's own brain mask (e.g. an earlier
run's brain_mask.nii.gz with the eyes cut out) or the sequence deepbet reads, for one case; bad values are one line
and exit code 2 before anything is written."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import small_phantom

from medcnncad.cli import main


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The small held-out phantom's T1c and FLAIR as files, and a mask file of the half of the grid with I < 40."""
    folder = tmp_path_factory.mktemp("case")
    images, _ = small_phantom()
    for name in ("T1c", "FLAIR"):
        sitk.WriteImage(images[name], str(folder / f"{name}.nii.gz"))
    array = np.zeros(sitk.GetArrayViewFromImage(images["T1c"]).shape, np.int16)  # (K, J, I) = (37, 81, 80)
    array[:, :, :40] = 7  # any non-zero value is brain
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(images["T1c"])
    sitk.WriteImage(mask, str(folder / "mask.nrrd"))
    other = sitk.GetImageFromArray(array[:, :, :70].copy())  # another grid: 70 columns
    other.SetSpacing(images["T1c"].GetSpacing())
    other.SetOrigin(images["T1c"].GetOrigin())
    other.SetDirection(images["T1c"].GetDirection())
    sitk.WriteImage(other, str(folder / "other_grid.nrrd"))
    return folder


def _segment(case, out, *extra: str, model: str = "brats-robust-unet") -> int:
    return main(["segment", "--model", model, "--input", f"T1c={case / 'T1c.nii.gz'}",
                 "--input", f"FLAIR={case / 'FLAIR.nii.gz'}", "--out", str(out), "--no-tta", "--precision",
                 "manifest", "--grade-classifier", "none", *extra])


def test_a_given_mask_replaces_brain_extraction_and_bounds_the_result(case, tmp_path):
    out = tmp_path / "out"
    assert _segment(case, out, "--brain-mask", str(case / "mask.nrrd")) == 0
    report = json.loads((out / "report.json").read_text())
    step = next(s for s in report["clinical_preprocessing"] if s["step"] == "brain_mask")
    assert step["mode"] == "given" and step["source"] == f"brain mask {case / 'mask.nrrd'}"
    assert step["brain_ml"] == pytest.approx(37 * 81 * 40 * 1.19898081426133 ** 2 * 1.9071619997448441 / 1000, abs=0.05)
    digest = hashlib.sha256((case / "mask.nrrd").read_bytes()).hexdigest()
    assert report["brain_mask_file"] == {"path": str((case / "mask.nrrd").resolve()),
                                         "size_bytes": (case / "mask.nrrd").stat().st_size, "sha256": digest}
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "brain_mask.nii.gz")))
    assert written[:, :, :40].all() and not written[:, :, 40:].any()
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))
    assert not labels[:, :, 40:].any()  # nothing outside the reader's mask (the model's results_inside_mask)
    assert (out / "brain_mask.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the mask outlined, to check at a glance
    assert main(["report", str(out)]) == 0
    assert "Brain mask (given by the reader), outlined on 8 axial slices" in (out / "report.html").read_text()


def test_the_default_run_of_this_small_skull_stripped_head_extracts_no_brain(case, tmp_path):
    """The control of the test above: without the option the model's auto rule runs no deepbet on this head."""
    out = tmp_path / "out"
    assert _segment(case, out) == 0
    steps = json.loads((out / "report.json").read_text())["clinical_preprocessing"]
    step = next(s for s in steps if s["step"] == "brain_mask")
    assert not step["applied"] and not (out / "brain_mask.nii.gz").exists() and not (out / "brain_mask.png").exists()


@pytest.mark.parametrize(("extra", "model", "message"), [
    (["--brain-mask", "{case}/other_grid.nrrd"], "brats-robust-unet",
     "other_grid.nrrd: not on the grid of input T1c, the case's reference (size (70, 81, 37)"),
    (["--brain-mask", "{case}/missing.nrrd"], "brats-robust-unet", "missing.nrrd"),
    (["--brain-mask-from", "T2"], "brats-robust-unet", "brain mask from T2: not one of the given sequences (T1c, "
                                                       "FLAIR)"),
    (["--brain-mask", "{case}/mask.nrrd"], "brats-demo-unet", "model brats-demo-unet extracts no brain"),
    (["--brain-mask", "{case}/missing.nrrd"], "brats-demo-unet", "model brats-demo-unet extracts no brain"),
    (["--brain-mask", "{case}/mask.nrrd", "--brain-mask-from", "T1c"], "brats-robust-unet", "not allowed with"),
])
def test_a_bad_brain_mask_choice_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys, extra, model, message):
    out = tmp_path / "out"
    code = _segment(case, out, *[a.replace("{case}", str(case)) for a in extra], model=model)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err
    assert not out.exists()


def test_a_mask_is_never_replaced_by_the_run_it_is_given_to(case, tmp_path, capsys):
    """An earlier run's brain_mask.nii.gz, corrected in place and given back with the same --out, is refused."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "brain_mask.nii.gz").write_bytes((case / "mask.nrrd").read_bytes())
    before = (out / "brain_mask.nii.gz").read_bytes()
    code = _segment(case, out, "--brain-mask", str(out / "brain_mask.nii.gz"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "would replace it with its own brain_mask.nii.gz" in err
    assert (out / "brain_mask.nii.gz").read_bytes() == before


def test_the_figure_s_slices_lie_evenly_inside_the_mask():
    from medcnncad.reporting.case_outputs import brain_mask_levels

    inside = np.zeros((40, 6, 6), bool)
    inside[10:31, 2:4, 2:4] = True  # slices 10 to 30: 10 + 20 j / 9 for j = 1..8, rounded
    np.testing.assert_array_equal(brain_mask_levels(inside), [12, 14, 17, 19, 21, 23, 26, 28])
    inside[:] = False
    inside[5:8] = True  # a mask three slices thick: each of them once
    np.testing.assert_array_equal(brain_mask_levels(inside), [5, 6, 7])


def test_the_report_names_a_mask_given_by_a_relative_path_by_its_whole_path(case, tmp_path, monkeypatch):
    """report.json, the notes and the HTML report made from them are read later from anywhere: the mask is named as
    the inputs are, by its resolved path, not as typed ("brain mask mask.nrrd")."""
    monkeypatch.chdir(case)
    out = tmp_path / "out"
    assert _segment(case, out, "--brain-mask", "mask.nrrd") == 0
    report = json.loads((out / "report.json").read_text())
    step = next(s for s in report["clinical_preprocessing"] if s["step"] == "brain_mask")
    whole = str((case / "mask.nrrd").resolve())
    assert step["source"] == f"brain mask {whole}" and report["brain_mask_file"]["path"] == whole
    assert any(w.startswith(f"clinical preprocessing: the brain mask was given (brain mask {whole}, ")
               for w in report["warnings"]), report["warnings"]
