"""Guided sampling in the continuous world with ideal base models.

The continuous world's base models are its exact marginal scores
(:func:`mmdisco.world.continuous_ratio.log_marginal`): what a perfect single-modal model
would learn. Sampling them independently gives valid clips of the world that agree only by
chance; adding ``scale * grad h`` of a discriminator ``h`` to both scores (MMDisCo in score
form: ``eps_hat = eps_theta - scale * sigma * grad h``) samples the joint when ``h`` is the
exact log ratio and the scale is 1. With ideal base models the method's only error is the
discriminator's, which is what this world measures.

The sampler is ancestral DDPM on the cosine schedule of the world models
(:data:`mmdisco.world.models.SCHEDULER_CONFIG`), ``steps`` evenly spaced timesteps, the
clean-clip estimate clipped to [-1, 1]. ``window`` restricts guidance to the steps whose noise
level ``t / T`` lies in it, as :class:`mmdisco.sampling.GuidanceOptions` does on real models.

``clips > 1`` samples clips that many world clips long, concatenated in time: the base models
denoise each part as a world clip on its own, the discriminator sees the whole long clip (for
:class:`mmdisco.discriminator.sliding.SlidingWindow`, which guides clips longer than the
discriminator's training window). :func:`split_clips` cuts them back into world clips.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mmdisco.diffusion import schedule_from_scheduler_config
from mmdisco.errors import check_fraction_range
from mmdisco.world.continuous_ratio import (
    ContinuousLogRatio,
    ContinuousWorldTerms,
    exact_guided_scores,
    log_marginal,
)
from mmdisco.world.models import SCHEDULER_CONFIG

Discriminator = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
ScoreModel = Callable[[Tensor, Tensor], Tensor]  # (x_t, log-SNR) -> grad log p_t(x_t)


def world_schedule_abar() -> Tensor:
    """``alpha_bar`` at each of the 1000 training timesteps (float64)."""
    schedule = schedule_from_scheduler_config(SCHEDULER_CONFIG)
    return schedule.alphas_cumprod.double()  # type: ignore[attr-defined]


TIME_DIM = 2  # the time axis of batched clips in both modalities: (B, C, L), (B, C, F, H, W)


def split_clips(x: Tensor, clips: int) -> Tensor:
    """``(B, C, clips * T, ...)`` clips -> ``(clips * B, C, T, ...)`` world clips, part-major
    (all first parts, then all second parts, ...)."""
    return torch.cat(x.chunk(clips, dim=TIME_DIM)) if clips > 1 else x


def join_clips(x: Tensor, clips: int) -> Tensor:
    """The inverse of :func:`split_clips`."""
    return torch.cat(x.chunk(clips), dim=TIME_DIM) if clips > 1 else x


def guided_scores(
    terms: ContinuousWorldTerms,
    audio: Tensor,
    video: Tensor,
    log_snr: Tensor,
    discriminator: Discriminator | None,
    scale: tuple[float, float],
    base: tuple[ScoreModel, ScoreModel] | None = None,
    clips: int = 1,
) -> tuple[Tensor, Tensor]:
    """Scores of the base models plus ``scale * grad h``, one scale per modality ``(audio,
    video)`` (float64). The base models are the ideal ones (the world's exact marginal
    scores) unless ``base`` gives trained ones (``.score`` of
    :class:`mmdisco.world.continuous_models.ContinuousBaseModel`); they score each of the
    ``clips`` world clips of a long clip on its own. The world's own ratio on its ideal base
    models takes :func:`~mmdisco.world.continuous_ratio.exact_guided_scores` (the same
    scores, each modality's likelihood terms computed once)."""
    if (
        isinstance(discriminator, ContinuousLogRatio)
        and discriminator.config == terms.config
        and base is None
        and clips == 1
    ):
        return exact_guided_scores(terms, audio, video, log_snr, scale)
    a = audio.detach().double().requires_grad_()
    v = video.detach().double().requires_grad_()
    grads = base_scores(terms, split_clips(a, clips), split_clips(v, clips), log_snr, base)
    grads = (join_clips(grads[0], clips), join_clips(grads[1], clips))
    if discriminator is None or scale == (0.0, 0.0):
        return grads
    snr = log_snr.expand(len(a)).float()
    h = discriminator(a.float(), v.float(), snr, snr)
    guide = torch.autograd.grad(h.double().sum(), (a, v))
    return grads[0] + scale[0] * guide[0], grads[1] + scale[1] * guide[1]


def base_scores(
    terms: ContinuousWorldTerms,
    audio: Tensor,
    video: Tensor,
    log_snr: Tensor,
    base: tuple[ScoreModel, ScoreModel] | None,
) -> tuple[Tensor, Tensor]:
    """The base models' scores of world clips (float64): the world's exact marginal scores,
    or ``base``'s."""
    if base is not None:
        return base[0](audio.detach(), log_snr).double(), base[1](video.detach(), log_snr).double()
    a = audio.detach().double().requires_grad_()
    v = video.detach().double().requires_grad_()
    marginals = log_marginal(terms, a, log_snr, "audio") + log_marginal(terms, v, log_snr, "video")
    return torch.autograd.grad(marginals.sum(), (a, v))  # type: ignore[return-value]


def sample_continuous(
    terms: ContinuousWorldTerms,
    n: int,
    seed: int,
    discriminator: Discriminator | None = None,
    scale: float | tuple[float, float] = 1.0,
    steps: int = 25,
    chunk: int = 128,
    window: tuple[float, float] = (0.0, 1.0),
    base: tuple[ScoreModel, ScoreModel] | None = None,
    clips: int = 1,
) -> tuple[Tensor, Tensor]:
    """``n`` (audio, video) pairs, float32, deterministic given ``seed``; the discriminator
    guides the steps whose ``t / T`` lies in ``window``, at one ``scale`` or at ``(audio,
    video)`` scales (0 on a modality leaves it unguided). ``base``: trained base models'
    score functions (audio, video) instead of the world's exact ones. ``clips``: each pair is
    that many world clips long (see the module's docstring)."""
    window = check_fraction_range("window", window, allow_empty=True)
    if clips < 1:
        raise ValueError(f"clips must be a positive count of world clips, got {clips}")
    scales = (float(scale), float(scale)) if isinstance(scale, int | float) else scale
    if len(scales) != 2:
        raise ValueError(f"scale must be a number or (audio, video), got {scale!r}")
    outs = [
        _sample_chunk(
            terms,
            min(chunk, n - start),
            seed * 1009 + start,
            discriminator,
            scales,
            steps,
            window,
            base,
            clips,
        )
        for start in range(0, n, chunk)
    ]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def _sample_chunk(
    terms: ContinuousWorldTerms,
    n: int,
    seed: int,
    discriminator: Discriminator | None,
    scale: tuple[float, float],
    steps: int,
    window: tuple[float, float],
    base: tuple[ScoreModel, ScoreModel] | None,
    clips: int,
) -> tuple[Tensor, Tensor]:
    c = terms.config
    gen = torch.Generator().manual_seed(seed)
    abar = world_schedule_abar()
    times = torch.linspace(len(abar) - 1, 0, steps).round().long()
    x = []
    for shape in (c.audio_shape, c.video_shape):
        long = list(shape)
        long[TIME_DIM - 1] *= clips
        x.append(torch.randn(n, *long, generator=gen, dtype=torch.float64))
    for i, t in enumerate(times.tolist()):
        ab = abar[t]
        ab_prev = abar[times[i + 1]] if i + 1 < steps else torch.tensor(1.0, dtype=torch.float64)
        log_snr = torch.log(ab / (1 - ab)).reshape(1)
        guide = window[0] <= t / len(abar) <= window[1]
        disc = discriminator if guide else None
        scores = guided_scores(terms, x[0], x[1], log_snr, disc, scale, base, clips)
        for m in range(2):
            x0 = ((x[m] + (1 - ab) * scores[m]) / ab.sqrt()).clamp(-1.0, 1.0)
            eps = (x[m] - ab.sqrt() * x0) / (1 - ab).sqrt()
            var = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)  # DDPM posterior variance
            noise = torch.randn(x[m].shape, generator=gen, dtype=torch.float64)
            x[m] = (
                ab_prev.sqrt() * x0
                + (1 - ab_prev - var).clamp_min(0).sqrt() * eps
                + var.sqrt() * noise
            )
    return x[0].float(), x[1].float()
