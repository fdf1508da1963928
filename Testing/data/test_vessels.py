"""Enhancing normal structures of realistic phantoms: where they are drawn, what they look like on each
sequence, and that they change nothing else of a case (label, grid, noise)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from medcnncad.data.phantom import _anatomy, make_realistic_phantom, preset
from medcnncad.data.vessels import VesselConfig, _ball_offsets, axis_positions_mm, draw_vessels
from medcnncad.errors import InputError


def test_ball_offsets_hold_a_ball_s_volume():
    offsets, weights = _ball_offsets(3.0)
    assert abs(weights.sum() - 4 / 3 * np.pi * 27) / (4 / 3 * np.pi * 27) < 0.05
    assert weights[np.all(offsets == 0, axis=1)][0] == 1.0 and weights.min() > 0


def test_axis_positions_follow_the_geometry_and_refuse_an_oblique_grid():
    image = sitk.Image(4, 3, 2, sitk.sitkFloat32)
    image.SetOrigin((-1.5, 10.0, 0.0))
    image.SetSpacing((1.0, 2.0, 0.5))
    x, y, z = axis_positions_mm(image)
    assert list(x) == [-1.5, -0.5, 0.5, 1.5] and list(y) == [10.0, 12.0, 14.0] and list(z) == [0.0, 0.5]
    image.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    with pytest.raises(InputError, match="axis-aligned"):
        axis_positions_mm(image)


@pytest.fixture(scope="module")
def mni():
    anatomy = _anatomy("mni152")
    return anatomy, (anatomy.csf + anatomy.gm + anatomy.wm) > 0.1


def test_vessels_lie_in_the_brain_along_the_midline_and_surface(mni):
    anatomy, brain = mni
    vessels = draw_vessels(np.random.default_rng(3), brain, anatomy.csf, anatomy.reference, VesselConfig(probability=1))
    assert vessels.dtype == np.float32 and 0 <= vessels.min() and vessels.max() <= 1
    assert not vessels[~brain].any()
    assert 2.0 < vessels.sum() / 1000 < 15.0  # mL on the 1 mm grid
    x, _, _ = axis_positions_mm(anatomy.reference)
    midline = np.abs(x) <= 3.0  # the sagittal sinus: the 6 mm around x = 0 hold far more than their share
    share = vessels[..., midline].sum() / vessels.sum()
    assert share > 5 * midline.sum() / len(x)
    again = draw_vessels(np.random.default_rng(3), brain, anatomy.csf, anatomy.reference, VesselConfig(probability=1))
    assert np.array_equal(vessels, again)
    none = draw_vessels(np.random.default_rng(3), brain, anatomy.csf, anatomy.reference, VesselConfig(probability=0))
    assert not none.any()


def test_a_case_with_vessels_is_the_same_case_plus_bright_t1c_and_dark_t2_there():
    with_vessels = replace(preset("realistic-vessels"), crop_margin_mm=25.0, skull_fraction=0.0,
                           tumor_free_fraction=0.0, vessels=VesselConfig(probability=1.0))
    plain = replace(with_vessels, vessels=None)
    a, b = make_realistic_phantom(11, with_vessels), make_realistic_phantom(11, plain)
    assert a.info["vessels_ml"] > 0 and "vessels_ml" not in b.info
    assert np.array_equal(sitk.GetArrayFromImage(a.label), sitk.GetArrayFromImage(b.label))  # background label
    assert a.images["T1c"].GetSize() == b.images["T1c"].GetSize()
    t1c = sitk.GetArrayFromImage(a.images["T1c"]) - sitk.GetArrayFromImage(b.images["T1c"])
    t2 = sitk.GetArrayFromImage(a.images["T2"]) - sitk.GetArrayFromImage(b.images["T2"])
    changed = np.abs(t1c) > 1e-3 * np.abs(sitk.GetArrayFromImage(b.images["T1c"])).max()
    assert 0 < changed.mean() < 0.2  # only near the vessels
    assert t1c[changed].mean() > 0 and t2[changed].mean() < 0  # enhancing on T1c, flow void on T2


def test_the_skull_on_vessel_preset_is_robust_head_geometry_with_realistic_rendering():
    head, vessels = preset("robust-head"), preset("realistic-head-vessels")
    for field in ("anatomies", "skull_fraction", "tumor_free_fraction", "output_spacing_mm", "tilt_deg",
                  "random_slice_axis"):
        assert getattr(vessels, field) == getattr(head, field), field
    assert head.realistic is None and head.vessels is None
    assert vessels.realistic is not None and vessels.scanner is not None and vessels.vessels is not None
    case = make_realistic_phantom(5, replace(vessels, crop_margin_mm=25.0, skull_fraction=1.0,
                                             tumor_free_fraction=0.0, vessels=VesselConfig(probability=1.0)))
    assert case.info["anatomy"] == "colin27" and case.info["skull"] and case.info["vessels_ml"] > 0


def test_wide_sinuses_are_as_wide_as_drawn_and_leave_the_rest_unchanged(mni):
    """The ``-wide`` presets: the sagittal sinus is 2 r across (r from 3-6 mm instead of 1.5-3 mm), and the
    cortical veins and choroid plexus (the same stream's later draws) come out where they did."""
    from medcnncad.data.phantom import PRESETS, WIDE_SINUSES

    assert PRESETS["realistic-vessels-wide"] == replace(PRESETS["realistic-vessels"], vessels=WIDE_SINUSES)
    assert PRESETS["realistic-head-vessels-wide"] == replace(PRESETS["realistic-head-vessels"], vessels=WIDE_SINUSES)
    anatomy, brain = mni
    x, _, z = axis_positions_mm(anatomy.reference)
    top = int(np.argmax(z >= 40.0))  # an axial slice of the convexity (LPS z, mm), where only the sagittal sinus runs
    widths, drawn = [], []
    for config in (VesselConfig(probability=1, cortical_veins=(0, 0), choroid_probability=0),
                   replace(WIDE_SINUSES, probability=1, cortical_veins=(0, 0), choroid_probability=0)):
        rng = np.random.default_rng(5)
        radius = np.random.default_rng(5).uniform(*config.sinus_radius_mm, size=2)[1]  # after the presence draw
        vessels = draw_vessels(rng, brain, anatomy.csf, anatomy.reference, config)
        across = np.flatnonzero(vessels[top].max(axis=0) > 0.5)  # voxels along x (1 mm) holding the sinus
        widths.append((len(across), radius))
        drawn.append(vessels)
    for count, radius in widths:
        assert abs(count - 2 * radius) <= 2.0  # |x| <= r on the 1 mm grid, blurred by 0.6 mm
    assert 3.0 <= widths[1][1] <= 6.0 and widths[1][0] > widths[0][0]
    full = [draw_vessels(np.random.default_rng(5), brain, anatomy.csf, anatomy.reference, replace(c, probability=1))
            for c in (VesselConfig(), WIDE_SINUSES)]
    # far from the midline and above the transverse sinuses: veins only
    away = np.broadcast_to((np.abs(x)[None, None, :] > 20.0) & (z[:, None, None] > 20.0), full[0].shape)
    assert full[0][away].any() and np.array_equal(full[0][away], full[1][away])
