"""Reading and atomically writing volumes (NIfTI, NRRD, MHA, DICOM series folders).

Images are SimpleITK images in LPS physical space; arrays taken from them are in
(K, J, I) = (z, y, x) order.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medcnncad.errors import InputError
from medcnncad.io.dicom_series import FrameGrid, check_multiframe_geometry, check_series_geometry, series_files

__all__ = ["read_volume", "read_volumes", "read_picked_volumes", "volume_index", "read_header", "volume_count",
           "check_finite", "write_image",
           "write_probability_map", "UINT8_SCALE", "atomic_path", "same_space", "geometry_text", "signals_deferred",
           "staged_outputs", "is_dicom_file",
           "available_memory_bytes"]

_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha", ".mhd", ".dcm")


def read_volume(path: str | Path, series: str | None = None) -> sitk.Image:
    """Read a 3D scalar volume from a file or a DICOM series folder.

    ``series`` selects a DICOM series in a folder that holds several (SeriesInstanceUID or
    SeriesDescription); a folder with several series and no selector is an error listing them. For a
    4D file (e.g. the Decathlon's stacked sequences), ``series`` is the 0-based index of the volume to read
    (:func:`volume_index`); a 4D file of several volumes without one is an error.

    Raises:
        InputError: naming the path when it is missing, unreadable, not 3D, not
            scalar, or contains NaN/Inf voxels.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        image = _reading(path, lambda: _read_dicom_folder(path, series))
        return _checked(image, path)
    index = volume_index(path, series) if series is not None else None
    return read_volumes(path, [index])[0]


def read_volumes(path: str | Path, indices: Sequence[int | None]) -> list[sitk.Image]:
    """Read several 3D volumes of one file at once (a 4D file read once; ``None`` or 0: a 3D file's only volume).

    Args:
        path: a volume file (not a DICOM folder).
        indices: 0-based volume indices along the file's 4th axis, or ``None`` for a file holding one volume.

    Raises:
        InputError: naming the path and the index, as :func:`read_volume` does.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found" if not path.exists() else f"{path}: not a volume file")
    image = _reading(path, lambda: _read_file(path, any(i is not None for i in indices)))
    if image.GetDimension() != 4:
        wrong = sorted({i for i in indices if i not in (None, 0)})
        if wrong:
            raise InputError(f"{path}: volume {wrong[0]} does not exist: the file holds one 3D volume (index 0)")
        checked = _checked(image, path)
        return [checked for _ in indices]
    count = image.GetSize()[3]
    indices = [0 if index is None and count == 1 else index for index in indices]
    for index in indices:
        if index is None or not 0 <= index < count:
            raise InputError(f"{path}: {count} volumes in one 4D file of size {image.GetSize()}; "
                             + ("pick one of them" if index is None else f"volume {index} does not exist") +
                             f" (0-based, 0 to {count - 1})")
    return [_checked(image[:, :, :, int(index)], path) for index in indices]  # type: ignore[arg-type]


def read_picked_volumes(files: Mapping[str, str | Path], indices: Mapping[str, int]) -> dict[str, sitk.Image]:
    """Name -> the volume ``indices[name]`` of file ``files[name]``, each file read once however many names share
    it (the channels of one 4D file)."""
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(Path(path).resolve(), []).append(name)
    read: dict[str, sitk.Image] = {}
    for path, names in by_file.items():
        read.update(zip(names, read_volumes(path, [indices[name] for name in names])))
    return read


def volume_index(path: str | Path, selector: str) -> int:
    """A 4D file's volume selector (``"2"``: the third volume, 0-based) as an int, or an InputError naming both."""
    text = str(selector).strip()
    if not (text.isascii() and text.isdecimal()):
        raise InputError(f"{path}: volume selector {selector!r} is not a 0-based volume index (a series selector "
                         "is for DICOM folders)")
    return int(text)


def read_header(path: str | Path) -> sitk.ImageFileReader:
    """A file's image header (size, components per voxel, pixel type), no voxels read.

    Raises:
        InputError: naming the path when it cannot be read as an image.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"{path}: cannot be read as an image") from None
    return reader


def volume_count(path: str | Path) -> int:
    """How many 3D volumes an image file holds, by its header (a 4D file's fourth size, else 1); InputError naming
    the path when it cannot be read."""
    size = read_header(path).GetSize()
    return int(size[3]) if len(size) == 4 else 1


def _reading(path: Path, read: Callable[[], sitk.Image]) -> sitk.Image:
    """Run ``read``; SimpleITK's reading errors become one InputError naming the path."""
    try:
        return read()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "ERROR" in ln or "Exception" in ln), first[0] if first else "")
        raise InputError(f"{path}: cannot be read as an image ({detail.strip()[:160]})") from exc


