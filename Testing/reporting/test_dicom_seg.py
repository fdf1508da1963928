"""DICOM: series selection in a folder, DICOM SEG export validated by dciodvfy and read back."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_helpers import write_enhanced_mr, write_mr_series
from helpers import small_phantom

from medcnncad.cli import main
from medcnncad.errors import InputError
from medcnncad.io.dicom_series import list_series, series_files
from medcnncad.io.images import read_volume
from medcnncad.metrics.segmentation import compute_metrics
from medcnncad.models.registry import describe_model
from medcnncad.reporting.dicom_seg import write_dicom_seg

DESCRIPTIONS = {"T1": "AX T1 PRE", "T1c": "AX T1 POST GD", "T2": "AX T2", "FLAIR": "AX T2 FLAIR"}


@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory):
    images, label = small_phantom()
    folder = tmp_path_factory.mktemp("dicom") / "study"
    for number, (name, description) in enumerate(DESCRIPTIONS.items(), start=2):
        write_mr_series(images[name], folder, description, number)
    return folder, images, label


def test_series_selection(dicom_case):
    folder, images, _ = dicom_case
    series = list_series(folder)
    assert sorted(s.description for s in series) == sorted(DESCRIPTIONS.values())
    assert all(s.modality == "MR" and s.files == images["T1"].GetDepth() for s in series)
    with pytest.raises(InputError, match="4 DICOM series, choose one"):
        read_volume(folder)
    by_description = read_volume(folder, "ax t1 post gd")
    uid = next(s.uid for s in series if s.description == "AX T1 POST GD")
    by_uid = read_volume(folder, uid)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(by_description), sitk.GetArrayFromImage(by_uid))
    assert by_uid.GetSize() == images["T1c"].GetSize()
    assert by_uid.GetOrigin() == pytest.approx(images["T1c"].GetOrigin(), abs=1e-3)
    with pytest.raises(InputError, match="matches 0 series"):
        read_volume(folder, "SAG T1")


def _dciodvfy_errors(path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed; .ci/run installs it")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [ln for ln in (done.stdout + done.stderr).splitlines() if ln.lower().startswith("error")]


def test_dicom_seg_validates_and_reads_back(dicom_case, tmp_path):
    import highdicom as hd

    folder, images, label = dicom_case
    labels = sitk.GetArrayFromImage(label)
    manifest = describe_model("demo")
    files = series_files(folder, "AX T1 POST GD")
    path = write_dicom_seg(labels, manifest, files, tmp_path / "seg.dcm")
    assert _dciodvfy_errors(path) == []
    seg = hd.seg.segread(str(path))
    assert [seg.get_segment_description(n).segment_label for n in (1, 2, 3)] == ["NCR", "ED", "ET"]
    description = seg.get_segment_description(1)
    assert description.segmented_property_type.value == "6574001"
    assert description.algorithm_identification[0].AlgorithmName == "brats-demo-unet"
    import pydicom

    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    numbers = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                                ignore_spatial_locations=True)
    np.testing.assert_array_equal(np.array([0, 1, 2, 4])[numbers], labels)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert pydicom.dcmread(files[0]).SpacingBetweenSlices == 1  # GDCM's value, not the slices' 1.907 mm
    assert float(measures.SpacingBetweenSlices) == pytest.approx(images["T1c"].GetSpacing()[2], abs=1e-5)
    assert float(measures.SliceThickness) == pytest.approx(images["T1c"].GetSpacing()[2], abs=1e-5)
    with pytest.raises(InputError, match="does not match the DICOM series"):
        write_dicom_seg(labels[:-1], manifest, files, tmp_path / "bad.dcm")


def test_cli_segment_from_dicom_with_dicom_seg(dicom_case, tmp_path):
    folder, _, _ = dicom_case
    args = ["segment", "--model", "demo", "--device", "cpu", "--out", str(tmp_path / "out"), "--dicom-seg"]
    for name, description in DESCRIPTIONS.items():
        args += ["--input", f"{name}={folder}", "--series", f"{name}={description}"]
    assert main(args) == 0
    assert _dciodvfy_errors(tmp_path / "out" / "labels.seg.dcm") == []
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["outputs"]["dicom_seg"] == "labels.seg.dcm"
    assert main(args + ["--series", "PET=x"]) == 2  # a selector for a channel that is not given


def test_dicom_seg_needs_a_dicom_input(tmp_path, capsys):
    images, _ = small_phantom()
    args = ["segment", "--model", "demo", "--device", "cpu", "--out", str(tmp_path / "out"), "--dicom-seg"]
    for name, img in images.items():
        sitk.WriteImage(img, str(tmp_path / f"{name}.nii.gz"))
        args += ["--input", f"{name}={tmp_path / f'{name}.nii.gz'}"]
    assert main(args) == 2
    assert "is not a DICOM series folder or DICOM file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_dicom_seg_says_a_missing_first_input_is_not_found(tmp_path, capsys):
    """A helper's batch trial: a row whose T1c file was missing failed with "is not a DICOM series folder or DICOM
    file" (with --dicom-seg), which sends the reader looking at the file's format instead of its path."""
    missing = tmp_path / "t1c.nii.gz"
    args = ["segment", "--model", "demo", "--device", "cpu", "--out", str(tmp_path / "out"), "--dicom-seg",
            "--input", f"T1c={missing}"]
    assert main(args) == 2
    assert f"{missing}: file not found (input T1c)" in capsys.readouterr().err


