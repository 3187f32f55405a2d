"""Training a network discriminator on the continuous world.

The base models are the world's exact marginals (:mod:`mmdisco.world.continuous_sampling`),
so fake pairs are independent clips of the world and L_DLSM's base-model residual
``eps_theta - eps`` is exact: :func:`dlsm_bank` computes it once for a few noisings of every
real pair (the role of :mod:`mmdisco.training.bank` for real models).

The batch is split into ``all_pairs_groups`` groups that each share one noise level, drawn
fresh at every step (uniform in log-SNR or in the schedule's time). Within a group the
objective is L_D over the real pairs and all (audio, video) pairs of the fake clips, or a
symmetric InfoNCE whose negatives are the fake clips (``info_nce_generated`` of
:mod:`mmdisco.training.contrastive`: MMDisCo's
ratio ``p(a, v) / (p_theta(a) p_theta(v))``) or the group's other real pairs (:func:`info_nce`:
the data's ``p(a, v) / (p(a) p(v))``, the same ratio only for ideal base models). Options:
an input-gradient penalty, L_DLSM from a given fraction of the steps, AdamW weight decay (on
layer weights only, :func:`weight_decay_groups`), an EMA of the weights, and fresh clips of
the world at every step instead of a fixed training set.

A second phase (``refine_steps``, :func:`refine_with_hard_negatives`) goes on from the trained
network with :func:`~mmdisco.training.contrastive.hard_negative_info_nce`: the negatives of
each real pair are drawn from a larger pool of candidates where a frozen copy of the network
confuses them with it, and the copy's logit is subtracted from the one being trained.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdisco.training.contrastive import (
    cross_blocks,
    hard_negative_info_nce,
    info_nce_generated,
)
from mmdisco.training.losses import discriminator_loss
from mmdisco.training.optim import weight_decay_groups
from mmdisco.world.continuous import ContinuousWorldConfig, generate_continuous_clips
from mmdisco.world.continuous_ratio import ContinuousWorldTerms, log_marginal

# Training's noise levels: about t/T in [0.07, 0.56] of the world's cosine schedule, where
# guidance decides agreement (benchmarks/results/guidance_window/). Against the whole range
# below, it raised agreement at scale 2 by 0.09-0.15 on the tuning seeds; extending it down to
# t/T = 0.02 gave half of that back (docs/training_the_discriminator.md, fourth round).
LOG_SNR_RANGE = (-0.4, 4.2)
FULL_LOG_SNR_RANGE = (-7.0, 5.0)  # about t/T in [0.02, 0.98]


@dataclass(frozen=True)
class ContinuousTrainConfig:
    num_real: int = 2048
    num_fake: int = 2048
    steps: int = 5000
    batch_size: int = 512
    lr: float = 1e-3
    dlsm_weight: float = 0.0  # times the per-sample squared norm (sum over elements)
    dlsm_rows: int = 64
    bank_noisings: int = 2
    # > 0: L_D's fakes are all (audio, video) pairs of the fake batch within each of this many
    # groups (one log-SNR per group): (B / groups)^2 fake pairs per group instead of B / groups;
    # 0: one fake pair per real pair, each pair at its own log-SNR (BCE only)
    all_pairs_groups: int = 8
    log_snr_range: tuple[float, float] = LOG_SNR_RANGE
    seed: int = 0
    # "bce": L_D (real vs fake pairs); "infonce": symmetric InfoNCE within each group (needs
    # all_pairs_groups > 0) with ``negatives``: "fake", the group's generated clips (learns
    # MMDisCo's ratio), or "real", the group's other real pairs (learns the data's; no fakes)
    objective: str = "infonce"
    negatives: str = "fake"
    fresh_data: bool = False  # fresh world clips every step instead of the training set
    weight_decay: float = 1.0  # AdamW's (decoupled: each step shrinks weights by lr * this)
    # False: only the weights of linear and convolution layers decay (weight_decay_groups);
    # True: every parameter does, the learnt code scales included (the recipe before round 5)
    decay_all_parameters: bool = False
    ema_decay: float = 0.0  # > 0: the trained model gets the EMA of its weights
    dlsm_start: float = 0.0  # fraction of the steps before L_DLSM is switched on
    # "log_snr": uniform in log-SNR over log_snr_range; "time": uniform in the cosine
    # schedule's time t/T between the same ends (the sampler's steps are uniform in time)
    noise_sampling: str = "time"
    grad_penalty: float = 0.0  # times sigma^2 |grad h|^2 of the real pairs (all-pairs groups)
    # > 0: after ``steps``, this many steps of hard_negative_info_nce against a frozen copy
    # (refine_with_hard_negatives): ``refine_groups`` noise levels per step, each with
    # ``refine_anchors`` real pairs whose ``refine_draws`` negatives are resampled from
    # ``refine_pool`` candidates (``negatives``: other real pairs, or fake clips)
    refine_steps: int = 0
    refine_lr: float = 3e-4
    refine_groups: int = 2
    refine_anchors: int = 32
    refine_pool: int = 224
    refine_draws: int = 31

    def __post_init__(self) -> None:
        if self.objective not in ("bce", "infonce"):
            raise ValueError(f"objective must be 'bce' or 'infonce', got {self.objective!r}")
        if self.negatives not in ("fake", "real"):
            raise ValueError(f"negatives must be 'fake' or 'real', got {self.negatives!r}")
        if self.noise_sampling not in ("log_snr", "time"):
            raise ValueError(
                f"noise_sampling must be 'log_snr' or 'time', got {self.noise_sampling!r}"
            )
        if self.objective == "infonce" and self.all_pairs_groups < 1:
            raise ValueError("objective 'infonce' needs all_pairs_groups >= 1")
        if self.grad_penalty > 0 and self.all_pairs_groups < 1:
            raise ValueError("grad_penalty needs all_pairs_groups >= 1")
        if self.refine_steps and self.objective != "infonce":
            raise ValueError("refine_steps needs objective 'infonce' (it refines its ratio)")
        if self.refine_steps < 0:
            raise ValueError(f"refine_steps must be >= 0, got {self.refine_steps}")
        for name in ("refine_groups", "refine_anchors", "refine_pool", "refine_draws"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive count, got {getattr(self, name)}")
        if self.all_pairs_groups > 0 and self.batch_size < 2 * self.all_pairs_groups:
            raise ValueError(
                f"batch_size {self.batch_size} leaves fewer than 2 pairs in each of "
                f"all_pairs_groups={self.all_pairs_groups} groups"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def before_refinement(self) -> ContinuousTrainConfig:
        """The settings of the first phase alone: every ``refine_*`` field at its default."""
        unset = {f.name: f.default for f in fields(self) if f.name.startswith("refine_")}
        return replace(self, **unset)


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


def cosine_time(log_snr: float) -> float:
    """The time ``t`` in [0, 1] of the cosine schedule at which it has this log-SNR
    (``log-SNR = -2 log tan(pi t / 2)``)."""
    return 2 / math.pi * math.atan(math.exp(-log_snr / 2))


def sample_log_snr(
    n: int, cfg: ContinuousTrainConfig, gen: torch.Generator, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``n`` noise levels over ``cfg.log_snr_range``, uniform in log-SNR or in time.

    The cosine schedule has ``log-SNR = -2 log tan(pi t / 2)`` at time ``t`` in [0, 1]."""
    u = torch.rand(n, generator=gen, dtype=dtype)
    lo, hi = cfg.log_snr_range
    if cfg.noise_sampling == "log_snr":
        return lo + (hi - lo) * u
    t_lo, t_hi = cosine_time(hi), cosine_time(lo)
    return -2 * torch.log(torch.tan(math.pi / 2 * (t_lo + (t_hi - t_lo) * u)))