def _checked(image: sitk.Image, path: Path) -> sitk.Image:
    """``image`` if it is a non-empty, finite 3D scalar volume, else an InputError naming ``path``."""
    if image.GetDimension() != 3:
        raise InputError(f"{path}: expected a 3D volume, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected a scalar volume, got {image.GetNumberOfComponentsPerPixel()} components")
    if min(image.GetSize()) < 1:
        raise InputError(f"{path}: empty volume {image.GetSize()}")
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    if np.abs(direction.T @ direction - np.eye(3)).max() > ORTHOGONAL_TOLERANCE:
        raise InputError(f"{path}: its voxel axes are not perpendicular (a sheared grid, direction "
                         f"{np.round(direction, 4).tolist()}): NIfTI and the engine's resampling hold orthogonal grids "
                         "only; resample it onto one first")
    check_finite(image, str(path))
    return image


ORTHOGONAL_TOLERANCE = 1e-4  # |D'D - I| of a direction matrix: rounding in headers, not a shear


def check_finite(image: sitk.Image, name: str) -> None:
    """Refuse an image with NaN or infinite voxels, naming it."""
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        if not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
            raise InputError(f"{name}: contains NaN or infinite voxel values")


MAX_VOXELS = 2**31  # 2 G voxels (8 GiB as float32): larger headers are refused before reading


def _read_file(path: Path, stacked: bool = False) -> sitk.Image:
    """Read one file, checking the header's declared size before any voxel is allocated. A 4D file of several
    volumes is returned as 4D when ``stacked`` (its volumes picked by index), else refused."""
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    if len(size) == 4 and size[3] > 1 and not stacked:
        raise InputError(f"{path}: {size[3]} volumes in one 4D file of size {size} (e.g. the Decathlon's sequences "
                         "stacked); give each sequence as its own 3D file, or name the volumes in order "
                         "(segment --input FLAIR,T1,T1c,T2=FILE; batch: a <channel>_series column, 0-based)")
    if len(size) != 3 and not (len(size) == 4 and (size[3] == 1 or stacked)):
        raise InputError(f"{path}: expected a 3D volume, got {len(size)}D of size {size}")
    voxels = int(np.prod(size, dtype=np.float64)) * reader.GetNumberOfComponents()
    if voxels > MAX_VOXELS or min(size) < 1:
        raise InputError(f"{path}: declared size {size} is outside what the engine reads "
                         f"(1 to {MAX_VOXELS} voxels)")
    _check_nifti_header(path, int(np.prod(size, dtype=np.float64)), voxels * _BYTES.get(reader.GetPixelID(), 1))
    # an enhanced multi-frame object's frames: in spatial order on an even grid? Then the image lies on it
    grid = check_multiframe_geometry(path) if is_dicom_file(path) else None
    image = reader.Execute()
    if image.GetDimension() == 4 and size[3] == 1 and not stacked:  # one time point: a 3D volume
        image = image[:, :, :, 0]
    if grid is not None and image.GetDimension() == 3:
        _place_on_frames(image, grid)
    return image


def _place_on_frames(image: sitk.Image, grid: FrameGrid) -> None:
    """Give a multi-frame file's image the grid its frames lie on (GDCM's own is (1, 1, 1) mm spacing when the frames'
    steps differ by rounding, with no warning); the in-plane spacing stays GDCM's where the file gives none."""
    spacing = image.GetSpacing()
    image.SetSpacing([value if value is not None else spacing[axis] for axis, value in enumerate(grid.spacing)])
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    with open(path, "rb") as handle:
        return handle.read(132)[128:] == b"DICM"


_BYTES = {sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
          sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat32: 4, sitk.sitkFloat64: 8,
          sitk.sitkVectorUInt8: 1, sitk.sitkVectorFloat32: 4, sitk.sitkVectorFloat64: 8}


