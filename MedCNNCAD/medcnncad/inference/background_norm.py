"""A small window with a big window's GroupNorm statistics: the background run alongside as constants.

A MONAI bundle such as the model-zoo brain-tumor SegResNet runs one 240 x 240 x 160 window over a
BraTS-size case, most of it background (zeros after ``NormalizeIntensity(nonzero=True)`` and the sliding
window's zero padding). Its GroupNorm layers normalise with statistics over that whole window. A window
fitted to the brain box computes about half the voxels, but its own group statistics differ and the output
changes (an enhancing-tumor label can vanish; ``research/groupnorm_window.py``).

Far from the image the background's activations are one constant per channel at every layer: a constant
field stays constant through a convolution (bias + the kernel's sum times the constant), element-wise
activations, additions, concatenation along channels and up-sampling. :class:`BackgroundStatistics` runs
the network on the fitted window and, alongside it, on that constant (a 1 x 1 x 1 tensor per channel);
each GroupNorm layer mixes the window's group mean and variance with the constant's, weighted by the
voxel counts the big window would have at that layer. The activations near the image that are neither
image nor constant and lie outside the fitted window are counted as constant: an approximation, which is
why the execution policy offers this only as a candidate judged by its accuracy gate.

Tensors are (N, C, *spatial); for the engine's 3D windows (N, C, I, J, K) in voxels.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from medcnncad.inference.layout import channels_last_of, has_group_norm

__all__ = ["BackgroundStatistics", "UnsupportedNetwork", "supports_background_statistics"]


class UnsupportedNetwork(ValueError):
    """The network holds an operation whose effect on a constant field is not known here."""


ELEMENTWISE_MODULES = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                       nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Mish)
CONSTANT_KEEPING_MODULES = (nn.Upsample,)  # a constant field up-sampled is the same constant
NORM_MODULES = (nn.GroupNorm,)
CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
ELEMENTWISE_FUNCTIONS = {operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, operator.truediv,
                         torch.add, torch.mul, torch.sigmoid, torch.relu, torch.tanh, F.relu, F.leaky_relu,
                         F.gelu, F.silu, F.sigmoid}
CONSTANT_KEEPING_FUNCTIONS = {F.interpolate}
ELEMENTWISE_METHODS = {"contiguous", "float", "to", "type_as", "add", "mul", "relu", "sigmoid"}


class _Pair:
    """A node's two values: on the window, and on the background constant (N, C, 1, ..., 1)."""

    __slots__ = ("window", "constant")

    def __init__(self, window: Any, constant: Any) -> None:
        self.window = window
        self.constant = constant


def _split(value: Any, which: str) -> Any:
    """The window's or the constant's values of (nested) arguments; the constants are copies (they are
    (N, C, 1, ...) small), so an in-place operation never changes a constant that another node uses."""
    def pick(v: Any) -> Any:
        if not isinstance(v, _Pair):
            return v
        value = getattr(v, which)
        return value.clone() if which == "constant" and isinstance(value, torch.Tensor) else value
    return torch.fx.node.map_aggregate(value, pick)


def _cat_dim(node: torch.fx.Node) -> Any:
    """The ``dim`` of a ``torch.cat`` node (a literal, or a node when computed)."""
    return node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)


def _unsupported(graph: torch.fx.GraphModule) -> list[str]:
    """What in the traced graph this module does not know how to run on a constant."""
    known = ELEMENTWISE_MODULES + CONSTANT_KEEPING_MODULES + NORM_MODULES + CONV_MODULES
    out = []
    for node in graph.graph.nodes:
        if node.op == "call_module":
            module = graph.get_submodule(str(node.target))
            bad = not isinstance(module, known) or (isinstance(module, CONV_MODULES) and
                                                    module.padding_mode != "zeros")
            out += [f"{type(module).__name__} ({node.target})"] if bad else []
        elif node.op == "call_function" and node.target is torch.cat:
            dim = _cat_dim(node)
            out += [f"torch.cat along dim {dim} (a spatial axis)"] if not isinstance(dim, int) or dim > 1 or \
                dim == 0 else []  # a negative dim is checked against the tensors' rank when run
        elif node.op == "call_function" and node.target not in ELEMENTWISE_FUNCTIONS | CONSTANT_KEEPING_FUNCTIONS:
            out.append(f"function {getattr(node.target, '__name__', node.target)}")
        elif node.op == "call_method" and node.target not in ELEMENTWISE_METHODS:
            out.append(f"method {node.target}")
        elif node.op == "get_attr":  # a parameter used directly: fine if it has no spatial extent
            value = graph.get_parameter(str(node.target)) if str(node.target) in dict(graph.named_parameters()) \
                else graph.get_buffer(str(node.target))
            out += [f"attribute {node.target} with a spatial shape"] if value.dim() > 2 and \
                math.prod(value.shape[2:]) > 1 else []
        elif node.op == "output" and not isinstance(node.args[0], torch.fx.Node):
            out.append("an output that is not a single tensor")
    return out


