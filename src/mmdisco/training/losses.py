"""MMDisCo's training objective: L = L_D + dlsm_weight * L_DLSM (docs/method.md, eqs. 9-15).

Normalisation (it sets the balance between the terms):

* ``L_D`` is the binary cross-entropy per *sample*, averaged over the real and over the fake
  batch and summed: ``mean(softplus(-h_real)) + mean(softplus(h_fake))``.
* ``L_DLSM`` is the squared residual per *element*: for each modality the mean over all
  elements and samples of ``(eps_theta - sigma * grad h - eps)^2``; the two modalities are
  summed. A perfect base model and a zero gradient give ``L_DLSM = 0``; a base model that
  predicts zeros gives about 1 per modality.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmdisco.diffusion import LOG_SNR_LIMIT, NoiseSchedule, _broadcast, to_epsilon
from mmdisco.errors import check_float
from mmdisco.guidance import DiscriminatorFn, discriminator_gradients
from mmdisco.training.contrastive import (
    check_groups,
    contrastive_term,
    group_fractions,
    refinement_term,
)

if TYPE_CHECKING:
    from mmdisco.base_models.base import BaseModel

EpsFn = Callable[[Tensor, Tensor], Tensor]
"""A frozen base model in epsilon form: ``eps_fn(x_t, t) -> eps`` (conditioning closed over)."""


def epsilon_fn(model: BaseModel, cond: Any = None) -> EpsFn:
    """A frozen base model as ``eps(x_t, t)``, whatever its parameterisation."""
    schedule, ptype = model.schedule, model.prediction_type

    def eps(x_t: Tensor, t: Tensor) -> Tensor:
        out = model.predict(x_t, t, cond)
        if ptype == "epsilon":
            return out
        alpha, sigma = schedule.alpha_sigma(t)
        return to_epsilon(out, x_t, alpha.to(x_t.device), sigma.to(x_t.device), ptype)

    return eps


@dataclass
class BankRows:
    """A batch of noise-bank rows, real pairs and noise included
    (see :meth:`mmdisco.training.bank.NoiseBank.rows`)."""

    audio: Tensor
    video: Tensor
    t_audio: Tensor
    t_video: Tensor
    noise_audio: Tensor
    noise_video: Tensor
    residual_audio: Tensor
    residual_video: Tensor
    cond: dict[str, Tensor]  # the real pairs' discriminator inputs (e.g. text embeddings)


@dataclass(frozen=True)
class LossConfig:
    """What the objective computes and how it draws noise (see :func:`mmdisco_loss`)."""

    dlsm_weight: float = 1.0
    use_d: bool = True
    use_dlsm: bool = True
    # One noise level per pair, shared by both modalities (as in the paper).
    shared_timesteps: bool = True
    # Fractions of the schedule (1 = pure noise) the noise levels are drawn from.
    noise_range: tuple[float, float] = (0.0, 1.0)
    # Fraction of pairs with one modality held clean (log-SNR at the clip).
    clean_prob: float = 0.0
    # L_D's form: "bce", real pairs against fake pairs; "infonce", each real pair against the
    # fake clips of its group of ``group_size`` (mmdisco.training.contrastive)
    objective: str = "bce"
    group_size: int = 32

    def __post_init__(self) -> None:
        if not (self.use_d or self.use_dlsm):
            raise ValueError("at least one of use_d and use_dlsm must be set")
        if self.objective not in ("bce", "infonce"):
            raise ValueError(f"objective must be 'bce' or 'infonce', got {self.objective!r}")
        if self.objective == "infonce" and self.clean_prob > 0:
            raise ValueError("objective 'infonce' does not hold modalities clean (clean_prob 0)")
        lo, hi = self.noise_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(
                f"noise_range must satisfy 0 <= low < high <= 1, got {self.noise_range}"
            )
        check_float("clean_prob", self.clean_prob, 0.0, 1.0)

    @classmethod
    def of(cls, settings: Any) -> LossConfig:
        """The loss fields of ``settings`` (a
        :class:`~mmdisco.training.trainer.TrainConfig`, say)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


