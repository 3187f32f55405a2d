"""Fréchet distance and polynomial-kernel MMD (KID/KVD) against closed forms."""

import numpy as np
import pytest
import scipy.linalg

from mmdisco.metrics.stats import (
    GaussianStats,
    frechet_distance,
    frechet_distance_from_features,
    kernel_distance,
)


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_identical_sets_give_zero():
    feats = np.random.default_rng(0).standard_normal((500, 16))
    assert frechet_distance_from_features(feats, feats) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance_from_features(feats, feats, method="sqrtm") == pytest.approx(
        0.0, abs=1e-6
    )


def test_commuting_covariances_closed_form():
    # Diagonal covariances: FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    expected = 1.0 + 9.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    s1, s2 = GaussianStats(mu1, np.diag(a), 0), GaussianStats(mu2, np.diag(b), 0)
    for method in ("eigh", "sqrtm"):
        assert frechet_distance(s1, s2, method=method) == pytest.approx(expected, rel=1e-10)


def test_general_covariances_match_formula_and_are_symmetric():
    rng = np.random.default_rng(1)
    s1, s2 = _random_spd(rng, 6), _random_spd(rng, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    root = scipy.linalg.sqrtm(s1).real
    cross = scipy.linalg.sqrtm(root @ s2 @ root).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * cross)
    g1, g2 = GaussianStats(mu1, s1, 0), GaussianStats(mu2, s2, 0)
    assert frechet_distance(g1, g2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(g1, g2, method="sqrtm") == pytest.approx(expected, rel=1e-7)
    assert frechet_distance(g2, g1) == pytest.approx(expected, rel=1e-9)


def test_large_samples_approach_population_value():
    rng = np.random.default_rng(2)
    s1, s2 = _random_spd(rng, 3), _random_spd(rng, 3)
    mu1, mu2 = np.zeros(3), np.array([0.5, -0.5, 1.0])
    x = rng.multivariate_normal(mu1, s1, size=40000)
    y = rng.multivariate_normal(mu2, s2, size=40000)
    exact = frechet_distance(GaussianStats(mu1, s1, 0), GaussianStats(mu2, s2, 0))
    assert frechet_distance_from_features(x, y) == pytest.approx(exact, abs=0.02)


def test_rank_deficient_covariances_stay_finite():
    # Fewer samples than dimensions (the small-sample FVD case): singular covariances.
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((10, 64)), rng.standard_normal((10, 64)) + 0.3
    eig = frechet_distance_from_features(x, y)
    sq = frechet_distance_from_features(x, y, method="sqrtm")
    assert np.isfinite(eig) and eig > 0
    assert sq == pytest.approx(eig, rel=1e-3)


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        frechet_distance_from_features(np.zeros(5), np.zeros(5))
    g1 = GaussianStats(np.zeros(3), np.eye(3), 0)
    g2 = GaussianStats(np.zeros(4), np.eye(4), 0)
    with pytest.raises(ValueError, match="incompatible"):
        frechet_distance(g1, g2)


def _brute_force_mmd(x: np.ndarray, y: np.ndarray) -> float:
    d, m = x.shape[1], x.shape[0]

    def k(a, b):
        return (a @ b.T / d + 1) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return within - 2 * kxy.sum() / m**2


def test_kernel_distance_equals_unbiased_mmd_when_subset_is_everything():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((50, 8)), rng.standard_normal((50, 8)) + 0.2
    # A subset of all rows is a permutation, which the statistic does not see.
    value = kernel_distance(x, y, num_subsets=3, max_subset_size=50)
    assert value == pytest.approx(_brute_force_mmd(x, y), rel=1e-10)


def test_kernel_distance_same_vs_shifted():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
    same = kernel_distance(x, y, num_subsets=10, max_subset_size=200)
    shifted = kernel_distance(x, y + 1.0, num_subsets=10, max_subset_size=200)
    assert abs(same) < 0.01
    assert shifted > 0.5
    assert shifted > 50 * abs(same)
    # Identical sets are not exactly 0: the cross term keeps its diagonal (u-statistic).
    assert kernel_distance(x, x, num_subsets=1, max_subset_size=400) == pytest.approx(
        _brute_force_mmd(x, x), rel=1e-10
    )
    assert abs(_brute_force_mmd(x, x)) < 0.1 * shifted


def test_polynomial_mmd_is_mm_diffusions_kvd():
    from mmdisco.metrics.stats import polynomial_mmd

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((5, 3)) + 0.5

    def k(a, b):  # sklearn polynomial_kernel(degree=3, gamma=1/d, coef0=1), one pair
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(a, b) for a in x for b in y) / (7 * 5)
    assert polynomial_mmd(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    # With equal sizes it is StyleGAN2-ADA's estimate on one subset holding every row.
    z = rng.standard_normal((5, 3))
    assert polynomial_mmd(z, y) == pytest.approx(kernel_distance(z, y, 1, 5), rel=1e-12)
    with pytest.raises(ValueError, match="need at least 2 rows"):
        polynomial_mmd(x[:1], y)
