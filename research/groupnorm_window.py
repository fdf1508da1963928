"""Would a window fitted to the brain reproduce a GroupNorm network's output over the bundle's big window,
if each GroupNorm layer used the big window's group statistics instead of its own?

Runs a bundle's network (e.g. the trained zoo-size SegResNet of ``scripts/bench.py bundle --weights``) on
the shipped sample case three ways: the bundle's own window (the reference, padded with zeros as MONAI's
sliding window pads), a window fitted to the non-zero box (+8 voxels, multiple of 16), and that fitted
window with every GroupNorm layer given the reference run's per-group mean and variance. Prints each
label's Dice against the reference inside the fitted box, and the largest probability difference.

    .venv/bin/python research/groupnorm_window.py <bundle folder> [PREFIXES ...]

Each PREFIXES (comma-separated module-name prefixes, e.g. ``down_layers.2,down_layers.3,up_layers.0``) adds
a run of the background-as-constants window in which the GroupNorm layers so named get the reference run's
statistics instead (where does the remaining difference come from?).

Numbers: docs/performance.md, "The bundle benchmark with trained weights" (last paragraph).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

from medcnncad.inference import background_norm
from medcnncad.inference.background_norm import BackgroundStatistics
from medcnncad.inference.inputs import in_manifest_order
from medcnncad.inference.machine_policy import _check_case
from medcnncad.models.preprocessing import to_metatensor
from medcnncad.models.registry import load_model


def pad_to(x: torch.Tensor, size: list[int]) -> tuple[torch.Tensor, list[int]]:
    """Zero-pad (1, C, *s) to ``size`` symmetrically (as MONAI's sliding window); returns the offsets."""
    pads, offsets = [], []
    for s, r in zip(x.shape[2:], size):
        lo = (r - s) // 2
        offsets.append(lo)
        pads.append((lo, r - s - lo))
    flat = [v for pair in reversed(pads) for v in pair]
    return F.pad(x, flat), offsets


def _partly_injected(net: torch.nn.Module, field: list[int], fit_in: torch.Tensor,
                     stats: dict[str, tuple[torch.Tensor, torch.Tensor]], prefixes: list[str]) -> torch.Tensor:
    """The background-as-constants run with the reference statistics in the GroupNorm layers named."""
    names = {m: n for n, m in net.named_modules() if isinstance(m, torch.nn.GroupNorm)}
    mixed = background_norm.mixed_group_norm

    def given(norm, window, constant, total):
        if not any(names[norm].startswith(p) for p in prefixes):
            return mixed(norm, window, constant, total)
        mean, var = stats[names[norm]]
        per = window.shape[1] // norm.num_groups
        rstd = torch.rsqrt(var + norm.eps)[..., None]
        a = (rstd * norm.weight.double().reshape(1, norm.num_groups, per)).reshape(1, -1, 1, 1, 1)
        b = (norm.bias.double().reshape(1, norm.num_groups, per) - mean[..., None] * rstd *
             norm.weight.double().reshape(1, norm.num_groups, per)).reshape(1, -1, 1, 1, 1)
        return (window.double() * a + b).float(), (constant.double() * a + b).float()

    background_norm.mixed_group_norm = given
    try:
        return BackgroundStatistics(net, field)(fit_in).softmax(1)
    finally:
        background_norm.mixed_group_norm = mixed


def main() -> None:
    model = load_model(sys.argv[1])
    net = model.network.eval()
    images, _ = in_manifest_order(model.manifest, _check_case(model))
    pre = model.preprocess(to_metatensor(images)).as_tensor()[None].float()
    roi = list(model.manifest.inference.roi_size)
    nz = torch.nonzero(pre[0].abs().sum(0) > 0)
    lo = (nz.min(0).values - 8).clamp(min=0)
    hi = torch.minimum(nz.max(0).values + 9, torch.tensor(pre.shape[2:]))
    crop = pre[:, :, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    fit = [int(np.ceil(s / 16) * 16) for s in crop.shape[2:]]
    print(f"image {list(pre.shape[2:])}, bundle window {roi}, box {list(crop.shape[2:])}, fitted window {fit}")

    full_in, off_full = pad_to(pre, [max(r, s) for r, s in zip(roi, pre.shape[2:])])
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    norms = {name: m for name, m in net.named_modules() if isinstance(m, torch.nn.GroupNorm)}

    def record(name: str, m: torch.nn.GroupNorm):
        def hook(_m, args):
            x = args[0].double()
            g = x.reshape(x.shape[0], m.num_groups, -1)
            stats[name] = (g.mean(-1), g.var(-1, unbiased=False))
        return hook

    with torch.inference_mode():
        hooks = [m.register_forward_pre_hook(record(n, m)) for n, m in norms.items()]
        ref = net(full_in).softmax(1)
        for h in hooks:
            h.remove()
        fit_in, off_fit = pad_to(crop, fit)
        own = net(fit_in).softmax(1)
        originals = {n: m.forward for n, m in norms.items()}
        for n, m in norms.items():
            def injected(x, n=n, m=m):
                mean, var = stats[n]
                g = x.double().reshape(x.shape[0], m.num_groups, -1)
                y = ((g - mean[..., None]) / torch.sqrt(var[..., None] + m.eps)).reshape(x.shape).float()
                return y * m.weight.view(1, -1, *([1] * (x.dim() - 2))) + m.bias.view(1, -1, *([1] * (x.dim() - 2)))
            m.forward = injected
        given = net(fit_in).softmax(1)
        for n, m in norms.items():
            m.forward = originals[n]
        field = [max(r, s) for r, s in zip(roi, pre.shape[2:])]
        mixed = BackgroundStatistics(net, field)(fit_in).softmax(1)
        partly = {prefixes: _partly_injected(net, field, fit_in, stats, prefixes.split(","))
                  for prefixes in sys.argv[2:]}

    def box(p: torch.Tensor, offsets: list[int], start: list[int]) -> torch.Tensor:
        sl = [slice(o + s, o + s + n) for o, s, n in zip(offsets, start, crop.shape[2:])]
        return p[0][:, sl[0], sl[1], sl[2]]

    reference = box(ref, off_full, [int(v) for v in lo])
    for what, probs in (("fitted window, own statistics", box(own, off_fit, [0, 0, 0])),
                        ("fitted window, reference statistics", box(given, off_fit, [0, 0, 0])),
                        ("fitted window, background run as constants", box(mixed, off_fit, [0, 0, 0])),
                        *((f"background as constants, reference statistics at {k}", box(v, off_fit, [0, 0, 0]))
                          for k, v in partly.items())):
        a, b = reference.argmax(0), probs.argmax(0)
        dice = {}
        for v in range(1, reference.shape[0]):
            x, y = a == v, b == v
            total = int(x.sum() + y.sum())
            dice[v] = 1.0 if total == 0 else 2 * int((x & y).sum()) / total
        print(f"{what}: Dice per label {dice} (reference voxels {[int((a == v).sum()) for v in dice]}), "
              f"max prob. diff {float((reference - probs).abs().max()):.4f}")


if __name__ == "__main__":
    main()