def discriminator_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Numerically stable BCE: real pairs labelled 1, fake pairs labelled 0."""
    return F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()


def dlsm_loss(
    grad_audio: Tensor,
    grad_video: Tensor,
    eps_pred_audio: Tensor,
    eps_pred_video: Tensor,
    noise_audio: Tensor,
    noise_video: Tensor,
    sigma_audio: Tensor,
    sigma_video: Tensor,
) -> Tensor:
    """Denoising regularisation: the guided prediction ``eps_theta - sigma grad h`` must denoise."""
    residual_audio = eps_pred_audio - _broadcast(sigma_audio, grad_audio) * grad_audio - noise_audio
    residual_video = eps_pred_video - _broadcast(sigma_video, grad_video) * grad_video - noise_video
    return residual_audio.pow(2).mean() + residual_video.pow(2).mean()


@dataclass
class LossOutput:
    total: Tensor
    d: Tensor
    dlsm: Tensor
    logits_real: Tensor
    logits_fake: Tensor
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Fraction of pairs the discriminator classifies correctly (threshold logit 0); for
        the contrastive objective, whose ``logits_real`` are top-1 margins, the fraction of
        rows whose real pair beats every negative."""
        correct = (self.logits_real > 0).float().sum() + (self.logits_fake <= 0).float().sum()
        return (correct / (len(self.logits_real) + len(self.logits_fake))).item()