def exact_eps(terms: ContinuousWorldTerms, x: Tensor, log_snr: Tensor, modality: str) -> Tensor:
    """The ideal base model's noise prediction ``-sigma * grad log p_t(x)``."""
    xs = x.detach().double().requires_grad_()
    (grad,) = torch.autograd.grad(log_marginal(terms, xs, log_snr, modality).sum(), xs)
    return (-_expand(_alpha_sigma(log_snr.double())[1], xs) * grad).float()


def dlsm_bank(
    terms: ContinuousWorldTerms, audio: Tensor, video: Tensor, cfg: ContinuousTrainConfig
) -> DlsmBank:
    """``cfg.bank_noisings`` noisings of every real pair with the exact residuals."""
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + 1)
    rows: dict[str, list[Tensor]] = {}
    for _ in range(cfg.bank_noisings):
        lam = sample_log_snr(len(audio), cfg, gen, torch.float64)
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
    a = bank.audio_t[index].requires_grad_()
    v = bank.video_t[index].requires_grad_()
    lam = bank.log_snr[index]
    h = model(a, v, lam, lam)
    ga, gv = torch.autograd.grad(h.sum(), (a, v), create_graph=True)
    sigma = _alpha_sigma(lam)[1]
    ra = bank.residual_audio[index] - _expand(sigma, a) * ga
    rv = bank.residual_video[index] - _expand(sigma, v) * gv
    return ra.pow(2).flatten(1).sum(1).mean() + rv.pow(2).flatten(1).sum(1).mean()


