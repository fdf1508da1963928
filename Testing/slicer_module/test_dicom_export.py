"""Writing a run back into the DICOM database as SEG + SR, from a volume the DICOM module loaded.

Slicer's DICOM database (ctkDICOMDatabase) and ``DICOMUtils`` exist only inside Slicer; a stand-in
database answers ``fileForInstance`` as the real one does, and ``DICOMUtils.importDicom`` is
replaced by a recorder. Everything else is real: the MRML volume (slicer-core) carrying the
``DICOM.instanceUIDs`` attribute Slicer's scalar volume plugin sets, the engine's run, and the
export child process (``python -m medcnncad.slicer.dicom_export`` with the private package folder
first on its ``PYTHONPATH``), whose SEG and SR are read back.
"""

from __future__ import annotations

import random
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes

pytest.importorskip("slicer")
import slicer  # noqa: E402
from dicom_helpers import write_mr_series  # noqa: E402
from helpers import small_phantom  # noqa: E402
from slicer_scene import new_scene  # noqa: E402

from medcnncad.errors import InputError  # noqa: E402
from medcnncad.slicer import dicom_export  # noqa: E402
from medcnncad.slicer.logic import SecondReaderLogic  # noqa: E402


class StandInDatabase:
    """``slicer.dicomDatabase`` as far as the export uses it."""

    def __init__(self, folders: list[Path]) -> None:
        self.by_uid = {}
        for folder in folders:
            for path in folder.glob("*.dcm"):
                self.by_uid[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = str(path)

    def fileForInstance(self, uid: str) -> str:  # noqa: N802 - ctkDICOMDatabase's name
        return self.by_uid.get(uid, "")


@pytest.fixture
def dicom_case(tmp_path):
    new_scene()
    images, _ = small_phantom()
    volumes, folders = {}, []
    for number, name in enumerate(("T1", "T1c", "T2", "FLAIR"), start=2):
        folder = write_mr_series(images[name], tmp_path / name, f"AX {name}", number)
        folders.append(folder)
        files = sorted(folder.glob("*.dcm"))
        image = sitk.ReadImage([str(f) for f in files])
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{number}: AX {name}")
        slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
        node.SetOrigin(-image.GetOrigin()[0], -image.GetOrigin()[1], image.GetOrigin()[2])
        node.SetSpacing(image.GetSpacing())
        node.SetIJKToRASDirections(-1, 0, 0, 0, -1, 0, 0, 0, 1)  # the series' LPS identity, in RAS
        uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
        random.Random(number).shuffle(uids)  # the attribute's order is not the slice order
        node.SetAttribute("DICOM.instanceUIDs", " ".join(uids))
        volumes[name] = node
    return volumes, StandInDatabase(folders), folders


def test_seg_and_sr_reach_the_database_and_reference_the_source(dicom_case, monkeypatch):
    volumes, database, folders = dicom_case
    imported = []

    def record(folder, db):
        assert db is database
        imported.append(sorted(p.name for p in Path(folder).iterdir()))
        for path in Path(folder).iterdir():
            imported.append(pydicom.dcmread(path))

    logic = SecondReaderLogic()
    monkeypatch.setattr(SecondReaderLogic, "_importDicom", staticmethod(record))
    nodes = logic.segment(volumes, model="brats-demo-unet", device="cpu")
    files = logic.exportToDicomDatabase(nodes, volumes["T1"], database)
    assert [Path(f).name for f in files] == ["labels.seg.dcm", "labels.sr.dcm"]
    assert imported[0] == ["labels.seg.dcm", "labels.sr.dcm"]
    seg, sr = (d for d in imported[1:] if d.Modality == "SEG"), (d for d in imported[1:] if d.Modality == "SR")
    seg, sr = next(seg), next(sr)
    source = pydicom.dcmread(next(folders[0].glob("*.dcm")), stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    numbers = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
               for f in seg.PerFrameFunctionalGroupsSequence]
    labels, painted = nodes.result.label_map, {}
    for number, label in enumerate(nodes.result.manifest.labels, start=1):  # every voxel of every label
        painted[number] = sum(int(frames[i].sum()) for i, n in enumerate(numbers) if n == number)
        assert painted[number] == int((labels == label.value).sum()), label.name
    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_volumetric_roi_measurement_groups()
    voxel_mm3 = float(np.prod(nodes.result.reference.GetSpacing()))
    assert [g.referenced_segment.referenced_segment_numbers for g in groups] == [[n] for n in painted if painted[n]]
    assert len(groups) == 3  # one group per segment: NCR, ED, ET
    for group in groups:  # each measures the segment it references
        number = group.referenced_segment.referenced_segment_numbers[0]
        volume = group.get_measurements(name=codes.SCT.Volume)[0].value
        assert volume == pytest.approx(painted[number] * voxel_mm3, abs=1e-3)


def test_files_come_back_in_slice_order(dicom_case):
    volumes, database, folders = dicom_case
    files = dicom_export.source_files(volumes["T1c"], database)
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    assert z == sorted(z) and len(files) == len(list(folders[1].glob("*.dcm")))


def test_a_volume_not_from_dicom_is_one_clear_error(dicom_case):
    volumes, database, _ = dicom_case
    volumes["T1"].SetAttribute("DICOM.instanceUIDs", "")
    with pytest.raises(InputError, match="not loaded from the DICOM database"):
        dicom_export.source_files(volumes["T1"], database)
    volumes["T1c"].SetAttribute("DICOM.instanceUIDs", "1.2.3.4 " + volumes["T1c"].GetAttribute("DICOM.instanceUIDs"))
    with pytest.raises(InputError, match="not in the database any more"):
        dicom_export.source_files(volumes["T1c"], database)


def test_the_export_process_puts_the_private_folder_first(tmp_path, monkeypatch):
    """Slicer's pydicom 2.4 stays in Slicer; the child imports highdicom/pydicom 3 from the private folder."""
    seen = {}

    def fake_run(command, env, **_):
        seen["command"], seen["path"] = command, env["PYTHONPATH"].split(":")
        import subprocess

        return subprocess.CompletedProcess(command, 2, "", "medcnncad: error: boom")

    monkeypatch.setenv("MEDCNNCAD_HOME", str(tmp_path / "home"))
    images, _ = small_phantom()
    from medcnncad.inference.machine_policy import cached_segmenter

    result = cached_segmenter("brats-demo-unet", "cpu").run(images)
    with pytest.raises(Exception, match="DICOM export failed: medcnncad: error: boom"):
        dicom_export.export_to_database(result, ["a.dcm"], "brats-demo-unet", tmp_path / "out", run=fake_run)
    assert seen["path"][0] == str(tmp_path / "home" / "dicom-export")
    assert seen["command"][1:3] == ["-m", "medcnncad.slicer.dicom_export"]
    assert "--target" in dicom_export.install_arguments() and "highdicom==" in dicom_export.install_arguments()


def test_declining_the_package_install_exports_nothing(dicom_case, monkeypatch):
    volumes, database, _ = dicom_case
    asked, installed = [], []
    monkeypatch.setattr(SecondReaderLogic, "dicomExportPackagesInstalled", staticmethod(lambda: False))
    monkeypatch.setattr(SecondReaderLogic, "installDicomExportPackages", staticmethod(lambda: installed.append(1)))
    files = SecondReaderLogic().exportToDicomDatabase(None, volumes["T1"], database,
                                                      askInstall=lambda q: asked.append(q) or False)
    assert files == [] and installed == [] and "Slicer's pydicom is not changed" in asked[0]
