"""Distribution distances between feature sets: Fréchet distance and kernel (KID/KVD) MMD.

Both follow the reference code the published numbers come from, so, given the same features,
the values agree with those scripts: the Fréchet distance of pytorch-fid / StyleGAN-V /
audioldm_eval, the KVD of MM-Diffusion (``polynomial_mmd``: one unbiased estimate on all
rows) and the subset-averaged KID of StyleGAN2-ADA (``compute_kid``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg


@dataclass(frozen=True)
class GaussianStats:
    """Mean and covariance of a feature set (the sufficient statistics of the FD)."""

    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    count: int

    @classmethod
    def from_features(cls, features: np.ndarray) -> GaussianStats:
        """Sample mean and unbiased covariance (``np.cov(rowvar=False)``, as the references)."""
        feats = _as_2d(features, "features")
        if feats.shape[0] < 2:
            raise ValueError(f"need at least 2 feature rows for a covariance, got {feats.shape}")
        return cls(feats.mean(axis=0), np.cov(feats, rowvar=False), feats.shape[0])


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues clipped)."""
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^{1/2}) = Tr((S1^{1/2} S2 S1^{1/2})^{1/2}) via symmetric eigendecompositions.

    The middle matrix is symmetric PSD, so its eigenvalues are real and non-negative up to
    round-off; this never produces the complex parts ``sqrtm`` can return for rank-deficient
    covariances (fewer samples than feature dimensions).
    """
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    vals = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(vals, 0.0, None)).sum())


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """The pytorch-fid route: ``sqrtm(S1 S2)``, regularised with ``eps * I`` when singular."""
    covmean, _ = scipy.linalg.sqrtm(sigma1 @ sigma2, disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    return float(np.real(np.trace(covmean)))


def frechet_distance(
    stats1: GaussianStats, stats2: GaussianStats, method: str = "eigh", eps: float = 1e-6
) -> float:
    """Fréchet distance ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2}).

    ``method="eigh"`` (default) uses symmetric eigendecompositions; ``"sqrtm"`` reproduces
    the scipy route of the reference scripts (real part taken, ``eps`` on the diagonal if
    the product is singular). They agree to round-off on well-conditioned inputs.
    """
    mu1, mu2 = np.asarray(stats1.mu, np.float64), np.asarray(stats2.mu, np.float64)
    s1, s2 = np.asarray(stats1.sigma, np.float64), np.asarray(stats2.sigma, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"incompatible statistics: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {s1.shape} vs {s2.shape}"
        )
    if method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(s1, s2)
    elif method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(s1, s2, eps)
    else:
        raise ValueError(f"unknown method {method!r}; expected 'eigh' or 'sqrtm'")
    mean_term = float(np.square(mu1 - mu2).sum())
    return max(mean_term + float(np.trace(s1) + np.trace(s2)) - 2.0 * tr_covmean, 0.0)


def frechet_distance_from_features(feats1: np.ndarray, feats2: np.ndarray, **kwargs) -> float:
    """FD between two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(
        GaussianStats.from_features(feats1), GaussianStats.from_features(feats2), **kwargs
    )


KVD_MODES = ("mmdiffusion", "subsets")


def polynomial_mmd(feats_gen: np.ndarray, feats_real: np.ndarray) -> float:
    """Unbiased polynomial-kernel MMD^2 on all rows at once (MM-Diffusion's KVD).

    k(x, y) = (x.y / d + 1)^3 (sklearn's ``polynomial_kernel`` defaults); the within-set
    kernel means exclude their diagonals, the cross term keeps all m x n entries, so the sets
    may differ in size. Unbiased: slightly negative values are possible.
    """
    x, y = _as_2d(feats_gen, "feats_gen"), _as_2d(feats_real, "feats_real")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dims differ: {x.shape[1]} vs {y.shape[1]}")
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    if min(m, n) < 2:
        raise ValueError(f"need at least 2 rows in each set, got {x.shape}, {y.shape}")
    k_xx, k_yy, k_xy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(xx + yy - 2 * k_xy.mean())


def kernel_distance(
    feats_gen: np.ndarray,
    feats_real: np.ndarray,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """Unbiased polynomial-kernel MMD^2 (KID / KVD) averaged over random subsets.

    Kernel k(x, y) = (x.y / d + 1)^3. Mirrors StyleGAN2-ADA's ``compute_kid``: each subset
    draws m = min(N_gen, N_real, max_subset_size) rows of each set without replacement;
    the diagonal of the within-set kernels is excluded (unbiased estimator). The subsets
    come from ``seed``; the value can be slightly negative for identical distributions.
    """
    x_all, y_all = _as_2d(feats_gen, "feats_gen"), _as_2d(feats_real, "feats_real")
    if x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"feature dims differ: {x_all.shape[1]} vs {y_all.shape[1]}")
    n = x_all.shape[1]
    m = min(x_all.shape[0], y_all.shape[0], max_subset_size)
    if m < 2:
        raise ValueError(f"need at least 2 rows in each set, got {x_all.shape}, {y_all.shape}")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = x_all[rng.choice(x_all.shape[0], m, replace=False)]
        y = y_all[rng.choice(y_all.shape[0], m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        total += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(total / num_subsets / m)