def test_a_dicom_seg_references_the_frames_of_an_enhanced_multiframe_input(dicom_case, tmp_path):
    """Scanners now write enhanced multi-frame MR (one file, all slices); given one as the grid's input, the SEG (and
    the SR on it) used to be refused as "not a DICOM series folder". The SEG now references the file's frames: read
    back frame by frame with highdicom it is the label map written beside it, and dciodvfy finds no error."""
    import highdicom as hd
    import pydicom

    folder, _, _ = dicom_case
    slices = [pydicom.dcmread(f) for f in series_files(folder, "AX T1 PRE")]
    multiframe = tmp_path / "t1_enhanced.dcm"
    hd.legacy.LegacyConvertedEnhancedMRImage(slices, series_instance_uid=hd.UID(), series_number=12,
                                             sop_instance_uid=hd.UID(), instance_number=1).save_as(str(multiframe))
    out = tmp_path / "out"
    args = ["segment", "--model", "demo", "--device", "cpu", "--out", str(out), "--dicom-seg", "--dicom-sr",
            "--input", f"T1={multiframe}"]
    for name in ("T1c", "T2", "FLAIR"):
        args += ["--input", f"{name}={folder}", "--series", f"{name}={DESCRIPTIONS[name]}"]
    assert main(args) == 0
    assert _dciodvfy_errors(out / "labels.seg.dcm") == []
    source = pydicom.dcmread(str(multiframe), stop_before_pixels=True)
    seg = hd.seg.segread(str(out / "labels.seg.dcm"))
    frames = int(source.NumberOfFrames)
    numbers = seg.get_pixels_by_source_frame(source_sop_instance_uid=source.SOPInstanceUID,
                                             source_frame_numbers=list(range(1, frames + 1)), combine_segments=True)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))
    assert labels.shape == (frames, int(source.Rows), int(source.Columns)) and labels.any()
    np.testing.assert_array_equal(np.array([0, 1, 2, 4])[numbers], labels)
    sr = pydicom.dcmread(str(out / "labels.sr.dcm"))
    evidence = {sop.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}
    assert source.SOPInstanceUID in evidence and seg.SOPInstanceUID in evidence


