"""Discriminator-ranked resampling: best-of-N and sampling-importance-resampling (SIR).

A trained discriminator's logit approximates ``h = log p(a, v) / (p_A(a) p_V(v))``, so N
candidate pairs drawn from the base models (independently, ``p_A p_V``) and weighted by
``exp(h)`` are a self-normalised importance sample of the joint: drawing one candidate with
probability ``softmax(h)`` (``"sir"``) tends to a draw from the joint as N grows, and keeping
the top logit (``"argmax"``, best-of-N) seeks its modes. Candidates may also come from guided
sampling (MMDisCo followed by a re-ranking): then ``exp(h)`` is no longer the exact importance
weight, but the ranking still prefers the better-aligned pairs.

The cost is N samplings per kept pair plus N discriminator forwards (no backward). Scores are
taken at ``t = 0``: each sample told the log-SNR of its base model's first training timestep,
the level the discriminator saw for the cleanest training pairs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mmdisco.guidance import DiscriminatorFn

MODES = ("argmax", "sir")


@torch.no_grad()
def score_pairs(
    disc: DiscriminatorFn,
    audio: Tensor,
    video: Tensor,
    log_snr_audio: float,
    log_snr_video: float,
    batch_size: int = 256,
    **cond: Any,
) -> Tensor:
    """The discriminator's logit for each of N pairs (``(N,)``), ``batch_size`` at a time;
    ``cond`` tensors (per-pair text embeddings) are sliced with the pairs."""
    if audio.shape[0] != video.shape[0]:
        raise ValueError(f"{audio.shape[0]} audio samples but {video.shape[0]} video samples")
    logits = []
    for lo in range(0, audio.shape[0], batch_size):
        a, v = audio[lo : lo + batch_size], video[lo : lo + batch_size]
        snr_a = torch.full((a.shape[0],), float(log_snr_audio), device=a.device)
        snr_v = torch.full((a.shape[0],), float(log_snr_video), device=v.device)
        kw = {k: x[lo : lo + batch_size] if torch.is_tensor(x) else x for k, x in cond.items()}
        logits.append(disc(a, v, snr_a, snr_v, **kw).float().cpu())
    return torch.cat(logits)


def select(
    logits: Tensor,
    num_candidates: int | None = None,
    mode: str = "argmax",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Which candidate to keep for each of B outputs: ``logits`` is ``(B, N)``; only the first
    ``num_candidates`` columns compete (so one pool of N serves every smaller N).

    ``"argmax"``: the highest logit (best-of-N). ``"sir"``: one draw with probabilities
    ``softmax(logits)`` (sampling-importance-resampling with weights ``exp(h)``).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, N), got {tuple(logits.shape)}")
    n = logits.shape[1] if num_candidates is None else num_candidates
    if not 1 <= n <= logits.shape[1]:
        raise ValueError(f"num_candidates must lie in [1, {logits.shape[1]}], got {n}")
    pool = logits[:, :n].double()
    if mode == "argmax":
        return pool.argmax(1)
    return torch.multinomial(torch.softmax(pool, 1), 1, generator=generator)[:, 0]


def t0_log_snr(model: Any) -> float:
    """The log-SNR of a base model's first training timestep: how a finished sample is told
    apart from a noisy one by a discriminator trained on the model's schedule."""
    return float(model.schedule.log_snr(torch.tensor([0]))[0])
