"""Noise schedules and parameterisations.

Every path we support is Gaussian: ``x_t = alpha(t) * x_0 + sigma(t) * eps``.

* Variance-preserving (DDPM family): ``alpha = sqrt(alphas_cumprod[t])``,
  ``sigma = sqrt(1 - alphas_cumprod[t])`` with integer timesteps ``t`` in ``[0, T)``.
* Rectified flow (flow matching): ``alpha = 1 - s``, ``sigma = s`` with ``s = t / T``, where
  ``t`` is the (float) timestep diffusers' flow-matching schedulers hand to the model.

MMDisCo's correction lives in epsilon space, so every parameterisation is converted to and
from epsilon with the closed forms below (METHOD.md, "going beyond the paper").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

PredictionType = Literal["epsilon", "v_prediction", "sample", "flow"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample", "flow")
LOG_SNR_LIMIT = 20.0


def _broadcast(coef: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample coefficient (B,) so that it broadcasts against ``like`` (B, ...)."""
    return coef.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


class NoiseSchedule:
    """A Gaussian noising path, indexed by the base model's own timesteps.

    Subclasses provide ``alpha_sigma(t)``; everything else derives from it. Schedules know
    nothing of models (as in diffusers).
    """

    num_train_timesteps: int

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def check_timesteps(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        if t.ndim == 0:
            t = t[None]
        if t.ndim != 1:
            raise ValueError(
                f"timesteps must be a scalar or a 1-D tensor, got shape {tuple(t.shape)}"
            )
        if torch.isnan(t.float()).any():
            raise ValueError("timesteps contain NaN")
        lo, hi = t.min().item(), t.max().item()
        if lo < 0 or hi > self.max_timestep:
            raise ValueError(
                f"timesteps must lie in [0, {self.max_timestep}] for this schedule, "
                f"got values in [{lo}, {hi}]"
            )
        return t

    @property
    def max_timestep(self) -> float:
        return self.num_train_timesteps - 1

    def log_snr(self, t: Tensor) -> Tensor:
        """log(alpha^2 / sigma^2), clipped to +-LOG_SNR_LIMIT.

        The schedule-independent noise level the discriminator sees; the clip keeps clean
        (sigma = 0) and pure-noise (alpha = 0) inputs finite.
        """
        alpha, sigma = self.alpha_sigma(t)
        log_snr = 2.0 * (torch.log(alpha.clamp_min(1e-12)) - torch.log(sigma.clamp_min(1e-12)))
        return log_snr.clamp(-LOG_SNR_LIMIT, LOG_SNR_LIMIT)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return _broadcast(alpha, x0) * x0 + _broadcast(sigma, x0) * noise

    def timesteps_from_fraction(self, u: Tensor) -> Tensor:
        """Map ``u`` in [0, 1) to this schedule's timesteps, so that two schedules with
        different step counts can share one noise level per training pair."""
        return (u * self.num_train_timesteps).floor().long().clamp(max=self.num_train_timesteps - 1)


class DiscreteSchedule(NoiseSchedule):
    """Variance-preserving schedule given by ``alphas_cumprod`` (one entry per timestep)."""

    def __init__(self, alphas_cumprod: Tensor) -> None:
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if alphas_cumprod.ndim != 1 or not ((alphas_cumprod > 0) & (alphas_cumprod <= 1)).all():
            raise ValueError("alphas_cumprod must be a 1-D tensor with values in (0, 1]")
        self.alphas_cumprod = alphas_cumprod
        self.num_train_timesteps = len(alphas_cumprod)

    @classmethod
    def from_betas(cls, betas: Tensor) -> DiscreteSchedule:
        return cls(torch.cumprod(1.0 - torch.as_tensor(betas, dtype=torch.float64), dim=0))

    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        # diffusers computes betas in float32; do the same so alphas_cumprod match bit for bit.
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float32)
        return cls.from_betas(betas.double())

    @classmethod
    def scaled_linear(
        cls, num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
    ) -> DiscreteSchedule:
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float32) ** 2
        return cls.from_betas(betas.double())

    @classmethod
    def cosine(cls, num_steps: int = 1000, max_beta: float = 0.999) -> DiscreteSchedule:
        """Nichol & Dhariwal's cosine schedule (diffusers' ``squaredcos_cap_v2``)."""

        def f(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [
            min(1 - f((i + 1) / num_steps) / f(i / num_steps), max_beta) for i in range(num_steps)
        ]
        return cls.from_betas(torch.tensor(betas, dtype=torch.float32).double())

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = self.check_timesteps(t)
        # Fractional timesteps (some samplers) interpolate alphas_cumprod linearly.
        lo = t.floor().long().clamp(max=self.num_train_timesteps - 1)
        hi = (lo + 1).clamp(max=self.num_train_timesteps - 1)
        w = (t.double() - lo.double()).to(self.alphas_cumprod.device)
        acp = self.alphas_cumprod.to(t.device) if t.device.type != "cpu" else self.alphas_cumprod
        abar = (1 - w) * acp[lo] + w * acp[hi]
        return abar.sqrt().float(), (1 - abar).sqrt().float()


class FlowSchedule(NoiseSchedule):
    """Rectified-flow path ``x_t = (1 - s) x_0 + s eps`` with ``s = t / num_train_timesteps``."""

    def __init__(self, num_train_timesteps: int = 1000) -> None:
        self.num_train_timesteps = num_train_timesteps

    @property
    def max_timestep(self) -> float:
        return float(self.num_train_timesteps)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        s = self.check_timesteps(t).float() / self.num_train_timesteps
        return 1.0 - s, s

    def timesteps_from_fraction(self, u: Tensor) -> Tensor:
        return u.float() * self.num_train_timesteps


def schedule_from_scheduler_config(config: Mapping[str, Any]) -> NoiseSchedule:
    """Build the schedule a diffusers scheduler uses, from its ``config`` (a dict or FrozenDict)."""
    config = dict(config)
    name = str(config.get("_class_name", ""))
    steps = int(config.get("num_train_timesteps", 1000))
    if name.startswith("FlowMatch"):
        return FlowSchedule(steps)
    if config.get("trained_betas") is not None:
        return DiscreteSchedule.from_betas(
            torch.tensor(config["trained_betas"], dtype=torch.float32)
        )
    kind = config.get("beta_schedule", "linear")
    start = float(config.get("beta_start", 1e-4))
    end = float(config.get("beta_end", 0.02))
    if kind == "linear":
        return DiscreteSchedule.linear(steps, start, end)
    if kind == "scaled_linear":
        return DiscreteSchedule.scaled_linear(steps, start, end)
    if kind == "squaredcos_cap_v2":
        return DiscreteSchedule.cosine(steps)
    raise ValueError(
        f"unsupported beta_schedule {kind!r} in scheduler config {name or '(unnamed)'}"
    )


def prediction_type_of(scheduler_config: Mapping[str, Any]) -> str:
    """The parameterisation a diffusers scheduler expects from its model."""
    if str(scheduler_config.get("_class_name", "")).startswith("FlowMatch"):
        return "flow"
    return str(scheduler_config.get("prediction_type", "epsilon"))


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
        )


def to_epsilon(
    prediction: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str
) -> Tensor:
    """Convert a model output in ``prediction_type`` to the noise it implies.

    ``v = alpha * eps - sigma * x0`` (so ``eps = (alpha v + sigma x_t) / (alpha^2 + sigma^2)``)
    and the flow velocity ``u = eps - x0`` (so ``eps = x_t + alpha u`` on the flow path).
    """
    _check_prediction_type(prediction_type)
    a, s = _broadcast(alpha, x_t), _broadcast(sigma, x_t)
    if prediction_type == "epsilon":
        return prediction
    if prediction_type == "sample":
        return (x_t - a * prediction) / s
    if prediction_type == "v_prediction":
        return (a * prediction + s * x_t) / (a**2 + s**2)
    return x_t + a * prediction  # flow


def from_epsilon(
    eps: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str
) -> Tensor:
    """Inverse of :func:`to_epsilon`."""
    _check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return eps
    a, s = _broadcast(alpha, x_t), _broadcast(sigma, x_t)
    x0 = (x_t - s * eps) / a
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return a * eps - s * x0
    return eps - x0  # flow
