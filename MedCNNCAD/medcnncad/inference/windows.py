"""The network over a whole case: streamed sliding windows under an execution policy, with a
fall-back on CUDA out-of-memory that leaves the caller's network where it was.

Tensors are channel-first (C, I, J, K), as MONAI gives them; probabilities come back on the CPU
in the policy's ``probability_dtype``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medcnncad.errors import ModelError
from medcnncad.inference.result import ProgressCallback
from medcnncad.inference.stitch import stream_sliding_window, window_slices
from medcnncad.models.manifest import Manifest

__all__ = ["ExecutionPolicy", "NUMPY_DTYPES", "activate", "check_output_count", "fit_roi", "infer"]

log = logging.getLogger(__name__)

NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32}


@dataclass(frozen=True)
class ExecutionPolicy:
    """How the network runs: device, autocast precision (None: fp32), memory layout, window batch
    and the dtype probabilities are held in."""

    device: torch.device
    autocast: torch.dtype | None
    channels_last: bool
    probability_dtype: torch.dtype
    sw_batch_size: int


def fit_roi(manifest: Manifest, shape: Sequence[int]) -> list[int]:
    """Window size for an image of ``shape`` (I, J, K): the manifest's ``roi_size``, shrunk with
    ``fit_roi = m`` to the image rounded up to a multiple of ``m`` (no work on padding)."""
    inf = manifest.inference
    if not inf.fit_roi:
        return list(inf.roi_size)
    return [min(r, -(-int(s) // inf.fit_roi) * inf.fit_roi) for r, s in zip(inf.roi_size, shape)]


def activate(manifest: Manifest, logits: torch.Tensor) -> torch.Tensor:
    """Softmax or sigmoid (the manifest's ``activation``) over the channel axis (first) of logits."""
    if manifest.postprocessing.activation == "softmax":
        return torch.softmax(logits, dim=0)
    return torch.sigmoid(logits)


def check_output_count(manifest: Manifest, count: int) -> None:
    """Refuse a network output of ``count`` channels when the manifest declares another number.

    The manifest (or the engine's view of a bundle, nnU-Net or Auto3DSeg folder) says what each output
    channel is; a network with fewer channels would be broadcast into every declared one (a silently wrong
    label map), one with more would fail deep in the stitching.

    Raises:
        ModelError: naming the model, its folder and both counts.
    """
    declared = manifest.postprocessing.channels
    if count != len(declared):
        raise ModelError(f"model {manifest.id!r} ({manifest.folder}): its network gives {count} output "
                         f"channel{'s' * (count != 1)}, but its manifest declares {len(declared)} "
                         f"({', '.join(c.name for c in declared)})")


def infer(network: torch.nn.Module, manifest: Manifest, image: torch.Tensor, policy: ExecutionPolicy,
          progress: ProgressCallback, warnings: list[str],
          on_device: bool = False) -> tuple[torch.Tensor, torch.device]:
    """Sliding-window probabilities of one (C, I, J, K) tensor.

    Windows stream through :func:`medcnncad.inference.stitch.stream_sliding_window`, so no full-size
    float32 logits are held. On CUDA out-of-memory the run is repeated with one window at a time and
    stitching on the CPU, then entirely on the CPU (the network is moved there for this run only and
    moved back afterwards); each fall-back is logged and appended to ``warnings``. Each window batch's output
    is checked against the manifest's channels (:func:`check_output_count`), so a network of another output
    count stops at the first window.

    Args:
        network: the model's network (eval mode), on ``policy.device``.
        manifest: the model's manifest (window size, overlap, blending, activation, outputs).
        image: the preprocessed case, (C, I, J, K).
        policy: device, precision, layout, window batch and probability dtype.
        progress: called with ("inference", fraction of windows done).
        warnings: human-readable notes are appended here.
        on_device: keep the probabilities on the stitching device (the GPU-resident case) instead of
            copying each finished row to the CPU; a fall-back that stitches on the CPU keeps them there.

    Returns:
        Probabilities (C_out, I, J, K) on the CPU (or the stitching device, ``on_device``), and the device
        that ran the network.

    Raises:
        ModelError: the network gives another number of output channels than the manifest declares.
    """
    inf = manifest.inference
    roi = fit_roi(manifest, image.shape[1:])
    total = max(1, len(window_slices(image.shape[1:], roi, inf.overlap)))
    done = [0]
    n_out = len(manifest.postprocessing.channels)
    probs = torch.empty(0)

    def predictor(window: torch.Tensor, net: torch.nn.Module, device: torch.device) -> torch.Tensor:
        if policy.channels_last:
            window = window.contiguous(memory_format=torch.channels_last_3d)
        dtype = policy.autocast
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = net(window)
        check_output_count(manifest, out.shape[1])  # one integer comparison per window batch
        done[0] += window.shape[0]
        progress("inference", min(1.0, done[0] / total))
        return out.float()

    def sink(i0: int, i1: int, logits: torch.Tensor) -> None:
        probs[:, i0:i1] = activate(manifest, logits).to(probs.device, policy.probability_dtype)

    cpu = torch.device("cpu")
    attempts = [(policy.sw_batch_size, policy.device, policy.device), (1, policy.device, cpu), (1, cpu, cpu)]
    image = torch.as_tensor(image, dtype=torch.float32)
    with torch.inference_mode():
        for attempt, (sw_batch, device, stitch) in enumerate(attempts):
            try:
                done[0] = 0
                probs = _storage(n_out, image.shape[1:], policy.probability_dtype, stitch if on_device else cpu)
                with _network_on(network, device) as net:
                    stream_sliding_window(image, functools.partial(predictor, net=net, device=device), roi,
                                          inf.overlap, inf.blend_mode, sink, sw_batch, device, stitch)
                return probs, device
            except torch.OutOfMemoryError:
                if attempt == len(attempts) - 1:
                    raise
                message = (f"out of memory on {device}; retrying with one window at a time and "
                           f"stitching on the CPU" if attempt == 0 else
                           f"out of memory on {device} again; running on the CPU")
                log.warning(message)
                warnings.append(message)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    raise AssertionError("unreachable")


def _storage(n_out: int, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Room for (C_out, I, J, K) probabilities, laid out (C, K, J, I) like the input grid's arrays: when the
    model grid is the input grid, resample.to_input_grid hands this very array on (no second full-size copy)."""
    return torch.empty((n_out, *tuple(shape)[::-1]), dtype=dtype, device=device).permute(0, 3, 2, 1)


class _network_on:  # noqa: N801 - used as a context manager, like torch's lower-case ones
    """``with _network_on(network, device) as net``: the network on ``device`` for the block, moved
    back to where it was afterwards (a no-op when it is there already)."""

    def __init__(self, network: torch.nn.Module, device: torch.device) -> None:
        self.network = network
        self.device = device
        self.home = next(network.parameters(), torch.empty(0)).device

    def __enter__(self) -> torch.nn.Module:
        if self.home != self.device:
            self.network.to(self.device)
        return self.network

    def __exit__(self, *exc: object) -> None:
        if self.home != self.device:
            try:
                self.network.to(self.home)
            except torch.OutOfMemoryError:  # the card is still full: stay on the CPU, say so
                log.warning("could not move the network back to %s after the CPU fall-back", self.home)
