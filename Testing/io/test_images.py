"""Reading volumes: formats, DICOM series folders, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image

from medcnncad.errors import InputError
from medcnncad.io.images import read_volume, volume_count, write_image


def _write_dicom_series(image: sitk.Image, folder) -> None:
    """Write a volume as a CT DICOM series, one file per slice (SimpleITK's recipe)."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.12345"
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        s.SetMetaData("0020|000e", series_uid)
        s.SetMetaData("0008|0060", "CT")
        s.SetMetaData("0020|0037", "\\".join(str(v) for v in (direction[0], direction[3], direction[6],
                                                               direction[1], direction[4], direction[7])))
        s.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        s.SetMetaData("0020|0013", str(k))
        s.SetMetaData("0018|0050", str(image.GetSpacing()[2]))
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(s)


def test_dicom_series_folder_reads_with_geometry(tmp_path):
    arr = (np.arange(6 * 7 * 8).reshape(6, 7, 8) % 200).astype(np.int16)
    image = make_image(arr, spacing=(0.7, 0.8, 2.5), origin=(-10, 20, 30))
    _write_dicom_series(image, tmp_path / "series")
    back = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    assert back.GetSpacing() == pytest.approx((0.7, 0.8, 2.5), abs=1e-4)
    assert back.GetOrigin() == pytest.approx((-10, 20, 30), abs=1e-3)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".nii"])
def test_formats_round_trip(tmp_path, suffix):
    arr = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    image = make_image(arr, spacing=(1, 2, 3), origin=(4, 5, 6), direction=(0, 1, 0, 1, 0, 0, 0, 0, -1))
    path = write_image(image, tmp_path / f"x{suffix}")
    back = read_volume(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    assert back.GetDirection() == pytest.approx(image.GetDirection())
    assert [p.name for p in tmp_path.iterdir()] == [f"x{suffix}"]  # no temporary file left


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.nii.gz: file not found"):
        read_volume(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 10 10 10\nencoding: raw\n\n\x00\x01")
    with pytest.raises(InputError, match="bad.nrrd: cannot be read"):
        read_volume(bad)
    nan = make_image(np.full((3, 3, 3), np.nan, np.float32))
    write_image(nan, tmp_path / "nan.mha")  # (ITK reads NaN in NIfTI as 0)
    with pytest.raises(InputError, match="NaN"):
        read_volume(tmp_path / "nan.mha")
    flat = sitk.GetImageFromArray(np.zeros((5, 5), np.float32))
    sitk.WriteImage(flat, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match="expected a 3D volume, got 2D"):
        read_volume(tmp_path / "flat.nii.gz")
    import nibabel as nib  # a Decathlon-style file: four sequences stacked along a fourth axis

    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 4), np.float32), np.eye(4)), str(tmp_path / "BRATS_001.nii.gz"))
    with pytest.raises(InputError, match=r"BRATS_001.nii.gz: 4 volumes in one 4D file.*each sequence as its own"):
        read_volume(tmp_path / "BRATS_001.nii.gz")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        read_volume(empty)


def test_uint8_probability_maps_read_back_as_probabilities_within_half_a_step(tmp_path):
    import nibabel as nib

    from medcnncad.io.images import UINT8_SCALE, write_probability_map

    rng = np.random.default_rng(3)
    probs = rng.random((7, 9, 11)).astype(np.float32)
    probs[0, 0, :3] = [0.0, 1.0, 0.5]
    reference = make_image(np.zeros((7, 9, 11), np.float32), spacing=(0.8, 0.9, 2.5), origin=(-10.0, 5.0, 3.0))
    path = write_probability_map(probs, reference, tmp_path / "prob_x.nii.gz", "uint8")
    back = sitk.ReadImage(str(path))  # ITK applies scl_slope: floats again
    assert back.GetPixelID() == sitk.sitkFloat32
    assert np.abs(sitk.GetArrayFromImage(back) - probs).max() <= UINT8_SCALE / 2 + 1e-6
    assert np.allclose(back.GetSpacing(), reference.GetSpacing())
    assert np.allclose(back.GetOrigin(), reference.GetOrigin())
    assert sitk.GetArrayFromImage(back)[0, 0, :2].tolist() == [0.0, 1.0]
    stored = nib.load(str(path))
    assert stored.get_data_dtype() == np.uint8 and stored.dataobj.slope == pytest.approx(1 / 255)
    assert np.abs(np.asarray(stored.dataobj).transpose(2, 1, 0) - probs).max() <= UINT8_SCALE / 2 + 1e-6
    # float32 files keep the values exactly
    exact = write_probability_map(probs, reference, tmp_path / "prob_y.nii.gz", "float32")
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(exact))), probs)
    with pytest.raises(ValueError, match="uint16"):
        write_probability_map(probs, reference, tmp_path / "prob_z.nii.gz", "uint16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prob_x.nii.gz", "prob_y.nii.gz"]  # no temporaries left


