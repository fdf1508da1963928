"""Test-time augmentation: the network over flipped copies of a case, averaged, with the spread of
the foreground probability as an uncertainty map.

Tensors are (C, I, J, K); flips are tuples of dimensions of that tensor (1, 2, 3 = I, J, K).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from medcnncad.inference.result import ProgressCallback

__all__ = ["TTA_FLIPS", "averaged_probabilities"]

TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (1,), (2,), (3,))
"""Test-time augmentation passes: identity and a flip along each spatial axis of (C, I, J, K)."""

Infer = Callable[[torch.Tensor, ProgressCallback], torch.Tensor]
"""(image (C, I, J, K), progress) -> probabilities (C_out, I, J, K)."""


def averaged_probabilities(infer: Infer, image: torch.Tensor, flips: Sequence[tuple[int, ...]],
                           background: int | None, progress: ProgressCallback,
                           dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean probabilities over the passes and the standard deviation of the foreground probability.

    Args:
        infer: runs the network over one (possibly flipped) image.
        image: the preprocessed case (C, I, J, K).
        flips: one tuple of flip dimensions per pass; ``[()]`` is a single plain pass.
        background: the softmax background channel (foreground = 1 - it), or None (foreground =
            the largest channel), as :func:`medcnncad.inference.postprocess.softmax_background` says.
        progress: called with (stage, fraction of all passes).
        dtype: the dtype the mean is returned in.

    Returns:
        Probabilities (C_out, I, J, K) and, for several passes, the spread (I, J, K) (else None);
        each pass is un-flipped before averaging (Welford's update: no stack of passes is held). They stay
        on the device the passes return them on; when passes come back on different devices (a pass that
        fell back to the CPU), everything moves to the CPU.
    """
    if len(flips) <= 1 and not (flips and flips[0]):
        return infer(image, progress), None
    total: torch.Tensor | None = None
    mean_fg: torch.Tensor | None = None
    m2: torch.Tensor | None = None
    for n, dims in enumerate(flips):
        def scaled(stage: str, fraction: float, n: int = n) -> None:
            progress(stage, (n + fraction) / len(flips))
        flipped = torch.flip(image, dims) if dims else image
        probs = infer(flipped, scaled).float()
        probs = torch.flip(probs, dims) if dims else probs
        if total is not None and probs.device != total.device:  # a pass fell back to the CPU: all go there
            assert mean_fg is not None and m2 is not None
            total, mean_fg, m2, probs = total.cpu(), mean_fg.cpu(), m2.cpu(), probs.cpu()
        foreground = 1.0 - probs[background] if background is not None else probs.amax(0)
        if total is None:
            total, mean_fg, m2 = probs.clone(), foreground.clone(), torch.zeros_like(foreground)
            continue
        assert mean_fg is not None and m2 is not None  # set with total, on the first pass
        total += probs
        delta = foreground - mean_fg
        mean_fg += delta / (n + 1)
        m2 += delta * (foreground - mean_fg)
    assert total is not None and m2 is not None  # two passes or more ran
    spread = (m2 / len(flips)).clamp_min(0.0).sqrt()
    return (total / len(flips)).to(dtype), spread