CleanBatch = tuple[Tensor, Tensor, Tensor, Tensor]  # real audio, real video, fake audio, fake video


def _clean_batch(
    data: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]],
    cfg: ContinuousTrainConfig,
    world: ContinuousWorldConfig | None,
    gen: torch.Generator,
) -> CleanBatch:
    """``batch_size`` real pairs and unpaired fake clips: from the training set, or fresh
    draws of the world (``cfg.fresh_data``; the seeds come from ``gen``)."""
    n = cfg.batch_size
    if cfg.fresh_data:
        if world is None:
            raise ValueError("fresh_data needs the world's config (world=...)")
        seeds = torch.randint(2**62, (3,), generator=gen).tolist()
        real = generate_continuous_clips(n, seeds[0], world)
        fake_a = generate_continuous_clips(n, seeds[1], world).audio
        fake_v = generate_continuous_clips(n, seeds[2], world).video
        return real.audio, real.video, fake_a, fake_v
    (real_a, real_v), (fake_a, fake_v) = data
    i = torch.randint(len(real_a), (n,), generator=gen)
    j, k = (torch.randint(len(fake_a), (n,), generator=gen) for _ in range(2))
    return real_a[i], real_v[i], fake_a[j], fake_v[k]


def info_nce(logits: Tensor) -> Tensor:
    """Symmetric InfoNCE of a ``(B, B)`` matrix ``h(a_i, v_j)`` whose diagonal holds the real
    pairs: cross-entropy of each audio over the B videos and of each video over the B audios.
    Its optimum is ``log r`` plus a constant per row for the first term and per column for the
    second; the sum pins both, so ``h = log r + const`` and the input-gradient is ``grad log r``."""
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _group_loss(
    model: nn.Module,
    clean: CleanBatch,
    lam: Tensor,
    cfg: ContinuousTrainConfig,
    gen: torch.Generator,
) -> Tensor:
    """L_D of one group sharing the log-SNR ``lam`` (0-d), plus ``cfg.grad_penalty`` times the
    mean squared input-gradient of the real pairs' logits in epsilon units."""
    real_a, real_v, fake_a, fake_v = clean
    lam_b = lam.expand(len(real_a))
    a, v = _noise(real_a, lam_b, gen), _noise(real_v, lam_b, gen)
    if cfg.grad_penalty > 0:
        a, v = a.requires_grad_(), v.requires_grad_()
    if cfg.objective == "infonce" and cfg.negatives == "real":
        logits = model.cross_logits(a, v, lam)
        loss, h_real = info_nce(logits), logits.diagonal()
    elif cfg.objective == "infonce":
        lam_f = lam.expand(len(fake_a))
        fa, fv = _noise(fake_a, lam_f, gen), _noise(fake_v, lam_f, gen)
        logits = model.cross_logits(torch.cat([a, fa]), torch.cat([v, fv]), lam)
        n = len(a)
        loss, h_real = info_nce_generated(*cross_blocks(logits, n)), logits[:n, :n].diagonal()
    else:
        h_real = model(a, v, lam_b, lam_b)
        fa, fv = _noise(fake_a, lam_b, gen), _noise(fake_v, lam_b, gen)
        loss = discriminator_loss(h_real, model.cross_logits(fa, fv, lam).flatten())
    if cfg.grad_penalty > 0:
        grads = torch.autograd.grad(h_real.sum(), (a, v), create_graph=True)
        sigma2 = torch.sigmoid(-lam)
        norms = sum(g.pow(2).flatten(1).sum(1) for g in grads)
        loss = loss + cfg.grad_penalty * sigma2 * norms.mean()
    return loss