def _gzip_length(path: Path) -> int:
    """Uncompressed length of a gzip file; a truncated or corrupt stream is an error."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    total = 0
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                total += len(decompressor.decompress(chunk))
                while decompressor.unconsumed_tail:
                    total += len(decompressor.decompress(decompressor.unconsumed_tail))
                if decompressor.eof:
                    break
    except zlib.error as exc:
        raise InputError(f"{path}: corrupt compressed data ({exc})") from None
    if not decompressor.eof:
        raise InputError(f"{path}: file is truncated (compressed stream ends early)")
    return total


_NIFTI_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8, 1536: 16,
                1792: 16, 2048: 32, 2304: 4}
"""NIfTI datatype code -> bytes per voxel on disk (what readers go by; ``bitpix`` may be written wrong)."""


def _nifti_layout(header: bytes) -> tuple[int, int, tuple[float, float, float]] | None:
    """Voxel data offset, bits per voxel as stored (from the datatype code; ``bitpix`` for an unknown code; before
    any ``scl_slope`` scaling) and the three voxel sizes (``pixdim[1:4]``, mm) of a NIfTI-1/2 header; None when the
    bytes are no NIfTI header; an offset of -1 when it is out of range."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            offset = struct.unpack(order + "f", header[108:112])[0]
            datatype, bitpix = struct.unpack(order + "2h", header[70:74])
            pixdim = struct.unpack(order + "3f", header[80:92])
        elif len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            offset = struct.unpack(order + "q", header[168:176])[0]
            datatype, bitpix = struct.unpack(order + "2h", header[12:16])
            pixdim = struct.unpack(order + "3d", header[112:136])
        else:
            continue
        bits = 8 * _NIFTI_BYTES[datatype] if datatype in _NIFTI_BYTES else int(bitpix)
        return ((int(offset) if np.isfinite(offset) and 0 <= offset < 2**40 else -1), bits,
                (float(pixdim[0]), float(pixdim[1]), float(pixdim[2])))
    return None


