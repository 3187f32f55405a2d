"""Schedules and parameterisations agree with diffusers and with docs/method.md's closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from mmdisco.diffusion import (
    LOG_SNR_LIMIT,
    PREDICTION_TYPES,
    DiscreteSchedule,
    FlowSchedule,
    epsilon_delta_to_prediction,
    from_epsilon,
    prediction_type_of,
    schedule_from_scheduler_config,
    seen_alpha,
    to_epsilon,
)

STEP_COUNTS = (10, 100, 1000)


def _acp(schedule: DiscreteSchedule) -> torch.Tensor:
    return schedule.alphas_cumprod.float()


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_linear_matches_diffusers(steps: int) -> None:
    ref = DDPMScheduler(num_train_timesteps=steps, beta_schedule="linear").alphas_cumprod
    torch.testing.assert_close(_acp(DiscreteSchedule.linear(steps)), ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_scaled_linear_matches_diffusers(steps: int) -> None:
    ref = DDPMScheduler(
        num_train_timesteps=steps, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    ).alphas_cumprod
    torch.testing.assert_close(
        _acp(DiscreteSchedule.scaled_linear(steps, 0.00085, 0.012)), ref, rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_cosine_matches_diffusers(steps: int) -> None:
    ref = DDPMScheduler(num_train_timesteps=steps, beta_schedule="squaredcos_cap_v2").alphas_cumprod
    torch.testing.assert_close(_acp(DiscreteSchedule.cosine(steps)), ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_train_timesteps": 500, "beta_schedule": "linear", "beta_end": 0.03},
        {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085},
        {"num_train_timesteps": 250, "beta_schedule": "squaredcos_cap_v2"},
        {"num_train_timesteps": 300, "beta_schedule": "linear", "rescale_betas_zero_snr": True},
        {"trained_betas": torch.linspace(1e-4, 0.05, 64).tolist()},
    ],
)
def test_schedule_from_scheduler_config_matches_diffusers(kwargs: dict) -> None:
    scheduler = DDPMScheduler(**kwargs)
    schedule = schedule_from_scheduler_config(scheduler.config)
    assert isinstance(schedule, DiscreteSchedule)
    torch.testing.assert_close(_acp(schedule), scheduler.alphas_cumprod, rtol=1e-5, atol=1e-6)


def test_unknown_beta_schedule_is_named_in_error() -> None:
    with pytest.raises(ValueError, match="'laplace'"):
        schedule_from_scheduler_config({"beta_schedule": "laplace"})


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_schedule_matches_flow_match_scheduler(shift: float) -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    schedule = schedule_from_scheduler_config(scheduler.config)
    assert isinstance(schedule, FlowSchedule)
    assert isinstance(schedule_from_scheduler_config(scheduler), FlowSchedule)
    assert prediction_type_of(scheduler.config) == prediction_type_of(scheduler) == "flow"
    scheduler.set_timesteps(20)
    alpha, sigma = schedule.alpha_sigma(scheduler.timesteps)
    # diffusers hands the model t = sigma * T and noises with (1 - sigma) x0 + sigma eps.
    torch.testing.assert_close(sigma, scheduler.sigmas[:-1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(alpha, 1 - scheduler.sigmas[:-1], rtol=1e-6, atol=1e-6)
    x0, noise = torch.randn(20, 3), torch.randn(20, 3)
    ref = scheduler.scale_noise(x0, scheduler.timesteps, noise)
    torch.testing.assert_close(schedule.add_noise(x0, noise, scheduler.timesteps), ref)


def test_add_noise_matches_diffusers() -> None:
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    schedule = schedule_from_scheduler_config(scheduler.config)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 2, 4, 4, generator=g), torch.randn(6, 2, 4, 4, generator=g)
    t = torch.tensor([0, 1, 17, 500, 998, 999])
    torch.testing.assert_close(
        schedule.add_noise(x0, noise, t), scheduler.add_noise(x0, noise, t), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    ("t", "match"),
    [
        (torch.tensor([0, 1000]), r"\[0, 999\]"),
        (torch.tensor([-1]), r"\[0, 999\]"),
        (torch.tensor([float("nan")]), "NaN"),
        (torch.zeros(2, 2), "1-D"),
    ],
)
def test_bad_timesteps_raise(t: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DiscreteSchedule.linear(1000).alpha_sigma(t)


def test_flow_timesteps_out_of_range_raise() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1000"):
        FlowSchedule(1000).alpha_sigma(torch.tensor([1000.5]))


@pytest.mark.parametrize(
    "schedule",
    [DiscreteSchedule.linear(1000), DiscreteSchedule.cosine(1000), FlowSchedule(1000)],
    ids=["linear", "cosine", "flow"],
)
def test_log_snr_monotone_and_clipped(schedule) -> None:
    t = torch.arange(0, schedule.num_train_timesteps, dtype=torch.float32)
    if isinstance(schedule, FlowSchedule):
        t = torch.cat([t, torch.tensor([1000.0])])
    snr = schedule.log_snr(t)
    assert torch.isfinite(snr).all()
    assert (snr.diff() <= 0).all() and snr[0] > snr[-1]
    assert snr.abs().max() <= LOG_SNR_LIMIT
    if isinstance(schedule, FlowSchedule):  # clean and pure-noise ends hit the clip
        assert snr[0] == LOG_SNR_LIMIT and snr[-1] == -LOG_SNR_LIMIT


def test_fractional_timesteps_interpolate() -> None:
    schedule = DiscreteSchedule.linear(1000)
    abar = schedule.alphas_cumprod
    alpha, _ = schedule.alpha_sigma(torch.tensor([10.25]))
    expected = (0.75 * abar[10] + 0.25 * abar[11]).sqrt().float()
    torch.testing.assert_close(alpha, expected[None])


def test_zero_terminal_snr_schedule_is_finite() -> None:
    schedule = schedule_from_scheduler_config(
        {"beta_schedule": "scaled_linear", "rescale_betas_zero_snr": True}
    )
    alpha, sigma = schedule.alpha_sigma(torch.tensor([999]))
    assert alpha.item() == 0 and sigma.item() == 1
    assert schedule.log_snr(torch.tensor([999])).item() == -LOG_SNR_LIMIT


# ---------------------------------------------------------------- parameterisations


def _vp_point(n: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    schedule = DiscreteSchedule.linear(1000)
    t = torch.randint(0, 1000, (n,), generator=g)
    alpha, sigma = schedule.alpha_sigma(t)
    x0, eps = torch.randn(n, 3, 4, generator=g), torch.randn(n, 3, 4, generator=g)
    return schedule, t, alpha.double(), sigma.double(), x0.double(), eps.double()


def _flow_point(n: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    x0, eps = torch.randn(n, 3, 4, generator=g), torch.randn(n, 3, 4, generator=g)
    return 1 - s, s, x0.double(), eps.double()


@pytest.mark.parametrize("ptype", PREDICTION_TYPES)
def test_round_trip(ptype: str) -> None:
    if ptype == "flow":
        alpha, sigma, x0, eps = _flow_point()
    else:
        _, _, alpha, sigma, x0, eps = _vp_point()
    x_t = alpha[:, None, None] * x0 + sigma[:, None, None] * eps
    pred = from_epsilon(eps, x_t, alpha, sigma, ptype)
    torch.testing.assert_close(to_epsilon(pred, x_t, alpha, sigma, ptype), eps)
    torch.testing.assert_close(
        from_epsilon(to_epsilon(pred, x_t, alpha, sigma, ptype), x_t, alpha, sigma, ptype), pred
    )


def test_unknown_prediction_type_raises() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="'eps'"):
        to_epsilon(x, x, torch.ones(1), torch.ones(1), "eps")


def test_v_prediction_matches_diffusers_get_velocity() -> None:
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    schedule, t, alpha, sigma, x0, eps = _vp_point()
    x0, eps = x0.float(), eps.float()
    x_t = schedule.add_noise(x0, eps, t)
    v = from_epsilon(eps, x_t, alpha.float(), sigma.float(), "v_prediction")
    torch.testing.assert_close(v, scheduler.get_velocity(x0, eps, t), rtol=1e-4, atol=1e-5)


def test_sample_conversion_is_x0_and_flow_is_eps_minus_x0() -> None:
    _, _, alpha, sigma, x0, eps = _vp_point()
    x_t = alpha[:, None, None] * x0 + sigma[:, None, None] * eps
    torch.testing.assert_close(from_epsilon(eps, x_t, alpha, sigma, "sample"), x0)
    alpha, sigma, x0, eps = _flow_point()
    x_t = alpha[:, None, None] * x0 + sigma[:, None, None] * eps
    torch.testing.assert_close(from_epsilon(eps, x_t, alpha, sigma, "flow"), eps - x0)


@pytest.mark.parametrize("ptype", PREDICTION_TYPES)
def test_correction_relations_of_method_md(ptype: str) -> None:
    """dv = de / a (VP), dx0 = -s de / a, du = de / (1 - t) (flow), and each equals the change
    of ``from_epsilon`` when epsilon moves by ``de`` (it is affine in epsilon)."""
    if ptype == "flow":
        alpha, sigma, x0, eps = _flow_point(seed=1)
    else:
        _, _, alpha, sigma, x0, eps = _vp_point(seed=1)
    a, s = alpha[:, None, None], sigma[:, None, None]
    x_t = a * x0 + s * eps
    de = 0.1 * torch.randn_like(eps)
    expected = {"epsilon": de, "v_prediction": de / a, "sample": -s * de / a, "flow": de / (1 - s)}
    got = epsilon_delta_to_prediction(de, alpha, sigma, ptype)
    torch.testing.assert_close(got, expected[ptype])
    change = from_epsilon(eps + de, x_t, alpha, sigma, ptype) - from_epsilon(
        eps, x_t, alpha, sigma, ptype
    )
    torch.testing.assert_close(got, change)


def test_correction_at_pure_noise_divides_by_the_alpha_the_discriminator_sees() -> None:
    """At alpha = 0 the discriminator is told log-SNR -LOG_SNR_LIMIT, i.e. alpha = sigma *
    exp(-10); its gradient shrinks like that alpha, and the conversion divides by the same."""
    de = torch.ones(2, 3)
    alpha, sigma = torch.tensor([0.0, 0.5]), torch.tensor([1.0, 0.5])
    out = epsilon_delta_to_prediction(de, alpha, sigma, "flow")
    assert torch.isfinite(out).all()
    seen = math.exp(-LOG_SNR_LIMIT / 2)
    torch.testing.assert_close(out[0], torch.full((3,), 1 / seen))
    torch.testing.assert_close(out[1], 2 * torch.ones(3))
    # The floor is where the log-SNR clip starts: the schedule reports exactly -LOG_SNR_LIMIT.
    lam = 2 * math.log(seen_alpha(alpha, sigma)[0].item() / sigma[0].item())
    assert lam == pytest.approx(-LOG_SNR_LIMIT)
