"""The channels-last memory layout of a network, exact for GroupNorm on the CPU.

PyTorch's CPU group-norm kernel for ``channels_last_3d`` tensors loses precision with the size of the
group (torch 2.13 against float64: largest error 3e-3 on a 64^3 window, 3.5e-2 on 240 x 240 x 160 for
unit-variance activations, hundreds when they carry a large mean; the contiguous kernel stays near 1e-6;
``Testing/inference/test_policy.py`` measures it). So on the CPU every ``GroupNorm`` layer of a
channels-last network here normalises a contiguous copy of its input and hands its output back in
channels-last: the convolutions keep the faster layout and the normalisation computes exactly what the
contiguous network computes (on the zoo-size SegResNet with bf16 autocast the output equals the
contiguous bf16 network's; docs/performance.md has the timings). Instance norm is unaffected by the
kernel and left alone.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["to_channels_last", "has_group_norm", "channels_last_of"]

_LAYOUTS = {4: torch.channels_last, 5: torch.channels_last_3d}


def has_group_norm(network: torch.nn.Module) -> bool:
    """Whether ``network`` has a ``GroupNorm`` layer."""
    return any(isinstance(m, torch.nn.GroupNorm) for m in network.modules())


def channels_last_of(tensor: torch.Tensor) -> torch.memory_format | None:
    """The channels-last layout ``tensor`` (N, C, *spatial) is held in, or None when it is contiguous (or
    its layout is neither)."""
    layout = _LAYOUTS.get(tensor.dim())
    if layout is None or tensor.is_contiguous() or not tensor.is_contiguous(memory_format=layout):
        return None
    return layout


def _contiguous_input(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: the input, (N, C, *spatial), in the contiguous layout."""
    return (args[0].contiguous(),) + tuple(args[1:])


def _channels_last_output(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the output back in the channels-last layout of its rank (4-D or 5-D)."""
    layout = _LAYOUTS.get(output.dim())
    return output.contiguous(memory_format=layout) if layout is not None else output


def to_channels_last(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A copy of ``network`` in the ``channels_last_3d`` layout (the loaded model may be shared, and
    ``Module.to`` converts in place). On the CPU its ``GroupNorm`` layers run on contiguous copies (module
    hooks; the layers and their weights are unchanged, so a ``torch.fx`` trace sees the same graph)."""
    out = copy.deepcopy(network).to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    if device.type == "cpu":
        for module in out.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.register_forward_pre_hook(_contiguous_input)
                module.register_forward_hook(_channels_last_output)
    return out
