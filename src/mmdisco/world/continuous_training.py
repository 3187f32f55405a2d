"""Training a network discriminator on the continuous world with L_D + L_DLSM.

The base models are the world's exact marginals (:mod:`mmdisco.world.continuous_sampling`),
so fake pairs are independent clips of the world and L_DLSM's base-model residual
``eps_theta - eps`` is exact: :func:`dlsm_bank` computes it once for a few noisings of every
real pair (the role of :mod:`mmdisco.training.bank` for real models). Noise levels are drawn
uniformly in log-SNR over the schedule's range, fresh for L_D at every step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mmdisco.training.losses import discriminator_loss
from mmdisco.world.continuous import ContinuousWorldConfig, generate_continuous_clips
from mmdisco.world.continuous_ratio import ContinuousWorldTerms, log_marginal

LOG_SNR_RANGE = (-7.0, 5.0)  # about t/T in [0.02, 0.98] of the cosine schedule


@dataclass(frozen=True)
class ContinuousTrainConfig:
    num_real: int = 2048
    num_fake: int = 2048
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    dlsm_weight: float = 1.0  # times the per-sample squared norm (sum over elements)
    dlsm_rows: int = 64
    bank_noisings: int = 2
    # > 0: L_D's fakes are all (audio, video) pairs of the fake batch within each of this many
    # groups (one log-SNR per group): (B / groups)^2 fake pairs per group instead of B / groups
    all_pairs_groups: int = 0
    log_snr_range: tuple[float, float] = LOG_SNR_RANGE
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DlsmBank:
    audio_t: Tensor
    video_t: Tensor
    log_snr: Tensor
    residual_audio: Tensor  # eps_theta - eps (exact base model)
    residual_video: Tensor


def _alpha_sigma(log_snr: Tensor) -> tuple[Tensor, Tensor]:
    return torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()


def _expand(x: Tensor, like: Tensor) -> Tensor:
    return x.reshape(-1, *[1] * (like.ndim - 1))


def exact_eps(terms: ContinuousWorldTerms, x: Tensor, log_snr: Tensor, modality: str) -> Tensor:
    """The ideal base model's noise prediction ``-sigma * grad log p_t(x)``."""
    xs = x.detach().double().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_marginal(terms, xs, log_snr, modality).sum(), xs)
    return (-_expand(_alpha_sigma(log_snr.double())[1], xs) * grad).float()


def dlsm_bank(
    terms: ContinuousWorldTerms, audio: Tensor, video: Tensor, cfg: ContinuousTrainConfig
) -> DlsmBank:
    """``cfg.bank_noisings`` noisings of every real pair with the exact residuals."""
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + 1)
    rows: dict[str, list[Tensor]] = {}
    for _ in range(cfg.bank_noisings):
        lo, hi = cfg.log_snr_range
        lam = lo + (hi - lo) * torch.rand(len(audio), generator=gen, dtype=torch.float64)
        alpha, sigma = _alpha_sigma(lam)
        for name, x0 in (("audio", audio), ("video", video)):
            eps = torch.randn(x0.shape, generator=gen)
            x_t = (_expand(alpha, x0) * x0.double() + _expand(sigma, x0) * eps.double()).float()
            pred = torch.cat(
                [
                    exact_eps(terms, x_t[i : i + 128], lam[i : i + 128], name)
                    for i in range(0, len(x_t), 128)
                ]
            )
            rows.setdefault(f"{name}_t", []).append(x_t)
            rows.setdefault(f"residual_{name}", []).append(pred - eps)
        rows.setdefault("log_snr", []).append(lam.float())
    return DlsmBank(**{k: torch.cat(v) for k, v in rows.items()})


