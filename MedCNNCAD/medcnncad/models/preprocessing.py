"""Conversion between SimpleITK images and MONAI MetaTensors, and manifest preprocessing.

SimpleITK arrays are (K, J, I) in LPS physical space; MONAI tensors are channel-first
(C, I, J, K) with a RAS affine (MONAI's default convention). Every spatial step is a
MONAI transform, so the tensor's affine always says where each voxel lies, and the
network output can be resampled back onto the input grid from that affine alone.
"""

from __future__ import annotations

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

__all__ = ["lps_to_ras", "ras_affine", "to_metatensor", "build_preprocessing", "build_preprocessing_dict"]

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


def to_metatensor(images: Sequence[sitk.Image]) -> MetaTensor:
    """Stack co-registered images into a float32 (C, I, J, K) MetaTensor with RAS affine.

    One preallocated float32 array, filled channel by channel (any input pixel type): no other
    full-size copy is made.
    """
    data = np.empty((len(images), *images[0].GetSize()), dtype=np.float32)
    for index, img in enumerate(images):
        data[index] = sitk.GetArrayViewFromImage(img).transpose(2, 1, 0)
    return MetaTensor(torch.from_numpy(data), affine=torch.as_tensor(ras_affine(images[0]), dtype=torch.float64))


def _steps(pre: Preprocessing, keys: tuple[str, ...], label_key: str | None) -> list[Any]:
    all_keys = keys + ((label_key,) if label_key else ())
    steps: list[Any] = []
    if pre.orientation:
        steps.append(Orientationd(all_keys, axcodes=pre.orientation, labels=_RAS_LABELS))
    if pre.spacing_mm:
        modes = ["bilinear"] * len(keys) + (["nearest"] if label_key else [])
        steps.append(Spacingd(all_keys, pixdim=pre.spacing_mm, mode=modes))
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
