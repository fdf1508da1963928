"""Brain extraction with a real trained network: deepbet (Fisch et al. 2024, MIT; TorchScript weights
trained on thousands of real T1-weighted MRIs, shipped inside the PyPI package), on the CPU or GPU.

deepbet takes a nibabel image: the SimpleITK image is handed over in memory (array (I, J, K) with
its RAS affine) and the mask comes back on the input's grid. Two networks run: a bounding-box UNet
at 128^3, then the mask UNet on the box resized to 256^3 (~5 s per volume on 2 CPU threads).

Which sequence: measured on a BraTS 2021 case against its skull-stripping (docs/models.md,
"Real patients"), native T1 agreed best (Dice 0.987, 99.5 % of the tumor inside), T2 kept the most
tumor (99.8 %), FLAIR 98.9 %, and T1c cut 7.6 % of the tumor: :data:`SOURCE_ORDER` is therefore
T1, T2, FLAIR, T1c. Arrays are (K, J, I) as SimpleITK gives them.

A reader can override that rule for one case (:class:`BrainMaskChoice`): name the sequence deepbet reads
(e.g. the post-contrast T1 when the T2's mask takes in the orbits), or give a mask of their own (a corrected
"brain" segment, another tool's skull-stripping), which is then used as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medcnncad.errors import InputError
from medcnncad.io.images import check_finite, geometry_text, read_volume, same_space
from medcnncad.models.preprocessing import ras_affine

__all__ = ["SOURCE_ORDER", "MIN_SHARE", "MAX_SHARE", "BrainMaskChoice", "extract_brain", "check_mask", "apply_mask",
           "mask_volume_ml", "pick_source", "given_mask", "brain_mask_choice", "voxel_index_map", "on_reference_voxels",
           "GRID_TOLERANCE"]

SOURCE_ORDER = ("T1", "T2", "FLAIR", "T1c")
"""Sequences to compute the brain mask from, best first (see the module docstring)."""
MIN_SHARE = 0.005
"""A mask covering less than this share of the volume is taken as a failed extraction (empty)."""
MAX_SHARE = 0.95
"""A mask covering more than this share of the volume is taken as a failed extraction (everything)."""


@dataclass(frozen=True)
class BrainMaskChoice:
    """A reader's choice of one case's brain mask, instead of the model's rule (:func:`pick_source`).

    Attributes:
        source: the given sequence (channel name) deepbet extracts the brain from.
        image: the reader's own mask (non-zero voxels are brain) on the grid of the case's first given sequence
            (the reference); used as it is: no deepbet, no dilation.
        name: where ``image`` comes from (a file, a Slicer segment), for messages and the report.

    At most one of ``source`` and ``image``.
    """

    source: str | None = None
    image: sitk.Image | None = None
    name: str = "the given brain mask"

    @property
    def empty(self) -> bool:
        """Neither a sequence nor a mask: the model's rule applies."""
        return self.source is None and self.image is None

    def __post_init__(self) -> None:
        if self.source is not None and self.image is not None:
            raise InputError(f"{self.name}: give a brain mask or a sequence to extract it from, not both "
                             f"(sequence {self.source})")


def brain_mask_choice(path: str | None = None, source: str | None = None,
                      name: str | None = None) -> BrainMaskChoice | None:
    """The reader's brain-mask choice for one case: a mask file (a volume file or DICOM folder, non-zero voxels
    are brain, on the first given sequence's grid; ``name`` says what it is in messages, default "brain mask
    PATH") or the sequence deepbet should read; None when neither.

    Raises:
        InputError: both given, or the file cannot be read (one line naming it).
    """
    if path and source:
        raise InputError(f"brain mask {path} and brain mask from {source}: give one, not both")
    if path:
        return BrainMaskChoice(image=read_volume(path), name=name or f"brain mask {path}")
    return BrainMaskChoice(source=source) if source else None


def given_mask(choice: BrainMaskChoice, reference: sitk.Image, reference_name: str) -> sitk.Image:
    """The reader's mask of ``choice`` as a uint8 (0/1) image on ``reference``'s grid.

    Raises:
        InputError: naming the mask, when it is not a 3D image on the reference's voxels (:func:`on_reference_voxels`),
            holds a NaN or infinity, or is empty or covers (almost) the whole volume (:func:`check_mask`).
    """
    image = choice.image
    assert image is not None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{choice.name}: a brain mask must be one 3D scalar volume (got {image.GetDimension()}D with "
                         f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel)")
    check_finite(image, choice.name)
    on_grid = on_reference_voxels(image, reference)
    if on_grid is None:
        raise InputError(f"{choice.name}: not on the grid of input {reference_name}, the case's reference "
                         f"({geometry_text(image)} against {geometry_text(reference)})")
    mask = sitk.GetImageFromArray((sitk.GetArrayViewFromImage(on_grid) != 0).astype(np.uint8))
    mask.CopyInformation(reference)
    return check_mask(mask, choice.name, failure="")


GRID_TOLERANCE = 1e-3
"""How far (in voxels, and in the entries of the index-to-index matrix) two lattices may differ and still be one."""