def _labels_by_frame(path, label: sitk.Image) -> tuple[str, np.ndarray]:
    """The enhanced file's SOPInstanceUID, and ``label``'s (K, J, I) values with its slice k the one that lies where
    the file's frame k + 1 lies (the label map a run on the file gives)."""
    import pydicom

    head = pydicom.dcmread(str(path), stop_before_pixels=True)
    positions = np.array([[float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
                          for frame in head.PerFrameFunctionalGroupsSequence])
    slices = np.array([label.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(label.GetDepth())])
    distance = np.linalg.norm(positions[:, None] - slices[None], axis=2)
    assert distance.min(axis=1).max() < 1e-3  # every frame lies on one of the label's slices
    return str(head.SOPInstanceUID), sitk.GetArrayFromImage(label)[distance.argmin(axis=1)]


def test_a_dicom_seg_references_an_enhanced_mr_whose_frames_hold_their_own_orientation(dicom_case, tmp_path):
    """Philips writes an enhanced MR file's plane orientation and pixel measures in every frame's own functional
    groups, not the shared ones (both are valid, PS3.3 C.7.6.16); highdicom reads them from the shared groups only,
    so the SEG of such a source failed with AttributeError 'PixelMeasuresSequence' after the whole run (the CLI's
    "internal error", exit 1). The SEG now references it: read back frame by frame it is the label map, dciodvfy
    clean, and the SEG's shared groups hold the frames' orientation and pixel spacing."""
    import highdicom as hd
    import pydicom

    folder, _, label = dicom_case
    source = write_enhanced_mr(series_files(folder, "AX T1 PRE"), tmp_path / "philips.dcm",
                               per_frame=("PlaneOrientationSequence", "PixelMeasuresSequence"))
    uid, labels = _labels_by_frame(source, label)
    path = write_dicom_seg(labels, describe_model("demo"), [str(source)], tmp_path / "seg.dcm")
    assert _dciodvfy_errors(path) == []
    seg = hd.seg.segread(str(path))
    numbers = seg.get_pixels_by_source_frame(source_sop_instance_uid=uid, combine_segments=True,
                                             source_frame_numbers=list(range(1, len(labels) + 1)))
    np.testing.assert_array_equal(np.array([0, 1, 2, 4])[numbers], labels)
    frames = pydicom.dcmread(str(source), stop_before_pixels=True).PerFrameFunctionalGroupsSequence
    for item in seg.PerFrameFunctionalGroupsSequence:  # each SEG frame names the source frame at its position
        referenced = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert referenced.ReferencedSOPInstanceUID == uid
        at = frames[int(referenced.ReferencedFrameNumber) - 1].PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient] == pytest.approx(
            [float(v) for v in at], abs=1e-4)
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == pytest.approx(
        [label.GetSpacing()[1], label.GetSpacing()[0]], abs=1e-6)
    direction = label.GetDirection()
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == pytest.approx(
        [direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]], abs=1e-6)


def test_a_dicom_seg_on_an_enhanced_mr_measures_the_frames_spacing(dicom_case, tmp_path):
    """An enhanced MR file's own SpacingBetweenSlices (its shared pixel measures) was copied into the SEG unchecked,
    as the single-frame path no longer does: 1.0 mm for frames 1.907 mm apart, and highdicom could not read that SEG
    back as a volume ("Frame positions do not form a regularly-spaced volume"). The SEG now gives the frames' step."""
    import highdicom as hd

    folder, _, label = dicom_case
    source = write_enhanced_mr(series_files(folder, "AX T1 PRE"), tmp_path / "t1.dcm", spacing_between_slices="1.0")
    path = write_dicom_seg(_labels_by_frame(source, label)[1], describe_model("demo"), [str(source)],
                           tmp_path / "seg.dcm")
    seg = hd.seg.segread(str(path))
    step = label.GetSpacing()[2]  # 1.907162 mm
    assert float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices) == \
        pytest.approx(step, abs=1e-5)
    assert seg.get_volume(combine_segments=True).spacing[0] == pytest.approx(step, abs=1e-5)


def test_a_dicom_seg_refuses_an_enhanced_mr_whose_frames_differ_in_pixel_spacing(dicom_case, tmp_path):
    """Frames with their own pixel measures that differ are not one grid: one line naming the file and the frame."""
    import pydicom

    folder, _, label = dicom_case
    source = write_enhanced_mr(series_files(folder, "AX T1 PRE"), tmp_path / "t1.dcm",
                               per_frame=("PixelMeasuresSequence",))
    dataset = pydicom.dcmread(str(source))
    dataset.PerFrameFunctionalGroupsSequence[5].PixelMeasuresSequence[0].PixelSpacing = [1.5, 1.5]
    dataset.save_as(str(source))
    with pytest.raises(InputError, match=r"t1.dcm: its frames differ in PixelSpacing \(frame 1: \[1.19898.*, frame 6: "
                                         r"\[1.5, 1.5\]\): not one grid"):
        write_dicom_seg(_labels_by_frame(source, label)[1], describe_model("demo"), [str(source)], tmp_path / "s.dcm")
    assert not (tmp_path / "s.dcm").exists()