def test_a_4d_file_gives_the_volume_asked_for_on_its_own_grid(tmp_path):
    """A Decathlon-style 4D file: volume i is the array's i-th volume, on the grid a 3D file of the same header
    has (tilted direction, anisotropic spacing)."""
    import nibabel as nib

    from medcnncad.io.images import read_volumes

    rng = np.random.default_rng(0)
    data = rng.normal(size=(5, 6, 7, 3)).astype(np.float32)  # (x, y, z, volume), as nibabel stores it
    angle = np.deg2rad(20)
    affine = np.array([[np.cos(angle), -np.sin(angle), 0, 10], [np.sin(angle), np.cos(angle), 0, -4],
                       [0, 0, 2.5, 7], [0, 0, 0, 1]]) @ np.diag([1.2, 0.9, 1.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "stacked.nii.gz"))
    nib.save(nib.Nifti1Image(data[..., 2], affine), str(tmp_path / "third.nii.gz"))
    third, first = read_volumes(tmp_path / "stacked.nii.gz", [2, 0])
    alone = read_volume(tmp_path / "third.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(third), data[..., 2].transpose(2, 1, 0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(first), data[..., 0].transpose(2, 1, 0))
    for got, want in ((third.GetOrigin(), alone.GetOrigin()), (third.GetSpacing(), alone.GetSpacing()),
                      (third.GetDirection(), alone.GetDirection())):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(alone.GetDirection(), np.eye(3).ravel())  # the tilt was read
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(tmp_path / "stacked.nii.gz", "1")),
                                  data[..., 1].transpose(2, 1, 0))
    with pytest.raises(InputError, match=r"stacked.nii.gz: 3 volumes .* volume 3 does not exist \(0-based, 0 to 2\)"):
        read_volume(tmp_path / "stacked.nii.gz", "3")
    with pytest.raises(InputError, match=r"stacked.nii.gz: volume selector 'T1' is not a 0-based volume index"):
        read_volume(tmp_path / "stacked.nii.gz", "T1")
    with pytest.raises(InputError, match=r"third.nii.gz: volume 1 does not exist: the file holds one 3D volume"):
        read_volume(tmp_path / "third.nii.gz", "1")
    with pytest.raises(InputError, match=r"volume selector '²' is not a 0-based volume index"):
        read_volume(tmp_path / "stacked.nii.gz", "²")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(tmp_path / "third.nii.gz", "0")),
                                  sitk.GetArrayFromImage(alone))  # a one-volume file's volume 0 is itself


