"""Streaming sliding-window inference: MONAI's windows and blending, without a full-size float32 output.

MONAI's :func:`monai.inferers.sliding_window_inference` allocates the whole output
(channels x volume, float32) plus a count map, and pads the whole input when it is smaller
than a window. For a 512 x 512 x 600 CT with three output channels that is ~2.5 GB before
the activation makes another copy. Here the windows are the same (``dense_patch_slices``
with MONAI's scan interval, first spatial axis slowest) and so is the blending
(``compute_importance_map``, weighted sum divided by the summed weights), but the output is
accumulated in a band of slabs along the first spatial axis only: once no later window
reaches a slab, it is finished, normalised and handed to ``sink`` (which activates it and
stores it in whatever dtype the caller chose). Windows are cut from the unpadded input and
zero-filled where they stick out, so the input is never copied. Equality with MONAI is
asserted in ``Testing/inference/test_stitch.py``.

Axis order: tensors are channel-first (C, I, J, K), as MONAI's, and ``sink`` receives
(C_out, i1 - i0, J, K) for rows ``i0:i1`` of the unpadded input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import groupby

import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers.utils import _get_scan_interval

__all__ = ["window_slices", "stream_sliding_window", "Sink"]

Sink = Callable[[int, int, torch.Tensor], None]
"""Called with (i0, i1, blended logits (C_out, i1 - i0, J, K)) in increasing i0, a few rows at a time."""


def _padding(shape: Sequence[int], roi: Sequence[int]) -> list[int]:
    """Zero padding before each axis, as MONAI's (half the shortfall, rounded down, goes first)."""
    return [max(r - s, 0) // 2 for r, s in zip(roi, shape)]


def window_slices(shape: Sequence[int], roi: Sequence[int], overlap: float) -> list[tuple[slice, ...]]:
    """MONAI's windows over a (padded) spatial ``shape`` (I, J, K), first axis slowest."""
    padded = [max(r, s) for r, s in zip(roi, shape)]
    interval = _get_scan_interval(padded, list(roi), len(roi), [overlap] * len(roi))
    return list(dense_patch_slices(padded, list(roi), interval))


def _window(image: torch.Tensor, window: tuple[slice, ...], pad: Sequence[int]) -> torch.Tensor:
    """The (C, *roi) window of the virtually zero-padded ``image``; a view when it needs no padding."""
    src, dst, partial = [], [], False
    for sl, before, size in zip(window, pad, image.shape[1:]):
        lo, hi = sl.start - before, sl.stop - before
        src.append(slice(max(lo, 0), min(hi, size)))
        dst.append(slice(max(lo, 0) - lo, min(hi, size) - lo))
        partial |= lo < 0 or hi > size
    src_index = (slice(None), *src)  # named: mypy reads a[(x, *y)] as Python 3.11's a[x, *y]
    if not partial:
        return image[src_index]
    out = image.new_zeros((image.shape[0], *[sl.stop - sl.start for sl in window]))
    dst_index = (slice(None), *dst)
    out[dst_index] = image[src_index]
    return out


def stream_sliding_window(image: torch.Tensor, predictor: Callable[[torch.Tensor], torch.Tensor],
                          roi: Sequence[int], overlap: float, mode: str, sink: Sink,
                          sw_batch_size: int = 1, device: torch.device | None = None,
                          stitch_device: torch.device | None = None, sigma_scale: float = 0.125,
                          sink_rows: int = 16) -> None:
    """Sliding-window inference over ``image`` (C, I, J, K), streamed to ``sink`` slab by slab.

    Args:
        image: network input, channel first; stays where it is (windows are moved to ``device``).
        predictor: (B, C, *roi) -> (B, C_out, *roi) logits on ``device``.
        roi: window size (I, J, K) in voxels.
        overlap: fraction of a window shared with its neighbour (MONAI's ``overlap``).
        mode: ``gaussian`` or ``constant`` blending (MONAI's ``mode``).
        sink: receives finished rows, see :data:`Sink`.
        sw_batch_size: windows per network call (windows starting on the same row only).
        device: where the network runs; ``stitch_device``: where the band is accumulated.
        sink_rows: rows per ``sink`` call (bounds the size of the caller's temporaries).
    """
    device = device or image.device
    stitch_device = stitch_device or device
    shape = list(image.shape[1:])
    roi = list(roi)
    pad = _padding(shape, roi)
    slices = window_slices(shape, roi, overlap)
    weight = compute_importance_map(tuple(roi), mode=mode, sigma_scale=sigma_scale, device=stitch_device,
                                    dtype=torch.float32)[None]
    padded = [max(r, s) for r, s in zip(roi, shape)]
    band = roi[0]  # after each flush, every window still to come lies within the band
    out: torch.Tensor | None = None
    count = torch.zeros((1, band, *padded[1:]), dtype=torch.float32, device=stitch_device)
    lo = 0  # padded row held at band index 0

    def flush(stop: int) -> None:
        """Hand padded rows lo:stop (all windows reaching them done) to the sink, cropped."""
        nonlocal lo
        a, b = max(lo, pad[0]), min(stop, pad[0] + shape[0])
        for r in range(a, b, sink_rows) if out is not None else ():  # a few rows at a time: small temporaries
            assert out is not None  # rows only when out exists
            end = min(r + sink_rows, b)
            crop = (slice(None), slice(r - lo, end - lo), slice(pad[1], pad[1] + shape[1]),
                    slice(pad[2], pad[2] + shape[2]))
            sink(r - pad[0], end - pad[0], out[crop] / count[crop])
        shift = stop - lo
        for buf in (out, count):
            if buf is not None and shift:
                buf[:, :band - shift] = buf[:, shift:].clone()
                buf[:, band - shift:] = 0
        lo = stop

    for start, row_windows in groupby(slices, key=lambda w: w[0].start):
        flush(start)
        group = list(row_windows)
        for first in range(0, len(group), sw_batch_size):
            chunk = group[first:first + sw_batch_size]
            batch = torch.stack([_window(image, w, pad) for w in chunk]).to(device)
            logits = predictor(batch).to(stitch_device, torch.float32)
            if out is None:
                out = torch.zeros((logits.shape[1], band, *padded[1:]), dtype=torch.float32, device=stitch_device)
            for w, value in zip(chunk, logits):
                at = (slice(None), slice(w[0].start - lo, w[0].stop - lo), w[1], w[2])
                out[at] += value * weight
                count[at] += weight
    flush(padded[0])
