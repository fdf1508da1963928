"""A 1-D Gaussian mixture of tissue intensities that comes out the same on every machine.

scikit-learn's ``GaussianMixture`` with its default k-means start lands on other parameters with another
thread count or CPU (the Colin27 template's CSF mean 57.4 or 57.3; run to convergence, 49.7 or 51.1), so
anything built on it (template tissue maps, a transplant donor's white matter) differed between the machine
that trained and the one that resumed. :func:`stable_mixture` starts from fixed quantiles and fits in
float64, then rounds the parameters to 4 significant digits; :func:`mixture_posteriors` computes the class
probabilities element-wise and rounds them to multiples of 2^-12. What is left of BLAS and SIMD rounding
(about 1e-11 in the parameters, 1 ulp in ``exp``) then does not reach the result.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn.mixture import GaussianMixture

__all__ = ["Mixture", "stable_mixture", "mixture_posteriors", "significant"]


class Mixture(NamedTuple):
    """Class means, variances and weights, each (k,), ordered by mean (darkest first)."""

    means: np.ndarray
    variances: np.ndarray
    weights: np.ndarray


def significant(values: np.ndarray, digits: int) -> np.ndarray:
    """``values`` rounded to ``digits`` significant digits (zeros stay zero: z-scored data can have a class
    mean of 0)."""
    magnitude = np.floor(np.log10(np.where(values == 0, 1.0, np.abs(values))))
    scale = 10.0 ** (digits - 1 - magnitude)
    return np.round(values * scale) / scale


def stable_mixture(values: np.ndarray, start_quantiles: tuple[float, ...] = (5.0, 50.0, 95.0)) -> Mixture:
    """Fit one Gaussian per quantile in ``start_quantiles`` (percent; its starting mean) to the 1-D
    ``values`` in float64, with scikit-learn's default tolerance; parameters rounded to 4 significant digits."""
    values = np.asarray(values, dtype=np.float64).ravel()
    start = np.percentile(values, list(start_quantiles))[:, None]
    fit = GaussianMixture(len(start_quantiles), means_init=start, random_state=0).fit(values[:, None])
    order = np.argsort(fit.means_.ravel())
    return Mixture(*(significant(a.ravel()[order], 4) for a in (fit.means_, fit.covariances_, fit.weights_)))


def mixture_posteriors(values: np.ndarray, mixture: Mixture) -> np.ndarray:
    """Class probabilities (n, k) float32 of ``values`` under ``mixture``, rounded to multiples of 2^-12."""
    values = np.asarray(values, dtype=np.float64).ravel()
    log_density = (-0.5 * (values[:, None] - mixture.means) ** 2 / mixture.variances
                   - 0.5 * np.log(2 * np.pi * mixture.variances) + np.log(mixture.weights))
    posterior = np.exp(log_density - log_density.max(axis=1, keepdims=True))
    posterior /= posterior.sum(axis=1, keepdims=True)
    return (np.round(posterior * 4096) / 4096).astype(np.float32)
