"""What a segmentation run returns, and the progress callback type.

Arrays are (K, J, I) = (z, y, x) on the grid of the first input channel (LPS, mm).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from medcnncad.lesions.components import Lesion
from medcnncad.lesions.lesion_filter import RemovedCandidate
from medcnncad.models.manifest import Manifest

__all__ = ["ProgressCallback", "no_progress", "SegmentationResult"]

ProgressCallback = Callable[[str, float], None]
"""Called with (stage name, fraction 0-1 of that stage)."""


def no_progress(stage: str, fraction: float) -> None:
    return None


@dataclass
class SegmentationResult:
    """What one run returns. Arrays are (K, J, I) on ``reference``'s grid.

    Attributes:
        label_map: uint8 label values of the manifest (0 = background).
        probabilities: output channel name -> float probabilities in [0, 1]
            (background channel omitted).
        reference: the first input channel's image; defines the grid (LPS, mm).
        lesions: connected components per label and region.
        manifest: the model's manifest (id, version, labels, regions).
        device: the torch device that ran the network.
        timings: stage name -> seconds.
        missing_channels: optional channels that were absent and filled with zeros.
        warnings: human-readable notes (e.g. channels resampled onto the first).
        images: the input channels that were given, as read (float32, on ``reference``'s grid).
        uncertainty: with test-time augmentation, the standard deviation over the flipped
            passes of the foreground probability (K, J, I), else ``None``.
        tta_passes: number of network passes per window (1 without test-time augmentation).
        classification: lesion-classifier summary (model, case probability, rule) when a
            classifier ran (:func:`medcnncad.classification.grade.attach_classification`).
        removed_candidates: the foreground components post-processing removed from the label
            map (volume, probability floor, vessel filter, lesion filter), largest first; the probability
            maps keep them.
        lesion_filter_max: with a lesion filter (second stage), the largest probability it
            gave any candidate component (0 when none survived the floors); else ``None``.
        brain_mask: uint8 (K, J, I) brain mask when the model's clinical preprocessing extracted the
            brain (the inputs were masked with it), else ``None``.
        preprocessing: the clinical preprocessing steps (JSON-ready: step, seconds, applied, details).
        execution_policy: precision, memory layout, device the network ran with, and why.
        network_input: when asked for (``Segmenter.run(keep_network_input=True)``), the network's input
            before any flip: the model's preprocessing of the inputs, float32 (C, I, J, K), and its
            4 x 4 RAS affine (mm); reused by the retrieval descriptors instead of preprocessing again.
        unmasked_reference: with a brain mask, the first given sequence as it was read (on the reference grid,
            nothing set to 0 outside the mask): what the brain-mask figure outlines the mask on.
    """

    label_map: np.ndarray
    probabilities: dict[str, np.ndarray]
    reference: sitk.Image
    lesions: list[Lesion]
    manifest: Manifest
    device: str
    timings: dict[str, float] = field(default_factory=dict)
    missing_channels: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    images: dict[str, sitk.Image] = field(default_factory=dict, repr=False)
    uncertainty: np.ndarray | None = None
    tta_passes: int = 1
    classification: dict | None = None
    removed_candidates: list[RemovedCandidate] = field(default_factory=list)
    lesion_filter_max: float | None = None
    brain_mask: np.ndarray | None = None
    preprocessing: list[dict] = field(default_factory=list)
    execution_policy: dict = field(default_factory=dict)
    network_input: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    unmasked_reference: sitk.Image | None = field(default=None, repr=False)

    def label_image(self) -> sitk.Image:
        """The label map as a SimpleITK image on the reference grid."""
        image = sitk.GetImageFromArray(self.label_map)
        image.CopyInformation(self.reference)
        return image

    def probability_image(self, name: str) -> sitk.Image:
        image = sitk.GetImageFromArray(self.probabilities[name].astype(np.float32, copy=False))
        image.CopyInformation(self.reference)
        return image

    def brain_mask_image(self) -> sitk.Image:
        """The brain mask on the reference grid (ValueError when the run extracted no brain)."""
        if self.brain_mask is None:
            raise ValueError("no brain mask: the model's clinical preprocessing did not extract the brain")
        image = sitk.GetImageFromArray(self.brain_mask)
        image.CopyInformation(self.reference)
        return image

    def uncertainty_image(self) -> sitk.Image:
        """The test-time-augmentation uncertainty map on the reference grid (ValueError without TTA)."""
        if self.uncertainty is None:
            raise ValueError("no uncertainty map: run with test-time augmentation (tta=True)")
        image = sitk.GetImageFromArray(self.uncertainty.astype(np.float32, copy=False))
        image.CopyInformation(self.reference)
        return image
