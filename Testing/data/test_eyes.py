"""Eye globes rendered as water on skull-on phantoms (``PhantomConfig.eyes``), and leaky brain masks
(``PhantomConfig.leaky_mask``)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medcnncad.data.phantom import (
    _GLOBE_RADIUS_MM,
    _GLOBES_RAS_MM,
    _LEAK_STREAM,
    _ORBIT_APEX_RAS_MM,
    _ORBIT_RADIUS_MM,
    PRESETS,
    _anatomy,
    _eye_signal,
    _globes,
    _orbits,
    _points_lps,
    make_phantom,
)


def _colin27():
    try:
        return _anatomy("colin27")
    except FileNotFoundError as exc:  # the Makefile installs mricron-data; say so instead of failing obscurely
        pytest.skip(str(exc))


def test_globes_have_the_volume_and_place_of_two_balls():
    reference = _colin27().reference
    share = _globes(reference)
    assert share.shape == sitk.GetArrayViewFromImage(reference).shape  # KJI
    # two balls of radius 11.5 mm on a 1 mm grid: 2 * 4/3 * pi * 11.5^3 = 12 741 mm^3
    assert share.sum() == pytest.approx(2 * 4 / 3 * np.pi * _GLOBE_RADIUS_MM ** 3, rel=0.01)
    for x, y, z in _GLOBES_RAS_MM:
        i, j, k = reference.TransformPhysicalPointToIndex((-x, -y, z))  # RAS -> LPS
        assert share[k, j, i] == 1.0
        i, j, k = reference.TransformPhysicalPointToIndex((-x, -y + 13.0, z))  # 13 mm behind the centre
        assert share[k, j, i] == 0.0


def test_the_globes_sit_on_the_templates_dark_vitreous_outside_the_brain():
    """An anchor outside the code's own conventions: the template's T1 is dark inside the globes, and no
    brain tissue is there."""
    anatomy = _colin27()
    share = _globes(anatomy.reference) > 0.99
    brain = anatomy.csf + anatomy.gm + anatomy.wm
    assert brain[share].max() == 0
    head = anatomy.head
    rest = (head > 0.02) & ~share
    assert np.median(head[share]) < 0.75 * np.median(head[rest])  # 0.34 against 0.50


def _value_at(image: sitk.Image, ras: tuple[float, float, float]) -> float:
    index = image.TransformPhysicalPointToIndex((-ras[0], -ras[1], ras[2]))
    return float(image[index])


def _skull_on_seed(name: str) -> int:
    return next(s for s in range(112_000, 112_040) if make_phantom(s, PRESETS[name]).info.get("skull"))


@pytest.mark.parametrize("name", ["robust-head", "realistic-head-vessels"])
def test_eyes_make_the_globes_bright_on_t2_and_change_nothing_else(name):
    _colin27()
    seed = _skull_on_seed(name)
    plain, eyes = make_phantom(seed, PRESETS[name]), make_phantom(seed, PRESETS[f"{name}-eyes" if name == "robust-head"
                                                                          else "realistic-head-vessels-eyes"])
    assert eyes.info["skull"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(plain.label), sitk.GetArrayFromImage(eyes.label))
    centre = _GLOBES_RAS_MM[0]
    for sequence in ("T1c", "FLAIR"):  # water is dark on these, as the template's T1 made the globes
        assert _value_at(eyes.images[sequence], centre) < 1.1 * _value_at(plain.images[sequence], centre)
    assert _value_at(eyes.images["T2"], centre) > 2 * _value_at(plain.images["T2"], centre)  # and bright on T2
    # far from the globes (the back of the head), every sequence is the plain case's, voxel for voxel
    for sequence in plain.images:
        a, b = (sitk.GetArrayFromImage(c.images[sequence]) for c in (plain, eyes))
        far = _far_from_globes(plain.images[sequence])
        assert far.sum() > 0.5 * far.size
        np.testing.assert_array_equal(a[far], b[far])


def _far_from_globes(image: sitk.Image, margin_mm: float = 30.0) -> np.ndarray:
    """KJI mask of voxels more than ``margin_mm`` from both globes."""
    points = _points_lps(image)
    return np.all([np.linalg.norm(points - np.asarray([-x, -y, z]), axis=-1) > _GLOBE_RADIUS_MM + margin_mm
                   for x, y, z in _GLOBES_RAS_MM], axis=0)


def test_no_eyes_without_skull_or_without_the_option():
    reference = _colin27().reference
    assert _eye_signal(1, PRESETS["robust-head"], True, reference) is None      # option off
    assert _eye_signal(1, PRESETS["robust-head-eyes"], False, reference) is None  # skull off
    share, signal = _eye_signal(1, PRESETS["robust-head-eyes"], True, reference)
    assert signal["T2"] > 2 * signal["FLAIR"] and signal["T2"] > 2 * signal["T1"]


def test_orbits_are_two_capsules_from_globe_to_apex():
    reference = _colin27().reference
    inside = _orbits(reference)
    length = np.linalg.norm(np.subtract(_GLOBES_RAS_MM[0], _ORBIT_APEX_RAS_MM[0]))  # 37.0 mm
    capsule = np.pi * _ORBIT_RADIUS_MM ** 2 * length + 4 / 3 * np.pi * _ORBIT_RADIUS_MM ** 3  # 28.9 mL
    assert inside.sum() == pytest.approx(2 * capsule, rel=0.02)  # 1 mm voxels
    for point in (*_GLOBES_RAS_MM, *_ORBIT_APEX_RAS_MM):
        i, j, k = reference.TransformPhysicalPointToIndex((-point[0], -point[1], point[2]))
        assert inside[k, j, i]
    i, j, k = reference.TransformPhysicalPointToIndex((0.0, 0.0, 0.0))  # the middle of the brain
    assert not inside[k, j, i]


def _leak_draws(seed: int) -> tuple[bool, bool]:
    """(cut by a leaky mask, orbits kept) as ``_leaky_mask`` draws them for a skull-on head at share 0.5."""
    rng = np.random.default_rng([seed, _LEAK_STREAM])
    cut = rng.random() < 0.5
    rng.uniform(2.0, 12.0)
    return cut, bool(rng.random() < 0.5)


def test_a_leaky_mask_cuts_the_head_keeps_the_orbits_and_leaves_the_labels():
    _colin27()
    seed = next(s for s in range(112_000, 112_200) if _leak_draws(s) == (True, True)
                and make_phantom(s, PRESETS["robust-head-eyes"]).info.get("skull"))
    whole, cut = make_phantom(seed, PRESETS["robust-head-eyes"]), make_phantom(seed, PRESETS["robust-head-leaky"])
    assert cut.info["leaky_mask"]["orbits"] is True and 2 <= cut.info["leaky_mask"]["margin_mm"] <= 12
    assert "leaky_mask" not in whole.info
    np.testing.assert_array_equal(sitk.GetArrayFromImage(whole.label), sitk.GetArrayFromImage(cut.label))
    a, b = (sitk.GetArrayFromImage(c.images["T1c"]) for c in (whole, cut))
    # the whole head's voxels or zero, but along the mask's edge (resampling onto the output grid mixes the two)
    assert np.mean((b == 0) | np.isclose(b, a, rtol=1e-6)) > 0.97
    assert (b == 0).sum() > (a == 0).sum() + 100_000  # a lot of the head is gone (scalp, face, neck)
    assert _value_at(cut.images["T1c"], _GLOBES_RAS_MM[0]) > 0  # the orbits are still there
    no_orbits = next(s for s in range(112_000, 112_200) if _leak_draws(s) == (True, False)
                     and make_phantom(s, PRESETS["robust-head-eyes"]).info.get("skull"))
    assert _value_at(make_phantom(no_orbits, PRESETS["robust-head-leaky"]).images["T1c"], _GLOBES_RAS_MM[0]) == 0
