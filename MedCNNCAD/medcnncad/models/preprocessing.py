"""Conversion between SimpleITK images and MONAI MetaTensors, and manifest preprocessing.

SimpleITK arrays are (K, J, I) in LPS physical space; MONAI tensors are channel-first
(C, I, J, K) with a RAS affine (MONAI's default convention). Every spatial step is a
MONAI transform, so the tensor's affine always says where each voxel lies, and the
network output can be resampled back onto the input grid from that affine alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)

from medcnncad.models.manifest import Preprocessing

__all__ = ["lps_to_ras", "ras_affine", "to_metatensor", "snap_residue", "SnapResidued", "build_preprocessing",
           "build_preprocessing_dict"]

_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """Flip a 4x4 LPS affine to RAS (the flip is its own inverse)."""
    return _LPS_TO_RAS @ affine


def ras_affine(image: sitk.Image) -> np.ndarray:
    """4x4 IJK -> RAS (mm) affine of a SimpleITK image."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    lps[:3, 3] = image.GetOrigin()
    return lps_to_ras(lps)


def to_metatensor(images: Sequence[sitk.Image], device: torch.device | None = None) -> MetaTensor:
    """Stack co-registered images into a float32 (C, I, J, K) MetaTensor with RAS affine, on ``device`` (None:
    the host).

    One preallocated float32 tensor is filled channel by channel: each image's (K, J, I) voxels, in their own
    pixel type, are cast and transposed by torch's copy (the same float32 values as numpy's cast: both round to
    nearest), on the device for a GPU (the resident case: the host does no transposing copy). On the host torch's
    blocked, threaded copy was 1.95x faster than numpy's transposed assignment for a BraTS-size case (warm process)
    (``Testing/inference/test_resident.py`` checks the values against numpy's). The affine stays on the host, as
    for a host tensor moved with ``.to(device)``.
    """
    affine = torch.as_tensor(ras_affine(images[0]), dtype=torch.float64)
    target = device or torch.device("cpu")
    data = torch.empty((len(images), *images[0].GetSize()), dtype=torch.float32, device=target)
    for index, img in enumerate(images):
        data[index] = _voxels_kji(img).to(target).permute(2, 1, 0)
    return MetaTensor(data, affine=affine)


_TORCH_CASTS = {np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32,
                                      np.float64)}  # pixel types every torch device casts to float32


def _voxels_kji(image: sitk.Image) -> torch.Tensor:
    """(K, J, I) voxels of ``image`` as a host tensor sharing its buffer (read only), in the pixel type where
    torch casts it on any device; other types (unsigned 16-64 bit) as float32, cast here."""
    view = sitk.GetArrayViewFromImage(image)
    if view.dtype not in _TORCH_CASTS:
        return torch.from_numpy(np.asarray(view, dtype=np.float32))
    with warnings.catch_warnings():  # the view is read only; torch warns, and the tensor is only read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(view)


def snap_residue(image: torch.Tensor, fraction: float) -> torch.Tensor:
    """Channel-first ``image`` (C, ...) with every value whose magnitude is below ``fraction`` of its channel's
    largest magnitude set to exactly 0 (a new tensor of the same type, device and metadata).

    Resampling an image whose background is exactly 0 leaves interpolation residue next to the foreground:
    ``grid_sample`` gives a background voxel a weight of about 1e-14 on its bright neighbour, so it holds
    1e-43 to 1e-8 instead of 0, and a GPU rounds the same weights differently (some of those voxels are 0
    there). A ``nonzero`` z-score counts every non-zero voxel as foreground (z-scored to about -2.6 instead
    of staying 0), so the host's and the GPU's network inputs differ at the edge. Snapped, both are 0.
    """
    magnitude = image.detach().abs()
    scale = magnitude.amax(dim=tuple(range(1, image.ndim)), keepdim=True)
    return image.masked_fill(magnitude < scale * fraction, 0)


class SnapResidued:
    """Dictionary step of :func:`snap_residue` on ``keys`` (the images, not a label)."""

    def __init__(self, keys: tuple[str, ...], fraction: float) -> None:
        self.keys, self.fraction = keys, fraction

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        for key in self.keys:
            out[key] = snap_residue(data[key], self.fraction)
        return out


def _steps(pre: Preprocessing, keys: tuple[str, ...], label_key: str | None) -> list[Any]:
    all_keys = keys + ((label_key,) if label_key else ())
    steps: list[Any] = []
    if pre.orientation:
        steps.append(Orientationd(all_keys, axcodes=pre.orientation, labels=_RAS_LABELS))
    if pre.spacing_mm:
        modes = ["bilinear"] * len(keys) + (["nearest"] if label_key else [])
        steps.append(Spacingd(all_keys, pixdim=pre.spacing_mm, mode=modes))
        if pre.residue_fraction:  # only resampling leaves residue
            steps.append(SnapResidued(keys, pre.residue_fraction))
    if pre.crop_foreground:
        steps.append(CropForegroundd(all_keys, source_key=keys[0], margin=pre.crop_margin_vox,
                                     allow_smaller=True))
    if pre.normalization == "zscore":
        steps.append(NormalizeIntensityd(keys, nonzero=pre.nonzero, channel_wise=pre.channel_wise))
    elif pre.normalization == "range":
        steps.append(ScaleIntensityRanged(keys, a_min=cast(float, pre.a_min), a_max=cast(float, pre.a_max),
                                          b_min=0.0, b_max=1.0, clip=True))
    return steps


def build_preprocessing_dict(pre: Preprocessing, label_key: str | None = None) -> Compose:
    """Dictionary transforms on key ``"image"`` (and a label key, resampled nearest), for training."""
    return Compose(_steps(pre, ("image",), label_key))


def build_preprocessing(pre: Preprocessing):
    """Array preprocessing: MetaTensor (C, I, J, K) in, MetaTensor out (affine updated)."""
    compose = build_preprocessing_dict(pre)

    def run(image: MetaTensor) -> MetaTensor:
        return compose({"image": image})["image"]

    return run
