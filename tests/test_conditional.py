"""Conditional generation from the joint discriminator, on a Gaussian whose joint is known.

Audio and video are d-dimensional, each N(0, I), with per-coordinate correlation rho. Under a
variance-preserving path the exact log ratio is closed form, so guiding the audio "base
model" (x0 prediction E[a0 | a_t] = alpha a_t) with it at scale 1 must reproduce, step for
step, a sampler driven by the exact conditional model E[a0 | a_t, v0]. The schedule has zero
terminal SNR, so the first step sits at alpha = 0, where the correction has a finite limit
(E[a0 | v0] - E[a0] = rho v0) that must not be dropped.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from diffusers import DDPMScheduler
from torch import Tensor

from mmdisco.base_models.base import BaseModel
from mmdisco.diffusion import LOG_SNR_LIMIT
from mmdisco.sampling import Stream, joint_sample

# Few steps, so that the first (alpha = 0) step weighs enough in the result to be checked.
RHO, DIM, N, STEPS = 0.8, 3, 64, 4
SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "rescale_betas_zero_snr": True,
    "prediction_type": "sample",
    "clip_sample": False,
    "timestep_spacing": "trailing",  # the first step is t = 999, where alpha = 0 exactly
}

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_log_ratio(a: Tensor, v: Tensor, snr_a: Tensor, snr_v: Tensor) -> Tensor:
    """log p(a_t, v_t) / (p(a_t) p(v_t)) for the correlated Gaussian, at the noise levels the
    discriminator is told (alpha^2 = sigmoid(log-SNR)): per coordinate a bivariate normal
    with unit variances and covariance c = alpha_a alpha_v rho. In float64: near alpha = 0 the
    gradient is a difference of O(1) terms of size O(alpha)."""
    dtype, a, v = a.dtype, a.double(), v.double()
    c = (torch.sigmoid(snr_a.double()) * torch.sigmoid(snr_v.double())).sqrt()[:, None] * RHO
    quad = (a**2 - 2 * c * a * v + v**2) / (1 - c**2) - a**2 - v**2
    return (-0.5 * quad - 0.5 * torch.log1p(-(c**2))).sum(1).to(dtype)


class GaussianModel(BaseModel):
    """E[x0 | x_t] for x0 ~ N(0, I) (``cond=None``), or, given the other modality's clean
    value as ``cond``, the exact conditional E[x0 | x_t, other]."""

    def __init__(self, modality: str) -> None:
        self.modality, self.scheduler_config = modality, dict(SCHEDULER)

    def latent_shape(self) -> tuple[int, ...]:
        return (DIM,)

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        alpha, sigma = self.schedule.alpha_sigma(torch.as_tensor(t).expand(x_t.shape[0]))
        alpha, sigma = alpha[:, None].double(), sigma[:, None].double()
        if cond is None:
            return (alpha * x_t.double()).to(x_t.dtype)
        mean, var = RHO * cond.double(), 1 - RHO**2  # x0 | other ~ N(rho other, 1 - rho^2)
        gain = alpha * var / (alpha**2 * var + sigma**2)
        return (mean + gain * (x_t.double() - alpha * mean)).to(x_t.dtype)


def _given(seed: int = 0) -> Tensor:
    return torch.randn(N, DIM, generator=torch.Generator().manual_seed(seed))


def _stream(modality: str, seed: int, **kw: Any) -> Stream:
    model = GaussianModel(modality)
    gen = torch.Generator().manual_seed(seed)
    return Stream(model, DDPMScheduler.from_config(SCHEDULER), generator=gen, **kw)


def _conditional(free: str, guided: bool) -> tuple[Tensor, Tensor]:
    """Sample the free modality given the other (clean): guided base model, or the exact
    conditional model unguided. Same seeds, so the same noise."""
    given = _given()
    free_stream = _stream(free, 1)
    if not guided:
        free_stream.cond = given
    given_stream = _stream("video" if free == "audio" else "audio", 2, latents=given, given="clean")
    streams = (free_stream, given_stream) if free == "audio" else (given_stream, free_stream)
    disc = gaussian_log_ratio if guided else None
    a, v = joint_sample(*streams, disc, batch_size=N, num_inference_steps=STEPS, progress=False)
    return (a, v) if free == "audio" else (v, a)


@pytest.mark.parametrize("free", ["audio", "video"])
def test_guidance_with_the_exact_ratio_is_the_exact_conditional_model(free: str) -> None:
    out, given = _conditional(free, guided=True)
    reference, _ = _conditional(free, guided=False)
    torch.testing.assert_close(given, _given())  # the given modality comes back untouched
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)
    # Not a vacuous match: the conditional samples follow the given clips.
    corr = (out * given).mean() / (out.std() * given.std())
    assert corr > 0.5


def test_correction_at_alpha_zero_is_the_posterior_mean_shift() -> None:
    """At the first step (alpha = 0) the guided x0 prediction is E[a0 | v0] = rho v0, the
    finite limit of sigma^2 / alpha * grad h; dropping it would leave 0."""
    from mmdisco.diffusion import CleanSchedule
    from mmdisco.guidance import guidance_correction
    from mmdisco.sampling import _apply

    model = GaussianModel("audio")
    t = torch.tensor(999)
    alpha, _ = model.schedule.alpha_sigma(t)
    assert alpha.item() == 0.0
    a_t, v0 = torch.randn(N, DIM, generator=torch.Generator().manual_seed(3)), _given()
    delta, _ = guidance_correction(
        gaussian_log_ratio, a_t, v0, t, torch.tensor(0), model.schedule, CleanSchedule()
    )
    x0 = _apply(model.schedule, "sample", model.predict(a_t, t), delta, t)
    torch.testing.assert_close(x0, RHO * v0, rtol=1e-4, atol=1e-4)


def _recording_run(given: str) -> list[tuple[Tensor, Tensor, Tensor]]:
    seen: list[tuple[Tensor, Tensor, Tensor]] = []

    def disc(a: Tensor, v: Tensor, snr_a: Tensor, snr_v: Tensor) -> Tensor:
        seen.append((v.detach().clone(), snr_a.clone(), snr_v.clone()))
        return (a * v).sum(1) * 0.0

    video = _stream("video", 2, latents=_given(), given=given)
    joint_sample(_stream("audio", 1), video, disc, batch_size=N, num_inference_steps=5,
                 progress=False)  # fmt: skip
    return seen


def test_clean_given_modality_enters_at_the_log_snr_clip() -> None:
    for v, snr_a, snr_v in _recording_run("clean"):
        torch.testing.assert_close(v, _given())
        assert (snr_v == LOG_SNR_LIMIT).all() and (snr_a < LOG_SNR_LIMIT).all()


def test_renoised_given_modality_is_noised_afresh_to_the_free_level() -> None:
    seen = _recording_run("renoise")
    schedule = GaussianModel("video").schedule
    scheduler = DDPMScheduler.from_config(SCHEDULER)
    scheduler.set_timesteps(5)
    noises = []
    for (v, snr_a, snr_v), t in zip(seen, scheduler.timesteps, strict=True):
        torch.testing.assert_close(snr_v, snr_a)  # same schedules: the same level
        alpha, sigma = schedule.alpha_sigma(t)
        if sigma.item() > 0.1:
            noise = (v - alpha * _given()) / sigma
            assert abs(noise.mean().item()) < 0.2 and abs(noise.std().item() - 1) < 0.2
            noises.append(noise)
    assert len(noises) >= 2 and not torch.allclose(noises[0], noises[1])  # fresh every step


def test_unguided_sampling_ignores_the_given_stream() -> None:
    """Without a discriminator the free modality is its own diffusers loop, whatever is given."""
    a_given, _ = joint_sample(
        _stream("audio", 1), _stream("video", 2, latents=_given(), given="clean"),
        batch_size=N, num_inference_steps=STEPS, progress=False,
    )  # fmt: skip
    a_free, _ = joint_sample(_stream("audio", 1), _stream("video", 2), batch_size=N,
                             num_inference_steps=STEPS, progress=False)  # fmt: skip
    torch.testing.assert_close(a_given, a_free)


def test_given_streams_are_checked() -> None:
    with pytest.raises(ValueError, match="given: must be one of 'clean', 'renoise', got 'noisy'"):
        _stream("video", 0, latents=_given(), given="noisy")
    with pytest.raises(ValueError, match="both streams are given"):
        joint_sample(
            _stream("audio", 1, latents=_given(), given="clean"),
            _stream("video", 2, latents=_given(), given="clean"),
            batch_size=N, progress=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"given video stream needs latents with 8 rows"):
        joint_sample(_stream("audio", 1), _stream("video", 2, latents=_given(), given="clean"),
                     batch_size=8, progress=False)  # fmt: skip


def test_gaussian_log_ratio_is_the_closed_form_density_ratio() -> None:
    """The test's discriminator against the densities written out (float64)."""
    a, v = torch.randn(5, DIM, dtype=torch.float64), torch.randn(5, DIM, dtype=torch.float64)
    snr_a = torch.full((5,), 0.7, dtype=torch.float64)
    snr_v = torch.full((5,), -1.3, dtype=torch.float64)
    c = math.sqrt(torch.sigmoid(snr_a[0]) * torch.sigmoid(snr_v[0])) * RHO
    joint = torch.distributions.MultivariateNormal(
        torch.zeros(2, dtype=torch.float64), torch.tensor([[1, c], [c, 1]], dtype=torch.float64)
    )
    std = torch.distributions.Normal(0.0, 1.0)
    expected = (joint.log_prob(torch.stack([a, v], -1)) - std.log_prob(a) - std.log_prob(v)).sum(1)
    torch.testing.assert_close(gaussian_log_ratio(a, v, snr_a, snr_v), expected)