def test_volume_count_reads_the_header_only(tmp_path):
    from medcnncad.errors import InputError

    three = tmp_path / "three.nii.gz"
    sitk.WriteImage(sitk.Image(4, 5, 6, sitk.sitkInt16), str(three))
    four = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.Image(4, 5, 6, sitk.sitkInt16)] * 3), str(four))
    assert volume_count(three) == 1 and volume_count(four) == 3
    (tmp_path / "not.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputError, match="not.nii.gz: cannot be read as an image"):
        volume_count(tmp_path / "not.nii.gz")


def test_scaled_nifti_reads_as_its_scaled_values_and_a_truncated_one_is_still_refused(tmp_path):
    """A NIfTI with scl_slope (dcm2niix writes them; so do the uint8 probability maps) holds int16 or uint8 on disk
    while ITK returns float32: the completeness check counts the bytes on disk, not in memory."""
    import nibabel as nib

    from medcnncad.io.images import write_probability_map

    stored = (np.arange(20 * 20 * 10, dtype=np.int16).reshape(20, 20, 10) % 1000)
    for suffix in (".nii", ".nii.gz"):
        image = nib.Nifti1Image(stored, np.diag([-1.0, -1.0, 2.0, 1.0]))
        image.header.set_slope_inter(0.5, -10.0)
        nib.save(image, str(tmp_path / f"scaled{suffix}"))
        back = read_volume(tmp_path / f"scaled{suffix}")
        np.testing.assert_allclose(sitk.GetArrayFromImage(back).transpose(2, 1, 0), stored * 0.5 - 10.0)
    raw = (tmp_path / "scaled.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(raw[:-100])
    with pytest.raises(InputError, match=r"cut.nii: file is truncated \(\d+ bytes, the header declares"):
        read_volume(tmp_path / "cut.nii")
    wrong = bytearray(raw)  # bitpix written as 32 for int16 data: readers go by the datatype code, and so does this
    wrong[72:74] = (32).to_bytes(2, "little")
    (tmp_path / "bitpix.nii").write_bytes(bytes(wrong))
    np.testing.assert_allclose(sitk.GetArrayFromImage(read_volume(tmp_path / "bitpix.nii")).transpose(2, 1, 0),
                               stored * 0.5 - 10.0)
    probs = np.random.default_rng(1).random((5, 6, 7)).astype(np.float32)
    path = write_probability_map(probs, make_image(np.zeros((5, 6, 7), np.float32)), tmp_path / "p.nii.gz", "uint8")
    assert np.abs(sitk.GetArrayFromImage(read_volume(path)) - probs).max() <= 1 / 510 + 1e-6


def _series(folder, positions, orientations=None, slopes=None, spacing=(0.8, 0.9)):
    """An MR series of 8 x 10 int16 slices (value 300 + 50 k), one file per position (LPS mm), with pydicom."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir()
    series_uid = generate_uid()
    for k, position in enumerate(positions):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.TransferSyntaxUID = MRImageStorage, ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.3", series_uid, "1.2.3.4"
        ds.Modality, ds.PatientID, ds.InstanceNumber = "MR", "P", k + 1
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in (orientations[k] if orientations else (1, 0, 0, 0, 1, 0))]
        ds.PixelSpacing = [float(v) for v in spacing]
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", 8, 10
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if slopes is not None:
            ds.RescaleSlope, ds.RescaleIntercept = slopes[k], 0.0
        ds.PixelData = np.full((8, 10), 300 + 50 * k, np.int16).tobytes()
        pydicom.dcmwrite(str(folder / f"s{k:03d}.dcm"), ds, enforce_file_format=True)


def test_a_dicom_series_that_is_not_one_even_grid_is_refused(tmp_path):
    """GDCM would stack each of these onto an even grid, placing slices millimetres off, with a stderr warning at
    most; a series of per-slice rescale slopes is read as float (GDCM took the first slice's integers)."""
    even = [(0.0, 0.0, 2.0 * k) for k in range(6)]
    _series(tmp_path / "even", even)
    _series(tmp_path / "rounded", [(0.0, 0.0, round(0.625 * k, 1)) for k in range(8)])  # positions to one decimal
    assert read_volume(tmp_path / "rounded").GetSize()[2] == 8
    assert read_volume(tmp_path / "even").GetSpacing() == pytest.approx((0.9, 0.8, 2.0))  # (0028,0030) is row\\col
    cases = {
        "gap": ([p for k, p in enumerate(even) if k != 3], None, r"unevenly spaced \(steps 2.00 to 4.00 mm"),
        "echoes": (even[:3] * 2, None, r"6 of its 6 images share a slice position"),
        "tilt": ([(0.0, 0.364 * z, z) for _, _, z in even], None, r"gantry tilt 20.0 degrees"),
        "mixed": (even, [(1, 0, 0, 0, 1, 0)] * 3 + [(0, 1, 0, 0, 0, -1)] * 3, "slices of 2 orientations"),
    }
    for name, (positions, orientations, message) in cases.items():
        _series(tmp_path / name, positions, orientations)
        with pytest.raises(InputError, match=rf"{name}: .*{message}"):
            read_volume(tmp_path / name)
    slopes = [1.0, 0.013, 0.027, 0.0061, 0.5, 0.25]
    _series(tmp_path / "scaled", even, slopes=slopes)
    back = read_volume(tmp_path / "scaled")
    expected = [(300 + 50 * k) * slope for k, slope in enumerate(slopes)]
    np.testing.assert_allclose(sitk.GetArrayFromImage(back)[:, 0, 0], expected, rtol=1e-6)


def test_a_sheared_grid_and_a_negative_voxel_size_are_refused(tmp_path):
    """A sheared NRRD would be written back as an orthogonal NIfTI (the labels millimetres off); a negative NIfTI
    pixdim is mirrored by ITK and not by nibabel (left and right disagree between viewers)."""
    import nibabel as nib

    image = make_image(np.zeros((4, 5, 6), np.float32))
    matrix = np.eye(3)
    matrix[1, 2] = 0.35  # each slice shifted 0.35 mm in y
    image.SetDirection(tuple((matrix / np.linalg.norm(matrix, axis=0)).ravel()))
    sitk.WriteImage(image, str(tmp_path / "shear.nrrd"))
    with pytest.raises(InputError, match=r"shear.nrrd: its voxel axes are not perpendicular"):
        read_volume(tmp_path / "shear.nrrd")
    header = nib.Nifti1Header()
    header.set_data_shape((4, 5, 6))
    header["qform_code"] = 1
    negative = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), None, header)
    negative.header["pixdim"][1:4] = [-2, 2, 3]  # after the image is made: nibabel would take the absolute value
    nib.save(negative, str(tmp_path / "negative.nii"))
    import struct

    assert struct.unpack("<f", (tmp_path / "negative.nii").read_bytes()[80:84])[0] == -2  # on disk (nibabel's loader
    # would report its absolute value)
    with pytest.raises(InputError, match=r"negative.nii: negative voxel size in its NIfTI header \(pixdim \[-2.0"):
        read_volume(tmp_path / "negative.nii")


def test_an_enhanced_multiframe_file_is_read_only_with_its_frames_in_spatial_order(tmp_path):
    """GDCM stacks a multi-frame object's frames in stored order onto an even grid: a six-slice series converted to
    one enhanced MR object (highdicom, which stores them in spatial order), then its frames reordered with pydicom,
    reads in either direction; frames out of order are refused."""
    import copy

    import highdicom as hd
    import pydicom

    _series(tmp_path / "slices", [(0.0, 0.0, 2.0 * k) for k in range(6)])
    slices = [pydicom.dcmread(str(path)) for path in sorted((tmp_path / "slices").iterdir())]
    hd.legacy.LegacyConvertedEnhancedMRImage(slices, series_instance_uid=hd.UID(), series_number=2,
                                             sop_instance_uid=hd.UID(), instance_number=1).save_as(
        str(tmp_path / "converted.dcm"))
    source = pydicom.dcmread(str(tmp_path / "converted.dcm"))
    for name, order in (("ascending", range(6)), ("descending", range(5, -1, -1)), ("shuffled", [3, 0, 5, 1, 4, 2])):
        dataset = copy.deepcopy(source)
        dataset.PerFrameFunctionalGroupsSequence = [copy.deepcopy(source.PerFrameFunctionalGroupsSequence[k])
                                                    for k in order]
        dataset.PixelData = source.pixel_array[list(order)].tobytes()
        dataset.save_as(str(tmp_path / f"{name}.dcm"))
    for name in ("ascending", "descending"):
        image = read_volume(tmp_path / f"{name}.dcm")
        for k in range(6):  # slice k holds the pixels of the slice at its own position (value 300 + 50 j at 2 j mm)
            z = image.TransformIndexToPhysicalPoint((0, 0, k))[2]
            assert sitk.GetArrayFromImage(image)[k, 0, 0] == 300 + 50 * round(z / 2.0), (name, k)
    with pytest.raises(InputError, match=r"shuffled.dcm: its 6 frames are not stored in spatial order"):
        read_volume(tmp_path / "shuffled.dcm")


def test_a_write_error_in_staged_outputs_names_the_final_path_not_the_staging_copy(tmp_path):
    """A helper's review: a failed write named out/.medcnncad-staging-xxx/.labels-k2j3.sr.dcm, a path that is gone
    when the user reads the message; it now names out/labels.sr.dcm, and the folder is left as it was."""
    from medcnncad.io.images import atomic_path, staged_outputs

    with pytest.raises(OSError) as caught:
        with staged_outputs(tmp_path / "out") as staging:
            (staging / "labels.nii.gz").write_bytes(b"x")
            with atomic_path(staging / "labels.sr.dcm") as tmp:
                raise OSError(28, "No space left on device", str(tmp))
    assert caught.value.filename == str(tmp_path / "out" / "labels.sr.dcm")
    assert caught.value.strerror == "No space left on device" and list((tmp_path / "out").iterdir()) == []
    with pytest.raises(OSError) as caught:
        with staged_outputs(tmp_path / "out") as staging:
            raise OSError(13, "Permission denied", str(staging / "report.json"))
    assert caught.value.filename == str(tmp_path / "out" / "report.json")


def test_a_folder_holding_one_enhanced_multiframe_file_reads_as_that_file(tmp_path):
    """A PACS export puts an enhanced MR series (one file) in a folder of its own; given that folder, the series reader
    stacked the one 3D file into a 4D image and refused it as "expected a 3D volume, got 4D". It now reads the file,
    with the file's checks: a folder holding frames stored descending gives the file's volume, one holding frames out
    of spatial order is refused naming the file."""
    import highdicom as hd
    import pydicom

    _series(tmp_path / "slices", [(0.0, 0.0, 2.0 * k) for k in range(6)])
    slices = [pydicom.dcmread(str(path)) for path in sorted((tmp_path / "slices").iterdir())]
    source = hd.legacy.LegacyConvertedEnhancedMRImage(slices, series_instance_uid=hd.UID(), series_number=2,
                                                      sop_instance_uid=hd.UID(), instance_number=1)
    frames, pixels = list(source.PerFrameFunctionalGroupsSequence), source.pixel_array
    descending = list(np.argsort([-float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in frames]))
    for name, order in (("descending", descending), ("shuffled", [descending[k] for k in (3, 0, 5, 1, 4, 2)])):
        (tmp_path / name).mkdir()
        source.PerFrameFunctionalGroupsSequence = [frames[k] for k in order]
        source.PixelData = pixels[order].tobytes()
        source.save_as(str(tmp_path / name / "enhanced.dcm"))
    image = read_volume(tmp_path / "descending")
    assert image.GetSize() == (10, 8, 6) and image.GetSpacing() == pytest.approx((0.9, 0.8, 2.0))
    assert image.GetOrigin() == pytest.approx((0.0, 0.0, 10.0)) and image.GetDirection()[8] == pytest.approx(-1.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[:, 0, 0], [550, 500, 450, 400, 350, 300])
    with pytest.raises(InputError, match=r"shuffled/enhanced.dcm: its 6 frames are not stored in spatial order"):
        read_volume(tmp_path / "shuffled")


def test_an_enhanced_multiframe_file_with_rounded_positions_reads_on_its_frames_grid(tmp_path):
    """A multi-frame file whose frame positions are written to two decimals (0.625 mm steps read 0.62 and 0.63, as a
    series of such slices reads) was read by GDCM onto spacing (1, 1, 1) mm: its pixel spacing (0.8 x 0.9 mm) and its
    frames' step both lost, with no warning, so every volume in mL was wrong. The volume now lies on the frames' grid:
    the file's pixel spacing, the mean step, frame k at slice k."""
    import highdicom as hd
    import pydicom

    _series(tmp_path / "slices", [(0.0, 0.0, round(0.625 * k, 2)) for k in range(8)])
    slices = [pydicom.dcmread(str(path)) for path in sorted((tmp_path / "slices").iterdir())]
    source = hd.legacy.LegacyConvertedEnhancedMRImage(slices, series_instance_uid=hd.UID(), series_number=2,
                                                      sop_instance_uid=hd.UID(), instance_number=1)
    source.save_as(str(tmp_path / "rounded.dcm"))
    image = read_volume(tmp_path / "rounded.dcm")
    assert image.GetSpacing() == pytest.approx((0.9, 0.8, 4.38 / 7), abs=1e-9)
    positions = [[float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
                 for frame in source.PerFrameFunctionalGroupsSequence]
    assert image.GetOrigin() == pytest.approx(positions[0], abs=1e-9)
    placed = [image.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(8)]
    np.testing.assert_allclose(placed, positions, atol=0.01)  # the rounding (0.005 mm at either end), no more
    values = sitk.GetArrayFromImage(image)[:, 0, 0]
    np.testing.assert_array_equal(values, [300 + 50 * round(p[2] / 0.625) for p in positions])
