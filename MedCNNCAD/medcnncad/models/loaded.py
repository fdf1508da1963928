"""Loaded models, ready to run: a segmentation model and a lesion grade classifier."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medcnncad.models.manifest import ClassifierManifest, Manifest

__all__ = ["LoadedModel", "LoadedClassifier"]


@dataclass
class LoadedModel:
    """A model ready to run: its manifest, network (eval mode) and preprocessing (or its own predictor).

    ``preprocess`` takes a channel-first MONAI ``MetaTensor`` (C, I, J, K) with a RAS
    affine and returns the network input in the same convention.
    """

    manifest: Manifest
    network: torch.nn.Module
    preprocess: Callable[[Any], Any]
    source: str  # "manifest", "bundle", "nnunet" or "auto3dseg"
    path: Path
    predict: Callable[..., Any] | None = None
    """A format's own end-to-end predictor (nnU-Net): ``predict(images, spacing, mirror, device)`` takes
    the (C, K, J, I) float32 case and its (z, y, x) spacing in mm and returns probabilities
    (C_out, K, J, I) on the same grid; the engine's windows, TTA and resampling are then skipped."""


@dataclass
class LoadedClassifier:
    """A classifier ready to run. ``preprocess`` (bundles only) replaces the patch z-scoring:
    it takes one raw (C, K, J, I) patch tensor and returns the network input."""

    manifest: ClassifierManifest
    network: torch.nn.Module
    path: Path
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None
