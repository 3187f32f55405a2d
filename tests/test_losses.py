"""L_D against its BCE definition, L_DLSM's double backprop against finite differences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdisco.diffusion import DiscreteSchedule
from mmdisco.training.losses import LossConfig, discriminator_loss, dlsm_loss, mmdisco_loss

SCHED_A, SCHED_V = DiscreteSchedule.linear(100), DiscreteSchedule.cosine(100)


class TinyDisc(nn.Module):
    """A smooth (tanh) MLP on the flattened pair and both log-SNRs, in float64."""

    def __init__(self, dim_a: int = 3, dim_v: int = 4, hidden: int = 6, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Linear(dim_a + dim_v + 2, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        ).double()

    def forward(self, a: Tensor, v: Tensor, snr_a: Tensor, snr_v: Tensor, **cond) -> Tensor:
        x = torch.cat([a.flatten(1), v.flatten(1), snr_a[:, None] / 10, snr_v[:, None] / 10], 1)
        return self.net(x.double()).squeeze(1)


class FrozenEps(nn.Module):
    """A base model with parameters, to check that no gradient reaches it."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim).double()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.lin(x) + t.double()[:, None] / 100


def _data(n: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) for d in (3, 4, 3, 4)]


def _loss(disc, eps_a, eps_v, seed: int = 0, **settings):
    ra, rv, fa, fv = _data()
    return mmdisco_loss(
        disc,
        ra,
        rv,
        fa,
        fv,
        SCHED_A,
        SCHED_V,
        LossConfig(**settings),
        eps_audio=eps_a,
        eps_video=eps_v,
        generator=torch.Generator().manual_seed(seed),
    )


def test_discriminator_loss_is_bce() -> None:
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(7, generator=g) * 3, torch.randn(9, generator=g) * 3
    expected = F.binary_cross_entropy(torch.sigmoid(real), torch.ones(7)) + F.binary_cross_entropy(
        torch.sigmoid(fake), torch.zeros(9)
    )
    torch.testing.assert_close(discriminator_loss(real, fake), expected)


def test_discriminator_loss_finite_for_huge_logits() -> None:
    real = torch.tensor([1e4, -1e4], requires_grad=True)
    fake = torch.tensor([1e4, -1e4], requires_grad=True)
    loss = discriminator_loss(real, fake)
    # Each badly classified logit costs |h|: (1e4 + 1e4) / 2 per term.
    torch.testing.assert_close(loss, torch.tensor(1e4))
    loss.backward()
    assert torch.isfinite(real.grad).all() and torch.isfinite(fake.grad).all()
    torch.testing.assert_close(real.grad, torch.tensor([0.0, -0.5]))
    torch.testing.assert_close(fake.grad, torch.tensor([0.5, 0.0]))


def test_dlsm_loss_is_per_element_mean() -> None:
    g = torch.Generator().manual_seed(0)
    ga, pa, na = (torch.randn(2, 3, 4, generator=g) for _ in range(3))
    gv, pv, nv = (torch.randn(2, 5, generator=g) for _ in range(3))
    sa, sv = torch.tensor([0.1, 0.9]), torch.tensor([0.5, 0.3])
    expected = ((pa - sa[:, None, None] * ga - na) ** 2).mean() + (
        (pv - sv[:, None] * gv - nv) ** 2
    ).mean()
    torch.testing.assert_close(dlsm_loss(ga, gv, pa, pv, na, nv, sa, sv), expected)


