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


def _node_of(image: sitk.Image, name: str):
    """A scalar volume node with ``image``'s voxels and geometry (LPS -> RAS)."""
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    flip = np.diag([-1.0, -1.0, 1.0])
    node.SetOrigin(*(flip @ np.array(image.GetOrigin())))
    node.SetSpacing(image.GetSpacing())
    node.SetIJKToRASDirections(*(flip @ np.array(image.GetDirection()).reshape(3, 3)).T.ravel())
    return node


def _multiframe_node(folder: Path, out: Path):
    """The T1 series converted to one enhanced MR file (highdicom) and a volume node as Slicer's scalar volume plugin
    makes from it: its geometry as ITK reads the file, DICOM.instanceUIDs its one instance."""
    slices = [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]
    out.mkdir()
    path = out / "t1_enhanced.dcm"
    hd.legacy.LegacyConvertedEnhancedMRImage(slices, series_instance_uid=hd.UID(), series_number=12,
                                             sop_instance_uid=hd.UID(), instance_number=1).save_as(str(path))
    node = _node_of(sitk.ReadImage(str(path)), "12: T1 enhanced")  # GDCM stacks the frames in stored order
    node.SetAttribute("DICOM.instanceUIDs", str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
    return node, path


def test_an_enhanced_multiframe_reference_is_exported_frame_by_frame(dicom_case, monkeypatch, tmp_path):
    """A volume loaded from one enhanced multi-frame file was refused ("no slice geometry"): its frames are now the
    slices, checked to lie where the volume's slices lie, and the SEG read back frame by frame is the run's label
    map; a volume whose slices run the other way is refused naming the first frame that lies elsewhere."""
    _, _, folders = dicom_case
    node, path = _multiframe_node(folders[0], tmp_path / "enhanced")
    volumes = {name: _node_of(sitk.ReadImage([str(f) for f in sorted(folder.glob("*.dcm"))]), name)
               for name, folder in zip(("T1c", "T2", "FLAIR"), folders[1:])}  # where the series lie
    database = StandInDatabase([*folders, path.parent])
    assert dicom_export.source_files(node, database) == [str(path)]
    captured: dict = {}
    monkeypatch.setattr(SecondReaderLogic, "_importDicom", staticmethod(
        lambda folder, db: captured.update(seg=hd.seg.segread(str(Path(folder) / "labels.seg.dcm")))))
    logic = SecondReaderLogic()
    nodes = logic.segment({**volumes, "T1": node}, model="brats-demo-unet", device="cpu")
    exported = logic.exportToDicomDatabase(nodes, node, database)
    assert [Path(f).name for f in exported] == ["labels.seg.dcm", "labels.sr.dcm"]
    head = pydicom.dcmread(path, stop_before_pixels=True)
    frames, uid = int(head.NumberOfFrames), str(head.SOPInstanceUID)
    assert frames == nodes.result.label_map.shape[0]
    numbers = captured["seg"].get_pixels_by_source_frame(source_sop_instance_uid=uid,
                                                         source_frame_numbers=list(range(1, frames + 1)),
                                                         combine_segments=True)
    values = np.array([0] + [label.value for label in nodes.result.manifest.labels])
    assert nodes.result.label_map.any()
    np.testing.assert_array_equal(values[numbers], nodes.result.label_map)
    axes = [[0.0] * 3 for _ in range(3)]
    node.GetIJKToRASDirections(axes)
    last = np.array(node.GetOrigin()) + (frames - 1) * node.GetSpacing()[2] * np.array(axes[2])
    node.SetIJKToRASDirections(*axes[0], *axes[1], *(-np.array(axes[2])))  # the same slices stacked the other way
    node.SetOrigin(*last)
    with pytest.raises(InputError, match=r"frame 1 of .*t1_enhanced.dcm lies [0-9.]+ mm from the volume's slice 0"):
        dicom_export.source_files(node, database)
