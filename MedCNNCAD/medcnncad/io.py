"""Reading and atomically writing volumes (NIfTI, NRRD, MHA, DICOM series folders).

Images are SimpleITK images in LPS physical space; arrays taken from them are in
(K, J, I) = (z, y, x) order.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from .errors import InputError

__all__ = ["read_volume", "write_image", "atomic_path", "same_space", "geometry_text"]

_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha", ".mhd", ".dcm")


def read_volume(path: str | Path) -> sitk.Image:
    """Read a 3D scalar volume from a file or a DICOM series folder.

    Raises:
        InputError: naming the path when it is missing, unreadable, not 3D, not
            scalar, or contains NaN/Inf voxels.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        image = _read_dicom_folder(path) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "ERROR" in ln or "Exception" in ln), first[0] if first else "")
        raise InputError(f"{path}: cannot be read as an image ({detail.strip()[:160]})") from exc
    if image.GetDimension() != 3:
        raise InputError(f"{path}: expected a 3D volume, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected a scalar volume, got {image.GetNumberOfComponentsPerPixel()} components")
    if min(image.GetSize()) < 1:
        raise InputError(f"{path}: empty volume {image.GetSize()}")
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        if not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
            raise InputError(f"{path}: contains NaN or infinite voxel values")
    return image


def _read_dicom_folder(folder: Path) -> sitk.Image:
    """Read the (first) DICOM series in a folder, sorted by position."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder}: folder holds no DICOM series")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


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


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write an image atomically (temporary name, then rename); returns ``path``."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
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