def _loss_d(
    model: nn.Module, clean: CleanBatch, cfg: ContinuousTrainConfig, gen: torch.Generator
) -> Tensor:
    """L_D of a batch: per-pair fakes at per-pair log-SNRs, or the mean over
    ``all_pairs_groups`` groups that each share one log-SNR (all-pairs fakes, or InfoNCE)."""
    if cfg.all_pairs_groups == 0:
        lam = sample_log_snr(2 * cfg.batch_size, cfg, gen).reshape(2, cfg.batch_size)
        real_a, real_v, fake_a, fake_v = clean
        h_real = model(_noise(real_a, lam[0], gen), _noise(real_v, lam[0], gen), lam[0], lam[0])
        h_fake = model(_noise(fake_a, lam[1], gen), _noise(fake_v, lam[1], gen), lam[1], lam[1])
        return discriminator_loss(h_real, h_fake)
    lam = sample_log_snr(cfg.all_pairs_groups, cfg, gen)
    groups = zip(*(x.chunk(cfg.all_pairs_groups) for x in clean), strict=True)
    losses = [_group_loss(model, part, lam[g], cfg, gen) for g, part in enumerate(groups)]
    return torch.stack(losses).mean()


def ema_update(average: list[Tensor], params: list[Tensor], decay: float) -> None:
    """``average <- decay * average + (1 - decay) * params``, in place."""
    with torch.no_grad():
        for avg, p in zip(average, params, strict=True):
            avg.lerp_(p.detach(), 1.0 - decay)


def train_continuous_discriminator(
    model: nn.Module,
    real: tuple[Tensor, Tensor],
    fake: tuple[Tensor, Tensor],
    bank: DlsmBank | None,
    cfg: ContinuousTrainConfig,
    world: ContinuousWorldConfig | None = None,
) -> list[dict[str, float]]:
    """AdamW with a cosine decay on ``L_D + dlsm_weight * L_DLSM`` (L_DLSM from step
    ``dlsm_start * steps``); the model ends with the EMA of its weights when
    ``cfg.ema_decay > 0``, then ``cfg.refine_steps`` of :func:`refine_with_hard_negatives`.
    Returns a loss log."""
    gen = torch.Generator().manual_seed(cfg.seed * 104729 + 3)
    params = list(model.parameters())
    opt, sched = _cosine_adamw(model, cfg, cfg.lr, cfg.steps)
    average = [p.detach().clone() for p in params] if cfg.ema_decay > 0 else None
    log: list[dict[str, float]] = []
    for step in range(cfg.steps):
        loss_d = _loss_d(model, _clean_batch((real, fake), cfg, world, gen), cfg, gen)
        loss, loss_dlsm = loss_d, torch.zeros(())
        if bank is not None and cfg.dlsm_weight > 0 and step >= cfg.dlsm_start * cfg.steps:
            rows = torch.randint(len(bank.log_snr), (cfg.dlsm_rows,), generator=gen)
            loss_dlsm = _dlsm_term(model, bank, rows)
            loss = loss + cfg.dlsm_weight * loss_dlsm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if average is not None:
            ema_update(average, params, cfg.ema_decay)
        if step % 50 == 0 or step == cfg.steps - 1:
            log.append({"step": step, "l_d": loss_d.item(), "l_dlsm": loss_dlsm.item()})
    if average is not None:
        with torch.no_grad():
            for p, avg in zip(params, average, strict=True):
                p.copy_(avg)
    if cfg.refine_steps:
        log += refine_with_hard_negatives(model, real, fake, cfg)
    return log


