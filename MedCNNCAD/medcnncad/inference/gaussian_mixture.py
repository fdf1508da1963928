"""Full-covariance Gaussian mixture by EM: scikit-learn's ``GaussianMixture`` fit, with every sum as one product.

Why: the core refinement (:mod:`medcnncad.inference.refine`) fits a 4-component mixture to up to 200,000 voxels of
four features. scikit-learn loops over components, reduces (N, K) and (N, D) arrays along their short last axis and
calls LAPACK for each 4 x 4 factorisation; on the BraTS-size sample case its fit took 0.5 s of the case's
post-processing (``python scripts/bench.py mixture``, docs/performance.md). Here each voxel's monomials up to degree 2
(1, x, x_i x_j) are formed once; an E-step's Mahalanobis distances of every component and an M-step's weights,
means and covariances are then one matrix product each, and the K small Cholesky factors and inverses are a few
element-wise steps.

The algorithm is scikit-learn 1.9's, step for step (``n_init=1``, ``init_params="kmeans"``, ``covariance_type=
"full"``, ``warm_start=False``): the start is scikit-learn's own ``KMeans(n_init=1)`` labels with a
``RandomState(seed)``; each iteration is an E-step, an M-step and the mean log-likelihood of that E-step as the
lower bound; the fit stops when the bound changes by less than ``tol``. Only the floating-point order of the sums
differs; ``Testing/inference/test_gaussian_mixture.py`` compares parameters, iteration counts and posteriors with
scikit-learn's (within 1e-10 on z-scored features).

Arrays: ``values`` are (N, D) as scikit-learn takes them; the returned posterior is (K, N).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

__all__ = ["FullMixture", "fit_full_mixture", "posterior"]

ILL_DEFINED = ("Fitting the mixture model failed because some components have ill-defined empirical covariance "
               "(for instance caused by singleton or collapsed samples). Try to decrease the number of components, "
               "increase reg_covar, or scale the input data.")


@dataclass(frozen=True)
class FullMixture:
    """A fitted mixture: ``weights`` (K,), ``means`` (K, D), ``covariances`` and ``precisions_cholesky`` (K, D, D)
    (as scikit-learn's attributes of the same names), the EM iterations run and whether the bound converged."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray
    n_iter: int
    converged: bool


def _moments(values_t: np.ndarray) -> np.ndarray:
    """(F, N) per-voxel monomials of (D, N) ``values_t`` up to degree 2: 1, x_d, then x_i x_j for i <= j (row-major
    upper triangle), F = 1 + D + D(D+1)/2. Every sum EM needs is one product with them."""
    features = values_t.shape[0]
    rows, cols = np.triu_indices(features)
    return np.concatenate([np.ones((1, values_t.shape[1])), values_t, values_t[rows] * values_t[cols]])


def _parameters(moments: np.ndarray, resp: np.ndarray, features: int,
                reg_covar: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weights (unnormalised: the components' voxel counts), means, covariances and precision Cholesky factors
    from the (F, N) :func:`_moments` and (K, N) responsibilities (scikit-learn's ``_estimate_gaussian_parameters``
    and ``_compute_precision_cholesky``; the covariance as E[x x'] - mean mean', one product for every component)."""
    sums = resp @ moments.T  # (K, F)
    counts = resp.sum(axis=1) + 10 * np.finfo(resp.dtype).eps
    means = sums[:, 1:1 + features] / counts[:, None]
    rows, cols = np.triu_indices(features)
    second = np.empty((len(counts), features, features))
    second[:, rows, cols] = sums[:, 1 + features:] / counts[:, None]
    second[:, cols, rows] = second[:, rows, cols]
    # sum r (x - m)(x - m)' / counts with m = sum r x / counts, expanded; counts hold scikit-learn's 10 eps
    covariances = second - means[:, :, None] * means[:, None, :] * (2 - sums[:, 0] / counts)[:, None, None]
    covariances[:, np.arange(features), np.arange(features)] += reg_covar
    return counts, means, covariances, _inverse_lower(_cholesky(covariances)).transpose(0, 2, 1)


def _cholesky(matrices: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of (K, D, D) symmetric matrices (scipy.linalg.cholesky(lower=True) of each), by the
    Cholesky-Banachiewicz rows: D is the feature count, so a few element-wise steps replace K LAPACK calls, which
    cost a millisecond each after scikit-learn's k-means has run (its thread pools wake).

    Raises:
        ValueError: a matrix is not positive definite (scikit-learn's message).
    """
    lower = np.zeros_like(matrices)
    for i in range(matrices.shape[1]):
        for j in range(i + 1):
            rest = matrices[:, i, j] - (lower[:, i, :j] * lower[:, j, :j]).sum(axis=1)
            if i > j:
                lower[:, i, j] = rest / lower[:, j, j]
            elif np.all(rest > 0):
                lower[:, i, i] = np.sqrt(rest)
            else:
                raise ValueError(ILL_DEFINED)
    return lower


def _inverse_lower(lower: np.ndarray) -> np.ndarray:
    """Inverses of (K, D, D) lower-triangular matrices (scipy.linalg.solve_triangular(L, I, lower=True) of each), by
    forward substitution."""
    inverse = np.zeros_like(lower)
    for i in range(lower.shape[1]):
        inverse[:, i, i] = 1 / lower[:, i, i]
        for j in range(i):
            inverse[:, i, j] = -(lower[:, i, j:i] * inverse[:, j:i, j]).sum(axis=1) / lower[:, i, i]
    return inverse


def _log_responsibilities(moments: np.ndarray, weights: np.ndarray, means: np.ndarray,
                          precisions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) log-likelihood of each voxel of the (F, N) :func:`_moments` under the mixture and (K, N) log
    responsibilities (scikit-learn's ``_estimate_log_prob_resp``; each component's Mahalanobis distance
    (x - m)' A (x - m), A = precision, expanded over the moments: one product for every component)."""
    features = means.shape[1]
    rows, cols = np.triu_indices(features)
    coefficients = np.empty((len(weights), moments.shape[0]))
    for k in range(len(weights)):
        precision = precisions[k] @ precisions[k].T
        coefficients[k, 0] = means[k] @ precision @ means[k]
        coefficients[k, 1:1 + features] = -2 * precision @ means[k]
        coefficients[k, 1 + features:] = np.where(rows == cols, 1.0, 2.0) * precision[rows, cols]
    log_det = np.log(np.diagonal(precisions, axis1=1, axis2=2)).sum(axis=1)
    weighted = coefficients @ moments  # (K, N)
    weighted *= -0.5
    weighted += (log_det + np.log(weights) - 0.5 * features * math.log(2 * math.pi))[:, None]
    top = weighted.max(axis=0)
    log_norm = np.log(np.exp(weighted - top).sum(axis=0)) + top
    weighted -= log_norm
    return log_norm, weighted


def fit_full_mixture(values: np.ndarray, components: int, reg_covar: float, seed: int, max_iter: int = 100,
                     tol: float = 1e-3) -> FullMixture:
    """``GaussianMixture(components, covariance_type="full", reg_covar=reg_covar, random_state=seed, max_iter=
    max_iter, tol=tol).fit(values)`` for (N, D) float ``values`` with N >= ``components``.

    The sums run on the values minus their mean (EM moves with a shift of the data), so that the expanded
    second moments lose no digits to a large offset; their scale should be of order one, as z-scored features are.

    Raises:
        ValueError: a component's covariance is not positive definite (scikit-learn's message).
    """
    if values.ndim != 2 or len(values) < max(components, 2):
        raise ValueError(f"a mixture of {components} components needs (N, D) values with N >= {max(components, 2)}, "
                         f"got shape {values.shape}")
    values = np.asarray(values, dtype=np.float64)
    labels = KMeans(n_clusters=components, n_init=1, random_state=np.random.RandomState(seed)).fit(values).labels_
    centre = values.mean(axis=0)
    moments, features = _moments((values - centre).T), values.shape[1]
    resp = np.zeros((components, len(values)))
    resp[labels, np.arange(len(values))] = 1
    counts, means, covariances, precisions = _parameters(moments, resp, features, reg_covar)
    weights = counts / len(values)
    bound, n_iter, converged = -np.inf, 0, False
    while n_iter < max_iter and not converged:
        n_iter, previous = n_iter + 1, bound
        log_norm, log_resp = _log_responsibilities(moments, weights, means, precisions)
        counts, means, covariances, precisions = _parameters(moments, np.exp(log_resp), features, reg_covar)
        weights = counts / counts.sum()
        bound = float(log_norm.mean())
        converged = abs(bound - previous) < tol
    return FullMixture(weights, means + centre, covariances, precisions, n_iter, converged)


def posterior(mixture: FullMixture, values: np.ndarray) -> np.ndarray:
    """(K, N) posterior of each component for (N, D) ``values`` (scikit-learn's ``predict_proba``, transposed)."""
    values = np.asarray(values, dtype=np.float64)
    centre = values.mean(axis=0)
    return np.exp(_log_responsibilities(_moments((values - centre).T), mixture.weights, mixture.means - centre,
                                        mixture.precisions_cholesky)[1])