def test_a_dicom_seg_refuses_a_multiframe_input_without_per_frame_positions_before_the_run(dicom_case, tmp_path,
                                                                                           capsys):
    """A multi-frame DICOM file that is no enhanced image (an MR Image Storage object with NumberOfFrames, one
    position for all its frames) cannot be referenced frame by frame: given as the grid's input with --dicom-seg it
    ran the whole case and then failed in highdicom ("internal error: ValueError: Number of plane positions ...",
    exit 1). It is refused before the run: one line naming the file, exit 2, no output folder."""
    import pydicom

    folder, _, _ = dicom_case
    slices = [pydicom.dcmread(f) for f in series_files(folder, "AX T1 PRE")]
    pixels = np.stack([s.pixel_array for s in slices])
    legacy = slices[0]
    legacy.NumberOfFrames, legacy.PixelData = len(slices), pixels.tobytes()
    legacy.save_as(str(tmp_path / "t1_frames.dcm"))
    with pytest.raises(InputError, match=f"{len(slices)} frames without a position each"):  # nor is it read
        read_volume(tmp_path / "t1_frames.dcm")
    out = tmp_path / "out"
    args = ["segment", "--model", "demo", "--device", "cpu", "--out", str(out), "--dicom-seg",
            "--input", f"T1={tmp_path / 't1_frames.dcm'}"]
    for name in ("T1c", "T2", "FLAIR"):
        args += ["--input", f"{name}={folder}", "--series", f"{name}={DESCRIPTIONS[name]}"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "t1_frames.dcm" in err
    assert f"{len(slices)} frames without a position each" in err  # the reader's refusal, before the run
    assert not out.exists()


def test_segment_takes_a_dicom_seg_reference_onto_the_first_input_grid(dicom_case, tmp_path):
    """A helper's trial on ReMIND-022, whose expert outline is a DICOM SEG: ``segment --reference SEG.dcm`` read the
    SEG as an image of its own (13 x 16 x 12 voxels of value 255 at a wrong origin) and refused it. Now a SEG's
    segments are rasterised onto the first input's grid by scanner coordinates: segments named as the model's labels
    (the engine's own SEG) are read as them; others need ``--reference-labels`` (segment number -> label), since a
    one-segment "Glioma" outline read as segment 1 would silently be NCR."""
    folder, _, label = dicom_case
    labels = sitk.GetArrayFromImage(label)
    seg = write_dicom_seg(labels, describe_model("demo"), series_files(folder, "AX T1 POST GD"), tmp_path / "r.dcm")
    args = ["segment", "--model", "demo", "--device", "cpu", "--out", str(tmp_path / "out"), "--reference", str(seg)]
    for name, description in DESCRIPTIONS.items():
        args += ["--input", f"{name}={folder}", "--series", f"{name}={description}"]
    assert main(args) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["reference_labels"] == {"1": 1, "2": 2, "3": 4}
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "labels.nii.gz")))
    expected = compute_metrics(predicted, labels, label.GetSpacing(), describe_model("demo").structures())
    for name in ("WT", "TC", "ET"):
        assert report["metrics"][name]["dice"] == pytest.approx(expected[name].dice, abs=1e-4)
    assert report["metrics"]["WT"]["dice"] > 0.5


def test_a_dicom_seg_reference_of_other_segment_names_needs_its_label_map(dicom_case, tmp_path, capsys):
    """A one-segment outline named "Glioma" (ReMIND's) is refused before the run unless its segment numbers are
    mapped; mapped 1=2 (whole tumor), its WT is the outline."""
    import pydicom

    folder, _, label = dicom_case
    whole = (sitk.GetArrayFromImage(label) > 0).astype(np.uint8)
    seg = write_dicom_seg(whole, describe_model("demo"), series_files(folder, "AX T1 POST GD"), tmp_path / "r.dcm")
    dataset = pydicom.dcmread(seg)
    dataset.SegmentSequence = dataset.SegmentSequence[:1]  # ED and ET are empty: no frame refers to them
    dataset.SegmentSequence[0].SegmentLabel = "Glioma"
    dataset.save_as(seg)
    args = ["segment", "--model", "demo", "--device", "cpu", "--out", str(tmp_path / "out"), "--reference", str(seg)]
    for name, description in DESCRIPTIONS.items():
        args += ["--input", f"{name}={folder}", "--series", f"{name}={description}"]
    assert main(args) == 2
    assert "{1: 'Glioma'} are not named as the model's labels" in capsys.readouterr().err
    assert main([*args, "--reference-labels", "1=2"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "labels.nii.gz")))
    expected = compute_metrics(predicted, whole * 2, label.GetSpacing(), {"WT": (1, 2, 4)})
    assert report["metrics"]["WT"]["dice"] == pytest.approx(expected["WT"].dice, abs=1e-4)