def voxel_index_map(grid: np.ndarray, reference: np.ndarray, tol: float = GRID_TOLERANCE) -> np.ndarray | None:
    """The 4 x 4 matrix taking the voxel indices of one lattice to those of another, when every voxel centre of the
    one is a voxel centre of the other: its 3 x 3 part a signed permutation (the axes in another order or direction)
    and its shift whole voxels, each within ``tol``; None otherwise.

    Args:
        grid, reference: 4 x 4 index-to-physical matrices in one frame (both RAS, or both LPS).
    """
    mapping = np.linalg.solve(reference, grid)
    rounded = np.round(mapping)
    linear = rounded[:3, :3]
    signed_permutation = (np.abs(linear).sum(axis=0) == 1).all() and (np.abs(linear).sum(axis=1) == 1).all()
    if not signed_permutation or np.abs(mapping[:3] - rounded[:3]).max() > tol:
        return None
    return rounded


def on_reference_voxels(image: sitk.Image, reference: sitk.Image) -> sitk.Image | None:
    """``image`` on ``reference``'s grid when its voxels are the reference's: ``image`` itself on the same grid
    (:func:`medcnncad.io.images.same_space`), its voxels moved one for one when it holds the same voxel centres
    stored with the axes in another order or direction (a mask written as RAS for an LPS scan); None otherwise
    (another spacing, extent, or a lattice off the reference's: a resampled mask is not the reader's)."""
    if same_space(image, reference):
        return image
    mapping = voxel_index_map(ras_affine(image), ras_affine(reference))
    if mapping is None:
        return None
    corners = mapping @ np.array([[0, 0, 0, 1], [*(np.array(image.GetSize()) - 1), 1]], dtype=np.float64).T
    low, high = corners[:3].min(axis=1), corners[:3].max(axis=1)
    if (low != 0).any() or (high != np.array(reference.GetSize()) - 1).any():
        return None
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, image.GetPixelID())


@functools.lru_cache(maxsize=1)
def _extractor(no_gpu: bool) -> Any:
    """deepbet's BrainExtraction, loaded once per process."""
    try:
        # imported here: deepbet is needed only when a model's clinical preprocessing asks for brain
        # extraction (it brings pandas and fill_voids)
        from deepbet.bet import BrainExtraction
    except ImportError as exc:
        raise InputError("brain extraction needs the deepbet package (pip install deepbet)") from exc
    return BrainExtraction(no_gpu=no_gpu)


def mask_volume_ml(mask: sitk.Image) -> float:
    """Volume of the non-zero voxels of a mask in mL."""
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * float(np.prod(mask.GetSpacing())) / 1000.0


def check_mask(mask: sitk.Image, source: str = "brain mask", min_share: float = MIN_SHARE,
               max_share: float = MAX_SHARE, failure: str = "brain extraction failed, ") -> sitk.Image:
    """Return ``mask`` when it covers between ``min_share`` and ``max_share`` of its grid.

    Raises:
        InputError: naming the share when the mask is empty (or nearly) or covers nearly every voxel.
    """
    array = sitk.GetArrayViewFromImage(mask)
    share = float(np.count_nonzero(array)) / max(array.size, 1)
    if share < min_share:
        raise InputError(f"{source}: {failure}the mask is empty or nearly so ({share:.3%} of the volume)")
    if share > max_share:
        raise InputError(f"{source}: {failure}the mask covers {share:.1%} of the volume")
    return mask


def pick_source(names: Sequence[str]) -> str:
    """The sequence to extract the brain from: the first of :data:`SOURCE_ORDER` given, else the first name."""
    return next((n for n in SOURCE_ORDER if n in names), names[0])


def extract_brain(image: sitk.Image, source: str = "image", dilate_voxels: int = 0, use_gpu: bool = False,
                  threshold: float = 0.5) -> sitk.Image:
    """A deepbet brain mask of a 3D MR image.

    Args:
        image: a 3D scalar MR image.
        source: its name, for error messages (e.g. the channel name).
        dilate_voxels: voxels to dilate (positive) or erode (negative) the mask by.
        use_gpu: run deepbet's networks on CUDA when present.
        threshold: deepbet's probability threshold.

    Returns:
        A uint8 (0/1) mask on ``image``'s grid (same size, spacing, origin, direction).

    Raises:
        InputError: deepbet is not installed, or the mask is empty or covers (almost) the whole volume.
    """
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image).astype(np.float32).transpose(2, 1, 0))
    _, mask_nii, _ = _extractor(not use_gpu).run(nib.Nifti1Image(array, ras_affine(image)), threshold=threshold,
                                                 n_dilate=dilate_voxels)
    mask_ijk = np.asarray(mask_nii.dataobj).astype(np.uint8)
    if mask_ijk.shape != array.shape:
        raise InputError(f"{source}: deepbet returned a mask of shape {mask_ijk.shape} for an image of {array.shape}")
    mask = sitk.GetImageFromArray(np.ascontiguousarray(mask_ijk.transpose(2, 1, 0)))
    mask.CopyInformation(image)
    return check_mask(mask, source)


def apply_mask(image: sitk.Image, mask: sitk.Image) -> sitk.Image:
    """``image`` with the voxels outside ``mask`` set to 0 (same pixel type and grid)."""
    array = sitk.GetArrayFromImage(image)
    array[sitk.GetArrayViewFromImage(mask) == 0] = 0
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out