def _noise(
    x0: Tensor, schedule: NoiseSchedule, u: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    t = schedule.timesteps_from_fraction(u)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return schedule.add_noise(x0, noise, t), noise, t


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    """A per-sample boolean mask ``(B,)`` shaped to broadcast against ``like`` ``(B, ...)``."""
    return mask.reshape(-1, *([1] * (like.ndim - 1)))


def _hold_clean(
    x0: Tensor, x_t: Tensor, log_snr: Tensor, clean: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``x_t`` and its log-SNR with the ``clean`` rows replaced by ``x0`` at the clip."""
    if clean is None:
        return x_t, log_snr
    x_t = torch.where(_rows(clean, x_t), x0, x_t)
    return x_t, torch.where(clean, torch.full_like(log_snr, LOG_SNR_LIMIT), log_snr)


def _zero_residual(
    pred: Tensor, noise: Tensor, sigma: Tensor, clean: Tensor
) -> tuple[Tensor, Tensor]:
    """Base prediction and sigma for which a clean row's L_DLSM residual is exactly zero."""
    return torch.where(_rows(clean, pred), noise, pred), torch.where(clean, 0.0, sigma)


@dataclass
class NoisedPairs:
    """A batch of pairs after :func:`noise_pairs`: the discriminator's inputs, and what
    L_DLSM needs (noise, timesteps, which rows are held clean)."""

    audio: Tensor
    video: Tensor
    log_snr_audio: Tensor
    log_snr_video: Tensor
    noise_audio: Tensor
    noise_video: Tensor
    t_audio: Tensor
    t_video: Tensor
    clean_audio: Tensor | None
    clean_video: Tensor | None


def _inputs(pairs: NoisedPairs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The discriminator's positional inputs: noised audio and video, their log-SNRs."""
    return pairs.audio, pairs.video, pairs.log_snr_audio, pairs.log_snr_video


def noise_pairs(
    audio: Tensor,
    video: Tensor,
    schedule_audio: NoiseSchedule,
    schedule_video: NoiseSchedule,
    config: LossConfig,
    generator: torch.Generator | None,
    fractions: tuple[Tensor, Tensor] | None = None,
) -> NoisedPairs:
    """Noise a batch of pairs as the objective does: noise levels uniform on
    ``config.noise_range`` (one per pair with ``shared_timesteps``), or the given
    ``fractions`` of the schedules (audio, video; ``(n,)`` each), independent noise per
    modality, and with ``clean_prob`` one modality of a pair held clean."""
    n, device = audio.shape[0], audio.device
    lo, hi = config.noise_range

    def draw_fractions() -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)

    if fractions is None:
        u_a = draw_fractions()
        u_v = u_a if config.shared_timesteps else draw_fractions()
    else:
        u_a, u_v = fractions
    a_t, noise_a, t_a = _noise(audio, schedule_audio, u_a, generator)
    v_t, noise_v, t_v = _noise(video, schedule_video, u_v, generator)
    snr_a, snr_v = schedule_audio.log_snr(t_a).to(device), schedule_video.log_snr(t_v).to(device)
    clean_a = clean_v = None
    if config.clean_prob > 0.0:  # audio or video held clean, with equal odds
        held = torch.rand(n, generator=generator, device=device) < config.clean_prob
        audio_side = torch.rand(n, generator=generator, device=device) < 0.5
        clean_a, clean_v = held & audio_side, held & ~audio_side
    a_t, snr_a = _hold_clean(audio, a_t, snr_a, clean_a)
    v_t, snr_v = _hold_clean(video, v_t, snr_v, clean_v)
    return NoisedPairs(a_t, v_t, snr_a, snr_v, noise_a, noise_v, t_a, t_v, clean_a, clean_v)


def _bank_dlsm(
    disc: DiscriminatorFn,
    bank: BankRows,
    schedule_audio: NoiseSchedule,
    schedule_video: NoiseSchedule,
) -> Tensor:
    """L_DLSM on bank rows: ``residual - sigma grad h``, with ``residual = eps_theta - eps``."""
    device = bank.audio.device
    a_t = schedule_audio.add_noise(bank.audio, bank.noise_audio, bank.t_audio)
    v_t = schedule_video.add_noise(bank.video, bank.noise_video, bank.t_video)
    snr_a = schedule_audio.log_snr(bank.t_audio).to(device)
    snr_v = schedule_video.log_snr(bank.t_video).to(device)
    out = discriminator_gradients(disc, a_t, v_t, snr_a, snr_v, create_graph=True, **bank.cond)
    sigma_a = schedule_audio.alpha_sigma(bank.t_audio)[1].to(device)
    sigma_v = schedule_video.alpha_sigma(bank.t_video)[1].to(device)
    return dlsm_loss(
        out.grad_audio,
        out.grad_video,
        bank.residual_audio,
        bank.residual_video,
        noise_audio=torch.zeros_like(bank.residual_audio),
        noise_video=torch.zeros_like(bank.residual_video),
        sigma_audio=sigma_a,
        sigma_video=sigma_v,
    )


def _live_dlsm(
    disc: DiscriminatorFn,
    real: NoisedPairs,
    schedules: tuple[NoiseSchedule, NoiseSchedule],
    eps_fns: tuple[EpsFn, EpsFn],
    cond: Mapping[str, Any],
) -> tuple[Tensor, Tensor]:
    """L_DLSM on freshly noised real pairs (calling the base models: ``eps_fns``, audio and
    video), and the real pairs' logits."""
    (schedule_audio, schedule_video), (eps_audio, eps_video) = schedules, eps_fns
    out = discriminator_gradients(disc, *_inputs(real), create_graph=True, **cond)
    with torch.no_grad():
        pred_a, pred_v = eps_audio(real.audio, real.t_audio), eps_video(real.video, real.t_video)
    device = real.audio.device
    sigma_a = schedule_audio.alpha_sigma(real.t_audio)[1].to(device)
    sigma_v = schedule_video.alpha_sigma(real.t_video)[1].to(device)
    if real.clean_audio is not None and real.clean_video is not None:  # zero residual
        pred_a, sigma_a = _zero_residual(pred_a, real.noise_audio, sigma_a, real.clean_audio)
        pred_v, sigma_v = _zero_residual(pred_v, real.noise_video, sigma_v, real.clean_video)
    l_dlsm = dlsm_loss(
        out.grad_audio,
        out.grad_video,
        pred_a,
        pred_v,
        real.noise_audio,
        real.noise_video,
        sigma_audio=sigma_a,
        sigma_video=sigma_v,
    )
    return l_dlsm, out.logits


def _check_inputs(
    config: LossConfig,
    bank: BankRows | None,
    eps: tuple[EpsFn | None, EpsFn | None],
    real: tuple[Tensor, Tensor],
    fake: tuple[Tensor, Tensor],
) -> None:
    if bank is not None and config.clean_prob > 0:
        raise ValueError("clean_prob > 0 needs L_DLSM computed live, not from a bank")
    if config.use_dlsm and bank is None and None in eps:
        raise ValueError("L_DLSM needs the base models: pass eps_audio and eps_video")
    for name, (a, v) in (("real", real), ("fake", fake)):
        if a.shape[0] != v.shape[0]:
            raise ValueError(
                f"{name} audio and video batch sizes differ: {a.shape[0]} vs {v.shape[0]}"
            )


def _group_fractions(
    config: LossConfig, real: Tensor, fake: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor] | None:
    """The contrastive objective's noise fractions, constant within each group; None (one
    level per pair) for binary cross-entropy."""
    if config.objective != "infonce":
        return None
    n_real, n_fake = real.shape[0], fake.shape[0]
    check_groups(n_real, config.group_size, "a micro-batch")
    if n_fake != n_real:
        raise ValueError(
            f"objective 'infonce' pairs each group's real pairs with as many fakes: "
            f"{n_real} real vs {n_fake} fake"
        )
    return group_fractions(
        n_real,
        config.group_size,
        config.noise_range,
        config.shared_timesteps,
        generator,
        real.device,
    )


def mmdisco_loss(
    disc: DiscriminatorFn,
    real_audio: Tensor,
    real_video: Tensor,
    fake_audio: Tensor,
    fake_video: Tensor,
    schedule_audio: NoiseSchedule,
    schedule_video: NoiseSchedule,
    config: LossConfig = LossConfig(),
    *,
    eps_audio: EpsFn | None = None,
    eps_video: EpsFn | None = None,
    cond_real: Mapping[str, Any] | None = None,
    cond_fake: Mapping[str, Any] | None = None,
    bank: BankRows | None = None,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """One evaluation of the MMDisCo objective on a batch of real and of fake pairs.

    ``config.objective="infonce"`` replaces L_D's binary cross-entropy by the contrastive
    term of :mod:`mmdisco.training.contrastive`: the batch is cut into groups of
    ``config.group_size`` consecutive real pairs and as many fake clips, each group at one
    noise level; ``logits_real`` then holds every row's top-1 margin (own logit minus best
    negative) and ``logits_fake`` is empty, so that :attr:`LossOutput.accuracy` is the
    fraction of rows whose real pair wins.

    Real and fake pairs are noised alike (:func:`noise_pairs`): one noise level per pair
    shared by both modalities (``config.shared_timesteps``, as in the paper), mapped onto
    each modality's own schedule, independent noise, noise levels uniform on
    ``config.noise_range`` (fractions of the schedule, 1 = pure noise), e.g. to match a
    guidance window.

    ``config.clean_prob``: the fraction of pairs (real and fake alike) in which one
    modality, audio or video with equal odds, is held clean: not noised, and told log-SNR
    ``+LOG_SNR_LIMIT``, as a given clip is in conditional generation
    (``Stream(given="clean")``). Its L_DLSM residual is zero (there is no noise to predict);
    the other modality's residual then asks for the conditional score
    ``grad log p(x_t | given)``. ``eps_audio`` / ``eps_video`` are the frozen base models
    in epsilon form; they are called under ``torch.no_grad()`` and are needed only when
    ``config.use_dlsm`` without a bank.

    ``bank``: noised real pairs with the base models' residuals precomputed
    (:mod:`mmdisco.training.bank`); L_DLSM is then computed on them and calls no base model,
    while L_D's real pairs get fresh noise (a discriminator shown the bank's few fixed
    noisings as its real class memorises them).
    """
    pairs = ((real_audio, real_video), (fake_audio, fake_video))
    _check_inputs(config, bank, (eps_audio, eps_video), *pairs)
    schedules = (schedule_audio, schedule_video)
    cond_real = dict(cond_real or {})
    fractions = _group_fractions(config, real_audio, fake_audio, generator)
    real = noise_pairs(real_audio, real_video, *schedules, config, generator, fractions)
    zero = real_audio.new_zeros(())
    contrastive = config.use_d and config.objective == "infonce"
    if config.use_dlsm and bank is None:
        assert eps_audio is not None and eps_video is not None
        l_dlsm, logits_real = _live_dlsm(disc, real, schedules, (eps_audio, eps_video), cond_real)
    else:
        l_dlsm = (
            _bank_dlsm(disc, bank, *schedules) if bank is not None and config.use_dlsm else zero
        )
        logits_real = zero.new_zeros(0) if contrastive else disc(*_inputs(real), **cond_real)
    if contrastive:
        fake = noise_pairs(fake_audio, fake_video, *schedules, config, generator, fractions)
        pairs = ((real.audio, real.video), (fake.audio, fake.video))
        snr = (real.log_snr_audio, real.log_snr_video)
        l_d, logits_real = contrastive_term(disc, *pairs, snr, config.group_size, cond_real)
        logits_fake = logits_real.new_zeros(0)
    elif config.use_d:
        fake = noise_pairs(fake_audio, fake_video, *schedules, config, generator)
        logits_fake = disc(*_inputs(fake), **dict(cond_fake or {}))
        l_d = discriminator_loss(logits_real, logits_fake)
    else:
        logits_fake, l_d = real_audio.new_zeros(0), zero
    total = l_d + config.dlsm_weight * l_dlsm
    return LossOutput(
        total, l_d.detach(), l_dlsm.detach(), logits_real.detach(), logits_fake.detach()
    )


def refinement_loss(
    disc: DiscriminatorFn,
    reference: DiscriminatorFn,
    real_audio: Tensor,
    real_video: Tensor,
    candidate_audio: Tensor,
    candidate_video: Tensor,
    schedule_audio: NoiseSchedule,
    schedule_video: NoiseSchedule,
    config: LossConfig,
    negatives: int,
    *,
    cond_real: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """The refinement phase's objective (:func:`~mmdisco.training.contrastive.refinement_term`):
    groups of ``config.group_size`` real pairs, each with an equal share of the candidate
    clips, noised alike at one level per group (drawn as :func:`mmdisco_loss` draws them);
    each real clip's ``negatives`` are resampled among its group's candidates where the frozen
    ``reference`` confuses them with it. ``logits_real`` holds every row's top-1 margin
    against all its group's candidates, as for the contrastive objective."""
    n = real_audio.shape[0]
    check_groups(n, config.group_size, "a micro-batch")
    groups = n // config.group_size
    if candidate_audio.shape[0] % groups or candidate_audio.shape[0] != candidate_video.shape[0]:
        raise ValueError(
            f"{candidate_audio.shape[0]} candidate audio and {candidate_video.shape[0]} video "
            f"clips do not split evenly over {groups} groups"
        )
    pool = candidate_audio.shape[0] // groups
    schedules = (schedule_audio, schedule_video)
    per_real = group_fractions(
        n,
        config.group_size,
        config.noise_range,
        config.shared_timesteps,
        generator,
        real_audio.device,
    )
    per_candidate = tuple(u[:: config.group_size].repeat_interleave(pool) for u in per_real)
    real = noise_pairs(real_audio, real_video, *schedules, config, generator, per_real)
    cands = noise_pairs(
        candidate_audio, candidate_video, *schedules, config, generator, per_candidate
    )
    l_d, margins = refinement_term(
        disc,
        reference,
        (real.audio, real.video),
        (cands.audio, cands.video),
        (real.log_snr_audio, real.log_snr_video),
        config.group_size,
        negatives,
        dict(cond_real or {}),
        generator,
    )
    zero = l_d.new_zeros(())
    return LossOutput(l_d, l_d.detach(), zero, margins, margins.new_zeros(0))
