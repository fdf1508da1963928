"""MONAI augmentation pipelines for training, and random dropout of whole input channels.

Arrays are dictionaries ``{"image": (C, I, J, K) float32, "label": (1, I, J, K)}`` on the
model's preprocessed grid (RAS, z-scored per channel). Missing sequences at inference are
zeros after normalisation, so channel dropout writes zeros too: a model trained with it
sees exactly what the engine feeds it when a sequence is absent.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
)

from medcnncad.errors import InputError

__all__ = ["RandChannelDropd", "segmentation_transforms", "AUGMENTATION_LEVELS"]

AUGMENTATION_LEVELS = ("light", "robust")


class RandChannelDropd(Randomizable, MapTransform):
    """Zero a random subset of input channels, never all of them.

    With probability ``prob`` the sample loses channels: with probability ``single`` only
    one channel is kept (chosen with ``keep_weights``, e.g. favouring post-contrast T1 and
    FLAIR, the sequences clinics acquire most), otherwise a uniformly random non-empty
    proper subset is kept.
    """

    def __init__(self, keys: Sequence[Hashable], prob: float = 0.5, single: float = 0.5,
                 keep_weights: Sequence[float] | None = None) -> None:
        MapTransform.__init__(self, keys)
        self.prob, self.single = prob, single
        self.keep_weights = None if keep_weights is None else np.asarray(keep_weights, dtype=float)
        self._keep: np.ndarray | None = None

    def randomize(self, n_channels: int) -> None:
        self._keep = None
        if n_channels < 2 or self.R.random() >= self.prob:
            return
        keep = np.zeros(n_channels, bool)
        if self.R.random() < self.single:
            weights = self.keep_weights if self.keep_weights is not None else np.ones(n_channels)
            keep[self.R.choice(n_channels, p=weights / weights.sum())] = True
        else:
            size = self.R.randint(1, n_channels)  # 1 .. n-1 channels kept
            keep[self.R.choice(n_channels, size=size, replace=False)] = True
        self._keep = keep

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        first = d[self.keys[0]]
        self.randomize(int(first.shape[0]))
        if self._keep is None:
            return d
        for key in self.key_iterator(d):
            image = d[key].clone()
            image[torch.as_tensor(~self._keep)] = 0
            d[key] = image
        return d


def segmentation_transforms(patch: Sequence[int], samples_per_case: int, level: str = "light",
                            channel_drop: float = 0.0, keep_weights: Sequence[float] | None = None,
                            negative_share: float = 1 / 3, single_share: float = 0.5):
    """Random patch sampling + augmentation for segmentation training.

    ``light``: flips and per-channel intensity scale/shift, Gaussian noise (the first demo
    model's recipe). ``robust``: adds affine (rotation +-15 degrees, scale +-10 %), gamma,
    bias field, blur, simulated low resolution, flips along every axis. ``channel_drop``
    > 0 adds :class:`RandChannelDropd` with that probability (``single_share`` of the dropped samples
    keep one channel, chosen with ``keep_weights``). ``negative_share`` of the patches
    are centred on a background voxel (anywhere in the volume, scalp and air included), the
    rest on a labelled one (the default 1/3 is MONAI's pos=2, neg=1).
    """
    if level not in AUGMENTATION_LEVELS:
        raise InputError(f"augmentation {level!r}: choose from {AUGMENTATION_LEVELS}")
    if not 0.0 <= negative_share <= 1.0:
        raise InputError(f"negative_share {negative_share}: must be between 0 and 1")
    keys = ["image", "label"]
    steps: list[MapTransform] = [RandCropByPosNegLabeld(keys, "label", spatial_size=list(patch),
                                                        pos=1.0 - negative_share, neg=negative_share,
                                                        num_samples=samples_per_case, allow_smaller=True)]
    if level == "robust":
        steps += [
            RandAffined(keys, prob=0.3, rotate_range=[0.26] * 3, scale_range=[0.1] * 3,
                        mode=["bilinear", "nearest"], padding_mode="zeros"),
            *[RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3)],
            RandSimulateLowResolutiond("image", prob=0.2, zoom_range=(0.4, 1.0)),
            RandGaussianSmoothd("image", prob=0.15, sigma_x=(0.5, 1.2), sigma_y=(0.5, 1.2), sigma_z=(0.5, 1.2)),
            RandBiasFieldd("image", prob=0.3, coeff_range=(0.0, 0.3)),
            RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
        ]
    else:
        steps.append(RandFlipd(keys, prob=0.5, spatial_axis=0))
    steps += [
        RandScaleIntensityd("image", factors=0.15, prob=1.0, channel_wise=True),
        RandShiftIntensityd("image", offsets=0.15, prob=1.0, channel_wise=True),
        RandGaussianNoised("image", prob=0.3, std=0.05),
    ]
    if channel_drop > 0:
        steps.append(RandChannelDropd(["image"], prob=channel_drop, single=single_share, keep_weights=keep_weights))
    return Compose(steps)