def _cosine_adamw(
    model: nn.Module, cfg: ContinuousTrainConfig, lr: float, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    groups = weight_decay_groups(model, cfg.weight_decay, cfg.decay_all_parameters)
    opt = torch.optim.AdamW(groups, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    return opt, sched


def refine_with_hard_negatives(
    model: nn.Module,
    real: tuple[Tensor, Tensor],
    fake: tuple[Tensor, Tensor],
    cfg: ContinuousTrainConfig,
) -> list[dict[str, float]]:
    """``cfg.refine_steps`` steps of :func:`hard_negative_info_nce` with a frozen copy of
    ``model`` as the reference (AdamW at ``cfg.refine_lr`` with a cosine decay). Each step
    draws ``cfg.refine_groups`` noise levels; each group noises ``refine_anchors`` real pairs
    and ``refine_pool`` candidates (the other real pairs' clips, or fake clips when
    ``cfg.negatives == "fake"``) and scores every pair with ``model.cross_logits``. The copy
    stays frozen, so the optimum is still ``log r + const`` (see the loss). Returns a loss log."""
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(cfg.seed * 7907 + 11)
    opt, sched = _cosine_adamw(model, cfg, cfg.refine_lr, cfg.refine_steps)
    (real_a, real_v), (fake_a, fake_v) = real, fake
    n, pool = cfg.refine_anchors, cfg.refine_pool
    if cfg.negatives == "real" and n + pool > len(real_a):
        raise ValueError(
            f"refine_anchors + refine_pool = {n} + {pool} real pairs, but there are {len(real_a)}"
        )
    if cfg.negatives == "fake" and (n > len(real_a) or pool > len(fake_a)):
        raise ValueError(
            f"refine_anchors {n} and refine_pool {pool} need as many real pairs and fake "
            f"clips; there are {len(real_a)} and {len(fake_a)}"
        )
    log: list[dict[str, float]] = []
    for step in range(cfg.refine_steps):
        losses = []
        for lam in sample_log_snr(cfg.refine_groups, cfg, gen):
            if cfg.negatives == "real":
                rows = torch.randperm(len(real_a), generator=gen)[: n + pool]
                clean_a, clean_v = real_a[rows], real_v[rows]
            else:
                rows = torch.randperm(len(real_a), generator=gen)[:n]
                pa, pv = (torch.randperm(len(fake_a), generator=gen)[:pool] for _ in range(2))
                clean_a = torch.cat([real_a[rows], fake_a[pa]])
                clean_v = torch.cat([real_v[rows], fake_v[pv]])
            lam_b = lam.expand(len(clean_a))
            a, v = _noise(clean_a, lam_b, gen), _noise(clean_v, lam_b, gen)
            with torch.no_grad():
                ref = reference.cross_logits(a, v, lam)
            logits = model.cross_logits(a, v, lam)
            blocks, ref_blocks = cross_blocks(logits, n), cross_blocks(ref, n)
            losses.append(hard_negative_info_nce(blocks, ref_blocks, cfg.refine_draws, gen))
        loss = torch.stack(losses).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.refine_steps - 1:
            log.append({"refine_step": step, "l_refine": loss.item()})
    return log
