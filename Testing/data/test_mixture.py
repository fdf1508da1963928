"""The tissue mixture behind the Colin27 maps and a donor's white matter: the same on every machine."""

from __future__ import annotations

import numpy as np

from medcnncad.data.mixture import mixture_posteriors, significant, stable_mixture


def _intensities() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(50, 14, 3000), rng.normal(88, 12, 20000), rng.normal(112, 4, 8000),
                           [45.0, 88.0, 113.0]])  # a probe at each class centre, last


def test_rounding_noise_does_not_reach_the_parameters_or_the_posteriors():
    """Intensities moved by 1e-12 (what BLAS and SIMD rounding leave on another machine or thread count)
    give the same parameters and the same posteriors to the bit."""
    values = _intensities()
    mixture = stable_mixture(values)
    again = stable_mixture(values * (1 + 1e-12))
    assert all(np.array_equal(a, b) for a, b in zip(mixture, again))
    posterior = mixture_posteriors(values, mixture)
    assert np.array_equal(posterior, mixture_posteriors(values * (1 + 1e-12), again))
    assert posterior.shape == (len(values), 3) and posterior.dtype == np.float32
    assert np.allclose(posterior.sum(axis=1), 1.0, atol=2e-3) and np.all(posterior * 4096 % 1 == 0)


def test_the_classes_come_out_darkest_first_near_their_truth():
    mixture = stable_mixture(_intensities())
    assert list(mixture.means) == sorted(mixture.means)
    assert abs(mixture.means[0] - 50) < 8 and abs(mixture.means[1] - 88) < 5 and abs(mixture.means[2] - 112) < 3
    posterior = mixture_posteriors(_intensities()[-3:], mixture)
    assert list(posterior.argmax(axis=1)) == [0, 1, 2]


def test_significant_digits_by_hand():
    np.testing.assert_array_equal(significant(np.array([123.456, 0.012345, -9.8765, 0.0]), 3),
                                  [123.0, 0.0123, -9.88, 0.0])
