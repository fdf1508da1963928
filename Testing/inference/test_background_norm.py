"""GroupNorm with the statistics of a big background-filled window, computed on a small window
(medcnncad.inference.background_norm), against GroupNorm run on the big field itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medcnncad.inference.background_norm import (
    BackgroundStatistics,
    UnsupportedNetwork,
    _conv_on_constant,
    mixed_group_norm,
    supports_background_statistics,
)


@pytest.mark.parametrize("affine", [True, False])
def test_mixed_group_norm_is_group_norm_over_the_window_plus_the_constant_voxels(affine):
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 8, affine=affine)
    if affine:
        nn.init.uniform_(norm.weight, 0.5, 2.0)
        nn.init.uniform_(norm.bias, -1.0, 1.0)
    window = torch.randn(2, 8, 6, 5, 4) * 3 + 1  # two cases in a batch: each its own statistics
    constant = torch.randn(2, 8, 1, 1, 1)
    total = 3 * 6 * 5 * 4  # the field: the window's 120 voxels and 240 of the constant
    field = torch.cat([window.reshape(2, 8, -1), constant.reshape(2, 8, 1).expand(2, 8, 240)], dim=-1)
    expected = F.group_norm(field.double(), 4, norm.weight.double() if affine else None,
                            norm.bias.double() if affine else None, norm.eps)
    got_window, got_constant = mixed_group_norm(norm, window, constant, total)
    assert torch.allclose(got_window.double().reshape(2, 8, -1), expected[..., :120], atol=1e-5)
    assert torch.allclose(got_constant.double().reshape(2, 8), expected[..., 120], atol=1e-5)
    # a window that is the whole field: plain GroupNorm
    plain, _ = mixed_group_norm(norm, window, constant, 120)
    assert torch.allclose(plain, norm(window), atol=1e-5)


def test_a_channels_last_window_is_normalised_as_exactly_as_a_contiguous_one_and_keeps_its_layout():
    """A channels-last network's GroupNorm on the CPU (medcnncad.inference.layout): the mixed statistics
    come from the contiguous kernel, whose error does not grow with a large mean as the channels-last one's."""
    torch.manual_seed(0)
    norm = nn.GroupNorm(8, 16)
    window = torch.randn(1, 16, 64, 64, 64) * 0.5 + 5.0
    constant = torch.randn(1, 16, 1, 1, 1)
    total = 2 * 64 ** 3
    contiguous, _ = mixed_group_norm(norm, window, constant, total)
    last, _ = mixed_group_norm(norm, window.contiguous(memory_format=torch.channels_last_3d), constant, total)
    assert last.is_contiguous(memory_format=torch.channels_last_3d) and not last.is_contiguous()
    assert torch.equal(last, contiguous)


def test_a_convolution_of_a_constant_field_is_its_bias_plus_the_kernel_sum_times_the_constant():
    torch.manual_seed(1)
    constant = torch.randn(1, 6, 1, 1, 1)
    field = constant.expand(1, 6, 9, 9, 9)
    for conv in (nn.Conv3d(6, 4, 3, stride=2, padding=1), nn.Conv3d(6, 4, 3, padding=1, groups=2, bias=False)):
        centre = conv(field)[..., 2:3, 2:3, 2:3]  # far from the zero padding at the field's faces
        assert torch.allclose(_conv_on_constant(conv, constant), centre, atol=1e-5)


