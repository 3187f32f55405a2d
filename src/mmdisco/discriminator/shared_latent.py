"""A discriminator that factors the ratio through a learnt shared latent.

The exact log ratio of paired data whose modalities share a latent ``k`` (and are otherwise
independent given it) is

    log r_t(a, v) = log sum_k p(k | a_t) p(k | v_t) / pi_k,

the probability that what the audio says about ``k`` and what the video says about it agree,
over the prior. :class:`SharedLatentDiscriminator` writes ``h`` in this form with learnt
parts: each modality has a noise-aware encoder giving ``log q(k | x_t)`` over ``num_codes``
codes in each of ``num_factors`` independent groups (a group per shared aspect, e.g. what and
when), the priors ``pi`` are learnt, and

    h = sum_g log sum_k q_g(k | a_t) q_g(k | v_t) / pi_{g,k}.

No training example is stored and its size does not depend on the training set. The
log-sum-exp gives mismatched pairs very negative logits (their codes disagree) without any
one network producing them, and the video gradient depends on the audio through the audio's
code posterior (the modalities are coupled). The encoders are MLPs over the flattened latent,
modulated by the log-SNR (FiLM), whose logits are multiplied by a learnt ``exp(a + b * lambda)``
per group: the exact posterior sharpens like the signal-to-noise ratio as noise falls.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class SharedLatentConfig:
    audio_shape: tuple[int, ...]
    video_shape: tuple[int, ...]
    num_codes: int = 64
    num_factors: int = 2
    width: int = 512
    depth: int = 2
    # initial a and b of the logits' scale exp(a + b * lambda); a large enough a breaks the
    # symmetric saddle where every q is uniform and h = 0 has no gradient
    sharpness_offset: float = 1.5
    sharpness_slope: float = 0.25
    head: str = "shared_latent"  # or "bilinear": h = <e_a, e_v> / sqrt(dim) + bias

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NoiseAwareEncoder(nn.Module):
    """``(x_t, lambda) -> (B, groups, codes)`` log-posteriors over codes."""

    def __init__(self, shape: tuple[int, ...], config: SharedLatentConfig) -> None:
        super().__init__()
        self.groups, self.codes = config.num_factors, config.num_codes
        dims = [math.prod(shape)] + [config.width] * config.depth
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in itertools.pairwise(dims))
        self.films = nn.ModuleList(nn.Linear(16, 2 * config.width) for _ in range(config.depth))
        self.out = nn.Linear(config.width, self.groups * self.codes)
        self.sharpness = nn.Parameter(
            torch.tensor([[config.sharpness_offset, config.sharpness_slope]] * self.groups)
        )  # (groups, 2): a, b

    def forward(self, x: Tensor, log_snr: Tensor) -> Tensor:
        emb = _snr_embedding(log_snr)
        z = torch.nn.functional.layer_norm(x.flatten(1), (x[0].numel(),))
        for layer, film in zip(self.layers, self.films, strict=True):
            scale, shift = film(emb).chunk(2, dim=-1)
            z = torch.nn.functional.silu(layer(z) * (1 + scale) + shift)
        logits = self.out(z).reshape(len(x), self.groups, self.codes)
        a, b = self.sharpness[:, 0], self.sharpness[:, 1]
        temperature = torch.exp(a + b * log_snr.clamp(-10, 10)[:, None])  # (B, groups)
        return logits * temperature[..., None]


def _snr_embedding(log_snr: Tensor) -> Tensor:
    freqs = torch.exp(torch.linspace(-3.0, 1.0, 8, device=log_snr.device))
    args = log_snr.float()[:, None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class SharedLatentDiscriminator(nn.Module):
    """``h(a_t, v_t) = sum_g log sum_k q_g(k | a_t) q_g(k | v_t) / pi_{g,k}`` (module doc)."""

    def __init__(self, config: SharedLatentConfig) -> None:
        super().__init__()
        self.config = config
        self.audio_encoder = NoiseAwareEncoder(config.audio_shape, config)
        self.video_encoder = NoiseAwareEncoder(config.video_shape, config)
        self.prior_logits = nn.Parameter(torch.zeros(config.num_factors, config.num_codes))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(
        self,
        audio: Tensor,
        video: Tensor,
        log_snr_audio: Tensor,
        log_snr_video: Tensor,
        **cond: Any,
    ) -> Tensor:
        if cond:
            raise ValueError(f"SharedLatentDiscriminator is unconditional; got {sorted(cond)}")
        batch = audio.shape[0]
        snr_a = (
            torch.as_tensor(log_snr_audio, device=audio.device).float().reshape(-1).expand(batch)
        )
        snr_v = (
            torch.as_tensor(log_snr_video, device=video.device).float().reshape(-1).expand(batch)
        )
        out_a = self.audio_encoder(audio.float(), snr_a)
        out_v = self.video_encoder(video.float(), snr_v)
        return self.head(out_a[:, None], out_v[:, None])[:, 0]

    def head(self, out_a: Tensor, out_v: Tensor) -> Tensor:
        """Logits of every pair of encoder outputs broadcast against each other: ``(..., groups,
        codes)`` each -> ``(...)``."""
        if self.config.head == "bilinear":
            dim = out_a.shape[-1] * out_a.shape[-2]
            return (out_a * out_v).sum((-1, -2)) / math.sqrt(dim) + self.bias
        log_qa, log_qv = torch.log_softmax(out_a, -1), torch.log_softmax(out_v, -1)
        log_prior = torch.log_softmax(self.prior_logits, dim=-1)
        return torch.logsumexp(log_qa + log_qv - log_prior, dim=-1).sum(-1)

    def cross_logits(self, audio: Tensor, video: Tensor, log_snr: Tensor) -> Tensor:
        """``h(a_i, v_j)`` for every i, j at one shared log-SNR per row/column pair:
        ``(Ba, Bv)``; the audio's and the video's log-SNR must be equal wherever paired, so
        ``log_snr`` is one value (a 0-d or 1-element tensor)."""
        snr_a = torch.as_tensor(log_snr).float().reshape(-1).expand(len(audio))
        snr_v = torch.as_tensor(log_snr).float().reshape(-1).expand(len(video))
        out_a = self.audio_encoder(audio.float(), snr_a)
        out_v = self.video_encoder(video.float(), snr_v)
        return self.head(out_a[:, None], out_v[None])
