"""Fusion heads: per-time-step audio and video tokens -> one logit per sample.

Every head takes ``audio (B, La, C)``, ``video (B, Fv, C)`` (tokens from the two streams) and
``cond (B, 2E)`` (the concatenated audio and video noise-level + text embeddings).

* ``separable``: mean over time per stream, concatenate, one Linear (the reference release's
  head). Then ``h = h_a(a) + h_v(v)``, so ``grad_v h`` does not depend on the audio: the
  "joint" guidance degenerates into two single-modal guidances. Kept as an ablation.
* ``mlp`` (default, paper A.8 "MLP"): the pooled features and ``cond`` through an MLP; its
  hidden nonlinearity couples the modalities.
* ``transformer`` (paper A.8 "Naive Transformer"): both token sequences concatenated along
  time behind a class token, learned positions and modality embeddings.
* ``time_aligned`` (paper A.8 "Frieren"): audio tokens resampled to the video frame count,
  concatenated with the video tokens per frame along channels, then a transformer with a
  class token. Keeps the time axis, so it can see synchrony.

With ``fusion_product`` the ``mlp`` head also gets the elementwise product of the pooled audio
and video features (see :class:`DiscriminatorConfig`).

The transformer heads run attention with PyTorch's math kernel: the fused flash /
memory-efficient kernels have no double backward, which L_DLSM needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmdisco.discriminator.config import DiscriminatorConfig


def resample_time(tokens: Tensor, length: int) -> Tensor:
    """Resample ``(B, L, C)`` tokens to ``(B, length, C)`` along time.

    Shrinking averages each output step's window (anti-aliased: a 1600-step waveform feature
    map becomes 16 frame averages instead of 16 point samples); growing interpolates linearly.
    """
    x = tokens.transpose(1, 2)
    if x.shape[-1] == length:
        return tokens
    if x.shape[-1] > length:
        x = F.adaptive_avg_pool1d(x, length)
    else:
        x = F.interpolate(x, size=length, mode="linear", align_corners=False)
    return x.transpose(1, 2)


class SeparableHead(nn.Module):
    def __init__(self, channels: int, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * channels, 1)

    def forward(self, audio: Tensor, video: Tensor, cond: Tensor) -> Tensor:
        pooled = torch.cat([audio.mean(dim=1), video.mean(dim=1)], dim=-1)
        return self.linear(pooled).squeeze(-1)


class MLPHead(nn.Module):
    def __init__(self, channels: int, config: DiscriminatorConfig) -> None:
        super().__init__()
        width = config.fusion_width
        self.product = config.fusion_product
        inputs = (3 if self.product else 2) * channels + 2 * config.time_embed_dim
        self.mlp = nn.Sequential(
            nn.Linear(inputs, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, 1),
        )

    def forward(self, audio: Tensor, video: Tensor, cond: Tensor) -> Tensor:
        a, v = audio.mean(dim=1), video.mean(dim=1)
        features = [a, v, a * v] if self.product else [a, v]
        return self.mlp(torch.cat([*features, cond], dim=-1)).squeeze(-1)


class TokenTransformer(nn.Module):
    """Class token (+ projected ``cond``) in front of ``tokens``, pre-LN encoder, linear out."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        width = config.fusion_width
        self.positions = nn.Parameter(torch.empty(config.num_positions, width))
        self.class_token = nn.Parameter(torch.empty(width))
        nn.init.trunc_normal_(self.positions, std=0.02)
        nn.init.trunc_normal_(self.class_token, std=0.02)
        self.cond_proj = nn.Linear(2 * config.time_embed_dim, width)
        layer = nn.TransformerEncoderLayer(
            width,
            config.fusion_heads,
            dim_feedforward=4 * width,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, config.fusion_layers, norm=nn.LayerNorm(width), enable_nested_tensor=False
        )
        self.out = nn.Linear(width, 1)

    def position_embedding(self, length: int) -> Tensor:
        """Learned positions at relative times ``(i + 0.5) / length``: ``(length, width)``."""
        table = self.positions.t()[None]
        return F.interpolate(table, size=length, mode="linear", align_corners=False)[0].t()

    def forward(self, tokens: Tensor, cond: Tensor) -> Tensor:
        cls = (self.class_token + self.cond_proj(cond))[:, None]
        with sdpa_kernel(SDPBackend.MATH):
            out = self.encoder(torch.cat([cls, tokens], dim=1))
        return self.out(out[:, 0]).squeeze(-1)


class TransformerHead(nn.Module):
    def __init__(self, channels: int, config: DiscriminatorConfig) -> None:
        super().__init__()
        width = config.fusion_width
        self.audio_in = nn.Linear(channels, width)
        self.video_in = nn.Linear(channels, width)
        self.modality = nn.Parameter(torch.zeros(2, width))  # audio, video type embeddings
        nn.init.trunc_normal_(self.modality, std=0.02)
        self.transformer = TokenTransformer(config)

    def forward(self, audio: Tensor, video: Tensor, cond: Tensor) -> Tensor:
        pos = self.transformer.position_embedding
        a = self.audio_in(audio) + pos(audio.shape[1]) + self.modality[0]
        v = self.video_in(video) + pos(video.shape[1]) + self.modality[1]
        return self.transformer(torch.cat([v, a], dim=1), cond)


class TimeAlignedHead(nn.Module):
    def __init__(self, channels: int, config: DiscriminatorConfig) -> None:
        super().__init__()
        half = config.fusion_width // 2
        self.audio_in = nn.Linear(channels, half)
        self.video_in = nn.Linear(channels, half)
        self.transformer = TokenTransformer(config)

    def forward(self, audio: Tensor, video: Tensor, cond: Tensor) -> Tensor:
        frames = video.shape[1]
        a = self.audio_in(resample_time(audio, frames))
        tokens = torch.cat([a, self.video_in(video)], dim=-1)
        tokens = tokens + self.transformer.position_embedding(frames)
        return self.transformer(tokens, cond)


HEADS: dict[str, type[nn.Module]] = {
    "separable": SeparableHead,
    "mlp": MLPHead,
    "transformer": TransformerHead,
    "time_aligned": TimeAlignedHead,
}


def build_head(channels: int, config: DiscriminatorConfig) -> nn.Module:
    return HEADS[config.fusion](channels, config)
