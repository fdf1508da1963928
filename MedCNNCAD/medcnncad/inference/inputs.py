"""A case's inputs: read, validate, bring onto one grid, order as the manifest's channels; memory check.

Images are SimpleITK images (LPS, mm); their arrays are (K, J, I).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from medcnncad.errors import InputError
from medcnncad.io.images import available_memory_bytes, check_finite, geometry_text, read_volume, same_space
from medcnncad.models.manifest import Manifest

__all__ = ["check_channels", "crop_to_foreground", "read_files", "read_inputs", "on_one_grid", "in_manifest_order",
           "gather_inputs", "check_memory", "check_distinct"]

log = logging.getLogger(__name__)


def _overlap_fraction(a: sitk.Image, b: sitk.Image) -> float:
    """Fraction of ``a``'s physical bounding box (LPS, axis-aligned) covered by ``b``'s."""
    def box(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
        corners = [img.TransformContinuousIndexToPhysicalPoint([c * (n - 0.5) - 0.5 * (1 - c) for c, n in
                                                                 zip(bits, img.GetSize())])
                   for bits in np.ndindex(2, 2, 2)]
        pts = np.asarray(corners)
        return pts.min(0), pts.max(0)
    (alo, ahi), (blo, bhi) = box(a), box(b)
    inter = np.clip(np.minimum(ahi, bhi) - np.maximum(alo, blo), 0, None).prod()
    return float(inter / max(np.prod(ahi - alo), 1e-9))


def read_files(paths: Mapping[str, str | Path]) -> dict[str, sitk.Image]:
    """Read (and validate) several image files, two at a time.

    Decompression and ITK's readers release the GIL, so two threads read four BraTS
    sequences about 1.5x faster than one. An unreadable file raises its ``InputError``
    (the first one in ``paths`` order), after the other reads have finished.
    """
    if len(paths) < 2:
        return {name: read_volume(path) for name, path in paths.items()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(paths, pool.map(read_volume, paths.values())))


def check_channels(manifest: Manifest, names: Iterable[str]) -> None:
    """Refuse a set of input channel names the model cannot run on (before anything is read or started).

    Raises:
        InputError: no input at all, a channel the model does not have, or a required one absent, naming them.
    """
    given = set(names)
    unknown = sorted(given - {c.name for c in manifest.inputs})
    if unknown:
        raise InputError(f"input channel(s) {unknown} not in model {manifest.id} "
                         f"(expects {manifest.input_names})")
    missing_required = [c.name for c in manifest.inputs if c.required and c.name not in given]
    if missing_required:
        raise InputError(f"model {manifest.id} needs input channel(s) {missing_required} "
                         f"(expects {manifest.input_names})")
    if not given:  # every channel optional, none given
        raise InputError(f"no input volume given (model {manifest.id} expects {manifest.input_names})")


def read_inputs(manifest: Manifest, inputs: Mapping[str, sitk.Image | str | Path]) -> dict[str, sitk.Image]:
    """Read and check a case's inputs: the given channels in manifest order, each on its own grid.

    Args:
        manifest: the model's manifest (its ``inputs``).
        inputs: channel name -> image or path of a volume file / DICOM folder.

    Raises:
        InputError: an unknown channel, an absent required one, an unreadable file or a volume that is
            not 3D scalar or is a single slice (:func:`check_thickness`), naming it.
    """
    check_channels(manifest, inputs)
    present = [c.name for c in manifest.inputs if c.name in inputs]
    read = read_files({name: source for name in present if not isinstance(source := inputs[name], sitk.Image)})
    images: dict[str, sitk.Image] = {}
    for name in present:
        value = inputs[name]
        if isinstance(value, sitk.Image):
            if value.GetDimension() != 3 or value.GetNumberOfComponentsPerPixel() != 1:
                raise InputError(f"input {name}: expected a 3D scalar volume, got {value.GetDimension()}D "
                                 f"with {value.GetNumberOfComponentsPerPixel()} component(s)")
            check_finite(value, f"input {name}")
        images[name] = value if isinstance(value, sitk.Image) else read[name]
        check_thickness(images[name], f"input {name}")
    check_distinct(images)
    return images


MIN_VOXELS_PER_AXIS = 3
"""A volume with fewer voxels than this along an axis is a single slice or a sliver, not a 3D scan: refused."""


def check_thickness(image: sitk.Image, source: str) -> None:
    """Refuse a volume that is a single slice (or a sliver) along some axis: the 3D networks would run and return a
    result that means nothing (a one-slice volume ran without a word).

    Raises:
        InputError: naming the volume, its size (I, J, K) and the axis.
    """
    size = image.GetSize()
    thin = [axis for axis, n in zip("IJK", size) if n < MIN_VOXELS_PER_AXIS]
    if thin:
        raise InputError(f"{source}: {size[0]} x {size[1]} x {size[2]} voxels, {size['IJK'.index(thin[0])]} along "
                         f"{thin[0]}: a single slice or a sliver, not a 3D volume (at least {MIN_VOXELS_PER_AXIS} "
                         f"voxels per axis)")


def check_distinct(images: Mapping[str, sitk.Image]) -> None:
    """Refuse two channels holding the same image (the same file or volume node given twice, a 4D file's one frame
    for every channel): the model would read one sequence as another without a sign of it. Constant images (e.g.
    all zeros) are left to the engine's own handling of inputs without content.

    Raises:
        InputError: naming both channels.
    """
    names = list(images)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            if _same_voxels(images[first], images[second]):
                raise InputError(f"inputs {first} and {second} are the same image (voxel for voxel): give each "
                                 "channel its own sequence")


def _same_voxels(a: sitk.Image, b: sitk.Image) -> bool:
    """Same grid and the same voxel values (a sparse sample first, so different images cost almost nothing)."""
    if not same_space(a, b) or a.GetPixelID() != b.GetPixelID():
        return False
    x, y = sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)
    sample = x.ravel()[::997]
    if not np.array_equal(sample, y.ravel()[::997]):
        return False
    return bool(np.array_equal(x, y)) and bool(x.min() != x.max())


def on_one_grid(images: Mapping[str, sitk.Image], warnings: list[str]) -> dict[str, sitk.Image]:
    """Inputs on other grids of the same physical space, resampled (linear, scanner coordinates as they
    are) onto the first input's grid, with a warning; an input that barely overlaps the first is an error.
    An input on the first's grid up to :func:`~medcnncad.io.images.same_space`'s tolerance (an origin a converter
    rounded 1e-5 mm away) takes the first's geometry exactly (a copy; its voxels as they are), so every later
    step sees one grid (ITK's filters compare geometry at a tighter tolerance and refuse two).
    Models with ``clinical_preprocessing`` register the sequences instead (:mod:`medcnncad.preprocessing`)."""
    names = list(images)
    first_name, first = names[0], images[names[0]]
    out = dict(images)
    for name in names[1:]:
        img = images[name]
        if same_space(first, img):
            out[name] = _with_geometry_of(first, img)
            continue
        if _overlap_fraction(first, img) < 0.5:
            raise InputError(f"input {name}: not in the same physical space as {first_name} "
                             f"({name}: {geometry_text(img)}; {first_name}: {geometry_text(first)})")
        message = f"input {name} was resampled onto the grid of {first_name} (grids differ)"
        log.warning(message)
        warnings.append(message)
        out[name] = sitk.Resample(img, first, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return out


def _with_geometry_of(first: sitk.Image, image: sitk.Image) -> sitk.Image:
    """``image`` with ``first``'s origin, spacing and direction exactly (a copy when they differ at all; the
    caller's image is not changed). Both are on one grid by :func:`~medcnncad.io.images.same_space`."""
    if (image.GetOrigin(), image.GetSpacing(), image.GetDirection()) == \
            (first.GetOrigin(), first.GetSpacing(), first.GetDirection()):
        return image
    copy = sitk.Image(image)  # copy-on-write: the voxels are shared until written
    copy.CopyInformation(first)
    return copy


def in_manifest_order(manifest: Manifest, images: Mapping[str, sitk.Image]) -> tuple[list[sitk.Image], list[str]]:
    """The inputs (all on one grid) in the manifest's channel order, absent optional channels as zero
    images (the models were trained with channel dropout); and the names of the absent ones."""
    first = next(iter(images.values()))
    missing = [c.name for c in manifest.inputs if c.name not in images]
    ordered = []
    for channel in manifest.inputs:
        if channel.name in images:  # kept in its own pixel type: to_metatensor makes the one float32 copy
            ordered.append(images[channel.name])
        else:
            zero = sitk.Image(first.GetSize(), sitk.sitkFloat32)
            zero.CopyInformation(first)
            ordered.append(zero)
    return ordered, missing


def gather_inputs(manifest: Manifest, inputs: Mapping[str, sitk.Image | str | Path],
                  warnings: list[str]) -> tuple[list[sitk.Image], list[str]]:
    """:func:`read_inputs`, :func:`on_one_grid` and :func:`in_manifest_order` in one call (no clinical
    preprocessing): the images in manifest order on the first given channel's grid, and the absent ones."""
    return in_manifest_order(manifest, on_one_grid(read_inputs(manifest, inputs), warnings))


def check_memory(manifest: Manifest, probability_dtype: torch.dtype, image: torch.Tensor,
                 reference: sitk.Image) -> None:
    """Refuse a case whose estimated CPU memory need exceeds what is available (before any work).

    ``image``: the preprocessed network input (C, I, J, K); ``reference``: the output grid.
    """
    n_out = len(manifest.postprocessing.channels)
    p = 2 if probability_dtype == torch.float16 else 4
    pre_voxels = int(np.prod(image.shape[1:]))
    ref_voxels = int(np.prod(reference.GetSize()))
    window = int(np.prod(manifest.inference.roi_size)) * manifest.inference.sw_batch_size
    slab = int(manifest.inference.roi_size[0]) * pre_voxels // max(int(image.shape[1]), 1)
    # float32 inputs on both grids, probabilities (streamed: no full-size logits) on both grids,
    # one float32 channel while resampling, the label map, the stitching band (output + count)
    # and network activations of one window batch (~64 float channels)
    need = (4 * (pre_voxels + ref_voxels) * image.shape[0] + p * n_out * (pre_voxels + ref_voxels)
            + 4 * ref_voxels + ref_voxels + 4 * slab * (n_out + 1) + 4 * window * 64)
    available = available_memory_bytes()
    if available is not None and need > available:
        raise InputError(f"this case needs about {need / 2**30:.1f} GiB of memory for model "
                         f"{manifest.id} but {available / 2**30:.1f} GiB are available; "
                         f"crop the volume or use a machine with more memory")


def crop_to_foreground(images: Sequence[sitk.Image], margin: int) -> list[sitk.Image]:
    """The images cut to the box of voxels that are non-zero in any of them, plus ``margin`` voxels
    (clipped to the grid); the images themselves when nothing is non-zero. The box keeps the images'
    physical placement (origin moved), so results map back onto the full grid by geometry.

    Args:
        images: co-registered images on one grid, (I, J, K) sizes as SimpleITK gives them.
        margin: voxels added on every side of the box.
    """
    occupied = np.zeros(images[0].GetSize()[::-1], dtype=bool)  # (K, J, I)
    for image in images:
        occupied |= sitk.GetArrayViewFromImage(image) != 0
    if not occupied.any():
        return list(images)
    lower, upper = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(occupied.any(axis=other))
        lower.append(max(0, int(hits[0]) - margin))
        upper.append(min(occupied.shape[axis], int(hits[-1]) + 1 + margin))
    index = [lower[2], lower[1], lower[0]]  # (I, J, K) for SimpleITK
    size = [upper[2] - lower[2], upper[1] - lower[1], upper[0] - lower[0]]
    return [sitk.RegionOfInterest(image, size, index) for image in images]
