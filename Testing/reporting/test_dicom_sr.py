"""DICOM SR (TID 1500) of the lesion measurements: validated by dciodvfy and read back by highdicom to the
same numbers, each group referencing its label's segment of the DICOM SEG written beside it."""

from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import pydicom
import pytest
from dicom_helpers import write_mr_series
from helpers import small_phantom
from pydicom.sr.codedict import codes

from medcnncad.cli import main

DESCRIPTIONS = {"T1": "AX T1 PRE", "T1c": "AX T1 POST GD", "T2": "AX T2", "FLAIR": "AX T2 FLAIR"}


@pytest.fixture(scope="module")
def sr_case(tmp_path_factory):
    images, _ = small_phantom()
    root = tmp_path_factory.mktemp("sr")
    args = []
    for number, (name, description) in enumerate(DESCRIPTIONS.items(), start=2):
        folder = root / name
        write_mr_series(images[name], folder, description, number)
        args += ["--input", f"{name}={folder}"]
    out = root / "out"
    assert main(["segment", "--model", "brats-demo-unet", "--device", "cpu", *args, "--out", str(out),
                 "--dicom-sr"]) == 0
    return out


def test_the_sr_validates(sr_case):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed; .ci/run installs it")
    done = subprocess.run(["dciodvfy", str(sr_case / "labels.sr.dcm")], capture_output=True, text=True)
    errors = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.lower().startswith("error")]
    assert errors == []


def test_the_sr_reads_back_to_the_report_s_lesions_and_references_the_seg(sr_case):
    import json

    report = json.loads((sr_case / "report.json").read_text())
    sr = hd.sr.srread(str(sr_case / "labels.sr.dcm"))
    seg = pydicom.dcmread(str(sr_case / "labels.seg.dcm"))
    groups = sr.content.get_volumetric_roi_measurement_groups()
    lesions = [les for les in report["lesions"] if les["kind"] == "label"]
    assert len(groups) == len(lesions) > 0
    numbers = {"NCR": 1, "ED": 2, "ET": 3}
    for group, lesion in zip(groups, lesions):
        assert group.tracking_identifier == f"{lesion['structure']} lesion {lesion['id']}"
        segment = group.referenced_segment
        assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert segment.referenced_segment_numbers == [numbers[lesion["structure"]]]
        volume = group.get_measurements(name=codes.SCT.Volume)[0]
        assert volume.value == pytest.approx(lesion["volume_ml"] * 1000.0, abs=1e-3) and volume.unit.value == "mm3"
        diameter = group.get_measurements(name=codes.SCT.Diameter)[0]
        assert diameter.value == pytest.approx(lesion["longest_diameter_mm"], abs=1e-3)
        probability = group.get_measurements(name=codes.DCM.Probability)[0]
        assert probability.value == pytest.approx(lesion["mean_probability"], abs=1e-4)
    assert sr.SeriesDescription.endswith("(research use only)")


def test_batch_writes_the_seg_and_sr_of_each_dicom_case(sr_case, tmp_path):
    """``batch --dicom-sr`` on a CSV whose inputs are DICOM series folders: each case gets both files."""
    root = sr_case.parent
    csv = tmp_path / "cases.csv"
    csv.write_text("case_id,T1,T1c,T2,FLAIR\n" + "p1," + ",".join(str(root / n) for n in DESCRIPTIONS) + "\n")
    out = tmp_path / "cohort"
    assert main(["batch", "--cases", str(csv), "--out", str(out), "--model", "brats-demo-unet", "--device", "cpu",
                 "--serial", "--dicom-sr"]) == 0
    case = out / "cases" / "p1"
    assert (case / "labels.seg.dcm").is_file() and (case / "labels.sr.dcm").is_file()
    groups = hd.sr.srread(str(case / "labels.sr.dcm")).content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(hd.sr.srread(str(sr_case / "labels.sr.dcm")).content
                              .get_volumetric_roi_measurement_groups())


def test_the_seg_and_the_sr_say_research_use_and_what_the_model_was_trained_on(sr_case):
    """A helper's review: neither object said what the model was trained on, and the SR's ContentDescription was
    absent although the module said it stated research use. Where a PACS shows them: the descriptions (LO, 64
    characters, cut at a word) and each segment's description (the whole text)."""
    from medcnncad.models.registry import describe_model

    sr = pydicom.dcmread(str(sr_case / "labels.sr.dcm"))
    seg = pydicom.dcmread(str(sr_case / "labels.seg.dcm"))
    short = "Research use only; trained on synthetic phantoms - not on..."
    assert sr.ContentDescription == short and seg.ContentDescription == short
    assert seg.SeriesDescription == "MedCNNCAD AI segmentation (research use only)"
    version = describe_model("brats-demo-unet").version
    assert [item.SegmentDescription for item in seg.SegmentSequence] == [
        f"{name} by brats-demo-unet {version}, AI segmentation. Research use only - not for diagnosis. Trained on "
        "synthetic phantoms; performance on real scans is unknown. Trained on: synthetic phantoms (MedCNNCAD "
        "generator on the MNI152 template) - not on patient data." for name in ("NCR", "ED", "ET")]
    from medcnncad.reporting.dicom_seg import lo_text

    assert lo_text("r\u00e9sum\u00e9 a\\b " + "word " * 20) == "r?sum? a/b " + "word " * 9 + "word..."
    assert len(lo_text("x" * 100)) == 64 and lo_text("x" * 100).endswith("...")
