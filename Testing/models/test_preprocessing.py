"""The manifest's preprocessing: interpolation residue snapped to 0 (``preprocessing.residue_fraction``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import blob_manifest_dict
from monai.data import MetaTensor
from monai.transforms import Compose, NormalizeIntensityd, Orientationd, Spacingd

from medcnncad.errors import ModelError
from medcnncad.io.sample_case import load_sample_case
from medcnncad.models.manifest import Preprocessing, parse_manifest
from medcnncad.models.preprocessing import (
    SnapResidued,
    build_preprocessing,
    build_preprocessing_dict,
    snap_residue,
    to_metatensor,
)


def test_snap_residue_by_hand():
    """Each channel's own largest magnitude sets its threshold: 250 * 1e-5 = 2.5e-3 and 1 * 1e-5 = 1e-5."""
    image = MetaTensor(torch.tensor([[[1e-20, 250.0, 1e-4, -3e-4, -2.6e-3]], [[0.0, 1.0, 1e-6, 2e-5, -9e-6]]]),
                       affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64)))
    snapped = snap_residue(image, 1e-5)
    expected = torch.tensor([[[0.0, 250.0, 0.0, 0.0, -2.6e-3]], [[0.0, 1.0, 0.0, 2e-5, 0.0]]])
    assert torch.equal(snapped.as_tensor(), expected)
    assert isinstance(snapped, MetaTensor) and torch.equal(snapped.affine, image.affine)
    assert image[0, 0, 0] == 1e-20  # the input is left as it was


def _block_image() -> sitk.Image:
    """A 1 mm head-like volume: exactly 0 outside a box of random intensities 50-300, a fractional origin (the
    kind of grid whose resampling to 1.5 mm leaves residue: measured, 340 voxels between 0 and 1e-3)."""
    arr = np.zeros((40, 52, 48), np.float32)
    arr[8:32, 10:42, 9:38] = np.random.default_rng(0).uniform(50, 300, (24, 32, 29))
    image = sitk.GetImageFromArray(arr)
    image.SetOrigin((119.06, 136.08, -71.19))
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    return image


def _resampled(residue_fraction: float | None, normalization: str = "none") -> torch.Tensor:
    pre = Preprocessing(orientation="RAS", spacing_mm=(1.5, 1.5, 1.5), normalization=normalization,
                        residue_fraction=residue_fraction)
    return build_preprocessing(pre)(to_metatensor([_block_image()])).as_tensor()[0]


def test_resampling_residue_is_snapped_and_nothing_else_changes():
    plain, snapped = _resampled(None), _resampled(1e-5)
    scale = float(plain.abs().max())
    residue = (plain != 0) & (plain.abs() < 1e-5 * scale)
    assert int(residue.sum()) > 100  # MONAI's resampling leaves it (1e-14 to 1e-11 here)
    assert float(plain[residue].abs().max()) < 1e-9 * scale  # residue, far below any interpolated intensity
    assert torch.equal(snapped[residue], torch.zeros(int(residue.sum())))
    assert torch.equal(snapped[~residue], plain[~residue])


def test_nonzero_zscore_leaves_snapped_residue_at_zero():
    """Unsnapped, a residue voxel counts as foreground and is z-scored far below 0; snapped, it stays 0."""
    plain = _resampled(None)
    residue = (plain != 0) & (plain.abs() < 1e-5 * float(plain.abs().max()))
    z_plain, z_snapped = _resampled(None, "zscore"), _resampled(1e-5, "zscore")
    assert float(z_plain[residue].max()) < -1.0
    assert torch.equal(z_snapped[residue], torch.zeros(int(residue.sum())))
    foreground = plain.abs() >= 1e-5 * float(plain.abs().max())
    values = plain[foreground].double()
    expected = (values - values.mean()) / values.std(unbiased=False)
    assert torch.allclose(z_snapped[foreground].double(), expected, atol=1e-5)


def test_manifest_reads_and_bounds_residue_fraction(tmp_path: Path):
    assert parse_manifest(blob_manifest_dict(residue_fraction=1e-5), tmp_path).preprocessing.residue_fraction == 1e-5
    assert parse_manifest(blob_manifest_dict(), tmp_path).preprocessing.residue_fraction is None
    for bad in (0, 0.01):
        with pytest.raises(ModelError, match="residue_fraction"):
            parse_manifest(blob_manifest_dict(residue_fraction=bad), tmp_path)


def _nonzero_zscored(image: MetaTensor, grid_dtype: torch.dtype, fraction: float | None) -> torch.Tensor:
    steps = [Orientationd("image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
             Spacingd("image", pixdim=(1.5, 1.5, 1.5), mode="bilinear", dtype=grid_dtype)]
    steps += [SnapResidued(("image",), fraction)] if fraction else []
    steps.append(NormalizeIntensityd("image", nonzero=True, channel_wise=True))
    return Compose(steps)({"image": image})["image"].as_tensor()


def test_snapping_makes_differently_rounded_resamplings_agree():
    """A stand-in on the CPU for a GPU's rounding: the sample case's T1c resampled with a float64 and a float32
    grid. Measured: 6032 voxels zero on one side only (z-scored 0 against about -2.4) without the snap, 0 or 1 with
    it (a genuine edge value within rounding of the threshold); the rest then differs by float32 rounding only."""
    image = to_metatensor([load_sample_case(brats_size=True)["T1c"]])
    plain = [_nonzero_zscored(image, dtype, None) for dtype in (torch.float64, torch.float32)]
    snapped = [_nonzero_zscored(image, dtype, 1e-5) for dtype in (torch.float64, torch.float32)]
    assert int(((plain[0] == 0) != (plain[1] == 0)).sum()) > 1000
    assert float((plain[0] - plain[1]).abs().max()) > 1.0
    one_side = (snapped[0] == 0) != (snapped[1] == 0)
    assert int(one_side.sum()) <= 2
    assert float((snapped[0] - snapped[1])[~one_side].abs().max()) < 1e-3


def test_the_label_is_not_snapped_and_nothing_is_without_resampling():
    """Training's dictionary steps snap the image only (a label's values are classes); without ``spacing_mm``
    there is no resampling, so no step is added."""
    pre = Preprocessing(orientation="RAS", spacing_mm=(1.5, 1.5, 1.5), normalization="none", residue_fraction=1e-5)
    steps = build_preprocessing_dict(pre, label_key="label").transforms
    snaps = [s for s in steps if isinstance(s, SnapResidued)]
    assert len(snaps) == 1 and snaps[0].keys == ("image",)
    image = to_metatensor([_block_image()])
    label = MetaTensor(torch.full_like(image.as_tensor(), 1e-7), affine=image.affine)  # tiny on purpose
    out = SnapResidued(("image",), 1e-5)({"image": image, "label": label})
    assert out["label"] is label
    unresampled = Preprocessing(orientation="RAS", normalization="none", residue_fraction=1e-5)
    assert not any(isinstance(s, SnapResidued) for s in build_preprocessing_dict(unresampled).transforms)