def test_dlsm_gradient_matches_finite_differences() -> None:
    """The double backprop (create_graph) gives d L_DLSM / d params exactly."""
    disc = TinyDisc()
    eps_a, eps_v = FrozenEps(3), FrozenEps(4)
    out = _loss(disc, eps_a, eps_v, use_d=False)
    params = list(disc.parameters())
    # The last bias does not move the input-gradient: unused, and its numeric gradient is 0.
    grads = torch.autograd.grad(out.total, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    h = 1e-6
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            flat, numeric = p.view(-1), torch.empty_like(p).view(-1)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + h
                up = _loss(disc, eps_a, eps_v, use_d=False).total.item()
                flat[i] = old - h
                down = _loss(disc, eps_a, eps_v, use_d=False).total.item()
                flat[i] = old
                numeric[i] = (up - down) / (2 * h)
            torch.testing.assert_close(g.view(-1), numeric, rtol=1e-5, atol=1e-8)
    assert max(g.abs().max().item() for g in grads) > 1e-3  # the test is not vacuous


def test_full_gradient_matches_finite_differences() -> None:
    disc = TinyDisc(seed=1)
    eps_a, eps_v = FrozenEps(3), FrozenEps(4)
    p = disc.net[0].weight
    (g,) = torch.autograd.grad(_loss(disc, eps_a, eps_v, dlsm_weight=0.7).total, p)
    h = 1e-6
    with torch.no_grad():
        for idx in [(0, 0), (2, 5), (5, 8)]:
            old = p[idx].item()
            p[idx] = old + h
            up = _loss(disc, eps_a, eps_v, dlsm_weight=0.7).total.item()
            p[idx] = old - h
            down = _loss(disc, eps_a, eps_v, dlsm_weight=0.7).total.item()
            p[idx] = old
            torch.testing.assert_close(g[idx].item(), (up - down) / (2 * h), rtol=1e-5, atol=1e-8)


def test_no_gradient_reaches_base_models() -> None:
    disc = TinyDisc()
    eps_a, eps_v = FrozenEps(3), FrozenEps(4)
    _loss(disc, eps_a, eps_v).total.backward()
    assert all(p.grad is None for p in [*eps_a.parameters(), *eps_v.parameters()])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())


def test_toggles() -> None:
    disc = TinyDisc()
    eps_a, eps_v = FrozenEps(3), FrozenEps(4)
    both = _loss(disc, eps_a, eps_v, dlsm_weight=0.3)
    only_d = _loss(disc, None, None, use_dlsm=False)
    only_dlsm = _loss(disc, eps_a, eps_v, use_d=False)
    torch.testing.assert_close(both.total.detach(), both.d + 0.3 * both.dlsm)
    # Same seed, same real noise and same real logits whichever terms are on.
    torch.testing.assert_close(both.logits_real, only_d.logits_real)
    torch.testing.assert_close(both.d, only_d.d)
    torch.testing.assert_close(both.dlsm, only_dlsm.dlsm)
    assert only_d.dlsm.item() == 0 and only_dlsm.d.item() == 0
    assert both.d > 0 and both.dlsm > 0
    torch.testing.assert_close(only_d.d, discriminator_loss(only_d.logits_real, only_d.logits_fake))
    assert len(only_dlsm.logits_fake) == 0
    with pytest.raises(ValueError, match="at least one"):
        _loss(disc, eps_a, eps_v, use_d=False, use_dlsm=False)
    with pytest.raises(ValueError, match="eps_audio and eps_video"):
        _loss(disc, None, eps_v)


def test_noise_range_bounds_the_training_noise_levels() -> None:
    seen: list[Tensor] = []

    def disc(a: Tensor, v: Tensor, snr_a: Tensor, snr_v: Tensor) -> Tensor:
        seen.append(snr_v)
        return a.sum(1) * 0

    for seed in range(20):
        _loss(disc, None, None, seed=seed, use_dlsm=False, noise_range=(0.8, 1.0))
    snr = torch.cat(seen)
    t_lo, t_hi = SCHED_V.timesteps_from_fraction(torch.tensor([0.8, 1.0]))
    snr_lo, snr_hi = SCHED_V.log_snr(t_lo), SCHED_V.log_snr(t_hi)  # snr falls as t grows
    assert (snr <= snr_lo + 1e-6).all() and (snr >= snr_hi - 1e-6).all()
    assert snr.max() < SCHED_V.log_snr(SCHED_V.timesteps_from_fraction(torch.tensor(0.5)))
    with pytest.raises(ValueError, match="noise_range"):
        _loss(disc, None, None, use_dlsm=False, noise_range=(0.5, 0.5))


