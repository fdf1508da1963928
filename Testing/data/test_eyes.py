"""Eye globes rendered as water on skull-on phantoms (``PhantomConfig.eyes``)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medcnncad.data.phantom import (
    _GLOBE_RADIUS_MM,
    _GLOBES_RAS_MM,
    PRESETS,
    _anatomy,
    _eye_signal,
    _globes,
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
    """KJI mask of voxels more than ``margin_mm`` from both globe centres."""
    size = image.GetSize()
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in size], indexing="ij"), -1)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    lps = (index * np.asarray(image.GetSpacing())) @ direction.T + np.asarray(image.GetOrigin())
    far = np.ones(size, bool)
    for x, y, z in _GLOBES_RAS_MM:
        far &= np.linalg.norm(lps - np.asarray([-x, -y, z]), axis=-1) > _GLOBE_RADIUS_MM + margin_mm
    return far.transpose(2, 1, 0)


def test_no_eyes_without_skull_or_without_the_option():
    reference = _colin27().reference
    assert _eye_signal(1, PRESETS["robust-head"], True, reference) is None      # option off
    assert _eye_signal(1, PRESETS["robust-head-eyes"], False, reference) is None  # skull off
    share, signal = _eye_signal(1, PRESETS["robust-head-eyes"], True, reference)
    assert signal["T2"] > 2 * signal["FLAIR"] and signal["T2"] > 2 * signal["T1"]
