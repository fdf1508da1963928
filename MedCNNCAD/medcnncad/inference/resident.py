"""The GPU-resident case: the case stays on the compute device from preprocessing to the resampled result.

On CUDA the model's preprocessing (MONAI's transforms: orientation, resampling to the model grid,
normalisation, cropping) runs on the GPU, the sliding-window probabilities are stitched and averaged there
(:func:`medcnncad.inference.windows.infer` with ``on_device``), and they are resampled back onto the user's
grid there (:func:`medcnncad.inference.resample.to_input_grid_torch`); one copy brings the result to the
host, where labels, lesions and files are made. Each stage falls back to the CPU on out-of-memory, says so
in the warnings, and the case goes on. Stage times are taken after ``torch.cuda.synchronize`` so they
measure the GPU's work, not its queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import cast

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from medcnncad.inference.resample import to_input_grid, to_input_grid_torch
from medcnncad.models.manifest import Manifest

__all__ = ["clock", "preprocess_on", "back_to_input_grid"]

log = logging.getLogger(__name__)


def clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the device's queued work is done (CUDA), else at once."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _fell_back(stage: str, device: torch.device, warnings: list[str]) -> None:
    message = f"out of memory on {device} in {stage}; that stage ran on the CPU"
    log.warning(message)
    warnings.append(message)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def preprocess_on(preprocess: Callable[[MetaTensor], MetaTensor], image: MetaTensor, device: torch.device | None,
                  warnings: list[str]) -> MetaTensor:
    """The model's preprocessing of (C, I, J, K) ``image`` on ``device`` (None or CPU: where it is).

    Returns:
        The network input (C, I', J', K') with its RAS affine, on ``device`` (on the CPU after an
        out-of-memory fall-back, which is appended to ``warnings``).
    """
    if device is None or device.type == "cpu":
        return preprocess(image)
    try:
        return preprocess(cast(MetaTensor, image.to(device)))
    except torch.OutOfMemoryError:
        _fell_back("preprocessing", device, warnings)
        return preprocess(image)


def back_to_input_grid(manifest: Manifest, probs: torch.Tensor, affine: torch.Tensor, reference: sitk.Image,
                       warnings: list[str], raw: bool = False, resident: bool = False) -> np.ndarray:
    """(C, K, J, I) numpy probabilities on ``reference``'s grid from (C, I', J', K') ``probs``.

    ``resident``: resampled with torch where ``probs`` are (:func:`to_input_grid_torch`; on a GPU, then one copy
    to the host); after an out-of-memory fall-back, or when not ``resident``, with SimpleITK on the CPU
    (:func:`to_input_grid`; the faster of the two on a CPU).
    """
    if resident:
        try:
            return to_input_grid_torch(manifest, probs, affine, reference, raw).cpu().numpy()
        except torch.OutOfMemoryError:
            _fell_back("resampling back to the input grid", probs.device, warnings)
    return to_input_grid(manifest, probs.cpu(), affine, reference, raw)