def test_batch_mismatch_raises() -> None:
    ra, rv, fa, fv = _data()
    with pytest.raises(ValueError, match="fake audio and video batch sizes differ: 5 vs 2"):
        mmdisco_loss(TinyDisc(), ra, rv, fa, fv[:2], SCHED_A, SCHED_V, LossConfig(use_dlsm=False))


def perfect(x0: Tensor, schedule: DiscreteSchedule):
    """The base model that knows the clean batch ``x0``: it predicts the noise exactly."""

    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = schedule.alpha_sigma(t)
        return (x_t - alpha.double()[:, None] * x0) / sigma.double()[:, None]

    return eps_fn


def test_dlsm_zero_for_perfect_base_model_and_constant_h() -> None:
    ra, rv, _, _ = _data()

    bias = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def constant(a, v, snr_a, snr_v, **cond):
        return 0.0 * (a.sum(1) + v.sum(1)) + bias

    out = _loss(constant, perfect(ra, SCHED_A), perfect(rv, SCHED_V), use_d=False)
    assert out.dlsm.item() < 1e-20
    # A base model that is off by a constant is penalised by exactly that squared offset.
    off_a = perfect(ra, SCHED_A)
    out = _loss(constant, lambda x, t: off_a(x, t) + 0.5, perfect(rv, SCHED_V), use_d=False)
    torch.testing.assert_close(out.dlsm.item(), 0.25)


def test_clean_prob_holds_one_modality_clean_at_the_log_snr_clip() -> None:
    """With clean_prob = 1 every pair, real and fake, has exactly one modality as given: not
    noised and told log-SNR +LOG_SNR_LIMIT; the other is noised as usual."""
    from mmdisco.diffusion import LOG_SNR_LIMIT

    ra, rv, fa, fv = _data(n=64)
    seen: list[tuple[Tensor, ...]] = []

    def disc(a: Tensor, v: Tensor, snr_a: Tensor, snr_v: Tensor) -> Tensor:
        seen.append((a.detach(), v.detach(), snr_a, snr_v))
        return (a.sum(1) + v.sum(1)) * 0.0

    config = LossConfig(use_dlsm=False, clean_prob=1.0)
    generator = torch.Generator().manual_seed(0)
    mmdisco_loss(disc, ra, rv, fa, fv, SCHED_A, SCHED_V, config, generator=generator)
    for (a, v, snr_a, snr_v), (x_a, x_v) in zip(seen, ((ra, rv), (fa, fv)), strict=True):
        clean_a, clean_v = snr_a == LOG_SNR_LIMIT, snr_v == LOG_SNR_LIMIT
        assert bool((clean_a ^ clean_v).all())  # exactly one side per pair
        assert 10 < int(clean_a.sum()) < 54  # both sides, about half each
        assert torch.equal(a[clean_a], x_a[clean_a]) and torch.equal(v[clean_v], x_v[clean_v])
        assert (a[~clean_a] != x_a[~clean_a]).all() and (v[~clean_v] != x_v[~clean_v]).all()


def test_clean_prob_zero_is_the_old_objective_and_dlsm_ignores_clean_rows() -> None:
    disc = TinyDisc()
    eps_a, eps_v = FrozenEps(3), FrozenEps(4)
    base = _loss(disc, eps_a, eps_v)
    same = _loss(disc, eps_a, eps_v, clean_prob=0.0)
    torch.testing.assert_close(same.total, base.total)
    # A perfect base model and a constant logit: every residual is zero, clean rows included.
    ra, rv, _, _ = _data()

    def constant(a, v, snr_a, snr_v, **cond):
        return 0.0 * (a.sum(1) + v.sum(1))

    out = _loss(constant, perfect(ra, SCHED_A), perfect(rv, SCHED_V), use_d=False, clean_prob=0.5)
    assert out.dlsm.item() < 1e-20
    with pytest.raises(ValueError, match=r"clean_prob: must be >= 0.0 and <= 1.0, got 1.5"):
        _loss(disc, eps_a, eps_v, clean_prob=1.5)
