"""Building blocks: noise-level embedding, FiLM residual blocks and the two encoder streams.

The residual block follows the reference release (MM-Diffusion's encoder with attention
removed, paper A.3): ``GroupNorm -> SiLU -> [downsample] -> conv`` then a FiLM-modulated
``GroupNorm -> SiLU -> dropout -> zero-initialised 1x1 conv``, added to the (downsampled,
projected) input. Zero-initialised output convolutions make every block start as the
identity, which keeps the input-gradient of a freshly initialised discriminator tame.

Video convolutions are factorised: a (1, 3, 3) spatial then a (3, 1, 1) temporal Conv3d on
``(B, C, F, H, W)``. Audio convolutions are 1-D (dilated along time) on ``(B, C, L)`` or
2-D on ``(B, C, T, F)`` (dilation along ``T`` only). Downsampling never touches the video's
frame axis nor the 2-D audio's time axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from mmdisco.discriminator.config import DiscriminatorConfig

# log-SNR lies in [-20, 20] (mmdisco.diffusion.LOG_SNR_LIMIT). Scaling by 50 maps that onto
# the +-1000 range of DDPM timesteps for which the usual sinusoidal frequencies were made.
LOG_SNR_SCALE = 50.0
MAX_PERIOD = 10_000.0

ConvFactory = Callable[[int, int], nn.Module]


def sinusoidal_embedding(log_snr: Tensor, dim: int) -> Tensor:
    """``(B,)`` log-SNRs -> ``(B, dim)`` float32 sinusoidal features (cos then sin)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(MAX_PERIOD)
        * torch.arange(half, device=log_snr.device, dtype=torch.float32)
        / half
    )
    args = log_snr.float()[:, None] * LOG_SNR_SCALE * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class NoiseLevelEmbedding(nn.Module):
    """Sinusoidal features of a log-SNR followed by a two-layer MLP (one per modality)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, log_snr: Tensor) -> Tensor:
        features = sinusoidal_embedding(log_snr, self.dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


def group_norm(channels: int, max_groups: int, affine: bool = True) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``max_groups`` that divides ``channels``."""
    groups = max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, affine=affine)


class FiLM(nn.Module):
    """``GroupNorm(x) * (1 + scale) + shift`` with (scale, shift) regressed from the embedding."""

    def __init__(self, emb_dim: int, channels: int, max_groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, max_groups, affine=False)
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * channels))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        scale, shift = (
            self.proj(emb).reshape(x.shape[0], 2, x.shape[1], *[1] * (x.ndim - 2)).unbind(1)
        )
        return self.norm(x) * (1 + scale) + shift


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """One FiLM residual block of one stream; ``conv`` and ``pointwise`` fix the layout."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        conv: ConvFactory,
        pointwise: ConvFactory,
        down: nn.Module | None,
        max_groups: int,
        dropout: float,
        down_after_conv: bool = False,
    ) -> None:
        super().__init__()
        self.down_after_conv = down_after_conv  # the reference release pools after conv_in
        self.norm_in = group_norm(in_ch, max_groups)
        self.down = down if down is not None else nn.Identity()
        self.conv_in = conv(in_ch, out_ch)
        self.film = FiLM(emb_dim, out_ch, max_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv_out = zero_module(pointwise(out_ch, out_ch))
        self.skip = nn.Identity() if in_ch == out_ch else pointwise(in_ch, out_ch)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = F.silu(self.norm_in(x))
        h = self.down(self.conv_in(h)) if self.down_after_conv else self.conv_in(self.down(h))
        h = self.conv_out(self.dropout(F.silu(self.film(h, emb))))
        return self.skip(self.down(x)) + h


class FactorisedConv3d(nn.Module):
    """(1, k, k) spatial then (k, 1, 1) temporal convolution of ``(B, C, F, H, W)``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3) -> None:
        super().__init__()
        pad = kernel // 2
        self.spatial = nn.Conv3d(in_ch, out_ch, (1, kernel, kernel), padding=(0, pad, pad))
        self.temporal = nn.Conv3d(out_ch, out_ch, (kernel, 1, 1), padding=(pad, 0, 0))

    def forward(self, x: Tensor) -> Tensor:
        return self.temporal(self.spatial(x))


