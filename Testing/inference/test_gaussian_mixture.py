"""The core refinement's mixture fit (medcnncad.inference.gaussian_mixture) against scikit-learn's GaussianMixture."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from medcnncad.inference.gaussian_mixture import fit_full_mixture, posterior
from medcnncad.inference.refine import cluster_vote


def _blobs(seed: int, n: int = 4000, features: int = 4, centres: int = 4) -> np.ndarray:
    """``n`` points in ``features`` dimensions around ``centres`` random centres, each with its own
    correlated covariance (z-scored columns, as the refinement's features)."""
    rng = np.random.default_rng(seed)
    groups = []
    for share in rng.dirichlet(np.full(centres, 3.0)):
        mix = rng.normal(size=(features, features))
        groups.append(rng.normal(size=(max(int(share * n), 5), features)) @ mix + rng.normal(0, 3, features))
    x = np.concatenate(groups)
    return (x - x.mean(0)) / x.std(0)


def _sklearn(values: np.ndarray, components: int, seed: int, **kw) -> GaussianMixture:
    return GaussianMixture(components, covariance_type="full", reg_covar=1e-3, random_state=seed, **kw).fit(values)


@pytest.mark.parametrize("seed,features,components", [(0, 4, 4), (1, 4, 4), (2, 4, 3), (3, 2, 4), (4, 1, 2)])
def test_the_fit_is_scikit_learns(seed, features, components):
    values = _blobs(seed, features=features)
    reference = _sklearn(values, components, seed)
    ours = fit_full_mixture(values, components, reg_covar=1e-3, seed=seed)
    assert (ours.n_iter, ours.converged) == (reference.n_iter_, reference.converged_)
    np.testing.assert_allclose(ours.weights, reference.weights_, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours.means, reference.means_, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours.covariances, reference.covariances_, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours.precisions_cholesky, reference.precisions_cholesky_, rtol=0, atol=1e-9)
    shares = posterior(ours, values)
    assert shares.shape == (components, len(values))
    np.testing.assert_allclose(shares.T, reference.predict_proba(values), rtol=0, atol=1e-10)


def test_an_unconverged_fit_stops_where_scikit_learns_does():
    values = _blobs(5)
    with pytest.warns(UserWarning):  # scikit-learn's ConvergenceWarning
        reference = _sklearn(values, 4, 5, max_iter=3)
    ours = fit_full_mixture(values, 4, reg_covar=1e-3, seed=5, max_iter=3)
    assert (ours.n_iter, ours.converged, reference.converged_) == (3, False, False)
    np.testing.assert_allclose(ours.means, reference.means_, rtol=0, atol=1e-10)


def test_posterior_of_two_far_clusters_is_certain():
    values = np.array([[0.0], [0.1], [-0.1], [10.0], [10.1], [9.9]])
    shares = posterior(fit_full_mixture(values, 2, reg_covar=1e-3, seed=0), values)
    first = int(np.argmax(shares[:, 0]))
    np.testing.assert_allclose(shares[first], [1, 1, 1, 0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(shares.sum(0), 1.0)


def test_a_collapsed_component_is_refused_as_scikit_learn_refuses_it():
    values = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0]]), 10, axis=0)
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        GaussianMixture(2, covariance_type="full", reg_covar=0.0, random_state=0).fit(values)
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        fit_full_mixture(values, 2, reg_covar=0.0, seed=0)
    with pytest.raises(ValueError, match=r"N >= 3"):
        fit_full_mixture(values[:2], 3, reg_covar=1e-3, seed=0)


def _reference_vote(features: np.ndarray, probability: np.ndarray, components: int, seed: int) -> np.ndarray:
    """cluster_vote as it was written with scikit-learn (every voxel fitted)."""
    mixture = _sklearn(features, components, seed)
    shares = mixture.predict_proba(features)
    component_core = (shares * probability[:, None]).sum(0) / np.maximum(shares.sum(0), 1e-12)
    return shares @ (component_core > 0.5).astype(np.float64)


@pytest.mark.parametrize("seed", [0, 7])
def test_the_refinement_vote_is_the_one_scikit_learn_gave(seed):
    features = _blobs(seed, n=6000)
    rng = np.random.default_rng(seed)
    probability = np.clip(0.5 + 0.4 * np.tanh(features[:, 0] + features[:, 1]) + rng.normal(0, 0.1, len(features)),
                          0, 1)
    vote = cluster_vote(features, probability, 4, max_fit_voxels=len(features), seed=seed)
    reference = _reference_vote(features, probability, 4, seed)
    assert 0 < reference.mean() < 1  # both kinds of component present
    np.testing.assert_allclose(vote, reference, rtol=0, atol=1e-10)


def test_the_small_factorisations_are_scipys():
    import scipy.linalg

    from medcnncad.inference.gaussian_mixture import _cholesky, _inverse_lower

    rng = np.random.default_rng(3)
    roots = rng.normal(size=(5, 4, 4))
    matrices = roots @ roots.transpose(0, 2, 1) + 1e-3 * np.eye(4)
    lower = _cholesky(matrices)
    for k in range(5):
        expected = scipy.linalg.cholesky(matrices[k], lower=True)
        np.testing.assert_allclose(lower[k], expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(_inverse_lower(lower)[k], scipy.linalg.solve_triangular(expected, np.eye(4),
                                                                                           lower=True), rtol=1e-10)
    with pytest.raises(ValueError, match="ill-defined"):
        _cholesky(np.array([[[1.0, 2.0], [2.0, 1.0]]]))  # eigenvalues 3 and -1


def test_values_far_from_zero_fit_as_scikit_learn_fits_them():
    """Raw intensities (a 1000 offset) lose no digits to the expanded second moments: the sums run centred."""
    values = _blobs(8) + 1000.0
    reference = _sklearn(values, 4, 8)
    ours = fit_full_mixture(values, 4, reg_covar=1e-3, seed=8)
    assert ours.n_iter == reference.n_iter_
    np.testing.assert_allclose(ours.means, reference.means_, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.covariances, reference.covariances_, rtol=0, atol=1e-9)
    np.testing.assert_allclose(posterior(ours, values).T, reference.predict_proba(values), rtol=0, atol=1e-9)
