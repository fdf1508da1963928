"""With a brain mask, the result keeps the first given sequence as it was read (``unmasked_reference``): the
brain-mask figure outlines the mask on it, so what the mask left out shows; without a mask, nothing is kept."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from helpers import small_phantom

from medcnncad.inference.machine_policy import build_segmenter
from medcnncad.models.registry import load_model
from medcnncad.preprocessing.brain_mask import BrainMaskChoice


def test_the_sequence_as_read_is_kept_only_with_a_mask():
    images, _ = small_phantom()
    given = {name: images[name] for name in ("T1c", "FLAIR")}
    half = np.zeros(sitk.GetArrayViewFromImage(images["T1c"]).shape, np.uint8)
    half[:, :, :40] = 1
    mask = sitk.GetImageFromArray(half)
    mask.CopyInformation(images["T1c"])
    segmenter = build_segmenter(load_model("brats-robust-unet"), "cpu", "manifest")
    result = segmenter.run(given, tta=False, brain_mask=BrainMaskChoice(image=mask))
    read = sitk.GetArrayViewFromImage(images["T1c"])
    assert result.unmasked_reference is not None
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(result.unmasked_reference), read)
    shown = sitk.GetArrayViewFromImage(result.reference)
    assert read[:, :, 40:].any() and not shown[:, :, 40:].any()  # the network's reference is the masked one
    assert segmenter.run(given, tta=False).unmasked_reference is None  # this head needs no mask: none kept
