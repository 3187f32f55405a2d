"""Isotropic Gaussian mixtures with equal weights: the toy data and the toy targets (Table 5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

BASE_MEANS = (-3.0, -1.5, 0.0, 1.5, 3.0)
IND_Y_MEANS = (1.5, -3.0, 3.0, 0.0, -1.5)
OOD_CORNER = 2.25
STD = 0.1


@dataclass(frozen=True)
class GMM:
    """An equal-weight mixture of isotropic Gaussians ``N(means[k], std^2 I)``."""

    means: Tensor  # (K, D)
    std: float = STD

    def __post_init__(self) -> None:
        if self.means.ndim != 2:
            raise ValueError(f"GMM means must have shape (K, D), got {tuple(self.means.shape)}")
        if self.std <= 0:
            raise ValueError(f"GMM std must be positive, got {self.std}")

    @property
    def num_modes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples spread evenly over the modes (the paper "evenly sampled"), shuffled."""
        modes = torch.arange(n) % self.num_modes
        modes = modes[torch.randperm(n, generator=generator)]
        noise = torch.randn(n, self.dim, generator=generator)
        return self.means[modes] + self.std * noise

    def log_prob(self, x: Tensor, extra_std: float = 0.0) -> Tensor:
        """Log density of ``x`` (N, D) under the mixture convolved with ``N(0, extra_std^2 I)``."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected points of shape (N, {self.dim}), got {tuple(x.shape)}")
        var = self.std**2 + extra_std**2
        sq = torch.cdist(x.double(), self.means.double()).pow(2)  # (N, K)
        log_norm = -0.5 * self.dim * math.log(2 * math.pi * var) - math.log(self.num_modes)
        return torch.logsumexp(-0.5 * sq / var, dim=1) + log_norm


def base_target() -> GMM:
    """The 1-D data the base diffusion model is trained on."""
    return GMM(torch.tensor(BASE_MEANS)[:, None])


def ind_target() -> GMM:
    """In-domain joint: five of the 25 product modes, so its marginals equal the base data."""
    return GMM(torch.stack([torch.tensor(BASE_MEANS), torch.tensor(IND_Y_MEANS)], dim=1))


def ood_target() -> GMM:
    """Out-of-domain joint: the four corners (+-2.25, +-2.25) and the origin.

    Its marginals (modes at -2.25, 0, 2.25) differ from the base models' (Appendix A.2).
    """
    c = OOD_CORNER
    return GMM(torch.tensor([[c, c], [-c, c], [c, -c], [-c, -c], [0.0, 0.0]]))


TARGETS = {"ind": ind_target, "ood": ood_target}
