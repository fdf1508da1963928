"""The GPU-resident case: the case stays on the compute device from preprocessing to the resampled result.

On CUDA the model's preprocessing (MONAI's transforms: orientation, resampling to the model grid,
normalisation, cropping) runs on the GPU, the sliding-window probabilities are stitched and averaged there
(:func:`medcnncad.inference.windows.infer` with ``on_device``), and they are resampled back onto the user's
grid there (:func:`medcnncad.inference.resample.to_input_grid_torch`); one copy brings the result to the
host, where labels, lesions and files are made. Each stage falls back to the CPU on out-of-memory (the
preprocessing also on any other failure on the device), says so in the warnings, and the case goes on.
Stage times are taken after ``torch.cuda.synchronize`` so they measure the GPU's work, not its queue.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from medcnncad.inference.postprocess import label_map_from_probabilities, label_map_from_probabilities_torch
from medcnncad.inference.resample import to_input_grid, to_input_grid_torch
from medcnncad.inference.result import ProgressCallback
from medcnncad.inference.tta import averaged_probabilities
from medcnncad.models.manifest import Manifest
from medcnncad.models.preprocessing import to_metatensor

__all__ = ["clock", "out_of_memory", "network_input_on", "preprocess_on", "averaged_on_device", "back_to_input_grid",
           "back_with_labels", "to_host"]

log = logging.getLogger(__name__)


def clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the device's queued work is done (CUDA), else at once."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _fell_back(stage: str, device: torch.device, warnings: list[str], cause: str = "out of memory") -> None:
    message = f"{cause} on {device} in {stage}; that stage ran on the CPU"
    log.warning(message)
    warnings.append(message)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def out_of_memory(exc: BaseException | None) -> bool:
    """Whether ``exc`` is, or was raised from, a torch out-of-memory error (MONAI's ``Compose`` wraps what its
    transforms raise in a ``RuntimeError``)."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, torch.OutOfMemoryError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def network_input_on(images: Sequence[sitk.Image], device: torch.device | None,
                     warnings: list[str]) -> MetaTensor:
    """(C, I, J, K) float32 MetaTensor of the co-registered ``images``, made on ``device`` (None or CPU: on the
    host; :func:`medcnncad.models.preprocessing.to_metatensor`). Out of memory on the device makes it on the
    host and appends why to ``warnings``."""
    if device is None or device.type == "cpu":
        return to_metatensor(images)
    try:
        return to_metatensor(images, device)
    except torch.OutOfMemoryError:
        _fell_back("reading the inputs onto the device", device, warnings)
        return to_metatensor(images)


def preprocess_on(preprocess: Callable[[MetaTensor], MetaTensor], image: MetaTensor, device: torch.device | None,
                  warnings: list[str]) -> MetaTensor:
    """The model's preprocessing of (C, I, J, K) ``image`` on ``device`` (None or CPU: on the host).

    ``image`` may already be on ``device`` (:func:`network_input_on`). A failure on the device (out of memory,
    or a transform that needs host arrays, as a bundle's own preprocessing may) runs it again on the CPU and
    appends why to ``warnings``; a failure there is raised.

    Returns:
        The network input (C, I', J', K') with its RAS affine, on ``device`` (or on the CPU after a fall-back).
    """
    if device is None or device.type == "cpu":
        return preprocess(image if image.device.type == "cpu" else cast(MetaTensor, image.cpu()))
    try:
        return preprocess(cast(MetaTensor, image.to(device)))
    except Exception as exc:  # noqa: BLE001 - any failure on the device is retried on the host, where it is raised
        cause = "out of memory" if out_of_memory(exc) else f"{type(exc).__name__}"
        _fell_back("preprocessing", device, warnings, cause)
        return preprocess(image if image.device.type == "cpu" else cast(MetaTensor, image.cpu()))


def averaged_on_device(infer: Callable[..., torch.Tensor], image: torch.Tensor, flips: Sequence[tuple[int, ...]],
                       background: int | None, progress: ProgressCallback, dtype: torch.dtype, resident: bool,
                       warnings: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`medcnncad.inference.tta.averaged_probabilities` with ``infer(image, report, on_device=...)``.

    ``resident``: the passes' probabilities stay on the stitching device and are averaged there; out of memory
    outside the network (flips, the running sums) runs all passes again held on the host.
    """
    def run(on_device: bool, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return averaged_probabilities(functools.partial(infer, on_device=on_device), source, flips, background,
                                      progress, dtype)

    if not resident:
        return run(False, image)
    try:
        return run(True, image)
    except torch.OutOfMemoryError:
        _fell_back("test-time augmentation", image.device, warnings)
        return run(False, image.cpu())


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """A host numpy copy of ``tensor``. From a GPU it lands in page-locked memory from torch's caching host
    allocator: a BraTS-size volume of three float32 channels (107 MB) comes back in 2 ms there against 76 ms into fresh
    pageable memory, which pays a page fault per 4 KiB (H200, performance.md). The array keeps its buffer
    alive; when it is freed the buffer serves the next case. torch rounds each such buffer up to a power of two
    (four channels, 143 MB, hold 256 MiB), and that memory stays locked while the result lives and cached
    after. Without page-locked memory to spare, ``.cpu()``."""
    if tensor.device.type != "cuda":
        return tensor.cpu().numpy()
    try:
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    except RuntimeError:  # the host could not lock that much memory
        return tensor.cpu().numpy()
    return host.copy_(tensor).numpy()


def back_to_input_grid(manifest: Manifest, probs: torch.Tensor, affine: torch.Tensor, reference: sitk.Image,
                       warnings: list[str], raw: bool = False, resident: bool = False) -> np.ndarray:
    """(C, K, J, I) numpy probabilities on ``reference``'s grid from (C, I', J', K') ``probs``.

    ``resident``: resampled with torch where ``probs`` are (:func:`to_input_grid_torch`; on a GPU, then one copy
    to the host); after an out-of-memory fall-back, or when not ``resident``, with SimpleITK on the CPU
    (:func:`to_input_grid`; the faster of the two on a CPU).
    """
    if resident:
        try:
            return to_host(to_input_grid_torch(manifest, probs, affine, reference, raw))
        except torch.OutOfMemoryError:
            _fell_back("resampling back to the input grid", probs.device, warnings)
    return to_input_grid(manifest, probs.cpu(), affine, reference, raw)


def back_with_labels(manifest: Manifest, probs: torch.Tensor, affine: torch.Tensor, reference: sitk.Image,
                     warnings: list[str], resident: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(C, K, J, I) numpy probabilities on ``reference``'s grid from (C, I', J', K') ``probs``, and their uint8
    (K, J, I) label map by the manifest's rule.

    ``resident``: resampled and labelled with torch where ``probs`` are (on a GPU: the arg-max there, then one
    copy of each to the host); after an out-of-memory fall-back, or when not ``resident``, as
    :func:`back_to_input_grid` then :func:`~medcnncad.inference.postprocess.label_map_from_probabilities`
    on the host. Both give the same labels from the same probabilities (ties go to the first channel).
    """
    if resident:
        try:
            on_grid = to_input_grid_torch(manifest, probs, affine, reference)
            labels = label_map_from_probabilities_torch(on_grid, manifest)
            return to_host(on_grid), to_host(labels)
        except torch.OutOfMemoryError:
            _fell_back("resampling back to the input grid", probs.device, warnings)
    on_grid_np = to_input_grid(manifest, probs.cpu(), affine, reference)
    return on_grid_np, label_map_from_probabilities(on_grid_np, manifest)
