"""Metrics for the toy experiment, computed identically for every row of Table 1.

NLL (the paper does not say how it estimated its NLL; this is ours). A symmetric, smoothed
cross-entropy in nats per sample between the target ``p`` and the generated samples ``q``::

    NLL = 1/2 [ -E_{x~q} log~ (p * k_b)(x)  -  E_{y~p} log~ (q_hat * k_b)(y) ]

* ``k_b = N(0, b^2 I)`` with a fixed bandwidth ``b`` (default 0.2, twice the mode std). Both
  sides are smoothed by the *same* kernel: ``p * k_b`` is exact (a GMM with std
  ``sqrt(std^2 + b^2)``), ``q_hat * k_b`` is the Gaussian KDE of the samples. For samples
  drawn from ``p`` both terms estimate the same number, the cross-entropy
  ``H(p, p * k_b)``, so GT scores the floor of the metric and every row is scored on one
  scale.
* The first term (precision) penalises samples off the target modes, quadratically in their
  distance; the second (coverage, evaluated on an independent reference set drawn from the
  target) penalises dropped or under-weighted modes.
* ``log~ f = log(f + rho)``, a density floor ``rho`` (default 1e-8 per unit area): one stray
  sample or one dropped mode costs at most ``-log rho`` (18.4 nats) instead of an unbounded
  amount, so the estimate is robust to a few outliers and finite for any sample set.

Mode precision: fraction of samples within 3 std (Euclidean) of some target mode (a sample
of the target itself lands there with probability ``1 - exp(-4.5) = 0.989`` in 2-D).
Mode balance: normalised entropy of the counts of those precise samples per nearest mode;
1 when the modes are equally populated, 0 when one mode takes everything (or nothing is
precise).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmdisco.toy.gmm import GMM

BANDWIDTH = 0.2
FLOOR = 1e-8
PRECISION_RADIUS = 3.0  # in units of the mode std


def _check(samples: Tensor, target: GMM) -> Tensor:
    if samples.ndim != 2 or samples.shape[1] != target.dim:
        raise ValueError(f"samples must have shape (N, {target.dim}), got {tuple(samples.shape)}")
    if not torch.isfinite(samples).all():
        raise ValueError("samples contain NaN or infinite values")
    return samples.double()


def kde_log_prob(points: Tensor, samples: Tensor, bandwidth: float, chunk: int = 1024) -> Tensor:
    """Log density at ``points`` (M, D) of the Gaussian KDE of ``samples`` (N, D)."""
    samples = samples.double()
    dim = samples.shape[1]
    log_norm = -0.5 * dim * math.log(2 * math.pi * bandwidth**2) - math.log(samples.shape[0])
    out = [
        torch.logsumexp(-0.5 * torch.cdist(p, samples).pow(2) / bandwidth**2, dim=1) + log_norm
        for p in points.double().split(chunk)
    ]
    return torch.cat(out)


def _floored(log_density: Tensor, floor: float) -> Tensor:
    return torch.logaddexp(log_density, torch.full_like(log_density, math.log(floor)))


def nll(
    samples: Tensor,
    target: GMM,
    reference: Tensor,
    bandwidth: float = BANDWIDTH,
    floor: float = FLOOR,
) -> float:
    """Symmetric smoothed cross-entropy (module docstring); ``reference`` ~ target, (M, D)."""
    x = _check(samples, target)
    y = _check(reference, target)
    precision_term = -_floored(target.log_prob(x, extra_std=bandwidth), floor).mean()
    coverage_term = -_floored(kde_log_prob(y, x, bandwidth), floor).mean()
    return float(0.5 * (precision_term + coverage_term))


def _nearest_mode(samples: Tensor, target: GMM) -> tuple[Tensor, Tensor]:
    dist = torch.cdist(samples, target.means.double())
    return dist.min(dim=1)


def mode_precision(samples: Tensor, target: GMM, radius: float = PRECISION_RADIUS) -> float:
    """Fraction of samples within ``radius`` std of their nearest target mode."""
    dist, _ = _nearest_mode(_check(samples, target), target)
    return float((dist <= radius * target.std).double().mean())


def mode_balance(samples: Tensor, target: GMM, radius: float = PRECISION_RADIUS) -> float:
    """Normalised entropy of the per-mode counts of the precise samples (1 = perfectly even)."""
    dist, mode = _nearest_mode(_check(samples, target), target)
    counts = torch.bincount(mode[dist <= radius * target.std], minlength=target.num_modes)
    if counts.sum() == 0:
        return 0.0
    if target.num_modes == 1:
        return 1.0
    p = counts[counts > 0].double() / counts.sum()
    entropy = -(p * p.log()).sum()
    return max(0.0, float(entropy / math.log(target.num_modes)))


def evaluate(samples: Tensor, target: GMM, reference: Tensor) -> dict[str, float]:
    """All three metrics of one sample set."""
    return {
        "nll": nll(samples, target, reference),
        "mode_precision": mode_precision(samples, target),
        "mode_balance": mode_balance(samples, target),
    }
