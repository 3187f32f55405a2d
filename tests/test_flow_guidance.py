"""Guidance in rectified-flow velocity space, with the time shifts of Wan and HunyuanVideo 1.5.

The Gaussian of tests/test_conditional.py on the flow path ``x_t = (1 - s) x_0 + s eps``:
audio and video are each N(0, I) with per-coordinate correlation rho, so the log density
ratio of the noisy pair is closed form. Guiding the audio velocity model (built on
E[a0 | a_t]) with it, given a clean video, must reproduce step for step the exact conditional
velocity model (built on E[a0 | a_t, v0]) under each video model's own solver: Wan's UniPC on
flow sigmas (integer timesteps, ``flow_shift`` 3 for 480p and 5 for 720p) and HunyuanVideo
1.5's Euler on ``linspace(1, 0, N + 1)`` shifted by 7. Both start at (or within 1e-3 of) pure
noise, where the correction has a finite limit.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from diffusers import UniPCMultistepScheduler
from torch import Tensor

from mmdisco.base_models.base import BaseModel
from mmdisco.base_models.hunyuan_video import HunyuanVideo15Scheduler
from mmdisco.diffusion import LOG_SNR_LIMIT, FlowSchedule
from mmdisco.sampling import Stream, joint_sample

RHO, DIM, N, STEPS = 0.8, 3, 64, 4
UNIPC = {
    "_class_name": "UniPCMultistepScheduler",
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
}
EULER = {"_class_name": "FlowMatchEulerDiscreteScheduler"}
SOLVERS = {  # name: (scheduler class, config) as each pipeline ships it
    "wan_unipc_shift3": (UniPCMultistepScheduler, {**UNIPC, "flow_shift": 3.0}),
    "wan_unipc_shift5": (UniPCMultistepScheduler, {**UNIPC, "flow_shift": 5.0}),
    "hunyuan15_euler_shift7": (HunyuanVideo15Scheduler, {**EULER, "shift": 7.0}),
}

pytestmark = pytest.mark.usefixtures("one_thread")


def flow_levels(log_snr: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha, sigma) on the flow path from the log-SNR the discriminator is told
    (alpha / sigma = exp(log_snr / 2), alpha + sigma = 1); the clip at +LOG_SNR_LIMIT marks a
    clean input (alpha = 1, sigma = 0)."""
    sigma = torch.sigmoid(-log_snr.double() / 2)
    sigma = torch.where(log_snr >= LOG_SNR_LIMIT, torch.zeros_like(sigma), sigma)
    return 1 - sigma, sigma


def flow_gaussian_log_ratio(a: Tensor, v: Tensor, snr_a: Tensor, snr_v: Tensor) -> Tensor:
    """log p(a_t, v_t) / (p(a_t) p(v_t)) per coordinate: variances alpha^2 + sigma^2 and
    covariance alpha_a alpha_v rho (float64: near alpha = 0 the gradient is O(alpha))."""
    (al_a, si_a), (al_v, si_v) = flow_levels(snr_a), flow_levels(snr_v)
    var_a, var_v = (al_a**2 + si_a**2)[:, None], (al_v**2 + si_v**2)[:, None]
    cov = (al_a * al_v)[:, None] * RHO
    det = var_a * var_v - cov**2
    a, v = a.double(), v.double()
    joint = (var_v * a**2 - 2 * cov * a * v + var_a * v**2) / det + torch.log(det)
    marginals = a**2 / var_a + v**2 / var_v + torch.log(var_a * var_v)
    return (-0.5 * (joint - marginals)).sum(1).float()


class GaussianFlowModel(BaseModel):
    """The velocity ``eps - x0`` implied by E[x0 | x_t] for x0 ~ N(0, I) (``cond=None``), or,
    given the other modality's clean value as ``cond``, by the exact E[x0 | x_t, other]."""

    def __init__(self, modality: str, scheduler_config: dict[str, Any]) -> None:
        self.modality, self.scheduler_config = modality, dict(scheduler_config)

    def latent_shape(self) -> tuple[int, ...]:
        return (DIM,)

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        alpha, sigma = self.schedule.alpha_sigma(torch.as_tensor(t).expand(x_t.shape[0]))
        alpha, sigma, x = alpha[:, None].double(), sigma[:, None].double(), x_t.double()
        mean, var = (0.0, 1.0) if cond is None else (RHO * cond.double(), 1 - RHO**2)
        x0 = mean + alpha * var / (alpha**2 * var + sigma**2) * (x - alpha * mean)
        eps = (x - alpha * x0) / sigma
        return (eps - x0).float()


def _given() -> Tensor:
    return torch.randn(N, DIM, generator=torch.Generator().manual_seed(0))


def _conditional_audio(solver: str, guided: bool) -> Tensor:
    cls, config = SOLVERS[solver]
    audio = Stream(
        GaussianFlowModel("audio", config),
        cls.from_config(config),
        cond=None if guided else _given(),
        generator=torch.Generator().manual_seed(1),
    )
    video = Stream(
        GaussianFlowModel("video", config),
        cls.from_config(config),
        latents=_given(),
        given="clean",
    )
    disc = flow_gaussian_log_ratio if guided else None
    a, _ = joint_sample(audio, video, disc, batch_size=N, num_inference_steps=STEPS, progress=False)
    return a


def _log_snr(s: float) -> Tensor:
    return torch.full((5,), 2 * math.log((1 - s) / s), dtype=torch.float64)


def test_flow_log_ratio_is_the_closed_form_density_ratio() -> None:
    """The test's discriminator against the densities written out, at a noisy level each."""
    a, v = torch.randn(5, DIM, dtype=torch.float64), torch.randn(5, DIM, dtype=torch.float64)
    s_a, s_v = 0.3, 0.8
    var_a, var_v = (1 - s_a) ** 2 + s_a**2, (1 - s_v) ** 2 + s_v**2
    cov = (1 - s_a) * (1 - s_v) * RHO
    joint = torch.distributions.MultivariateNormal(
        torch.zeros(2, dtype=torch.float64),
        torch.tensor([[var_a, cov], [cov, var_v]], dtype=torch.float64),
    )
    pa = torch.distributions.Normal(0.0, var_a**0.5)
    pv = torch.distributions.Normal(0.0, var_v**0.5)
    expected = (joint.log_prob(torch.stack([a, v], -1)) - pa.log_prob(a) - pv.log_prob(v)).sum(1)
    got = flow_gaussian_log_ratio(a, v, _log_snr(s_a), _log_snr(s_v))
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_velocity_guidance_with_the_exact_ratio_is_the_exact_conditional_model(solver: str):
    cls, config = SOLVERS[solver]
    model = GaussianFlowModel("audio", config)
    assert model.prediction_type == "flow" and isinstance(model.schedule, FlowSchedule)
    scheduler = cls.from_config(config)
    scheduler.set_timesteps(STEPS)
    assert scheduler.timesteps[0] >= 999  # starts at pure noise: the alpha -> 0 limit counts
    guided = _conditional_audio(solver, guided=True)
    exact = _conditional_audio(solver, guided=False)
    torch.testing.assert_close(guided, exact, rtol=1e-4, atol=1e-4)
    # Not a vacuous match: the samples follow the given video.
    given = _given()
    corr = (guided * given).mean() / (guided.std() * given.std())
    assert corr > 0.5