def _trace(network: nn.Module) -> torch.fx.GraphModule:
    try:
        graph = torch.fx.symbolic_trace(network)
    except Exception as error:  # noqa: BLE001 - any tracing failure means: not supported
        raise UnsupportedNetwork(f"{type(network).__name__} cannot be traced by torch.fx: {error}") from error
    bad = _unsupported(graph)
    if bad:
        raise UnsupportedNetwork(f"{type(network).__name__}: no constant-field rule for {', '.join(bad[:5])}")
    return graph


def supports_background_statistics(network: nn.Module) -> bool:
    """Whether :class:`BackgroundStatistics` can run ``network`` and it has GroupNorm layers to change."""
    if not has_group_norm(network):
        return False
    try:
        _trace(network)
    except UnsupportedNetwork:
        return False
    return True


def mixed_group_norm(norm: nn.GroupNorm, window: torch.Tensor, constant: torch.Tensor,
                     total_voxels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm of ``window`` (N, C, *s) and ``constant`` (N, C, 1, ...) with statistics over a field of
    ``total_voxels`` voxels per channel: the window's voxels plus ``total_voxels - prod(s)`` voxels of the
    constant. Returns both, normalised; the window in its own dtype (as PyTorch's GroupNorm under CPU
    autocast; float32 under CUDA autocast, as there), with statistics computed in float32 or better.

    The window's statistics come from PyTorch's own group-norm kernel (one fused pass). In float32 its
    normalised output is then rescaled per channel in place (one element-wise pass more than GroupNorm); in
    bf16/fp16 the kernel runs a second time with the rescaling as its weight and bias, so the output is
    rounded once, as GroupNorm's.
    """
    n, channels = window.shape[:2]
    layout = channels_last_of(window)
    if window.device.type == "cpu" and layout is not None:
        window = window.contiguous()  # the CPU kernel is inexact in channels-last (medcnncad.inference.layout)
    groups, per_group = norm.num_groups, channels // norm.num_groups
    inside = math.prod(window.shape[2:])
    share = min(1.0, inside / total_voxels)  # of the field's voxels that the window holds
    if window.is_cuda and torch.is_autocast_enabled("cuda"):
        window = window.float()  # CUDA autocast runs GroupNorm in float32 and returns float32
    # float32 weight and bias of ones and zeros make the CPU kernel return float32 statistics for a bf16 input
    unit = torch.ones(channels, dtype=torch.float32, device=window.device)
    normalised, mean_w, rstd_w = torch.native_group_norm(window, unit, torch.zeros_like(unit), n, channels, inside,
                                                         groups, norm.eps)
    mean_w, rstd_w = mean_w.double().reshape(n, groups), rstd_w.double().reshape(n, groups)
    var_w = (rstd_w ** -2 - norm.eps).clamp(min=0)
    var_c, mean_c = torch.var_mean(constant.double().reshape(n, groups, -1), dim=-1, unbiased=False)
    mean = share * mean_w + (1 - share) * mean_c
    var = share * (var_w + (mean_w - mean) ** 2) + (1 - share) * (var_c + (mean_c - mean) ** 2)
    rstd = torch.rsqrt(var + norm.eps)
    gamma = norm.weight.double().reshape(1, groups, per_group) if norm.affine else \
        torch.ones((1, groups, per_group), dtype=torch.float64, device=window.device)
    beta = norm.bias.double().reshape(1, groups, per_group) if norm.affine else torch.zeros_like(gamma)
    # window: x = normalised / rstd_w + mean_w, so (x - mean) * rstd * gamma + beta = normalised * a + b
    a = (rstd / rstd_w)[..., None] * gamma
    b = ((mean_w - mean) * rstd)[..., None] * gamma + beta
    view = (n, channels) + (1,) * (window.dim() - 2)
    if normalised.dtype == torch.float32:  # rescaled in place: one element-wise pass
        out_w = normalised.mul_(a.reshape(view).float()).add_(b.reshape(view).float())
    else:  # bf16/fp16: the kernel again with a and b as its weight and bias, so the output is rounded once
        del normalised
        parts = [torch.native_group_norm(window[i:i + 1], a[i].reshape(-1).float(), b[i].reshape(-1).float(), 1,
                                         channels, inside, groups, norm.eps)[0] for i in range(n)]
        out_w = parts[0] if n == 1 else torch.cat(parts)
    out_c = ((constant.double() - mean.repeat_interleave(per_group, 1).reshape(view)) *
             (rstd[..., None] * gamma).reshape(view) + beta.expand(n, -1, -1).reshape(view))
    out_w = out_w.contiguous(memory_format=layout) if layout is not None else out_w
    return out_w, out_c.to(out_w.dtype)


def _conv_on_constant(conv: nn.Module, constant: torch.Tensor) -> torch.Tensor:
    """A zero-padded convolution of an infinite constant field: bias + the kernel's sum times it."""
    assert isinstance(conv, CONV_MODULES)
    dims = tuple(range(2, conv.weight.dim()))
    kernel = conv.weight.sum(dim=dims, keepdim=True)
    function = (F.conv1d, F.conv2d, F.conv3d)[len(dims) - 1]
    return function(constant, kernel, conv.bias, groups=conv.groups)


class _PairInterpreter(torch.fx.Interpreter):
    """Runs the traced network on (window, constant) pairs; GroupNorm mixes their statistics."""

    def __init__(self, graph: torch.fx.GraphModule, reference_size: Sequence[int], input_size: Sequence[int]) -> None:
        super().__init__(graph)
        self.reference_size = [int(v) for v in reference_size]
        self.input_size = [int(v) for v in input_size]

    def _field_voxels(self, spatial: Sequence[int]) -> int:
        """Voxels per channel of the big window at the resolution of a feature map of size ``spatial``."""
        return math.prod(max(1, round(r * s / i)) for r, s, i in zip(self.reference_size, spatial, self.input_size))

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        module = self.fetch_attr(target)
        window, constant = _split(args, "window"), _split(args, "constant")
        if isinstance(module, nn.GroupNorm):
            x, c = window[0], constant[0]
            return _Pair(*mixed_group_norm(module, x, c, self._field_voxels(x.shape[2:])))
        if isinstance(module, CONV_MODULES):
            return _Pair(module(*window), _conv_on_constant(module, constant[0]))
        if isinstance(module, CONSTANT_KEEPING_MODULES):
            return _Pair(module(*window), constant[0])
        return _Pair(module(*window, **_split(kwargs, "window")), module(*constant, **_split(kwargs, "constant")))

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        window, constant = _split(args, "window"), _split(args, "constant")
        if target in CONSTANT_KEEPING_FUNCTIONS:
            return _Pair(target(*window, **_split(kwargs, "window")), constant[0])
        if target is torch.cat:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if dim % window[0][0].dim() != 1:
                raise UnsupportedNetwork(f"torch.cat along dim {dim}, a spatial axis: the background is not a "
                                         f"constant there")
        return _Pair(target(*window, **_split(kwargs, "window")), target(*constant, **_split(kwargs, "constant")))

    def call_method(self, target: Any, args: Any, kwargs: Any) -> Any:
        window, constant = _split(args, "window"), _split(args, "constant")
        return _Pair(getattr(window[0], target)(*window[1:], **_split(kwargs, "window")),
                     getattr(constant[0], target)(*constant[1:], **_split(kwargs, "constant")))


class BackgroundStatistics(nn.Module):
    """``network`` run on a small window as if it were embedded in a window of ``reference_size`` voxels
    filled around it with ``background`` (the value the big window's padding and the image's background
    have after preprocessing): every GroupNorm layer uses the statistics of that big field (module
    docstring).

    Args:
        network: a network of convolutions, GroupNorm, element-wise operations, additions, channel
            concatenation and up-sampling (anything else: :class:`UnsupportedNetwork`).
        reference_size: the big window (I, J, K) in voxels at the network's input resolution.
        background: the input value of the field around the window.

    Raises:
        UnsupportedNetwork: the network cannot be traced, or holds an operation without a constant rule.
    """

    def __init__(self, network: nn.Module, reference_size: Sequence[int], background: float = 0.0) -> None:
        super().__init__()
        self.network = network
        self.graph = _trace(network)
        self.reference_size = tuple(int(v) for v in reference_size)
        self.background = float(background)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output for ``x`` (N, C, *spatial); spatial no larger than ``reference_size``."""
        constant = torch.full((*x.shape[:2],) + (1,) * (x.dim() - 2), self.background, dtype=x.dtype,
                              device=x.device)
        out = _PairInterpreter(self.graph, self.reference_size, x.shape[2:]).run(_Pair(x, constant))
        return out.window
