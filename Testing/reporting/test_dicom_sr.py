"""DICOM SR (TID 1500) of the segment measurements: validated by dciodvfy and read back by highdicom, one group
per segment of the DICOM SEG written beside it, whose numbers are that segment's (its frames read back, report.json's
lesions)."""

from __future__ import annotations

import json
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
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


def _segment_voxels(seg: pydicom.Dataset) -> tuple[dict[int, int], float]:
    """The SEG read back: segment number -> its voxel count over its frames, and one voxel's volume (mm3): pixel
    spacing x the distance between adjacent frame positions along the slice normal (where a reader stacks them; the
    SEG's SpacingBetweenSlices is the source files' and GDCM's test series say 1)."""
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    counts: dict[int, int] = {}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        counts[number] = counts.get(number, 0) + int(np.count_nonzero(frame))
    shared = seg.SharedFunctionalGroupsSequence[0]
    cosines = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    positions = np.array([item.PlanePositionSequence[0].ImagePositionPatient
                          for item in seg.PerFrameFunctionalGroupsSequence], float)
    depths = np.unique(positions @ np.cross(cosines[:3], cosines[3:]))  # a slice's frames share one position
    pixel = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    return counts, pixel[0] * pixel[1] * float(np.diff(depths).min())


def test_each_group_describes_the_seg_segment_it_references(sr_case):
    """A reviewer's reproduction: the SR had one group per lesion, each referencing its label's whole segment but
    stating that lesion's volume (ED: 47259.7 and 818.6 mm3 for a 50663.2 mm3 segment). Now one group per segment
    the result contains, in segment order: its volume is the segment's as read back from the SEG's frames (voxels x
    spacing; also the sum of the label's lesion volumes in report.json, nothing being filtered after the lesions are
    found), its count the label's lesions, its mean probability the voxel-weighted mean of theirs, and no diameter
    (none of the segment's own; see :mod:`medcnncad.reporting.dicom_sr`)."""
    report = json.loads((sr_case / "report.json").read_text())
    sr = hd.sr.srread(str(sr_case / "labels.sr.dcm"))
    seg = pydicom.dcmread(str(sr_case / "labels.seg.dcm"))
    voxels, voxel_mm3 = _segment_voxels(seg)
    names = {int(item.SegmentNumber): item.SegmentLabel for item in seg.SegmentSequence}
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.referenced_segment.referenced_segment_numbers for g in groups] == [[n] for n in sorted(voxels)]
    assert len(groups) == 3 and sorted(voxels) == [1, 2, 3]  # the demo run has NCR, ED and ET
    for group in groups:
        number = group.referenced_segment.referenced_segment_numbers[0]
        lesions = [les for les in report["lesions"] if les["kind"] == "label" and les["structure"] == names[number]]
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        plural = "lesion" if len(lesions) == 1 else "lesions"
        assert group.tracking_identifier == f"{names[number]} ({len(lesions)} {plural})"
        volume = group.get_measurements(name=codes.SCT.Volume)[0]
        assert volume.unit.value == "mm3"
        assert volume.value == pytest.approx(voxels[number] * voxel_mm3, rel=1e-6)  # positions: 6 decimals
        assert volume.value == pytest.approx(sum(les["volume_ml"] for les in lesions) * 1000.0, abs=1e-3)
        assert group.get_measurements(name=codes.SCT.NumberOfLesions)[0].value == len(lesions)
        probability = group.get_measurements(name=codes.DCM.Probability)[0]
        weighted = sum(les["mean_probability"] * les["voxel_count"] for les in lesions) / voxels[number]
        assert probability.value == pytest.approx(weighted, abs=1e-4)
        assert probability.derivation == codes.cid7464.Mean
        assert group.get_measurements(name=codes.SCT.Diameter) == []
        segment_type = next(item for item in seg.SegmentSequence if int(item.SegmentNumber) == number)
        assert group.finding_type.value == segment_type.SegmentedPropertyTypeCodeSequence[0].CodeValue  # e.g. Edema
    assert len({g.finding_type.value for g in groups}) == 3  # not Neoplasm for the oedema
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


def test_a_run_that_finds_nothing_writes_an_sr_saying_so(tmp_path):
    """A helper's trial on a real clinical scan: a run whose label map was empty (brats-robust-unet with the brain
    mask from T1c on ReMIND-022) ended in an internal error (highdicom: a TID 1500 report needs a measurement
    group) and wrote no output at all. Now every segment gets a group stating 0 mm3 and 0 lesions."""
    images, _ = small_phantom()
    args = []
    for number, (name, description) in enumerate(DESCRIPTIONS.items(), start=2):
        flat = sitk.GetImageFromArray(np.zeros(images[name].GetSize()[::-1], np.float32))  # nothing to find
        flat.CopyInformation(images[name])
        write_mr_series(flat, tmp_path / name, description, number)
        args += ["--input", f"{name}={tmp_path / name}"]
    out = tmp_path / "out"
    assert main(["segment", "--model", "brats-demo-unet", "--device", "cpu", *args, "--out", str(out),
                 "--dicom-sr"]) == 0
    assert json.loads((out / "report.json").read_text())["lesions"] == []
    groups = hd.sr.srread(str(out / "labels.sr.dcm")).content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 3
    for group in groups:
        values = {item.name.meaning: item.value for item in group.get_measurements()}
        assert values == {"Volume": 0.0, "Number of lesions (observable entity)": 0.0}
