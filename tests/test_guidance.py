"""The guidance correction against a discriminator whose gradient is known in closed form."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mmdisco.diffusion import DiscreteSchedule, FlowSchedule
from mmdisco.guidance import discriminator_gradients, guidance_correction


class Bilinear(nn.Module):
    """h = a . W v (+ c * log_snr_a, which has no input-gradient): grad_a = W v, grad_v = W^T a."""

    def __init__(self, dim_a: int, dim_v: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(dim_a, dim_v, generator=g, dtype=torch.float64))

    def forward(self, a: Tensor, v: Tensor, snr_a: Tensor, snr_v: Tensor, **cond) -> Tensor:
        h = torch.einsum("bi,ij,bj->b", a.flatten(1), self.weight, v.flatten(1))
        return h + 0.01 * (snr_a + snr_v)


def _inputs(batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, 2, 3, generator=g, dtype=torch.float64)
    v = torch.randn(batch, 5, generator=g, dtype=torch.float64)
    return a, v


def test_correction_equals_closed_form() -> None:
    disc = Bilinear(6, 5)
    sched_a, sched_v = DiscreteSchedule.linear(1000), FlowSchedule(1000)
    a, v = _inputs()
    t_a, t_v = torch.tensor([10, 200, 500, 999]), torch.tensor([5.0, 250.0, 600.0, 990.0])
    d_a, d_v = guidance_correction(disc, a, v, t_a, t_v, sched_a, sched_v, 2.0, 0.5)
    w = disc.weight.detach()
    grad_a = (v.flatten(1) @ w.T).reshape(a.shape)
    grad_v = a.flatten(1) @ w
    sigma_a = sched_a.alpha_sigma(t_a)[1].double()[:, None, None]
    sigma_v = (t_v / 1000).double()[:, None]
    torch.testing.assert_close(d_a, -2.0 * sigma_a * grad_a)
    torch.testing.assert_close(d_v, -0.5 * sigma_v * grad_v)


def test_scalar_timestep_serves_the_batch() -> None:
    disc, sched = Bilinear(6, 5), DiscreteSchedule.linear(1000)
    a, v = _inputs()
    t = torch.tensor(300)
    d_scalar = guidance_correction(disc, a, v, t, t, sched, sched)
    d_batch = guidance_correction(disc, a, v, t.expand(4), t.expand(4), sched, sched)
    torch.testing.assert_close(d_scalar, d_batch)


def test_discriminator_sees_log_snr() -> None:
    seen = {}

    def disc(a, v, snr_a, snr_v, **cond):
        seen.update(snr_a=snr_a, snr_v=snr_v, cond=cond)
        return (a.flatten(1).sum(1) * v.flatten(1).sum(1)).float()

    sched_a, sched_v = DiscreteSchedule.cosine(1000), DiscreteSchedule.linear(1000)
    a, v = _inputs()
    guidance_correction(disc, a, v, torch.tensor(100), torch.tensor(700), sched_a, sched_v, text=1)
    torch.testing.assert_close(seen["snr_a"], sched_a.log_snr(torch.tensor([100])).expand(4))
    torch.testing.assert_close(seen["snr_v"], sched_v.log_snr(torch.tensor([700])).expand(4))
    assert seen["cond"] == {"text": 1}


def test_works_under_no_grad_and_leaves_inputs_alone() -> None:
    disc, sched = Bilinear(6, 5), DiscreteSchedule.linear(1000)
    a, v = _inputs()
    a_before, v_before = a.clone(), v.clone()
    with torch.no_grad():
        d_a, d_v = guidance_correction(disc, a, v, torch.tensor(50), torch.tensor(50), sched, sched)
    assert d_a.abs().sum() > 0 and d_v.abs().sum() > 0
    assert not d_a.requires_grad and not d_v.requires_grad
    assert not a.requires_grad and not v.requires_grad
    assert a.grad is None and v.grad is None
    assert torch.equal(a, a_before) and torch.equal(v, v_before)
    assert disc.weight.grad is None  # no gradient accumulates in the discriminator


def test_create_graph_keeps_gradient_differentiable_in_parameters() -> None:
    disc = Bilinear(6, 5)
    a, v = _inputs()
    snr = torch.zeros(4, dtype=torch.float64)
    out = discriminator_gradients(disc, a, v, snr, snr, create_graph=True)
    # d/dW sum(grad_a) = sum over batch of outer(1, v): non-zero, so the graph is there.
    (g,) = torch.autograd.grad(out.grad_audio.sum(), disc.weight)
    torch.testing.assert_close(g, torch.ones(6, 1, dtype=torch.float64) * v.sum(0)[None])


@pytest.mark.parametrize(
    ("a_shape", "v_shape", "t_a", "match"),
    [
        ((4, 2, 3), (3, 5), torch.tensor(10), "video_t"),
        ((4, 2, 3), (4, 5), torch.tensor([1, 2, 3]), "timestep_audio"),
    ],
)
def test_batch_mismatch_raises(a_shape, v_shape, t_a, match) -> None:
    disc, sched = Bilinear(6, 5), DiscreteSchedule.linear(1000)
    a = torch.randn(a_shape, dtype=torch.float64)
    v = torch.randn(v_shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"batch size mismatch.*{match}"):
        guidance_correction(disc, a, v, t_a, torch.tensor(10), sched, sched)


def test_nan_input_raises() -> None:
    disc, sched = Bilinear(6, 5), DiscreteSchedule.linear(1000)
    a, v = _inputs()
    v[1, 2] = float("nan")
    with pytest.raises(ValueError, match="video_t contains NaN"):
        guidance_correction(disc, a, v, torch.tensor(10), torch.tensor(10), sched, sched)


def test_out_of_range_timestep_raises() -> None:
    disc, sched = Bilinear(6, 5), DiscreteSchedule.linear(1000)
    a, v = _inputs()
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        guidance_correction(disc, a, v, torch.tensor(1000), torch.tensor(10), sched, sched)


@pytest.mark.parametrize("bad", [lambda h: h[:, None], lambda h: h[:2], lambda h: h.sum()])
def test_wrong_logit_shape_raises(bad) -> None:
    base, sched = Bilinear(6, 5), DiscreteSchedule.linear(1000)
    a, v = _inputs()

    def disc(*args, **kwargs):
        return bad(base(*args, **kwargs))

    with pytest.raises(ValueError, match=r"one logit per sample, shape \(4,\)"):
        guidance_correction(disc, a, v, torch.tensor(10), torch.tensor(10), sched, sched)


def test_logit_ignoring_a_modality_gives_zero_gradient() -> None:
    sched = DiscreteSchedule.linear(1000)
    a, v = _inputs()

    def audio_only(a, v, snr_a, snr_v, **cond):
        return (a.flatten(1) ** 2).sum(1)

    d_a, d_v = guidance_correction(
        audio_only, a, v, torch.tensor(10), torch.tensor(10), sched, sched
    )
    sigma = sched.alpha_sigma(torch.tensor([10]))[1].double()
    torch.testing.assert_close(d_a, -sigma * 2 * a)
    assert torch.equal(d_v, torch.zeros_like(v))