def _check_nifti_header(path: Path, voxels: int, read_bytes: int) -> None:
    """Refuse NIfTI files (plain or gzip) with a negative voxel size, or that hold fewer voxel bytes than their header
    declares: ``voxels`` (per component) times the bytes per voxel on disk (:func:`_nifti_layout`: from the datatype
    code, not ITK's float32 for a file with ``scl_slope``); ``read_bytes`` (what ITK will hold in memory) only when
    the header gives no usable size.

    ITK reads such truncated files without complaint (the missing voxels come back as zeros).
    """
    name = path.name.lower()
    if ".nii" not in name:
        return
    compressed = name.endswith(".gz")
    with open(path, "rb") as handle:
        try:
            header = gzip.GzipFile(fileobj=handle).read(544) if compressed else handle.read(544)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path}: corrupt compressed data ({exc})") from None
    layout = _nifti_layout(header)
    if layout is None:
        return
    offset, bitpix, pixdim = layout
    if offset == -1:
        raise InputError(f"{path}: invalid NIfTI header (voxel data offset out of range)")
    if min(pixdim) < 0:
        raise InputError(f"{path}: negative voxel size in its NIfTI header (pixdim {[round(v, 4) for v in pixdim]}): "
                         "readers disagree on which side is left (ITK mirrors the axis, nibabel does not); write the "
                         "file again with positive voxel sizes")
    expected = offset + (voxels * bitpix // 8 if bitpix > 0 and bitpix % 8 == 0 else read_bytes)
    if compressed:
        # gzip's trailer holds the uncompressed size (mod 2**32): a complete file matches it;
        # only when it does not, decompress the whole stream to say what is wrong
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            trailer = struct.unpack("<I", handle.read(4))[0]
        if trailer == expected % 2**32:
            return
        length = _gzip_length(path)
    else:
        length = path.stat().st_size
    if length < expected:
        raise InputError(f"{path}: file is truncated ({length} bytes, the header declares {expected})")


def _read_dicom_folder(folder: Path, series: str | None = None) -> sitk.Image:
    """Read the selected DICOM series of a folder, slices sorted by position, once its files are known to make one
    evenly spaced grid (:func:`~medcnncad.io.dicom_series.check_series_geometry`); as float32 when the files'
    rescale slopes or intercepts differ. A series of one multi-frame file (an enhanced MR or CT object) is read as
    that file, with its frames' checks (the series reader would stack its 3D volume into a 4D image)."""
    files = series_files(folder, series)
    if len(files) == 1 and read_header(files[0]).GetSize()[2:3] > (1,):
        return _read_file(Path(files[0]))
    per_file_rescale = check_series_geometry(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    if per_file_rescale:
        reader.SetOutputPixelType(sitk.sitkFloat32)
    return reader.Execute()


@contextmanager
def staged_outputs(out_dir: str | Path, remove: Sequence[Path] = ()) -> Iterator[Path]:
    """A staging folder inside ``out_dir`` (created if needed): the files written there appear in ``out_dir``
    together when the block ends, replacing files of the same names, and the files of ``remove`` (a list the block
    may still fill) go in the same step; on an error or an interrupt nothing changes. An OSError raised in the
    block names the output's final path in ``out_dir``, not its hidden staging copy.

    Raises:
        InputError: naming ``out_dir`` when it cannot be created or written, or an output whose name a folder
            (or anything but a file) holds there; checked before anything is replaced.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".medcnncad-staging-", dir=out))
    except OSError as exc:
        raise InputError(f"{out}: output folder is not writable ({exc.strerror})") from None
    try:
        try:
            yield staging
        except OSError as exc:  # a write error names the file the user will look for, not the hidden staging copy
            exc.filename = _final_name(exc.filename, staging, out)
            exc.filename2 = _final_name(exc.filename2, staging, out)
            raise
        staged = sorted(staging.iterdir())
        taken = [out / p.name for p in staged if (out / p.name).exists() and not (out / p.name).is_file()]
        if taken:  # os.replace would fail there, after the files before it had been replaced
            raise InputError(f"{taken[0]}: an output's name is taken by a folder (or another non-file); nothing was "
                             f"written to {out}")
        with signals_deferred():
            for path in staged:
                os.replace(path, out / path.name)
            for path in remove:
                path.unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _final_name(name: object, staging: Path, out: Path) -> object:
    """A path inside the staging folder as the output it becomes in ``out`` (an :func:`atomic_path` temporary
    ``.labels-k2j3.sr.dcm`` as ``labels.sr.dcm``); any other value as it is."""
    if not isinstance(name, (str, os.PathLike)) or Path(name).parent != staging:
        return name
    written = Path(name).name
    if written.startswith("."):  # atomic_path's ".<stem>-<random>.<suffixes>"
        head, dot, tail = written[1:].partition(".")
        written = head.rsplit("-", 1)[0] + dot + tail
    return str(out / written)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, so a group of renames is not cut in half."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def available_memory_bytes() -> int | None:
    """Memory the OS can give this process now (Linux MemAvailable; None where unknown)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the ordinary permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_image(image: sitk.Image, path: str | Path, compress: bool = True, level: int = 1) -> Path:
    """Write an image atomically (temporary name, then rename); returns ``path``.

    ``level`` is the zlib compression level (1 = fast; the files stay standard gzip/NRRD).
    """
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress, level if compress else -1)
    return Path(path)


UINT8_SCALE = 1.0 / 255.0
"""Probability per stored step of a uint8 probability map (NIfTI ``scl_slope``)."""


def _nifti_set_scaling(path: Path, slope: float, intercept: float) -> None:
    """Set ``scl_slope``/``scl_inter`` (header bytes 112-119) of an uncompressed NIfTI-1 file in place."""
    with open(path, "r+b") as f:
        header = f.read(120)
        order = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
        if struct.unpack(order + "i", header[:4])[0] != 348:
            raise ValueError(f"{path}: not a NIfTI-1 file")
        f.seek(112)
        f.write(struct.pack(order + "ff", slope, intercept))


def write_probability_map(values_kji: np.ndarray, reference: sitk.Image, path: str | Path,
                          encoding: str = "float32", level: int = 1) -> Path:
    """Write a probability map (K, J, I), values 0-1, on ``reference``'s grid as ``.nii.gz``, atomically.

    ``encoding="uint8"`` stores round(255 p) with NIfTI ``scl_slope`` 1/255: a quarter of the
    bytes, much faster to compress, and every NIfTI reader (ITK, SimpleITK, Slicer, nibabel)
    gives back float probabilities within 1/510 of the original. ``"float32"`` stores them as they are.
    """
    if encoding == "float32":
        image = sitk.GetImageFromArray(values_kji.astype(np.float32, copy=False))
        image.CopyInformation(reference)
        return write_image(image, path, True, level)
    if encoding != "uint8" or not str(path).endswith(".nii.gz"):
        raise InputError(f"probability map {path}, encoding {encoding!r}: choose float32, or uint8 for .nii.gz")
    stored: np.ndarray = np.empty(values_kji.shape, np.uint8)
    for k in range(0, stored.shape[0], 32):  # no full-size float32 temporary
        part = np.clip(values_kji[k:k + 32].astype(np.float32), 0.0, 1.0) * 255.0
        stored[k:k + 32] = np.rint(part)
    image = sitk.GetImageFromArray(stored)
    image.CopyInformation(reference)
    with atomic_path(path) as tmp:
        raw = tmp.with_name(tmp.name.removesuffix(".gz"))
        try:
            sitk.WriteImage(image, str(raw), False)
            _nifti_set_scaling(raw, UINT8_SCALE, 0.0)
            with open(raw, "rb") as src, gzip.open(tmp, "wb", compresslevel=level) as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        finally:
            raw.unlink(missing_ok=True)
    return Path(path)


def same_space(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True when both images have the same size, spacing, origin and direction."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=tol, atol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol * 10)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )


def geometry_text(image: sitk.Image) -> str:
    """One-line description of an image grid (size, spacing, origin, direction)."""
    fmt = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
    return (f"size {image.GetSize()}, spacing {fmt(image.GetSpacing())} mm, "
            f"origin {fmt(image.GetOrigin())} mm, direction {fmt(image.GetDirection())}")