class _Pointwise(nn.Module):
    """1 x 1 x 1 convolutions, GroupNorm, a residual addition, a channel concatenation and an
    up-sampling: nothing that sees neighbours, so a window inside a background field is exact."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(2, 8, 1)
        self.norm1 = nn.GroupNorm(4, 8)
        self.conv2 = nn.Conv3d(8, 8, 1)
        self.norm2 = nn.GroupNorm(2, 16)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.norm3 = nn.GroupNorm(8, 16)
        self.out = nn.Conv3d(16, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        y = self.norm2(torch.cat([self.conv2(y) + y, y], dim=1))
        return self.out(self.norm3(self.up(F.leaky_relu(y))))


def test_a_window_in_a_background_field_gives_what_the_whole_field_gives():
    torch.manual_seed(2)
    net = _Pointwise().eval()
    for m in net.modules():
        if isinstance(m, nn.GroupNorm):
            nn.init.uniform_(m.weight, 0.5, 2.0)
            nn.init.uniform_(m.bias, -1.0, 1.0)
    background = 0.7
    field = torch.full((1, 2, 12, 10, 8), background)
    window = torch.randn(1, 2, 6, 4, 4) * 2
    field[:, :, 2:8, 3:7, 1:5] = window
    with torch.inference_mode():
        expected = net(field)[:, :, 4:16, 6:14, 2:10]  # the window's voxels, up-sampled twice
        got = BackgroundStatistics(net, (12, 10, 8), background=background)(window)
        own = net(window)
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(own, expected, atol=1e-2)  # the window's own statistics are other numbers


def test_networks_without_a_constant_rule_are_refused_by_name():
    from monai.networks.nets import SegResNet, UNet

    pooled = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.MaxPool3d(2))
    with pytest.raises(UnsupportedNetwork, match="MaxPool3d"):
        BackgroundStatistics(pooled, (16, 16, 16))
    assert not supports_background_statistics(pooled)
    reflect = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1, padding_mode="reflect"), nn.GroupNorm(2, 4))
    assert not supports_background_statistics(reflect)
    assert not supports_background_statistics(UNet(3, 1, 2, (4, 8), (2,), norm="instance"))  # no GroupNorm
    assert supports_background_statistics(SegResNet(3, 8, 1, 2))

    class Cat(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.dim = dim
            self.norm = nn.GroupNorm(1, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(torch.cat([x, x], dim=self.dim))

    assert not supports_background_statistics(Cat(2))  # a spatial concatenation: refused before any run
    assert supports_background_statistics(Cat(1)) and supports_background_statistics(Cat(-4))
    with pytest.raises(UnsupportedNetwork, match="dim -1, a spatial axis"):
        BackgroundStatistics(Cat(-1), (8, 8, 8))(torch.zeros(1, 2, 4, 4, 4))  # known only with the rank
    assert BackgroundStatistics(Cat(-4), (8, 8, 8))(torch.zeros(1, 2, 4, 4, 4)).shape == (1, 4, 4, 4, 4)

    class TwoOutputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.GroupNorm(1, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.norm(x), x

    assert not supports_background_statistics(TwoOutputs())


class _InPlaceAfterUpsampling(nn.Module):
    """1 x 1 x 1 only (exact), with an in-place activation on an up-sampled tensor whose input is used
    again (found in review: the constant must not be shared between the two)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 1)
        self.norm1 = nn.GroupNorm(2, 4)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.act = nn.ReLU(inplace=True)
        self.down = nn.Conv3d(4, 4, 1, stride=2)
        self.norm2 = nn.GroupNorm(2, 8)
        self.out = nn.Conv3d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(self.conv(x)) - 0.3  # a background constant with negative entries
        u = self.act(self.up(y))
        return self.out(self.norm2(torch.cat([self.down(u), y], 1)))


def test_in_place_operations_do_not_change_a_constant_used_again():
    torch.manual_seed(0)
    net = _InPlaceAfterUpsampling().eval()
    field = torch.full((1, 2, 16, 16, 16), 0.5)
    window = torch.randn(1, 2, 4, 4, 4)
    field[..., 4:8, 4:8, 4:8] = window
    with torch.inference_mode():
        expected = net(field)[..., 4:8, 4:8, 4:8]
        got = BackgroundStatistics(net, (16, 16, 16), background=0.5)(window)
    assert torch.allclose(got, expected, atol=1e-5)


def test_a_bf16_window_is_as_exact_as_a_float32_window_rounded_to_bf16():
    """Under CPU autocast the window is bf16: its statistics are taken in float32 and its output rounded
    once (found in review: bf16 statistics and an in-place bf16 rescale doubled the error)."""
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 8)
    window = (torch.randn(2, 8, 16, 16, 16) * 2).bfloat16()
    constant = torch.randn(2, 8, 1, 1, 1)
    total = 2 * 16 ** 3
    field = torch.cat([window.double().reshape(2, 8, -1),
                       constant.double().reshape(2, 8, 1).expand(2, 8, 16 ** 3)], dim=-1)
    exact = F.group_norm(field, 4, eps=norm.eps)[..., : 16 ** 3]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = mixed_group_norm(norm, window, constant, total)
        best, _ = mixed_group_norm(norm, window.float(), constant, total)
    assert got.dtype == torch.bfloat16 and best.dtype == torch.float32
    error = (got.double().reshape(2, 8, -1) - exact).abs().max()
    bound = (best.bfloat16().double().reshape(2, 8, -1) - exact).abs().max()  # float32, then rounded once
    assert error <= 1.25 * bound


def test_a_segmenter_with_background_statistics_is_closer_to_the_bundle_window_than_without(tmp_path):
    from dataclasses import replace

    import SimpleITK as sitk
    from helpers import small_phantom, write_bundle
    from monai.networks.nets import SegResNet

    from medcnncad.inference.policy import CROP_MODES, agreement
    from medcnncad.inference.segmenter import Segmenter
    from medcnncad.models.registry import load_model

    torch.manual_seed(3)
    bundle = load_model(write_bundle(tmp_path / "bundle", code=False))
    model = replace(bundle, network=SegResNet(3, 8, 4, 4, blocks_down=(1, 2, 2), blocks_up=(1, 1)).eval())
    images = {name: sitk.ConstantPad(img, (6, 6, 6), (6, 6, 6), 0.0) for name, img in small_phantom()[0].items()}
    reference = Segmenter(model, "cpu", precision="fp32").run(images)
    runs = {}
    for mode in ("crop+fit", "crop+fit+bg"):
        crop, fit, background = CROP_MODES[mode]
        segmenter = Segmenter(model, "cpu", precision="fp32", crop_foreground=crop, fit_roi=fit,
                              background_statistics=background)
        assert segmenter.policy_note()["background_statistics"] is background
        runs[mode] = agreement(reference, segmenter.run(images))
    own, mixed = runs["crop+fit"]["max_probability_difference"], runs["crop+fit+bg"]["max_probability_difference"]
    assert mixed < 0.5 * own, runs