def training_data(
    config: ContinuousWorldConfig, cfg: ContinuousTrainConfig
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Real pairs, and unpaired clips for the fakes (independent draws: ideal base models)."""
    real = generate_continuous_clips(cfg.num_real, 100_000 + cfg.seed, config)
    fake_a = generate_continuous_clips(cfg.num_fake, 200_000 + cfg.seed, config).audio
    fake_v = generate_continuous_clips(cfg.num_fake, 300_000 + cfg.seed, config).video
    return (real.audio, real.video), (fake_a, fake_v)


def _noise(x: Tensor, lam: Tensor, gen: torch.Generator) -> Tensor:
    alpha, sigma = _alpha_sigma(lam)
    return _expand(alpha, x) * x + _expand(sigma, x) * torch.randn(x.shape, generator=gen)


def _dlsm_term(model: nn.Module, bank: DlsmBank, index: Tensor) -> Tensor:
    a = bank.audio_t[index].requires_grad_(True)
    v = bank.video_t[index].requires_grad_(True)
    lam = bank.log_snr[index]
    h = model(a, v, lam, lam)
    ga, gv = torch.autograd.grad(h.sum(), (a, v), create_graph=True)
    sigma = _alpha_sigma(lam)[1]
    ra = bank.residual_audio[index] - _expand(sigma, a) * ga
    rv = bank.residual_video[index] - _expand(sigma, v) * gv
    return ra.pow(2).flatten(1).sum(1).mean() + rv.pow(2).flatten(1).sum(1).mean()


def _grouped_logits(
    model: nn.Module,
    real: tuple[Tensor, Tensor],
    fake: tuple[Tensor, Tensor],
    rows: tuple[Tensor, Tensor, Tensor],
    lam: Tensor,
    cfg: ContinuousTrainConfig,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Real logits (B,) and all-pairs fake logits, one log-SNR per group."""
    i, j, k = rows
    reals, fakes = [], []
    for g, idx in enumerate(torch.arange(len(i)).chunk(cfg.all_pairs_groups)):
        lam_g = lam[g].expand(len(idx))
        a, v = _noise(real[0][i[idx]], lam_g, gen), _noise(real[1][i[idx]], lam_g, gen)
        reals.append(model(a, v, lam_g, lam_g))
        fa, fv = _noise(fake[0][j[idx]], lam_g, gen), _noise(fake[1][k[idx]], lam_g, gen)
        fakes.append(model.cross_logits(fa, fv, lam[g]).flatten())
    return torch.cat(reals), torch.cat(fakes)


def train_continuous_discriminator(
    model: nn.Module,
    real: tuple[Tensor, Tensor],
    fake: tuple[Tensor, Tensor],
    bank: DlsmBank | None,
    cfg: ContinuousTrainConfig,
) -> list[dict[str, float]]:
    """Adam with a cosine decay on ``L_D + dlsm_weight * L_DLSM``; returns a loss log."""
    gen = torch.Generator().manual_seed(cfg.seed * 104729 + 3)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.steps))
    )
    lo, hi = cfg.log_snr_range
    log: list[dict[str, float]] = []
    for step in range(cfg.steps):
        i = torch.randint(len(real[0]), (cfg.batch_size,), generator=gen)
        j, k = (torch.randint(len(fake[0]), (cfg.batch_size,), generator=gen) for _ in range(2))
        lam = lo + (hi - lo) * torch.rand(2 * cfg.batch_size, generator=gen)
        lr_, lf = lam[: cfg.batch_size], lam[cfg.batch_size :]
        h_real = model(_noise(real[0][i], lr_, gen), _noise(real[1][i], lr_, gen), lr_, lr_)
        if cfg.all_pairs_groups > 0:
            h_real, h_fake = _grouped_logits(model, real, fake, (i, j, k), lam, cfg, gen)
        else:
            h_fake = model(_noise(fake[0][j], lf, gen), _noise(fake[1][k], lf, gen), lf, lf)
        loss_d = discriminator_loss(h_real, h_fake)
        loss = loss_d
        loss_dlsm = torch.zeros(())
        if bank is not None and cfg.dlsm_weight > 0:
            rows = torch.randint(len(bank.log_snr), (cfg.dlsm_rows,), generator=gen)
            loss_dlsm = _dlsm_term(model, bank, rows)
            loss = loss + cfg.dlsm_weight * loss_dlsm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            log.append({"step": step, "l_d": loss_d.item(), "l_dlsm": loss_dlsm.item()})
    return log