def _video_conv(in_ch: int, out_ch: int) -> nn.Module:
    return FactorisedConv3d(in_ch, out_ch)


def _video_pointwise(in_ch: int, out_ch: int) -> nn.Module:
    return nn.Conv3d(in_ch, out_ch, 1)


def _audio_conv(kind: str, dilation: int) -> ConvFactory:
    if kind == "1d":
        return lambda i, o: nn.Conv1d(i, o, 3, padding=dilation, dilation=dilation)
    return lambda i, o: nn.Conv2d(i, o, 3, padding=(dilation, 1), dilation=(dilation, 1))


def _audio_pointwise(kind: str) -> ConvFactory:
    return (lambda i, o: nn.Conv1d(i, o, 1)) if kind == "1d" else (lambda i, o: nn.Conv2d(i, o, 1))


class Stream(nn.Module):
    """One modality's encoder: input conv, residual levels, final GroupNorm + SiLU.

    ``forward(x, emb)`` returns the last feature map; its time axis is the input's (video,
    2-D audio) or the input's divided by ``audio_downsample ** num_downsamples`` (1-D audio).
    """

    def __init__(
        self,
        in_ch: int,
        config: DiscriminatorConfig,
        conv_for_block: Callable[[int], ConvFactory],
        pointwise: ConvFactory,
        make_down: Callable[[], nn.Module],
    ) -> None:
        super().__init__()
        c = config
        ch = c.channels * c.channel_mult[0]
        self.conv_in = conv_for_block(0)(in_ch, ch)
        self.blocks = nn.ModuleList()
        n = 0
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.blocks_per_level):
                n += 1
                out = c.channels * mult
                self.blocks.append(self._block(ch, out, c, conv_for_block(n), pointwise, None))
                ch = out
            if level < c.num_downsamples:
                n += 1
                self.blocks.append(
                    self._block(ch, ch, c, conv_for_block(n), pointwise, make_down())
                )
        self.out_channels = ch
        self.norm_out = group_norm(ch, c.norm_groups)
        self.gradient_checkpointing = False

    @staticmethod
    def _block(
        in_ch: int,
        out_ch: int,
        c: DiscriminatorConfig,
        conv: ConvFactory,
        pointwise: ConvFactory,
        down: nn.Module | None,
    ) -> ResBlock:
        return ResBlock(
            in_ch, out_ch, c.time_embed_dim, conv, pointwise, down, c.norm_groups, c.dropout
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv_in(x)
        checkpoint = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            if checkpoint:
                h = torch.utils.checkpoint.checkpoint(block, h, emb, use_reentrant=False)
            else:
                h = block(h, emb)
        return F.silu(self.norm_out(h))


def video_stream(config: DiscriminatorConfig) -> Stream:
    return Stream(
        config.video_channels,
        config,
        conv_for_block=lambda n: _video_conv,
        pointwise=_video_pointwise,
        make_down=lambda: nn.AvgPool3d((1, 2, 2)),
    )


def audio_stream(config: DiscriminatorConfig) -> Stream:
    kind, cycle = config.audio_kind, config.audio_dilation_cycle

    def make_down() -> nn.Module:
        if kind == "1d":  # the waveform / sequence axis is time: divide it
            return nn.AvgPool1d(config.audio_downsample)
        return nn.AvgPool2d((1, 2))  # frequency only: time is kept

    return Stream(
        config.audio_channels,
        config,
        conv_for_block=lambda n: _audio_conv(kind, 2 ** (n % cycle) if n else 1),
        pointwise=_audio_pointwise(kind),
        make_down=make_down,
    )


def video_tokens(features: Tensor) -> Tensor:
    """``(B, C, F, H, W)`` -> per-frame tokens ``(B, F, C)`` (spatial mean)."""
    return features.mean(dim=(3, 4)).transpose(1, 2)


def audio_tokens(features: Tensor) -> Tensor:
    """``(B, C, L)`` or ``(B, C, T, F)`` -> per-time-step tokens ``(B, L | T, C)``."""
    if features.ndim == 4:
        features = features.mean(dim=3)
    return features.transpose(1, 2)
