"""HTML reports: content, Slicer screenshots, rendering in headless Chromium, PDF."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile

import pytest
import SimpleITK as sitk
from helpers import small_phantom

from medcnncad.cli import main
from medcnncad.reporting.html import CHROMIUM_FLAGS, case_report, find_chromium, html_to_pdf
from medcnncad.slicer.screenshots import case_screenshots


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("case")
    images, label = small_phantom()
    args = ["segment", "--model", "demo", "--device", "cpu", "--out", str(folder / "out")]
    for name, img in images.items():
        sitk.WriteImage(img, str(folder / f"{name}.nii.gz"))
        args += ["--input", f"{name}={folder / f'{name}.nii.gz'}"]
    sitk.WriteImage(label, str(folder / "ref.nii.gz"))
    assert main(args + ["--reference", str(folder / "ref.nii.gz")]) == 0
    return folder / "out"


def test_case_report_content(case_dir):
    text = case_report(case_dir, case_screenshots).read_text()
    assert "Research use only - not for diagnosis" in text
    assert "brats-demo-unet" in text and "synthetic phantoms" in text
    assert len(re.findall(r"<img [^>]*src=\"data:image/png;base64,", text)) == 3  # AI, reference, overlay
    assert "AI segmentation (Slicer slice views)" in text and "Reference (Slicer slice views)" in text
    assert "Agreement with the reference" in text and "abnormality probability" in text
    assert "uncalibrated score" in text  # the demo model has no case calibration
    # the demo manifest drops components under 0.1 mL and has no probability floor
    assert "components of at least 0.1 mL whose largest foreground probability is at least 0 " in text
    report = json.loads((case_dir / "report.json").read_text())
    assert report["lesion_filter"]["min_volume_ml"] == 0.1 and report["lesion_filter"]["min_max_probability"] == 0.0
    wt = report["metrics"]["WT"]
    assert wt["lesions"]["rule"] == "any-overlap" and wt["lesions_brats2023"]["rule"] == "brats2023"
    assert "within 3 mm" in report["lesion_detection_rule_brats2023"]



def test_without_a_screenshot_renderer_the_report_shows_the_overlay_only(case_dir):
    text = case_report(case_dir).read_text()
    assert len(re.findall(r"<img [^>]*src=\"data:image/png;base64,", text)) == 1
    assert "AI labels filled, reference outlined" in text and "Slicer slice views" not in text


def _chromium():
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium)")
    return chromium


def test_report_renders_with_its_images_in_headless_chromium(case_dir):
    chromium = _chromium()
    page = case_report(case_dir, case_screenshots)
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                               "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    total = re.search(r'data-images-total="(\d+)"', done.stdout)
    loaded = re.search(r'data-images-loaded="(\d+)"', done.stdout)
    assert total and loaded, done.stderr[-500:]
    assert int(total.group(1)) == 3 and int(loaded.group(1)) == 3


def test_pdf(case_dir):
    _chromium()
    pdf = html_to_pdf(case_report(case_dir))
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 20_000


def test_the_run_warnings_are_listed_escaped(case_dir, tmp_path):
    import shutil

    copy = tmp_path / "case"
    shutil.copytree(case_dir, copy)
    report = json.loads((copy / "report.json").read_text())
    assert report["warnings"] == [] and "Notes on this run" not in case_report(case_dir).read_text()
    report["warnings"] = ["sequences absent: T2, FLAIR", "core refinement relabelled 1.2 mL <oedema> as core"]
    (copy / "report.json").write_text(json.dumps(report))
    text = case_report(copy).read_text()
    assert "<h2>Notes on this run</h2><ul><li>sequences absent: T2, FLAIR</li>" in text
    assert "relabelled 1.2 mL &lt;oedema&gt; as core</li></ul>" in text


def test_the_calibration_cell_says_what_the_probability_was_fitted_on():
    from medcnncad.reporting.html import _calibration_cell

    fitted = "40 'clinical-like' phantoms (seeds 251000-251039; 27 with a tumor), given T1c"
    assert _calibration_cell({"calibration": "platt", "calibration_inputs": ["T1c"],
                              "calibration_fitted_on": fitted}) == f"platt-calibrated for inputs T1c ({fitted})"
    note = "uncalibrated: the model's case calibration was fitted with inputs T1c, not FLAIR"
    assert _calibration_cell({"calibration": "none", "calibration_note": note}) == f"uncalibrated score ({note})"
    assert _calibration_cell({"calibration": "none"}) == "uncalibrated score"


def test_without_a_reference_the_overlay_does_not_promise_one(case_dir, tmp_path, monkeypatch):
    """The overlay's title and the report's caption name a white reference outline only when a reference
    was drawn."""
    import shutil

    import matplotlib.figure

    from medcnncad.reporting.case_outputs import render_overlays

    folder = tmp_path / "no_reference"
    shutil.copytree(case_dir, folder)
    report = json.loads((folder / "report.json").read_text())
    report["reference"] = None
    (folder / "report.json").write_text(json.dumps(report))
    text = case_report(folder).read_text()
    assert "AI labels filled (no reference given)" in text and "reference outlined" not in text
    titles = []
    original = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle",
                        lambda fig, t, **kw: titles.append(t) or original(fig, t, **kw))
    from conftest import make_image
    from helpers import blob_segmenter, blob_volume

    result = blob_segmenter(tmp_path / "model").run({"CT": make_image(blob_volume())})
    render_overlays(result, result.reference, tmp_path / "a.png")
    render_overlays(result, result.reference, tmp_path / "b.png", reference_labels=result.label_map)
    assert "(no reference given)" in titles[0] and "outlined" not in titles[0]
    assert "reference outlined in white" in titles[1]


def test_the_slicer_views_show_this_cases_files_only_from_any_folder(tmp_path, monkeypatch):
    """A helper's reproduction: inputs typed as relative paths were stored so in report.json, and ``medcnncad report``
    run from another case's folder rendered that case's T1c under this case's labels. report.json now names the
    files by absolute path with their SHA-256; a file missing or changed since the run is left out, with a note."""
    import hashlib
    import shutil

    images, label = small_phantom()
    case_a, case_b = tmp_path / "caseA", tmp_path / "caseB"
    case_a.mkdir()
    args = ["segment", "--model", "demo", "--device", "cpu", "--out", str(tmp_path / "out"), "--no-tta",
            "--grade-classifier", "none", "--reference", "ref.nii.gz"]
    for name, img in images.items():
        sitk.WriteImage(img, str(case_a / f"{name}.nii.gz"))
        args += ["--input", f"{name}={name}.nii.gz"]  # relative, as typed in the case's folder
    sitk.WriteImage(label, str(case_a / "ref.nii.gz"))
    monkeypatch.chdir(case_a)
    assert main(args) == 0
    shutil.copytree(case_a, case_b)
    t1c_b = sitk.ReadImage(str(case_b / "T1c.nii.gz"))
    sitk.WriteImage(sitk.Cast(t1c_b, sitk.sitkFloat32) * 2.0, str(case_b / "T1c.nii.gz"))  # another case's T1c
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    t1c = str((case_a / "T1c.nii.gz").resolve())
    assert report["inputs"]["T1c"] == t1c and report["reference"] == str((case_a / "ref.nii.gz").resolve())
    assert report["input_files"]["T1c"] == {"size_bytes": (case_a / "T1c.nii.gz").stat().st_size,
                                            "sha256": hashlib.sha256((case_a / "T1c.nii.gz").read_bytes()).hexdigest()}
    given = []

    def recorded(folder, shown):  # a stand-in renderer: what it was asked to load
        given.append((dict(shown["inputs"]), shown["reference"]))
        return [("AI segmentation (Slicer slice views)", (folder / "overlay.png").read_bytes())]

    monkeypatch.chdir(case_b)  # medcnncad report run from the other case's folder
    text = case_report(tmp_path / "out", recorded).read_text()
    assert given[-1] == (report["inputs"], report["reference"]) and "Slicer views:" not in text
    sitk.WriteImage(sitk.ReadImage(str(case_b / "T1c.nii.gz")), t1c)  # case A's T1c rewritten after the run
    (case_a / "ref.nii.gz").unlink()
    text = case_report(tmp_path / "out", recorded).read_text()
    assert given[-1] == ({k: v for k, v in report["inputs"].items() if k != "T1c"}, None)
    assert (f"<p class='small'>Slicer views: input T1c {t1c}: changed since the run (size or SHA-256 differ); "
            "not shown</p>") in text
    assert f"Slicer views: reference {case_a.resolve() / 'ref.nii.gz'}: missing; not shown" in text
    assert len(re.findall(r"<img [^>]*src=\"data:image/png;base64,", text)) == 2  # the stand-in view, the overlay


def test_the_banner_and_the_overlay_title_state_the_models_intended_use_and_training_data(case_dir, tmp_path,
                                                                                          monkeypatch):
    """A helper's review: the HTML banner and the overlay title showed the package's generic intended use, not the
    model's own report.json ``intended_use`` (for brats-robust-unet: what it misses on real patients) nor what the
    model was trained on."""
    import dataclasses

    import matplotlib.figure
    from conftest import make_image
    from helpers import blob_segmenter, blob_volume

    from medcnncad import INTENDED_USE
    from medcnncad.reporting.case_outputs import render_overlays

    demo = ("<p class='banner'>Research use only - not for diagnosis. Trained on synthetic phantoms; performance on "
            "real scans is unknown.<br>Trained on: synthetic phantoms (MedCNNCAD generator on the MNI152 template) - "
            f"not on patient data.<br>{INTENDED_USE}</p>")
    assert demo in case_report(case_dir).read_text()
    titles = []
    original = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle",
                        lambda fig, t, **kw: titles.append(t) or original(fig, t, **kw))
    segmenter = blob_segmenter(tmp_path / "model")
    segmenter.manifest = dataclasses.replace(segmenter.manifest, intended_use="Research only. Misses small blobs.",
                                             trained_on="two blob phantoms")
    result = segmenter.run({"CT": make_image(blob_volume())})
    result.manifest = segmenter.manifest
    render_overlays(result, result.reference, tmp_path / "a.png")
    assert titles[-1].splitlines()[1:] == ["Research only. Misses small blobs.", "Trained on: two blob phantoms."]


def test_the_model_table_names_the_readers_brain_mask_file_with_its_sha256(case_dir, tmp_path):
    """A helper's trial on ReMIND-022 with ``--brain-mask edited.nii.gz``: report.json named the file with its SHA-256
    (``brain_mask_file``) but the HTML report showed only its path, in a note; the README says the report names it
    with its SHA-256."""
    import shutil

    copy = tmp_path / "case"
    shutil.copytree(case_dir, copy)
    assert "brain mask given" not in case_report(copy).read_text()
    report = json.loads((copy / "report.json").read_text())
    report["brain_mask_file"] = {"path": "/data/edited <mask>.nii.gz", "size_bytes": 10, "sha256": "ab" * 32}
    (copy / "report.json").write_text(json.dumps(report))
    text = case_report(copy).read_text()
    assert f"<td>brain mask given</td><td>/data/edited &lt;mask&gt;.nii.gz (SHA-256 {'ab' * 32})</td>" in text
