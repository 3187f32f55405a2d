"""Noise schedules and parameterisations.

Every path we support is Gaussian: ``x_t = alpha(t) * x_0 + sigma(t) * eps``.

* Variance-preserving (DDPM family): ``alpha = sqrt(alphas_cumprod[t])``,
  ``sigma = sqrt(1 - alphas_cumprod[t])`` with integer timesteps ``t`` in ``[0, T)``.
* Rectified flow (flow matching): ``alpha = 1 - s``, ``sigma = s`` with ``s = t / T``, where
  ``t`` is the timestep diffusers' flow schedulers hand to the model: a float for
  FlowMatchEuler, an integer for UniPC with ``use_flow_sigmas`` (Wan), whose ``s`` is then the
  level the model is told, within ``1 / T`` below the solver's own sigma. A time shift (Wan's
  ``flow_shift``, HunyuanVideo's ``shift``) only moves the timesteps a sampler visits; the path
  and hence every conversion below are the same.

MMDisCo's correction lives in epsilon space, so every parameterisation is converted to and
from epsilon with the closed forms below (docs/method.md).
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
        if t.device.type == "meta":  # shapes only (memory estimates): no values to check
            return t
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
        # 0 is allowed: zero-terminal-SNR schedules end in pure noise (alpha = 0).
        if alphas_cumprod.ndim != 1 or not ((alphas_cumprod >= 0) & (alphas_cumprod <= 1)).all():
            raise ValueError("alphas_cumprod must be a 1-D tensor with values in [0, 1]")
        self.alphas_cumprod = alphas_cumprod
        self.num_train_timesteps = len(alphas_cumprod)
        self._on_device: dict[torch.device, Tensor] = {}

    @classmethod
    def from_betas(cls, betas: Tensor, rescale_zero_terminal_snr: bool = False) -> DiscreteSchedule:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if rescale_zero_terminal_snr:
            betas = _rescale_zero_terminal_snr(betas)
        return cls(torch.cumprod(1.0 - betas, dim=0))

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
        acp = self._table(t.device)
        w = (t.to(acp.dtype) - lo.to(acp.dtype)).clamp(0, 1)
        abar = (1 - w) * acp[lo] + w * acp[hi]
        return abar.sqrt().float(), (1 - abar).sqrt().float()

    def _table(self, device: torch.device) -> Tensor:
        """``alphas_cumprod`` on ``device``, copied once per device (not once per step)."""
        if device.type == "cpu":
            return self.alphas_cumprod
        if device not in self._on_device:
            dtype = torch.float32 if device.type == "mps" else torch.float64
            self._on_device[device] = self.alphas_cumprod.to(device, dtype)
        return self._on_device[device]


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


class CleanSchedule(NoiseSchedule):
    """No noise at all: ``alpha = 1``, ``sigma = 0``, log-SNR at ``+LOG_SNR_LIMIT``.

    The noise level of a modality that is given clean in conditional generation (its one
    timestep is 0): the discriminator sees it at the clip, and its correction is zero.
    """

    num_train_timesteps = 1

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = self.check_timesteps(t)
        return torch.ones(t.shape, device=t.device), torch.zeros(t.shape, device=t.device)


def schedule_from_scheduler_config(config: Mapping[str, Any]) -> NoiseSchedule:
    """Build the schedule a diffusers scheduler uses, from its ``config`` (a dict or FrozenDict).

    A scheduler instance is accepted too. Note that ``scheduler.config`` carries no
    ``_class_name``; flow-matching configs are then recognised by their keys.
    """
    config = _config_dict(config)
    name = str(config.get("_class_name", ""))
    steps = int(config.get("num_train_timesteps", 1000))
    if _is_flow(config):
        return FlowSchedule(steps)
    rescale = bool(config.get("rescale_betas_zero_snr", False))
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float32)
        return DiscreteSchedule.from_betas(betas.double(), rescale)
    kind = config.get("beta_schedule", "linear")
    start = float(config.get("beta_start", 1e-4))
    end = float(config.get("beta_end", 0.02))
    if kind == "linear":
        schedule = DiscreteSchedule.linear(steps, start, end)
    elif kind == "scaled_linear":
        schedule = DiscreteSchedule.scaled_linear(steps, start, end)
    elif kind == "squaredcos_cap_v2":
        schedule = DiscreteSchedule.cosine(steps)
    else:
        raise ValueError(
            f"unsupported beta_schedule {kind!r} in scheduler config {name or '(unnamed)'}"
        )
    if rescale:
        betas = 1.0 - schedule.alphas_cumprod / torch.cat(
            [schedule.alphas_cumprod.new_ones(1), schedule.alphas_cumprod[:-1]]
        )
        schedule = DiscreteSchedule.from_betas(
            betas.float().double(), rescale_zero_terminal_snr=True
        )
    return schedule


def _rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. (2024), Algorithm 1, as diffusers' ``rescale_zero_terminal_snr``."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1.0 - alphas


def prediction_type_of(scheduler_config: Mapping[str, Any]) -> str:
    """The parameterisation a diffusers scheduler (or its config) expects from its model."""
    config = _config_dict(scheduler_config)
    if _is_flow(config):
        return "flow"
    return str(config.get("prediction_type", "epsilon"))


def _config_dict(config: Any) -> dict[str, Any]:
    """A plain dict from a config mapping or from a scheduler instance (adds ``_class_name``)."""
    if hasattr(config, "config") and not isinstance(config, Mapping):
        return {**dict(config.config), "_class_name": type(config).__name__}
    return dict(config)


def _is_flow(config: Mapping[str, Any]) -> bool:
    # Multistep solvers run on the flow path too (Wan's UniPC): ``use_flow_sigmas`` and the
    # ``flow_prediction`` parameterisation say so whatever the class.
    if config.get("use_flow_sigmas") or config.get("prediction_type") == "flow_prediction":
        return True
    name = str(config.get("_class_name", ""))
    if name:
        return name.startswith("FlowMatch")
    # An instance's ``config`` has no class name: flow-matching schedulers have a time shift
    # and no beta schedule.
    return "beta_schedule" not in config and "trained_betas" not in config and "shift" in config


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


def seen_alpha(alpha: Tensor, sigma: Tensor) -> Tensor:
    """The alpha a discriminator is told about: ``alpha`` floored where the log-SNR it sees
    is clipped at ``-LOG_SNR_LIMIT`` (``alpha >= sigma * exp(-LOG_SNR_LIMIT / 2)``, 4.5e-5 at
    pure noise)."""
    return torch.maximum(alpha, sigma * math.exp(-LOG_SNR_LIMIT / 2))


def epsilon_delta_to_prediction(
    delta_eps: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str
) -> Tensor:
    """The change of a ``prediction_type`` output that shifts its implied epsilon by ``delta_eps``.

    Every conversion in :func:`from_epsilon` is affine in epsilon for fixed ``x_t``, so the
    change is linear (docs/method.md): ``dv = de (a^2 + s^2) / a`` (``de / a`` for VP),
    ``dx0 = -s de / a`` and, on the flow path, ``du = de (a + s) / a = de / (1 - t)``.
    Adding it to the raw prediction avoids a round trip through ``x_0`` that divides by
    ``alpha``.

    The ``1 / alpha`` has a finite limit at pure noise (``alpha -> 0``: zero-terminal-SNR
    schedules, the first step of a flow sampler): the optimal logit's input-gradient is
    ``alpha / sigma^2 * (E[x0 | x_t, other] - E[x0 | x_t])``, so ``dx0`` tends to the shift of
    the posterior mean by the other modality. The discriminator sees the log-SNR clipped at
    ``-LOG_SNR_LIMIT``, so its gradient shrinks like the alpha it is told
    (:func:`seen_alpha`), and dividing by that same alpha (never below 4.5e-5 of sigma) gives
    the limit without amplifying rounding.
    """
    _check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return delta_eps
    a, s = _broadcast(alpha, delta_eps), _broadcast(sigma, delta_eps)
    inv_a = 1.0 / seen_alpha(a, s)
    if prediction_type == "sample":
        return -s * inv_a * delta_eps
    if prediction_type == "v_prediction":
        return (a**2 + s**2) * inv_a * delta_eps
    return (a + s) * inv_a * delta_eps  # flow
