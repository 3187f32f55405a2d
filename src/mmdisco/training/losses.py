"""MMDisCo's training objective: L = L_D + dlsm_weight * L_DLSM (METHOD.md, eqs. 9-15).

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmdisco.diffusion import LOG_SNR_LIMIT, NoiseSchedule, _broadcast
from mmdisco.errors import check_float
from mmdisco.guidance import DiscriminatorFn, discriminator_gradients

if TYPE_CHECKING:
    from mmdisco.training.bank import BankRows

EpsFn = Callable[[Tensor, Tensor], Tensor]
"""A frozen base model in epsilon form: ``eps_fn(x_t, t) -> eps`` (conditioning closed over)."""


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
        """Fraction of pairs the discriminator classifies correctly (threshold logit 0)."""
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
    zeros_a, zeros_v = torch.zeros_like(bank.residual_audio), torch.zeros_like(bank.residual_video)
    return dlsm_loss(
        out.grad_audio, out.grad_video, bank.residual_audio, bank.residual_video,
        zeros_a, zeros_v, sigma_a, sigma_v,
    )  # fmt: skip


def mmdisco_loss(
    disc: DiscriminatorFn,
    real_audio: Tensor,
    real_video: Tensor,
    fake_audio: Tensor,
    fake_video: Tensor,
    schedule_audio: NoiseSchedule,
    schedule_video: NoiseSchedule,
    *,
    eps_audio: EpsFn | None = None,
    eps_video: EpsFn | None = None,
    dlsm_weight: float = 1.0,
    use_d: bool = True,
    use_dlsm: bool = True,
    shared_timesteps: bool = True,
    noise_range: tuple[float, float] = (0.0, 1.0),
    clean_prob: float = 0.0,
    cond_real: Mapping[str, Any] | None = None,
    cond_fake: Mapping[str, Any] | None = None,
    bank: BankRows | None = None,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """One evaluation of the MMDisCo objective on a batch of real and of fake pairs.

    Each pair gets one noise level shared by both modalities (``shared_timesteps``, as in
    the paper), mapped onto each modality's own schedule, and independent noise. Noise
    levels are drawn uniformly from ``noise_range``, a sub-range of [0, 1] (fractions of the
    schedule, 1 = pure noise), e.g. to match a guidance window.

    ``clean_prob``: the fraction of pairs (real and fake alike) in which one modality, audio
    or video with equal odds, is held clean: not noised, and told log-SNR ``+LOG_SNR_LIMIT``,
    as a given clip is in conditional generation (``Stream(given="clean")``). Its L_DLSM
    residual is zero (there is no noise to predict); the other modality's residual then asks
    for the conditional score ``grad log p(x_t | given)``.
    ``eps_audio`` / ``eps_video`` are the frozen base models in epsilon form; they are
    called under ``torch.no_grad()`` and are needed only when ``use_dlsm`` without a bank.

    ``bank``: noised real pairs with the base models' residuals precomputed
    (:mod:`mmdisco.training.bank`); L_DLSM is then computed on them and calls no base model,
    while L_D's real pairs get fresh noise (a discriminator shown the bank's few fixed
    noisings as its real class memorises them).
    """
    if not (use_d or use_dlsm):
        raise ValueError("at least one of use_d and use_dlsm must be set")
    lo, hi = noise_range
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"noise_range must satisfy 0 <= low < high <= 1, got {noise_range}")
    check_float("clean_prob", clean_prob, 0.0, 1.0)
    if bank is not None and clean_prob > 0:
        raise ValueError("clean_prob > 0 needs L_DLSM computed live, not from a bank")
    if use_dlsm and bank is None and (eps_audio is None or eps_video is None):
        raise ValueError("L_DLSM needs the base models: pass eps_audio and eps_video")
    for name, a, v in (("real", real_audio, real_video), ("fake", fake_audio, fake_video)):
        if a.shape[0] != v.shape[0]:
            raise ValueError(
                f"{name} audio and video batch sizes differ: {a.shape[0]} vs {v.shape[0]}"
            )
    device = real_audio.device

    def fractions(n: int) -> tuple[Tensor, Tensor]:
        def draw() -> Tensor:
            return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)

        u_a = draw()
        return u_a, (u_a if shared_timesteps else draw())

    def held_clean(n: int) -> tuple[Tensor | None, Tensor | None]:
        """Which pairs hold their audio / their video clean (None: no clean draws at all)."""
        if clean_prob == 0.0:
            return None, None
        held = torch.rand(n, generator=generator, device=device) < clean_prob
        audio_side = torch.rand(n, generator=generator, device=device) < 0.5
        return held & audio_side, held & ~audio_side

    u_a, u_v = fractions(real_audio.shape[0])
    a_t, noise_a, t_a = _noise(real_audio, schedule_audio, u_a, generator)
    v_t, noise_v, t_v = _noise(real_video, schedule_video, u_v, generator)
    cond_real = dict(cond_real or {})
    snr_a, snr_v = schedule_audio.log_snr(t_a).to(device), schedule_video.log_snr(t_v).to(device)
    clean_a, clean_v = held_clean(real_audio.shape[0])
    a_t, snr_a = _hold_clean(real_audio, a_t, snr_a, clean_a)
    v_t, snr_v = _hold_clean(real_video, v_t, snr_v, clean_v)

    zero = real_audio.new_zeros(())
    if use_dlsm and bank is not None:
        l_dlsm = _bank_dlsm(disc, bank, schedule_audio, schedule_video)
        logits_real = disc(a_t, v_t, snr_a, snr_v, **cond_real)
    elif use_dlsm:
        out = discriminator_gradients(disc, a_t, v_t, snr_a, snr_v, create_graph=True, **cond_real)
        logits_real = out.logits
        with torch.no_grad():
            pred_a, pred_v = eps_audio(a_t, t_a), eps_video(v_t, t_v)  # type: ignore[misc]
        sigma_a = schedule_audio.alpha_sigma(t_a)[1].to(device)
        sigma_v = schedule_video.alpha_sigma(t_v)[1].to(device)
        if clean_a is not None and clean_v is not None:  # a clean modality: zero residual
            pred_a, sigma_a = _zero_residual(pred_a, noise_a, sigma_a, clean_a)
            pred_v, sigma_v = _zero_residual(pred_v, noise_v, sigma_v, clean_v)
        l_dlsm = dlsm_loss(
            out.grad_audio, out.grad_video, pred_a, pred_v, noise_a, noise_v, sigma_a, sigma_v
        )
    else:
        logits_real = disc(a_t, v_t, snr_a, snr_v, **cond_real)
        l_dlsm = zero

    if use_d:
        u_a, u_v = fractions(fake_audio.shape[0])
        fa_t, _, ft_a = _noise(fake_audio, schedule_audio, u_a, generator)
        fv_t, _, ft_v = _noise(fake_video, schedule_video, u_v, generator)
        snr_fa = schedule_audio.log_snr(ft_a).to(device)
        snr_fv = schedule_video.log_snr(ft_v).to(device)
        clean_a, clean_v = held_clean(fake_audio.shape[0])
        fa_t, snr_fa = _hold_clean(fake_audio, fa_t, snr_fa, clean_a)
        fv_t, snr_fv = _hold_clean(fake_video, fv_t, snr_fv, clean_v)
        logits_fake = disc(fa_t, fv_t, snr_fa, snr_fv, **dict(cond_fake or {}))
        l_d = discriminator_loss(logits_real, logits_fake)
    else:
        logits_fake, l_d = real_audio.new_zeros(0), zero
    total = l_d + dlsm_weight * l_dlsm
    return LossOutput(
        total, l_d.detach(), l_dlsm.detach(), logits_real.detach(), logits_fake.detach()
    )
