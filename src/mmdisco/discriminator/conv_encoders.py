"""Noise-aware convolutional encoders that keep time: audio and video latents -> ``(B, D, S)``.

Both modalities come out on one time grid of ``S`` steps (the video's frames), so a head can
compare what the audio and the video say *at the same time* (event timing is shared) as well
as what they say overall.

* Video ``(C, F, H, W)``: 2D convolutions over ``(H, W)`` within each frame, then a pooling
  over space that moving the content sideways leaves unchanged (a horizontal position is a
  nuisance; a vertical one is not under gravity): attention maps with a row-coordinate
  channel, or the mean over the horizontal axis (:class:`VideoConvEncoder`), then 1D
  convolutions over the frames.
* Audio ``(C, T)`` or ``(C, T, F)``: axis 1 (or ``time_axis``) is time and every other axis
  (latent channels, frequency) is a channel of 1D convolutions over time; the time axis is
  then resampled to ``S * fold`` steps and each group of ``fold`` folded into channels
  (space-to-depth: no sub-step timing is averaged away), then 1D convolutions over the ``S``
  steps.

Every convolution is modulated by the log-SNR (FiLM on :func:`snr_embedding`) and followed
by a SiLU: smooth, since guidance uses the input-gradient. There is no normalisation layer: a
norm over space or time would remove what is constant over it (the colour of a still square),
and the noised latents already have about unit scale.
Convolutions pad by replication, so that content near a border sees background, not zeros.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SNR_FEATURES = 16


def snr_embedding(log_snr: Tensor) -> Tensor:
    """``(B,)`` log-SNR -> ``(B, 16)`` sinusoidal features."""
    freqs = torch.exp(torch.linspace(-3.0, 1.0, SNR_FEATURES // 2, device=log_snr.device))
    args = log_snr.float()[:, None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class FilmConv(nn.Module):
    """``SiLU((1 + scale) * conv(x) + shift)``, scale and shift from the log-SNR embedding;
    ``dims`` is 1 or 2."""

    def __init__(self, dims: int, channels_in: int, channels_out: int, kernel: int) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.conv = conv(
            channels_in, channels_out, kernel, padding=kernel // 2, padding_mode="replicate"
        )
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")  # keeps the scale
        nn.init.zeros_(self.conv.bias)
        self.film = nn.Linear(SNR_FEATURES, 2 * channels_out)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).chunk(2, dim=-1)
        extra = (1,) * (x.ndim - 2)
        z = self.conv(x)
        return F.silu(
            z * (1 + scale.reshape(*scale.shape, *extra)) + shift.reshape(*shift.shape, *extra)
        )


def _stack(dims: int, channels_in: int, width: int, depth: int, kernel: int) -> nn.ModuleList:
    return nn.ModuleList(
        FilmConv(dims, channels_in if i == 0 else width, width, kernel) for i in range(depth)
    )


def _run(layers: nn.ModuleList, x: Tensor, emb: Tensor) -> Tensor:
    for layer in layers:
        x = layer(x, emb)
    return x


def _standardise(x: Tensor) -> Tensor:
    """Each sample to zero mean and unit variance over all its values (channel ratios kept):
    a constant background would otherwise dominate every feature."""
    return F.layer_norm(x, x.shape[1:])


class VideoConvEncoder(nn.Module):
    """``(B, C, F, H, W)`` and ``(B,)`` log-SNR -> ``(B, width, F)`` per-frame features:
    ``frame_depth`` convolutions within each frame, a pooling over space (``pool``), ``depth``
    convolutions over the frames.

    ``pool="attention"``: ``heads`` softmax maps over ``(H, W)`` each average the features
    where they look, and the input carries a row-coordinate channel, so where an object is
    vertically survives and where it is horizontally does not; the input-gradient then falls
    on the object, not on the background around it. ``pool="mean"``: the mean over ``W``,
    the rows (pooled to at most ``rows``) folded into channels.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        width: int,
        depth: int,
        frame_depth: int,
        pool: str = "mean",
        heads: int = 4,
        rows: int = 8,
    ) -> None:
        super().__init__()
        if len(shape) != 4:
            raise ValueError(f"video latents must be (C, F, H, W), got shape {shape}")
        if pool not in ("attention", "mean"):
            raise ValueError(f"video pool must be 'attention' or 'mean', got {pool!r}")
        channels, _, height, _ = shape
        self.pool, self.rows = pool, min(rows, height)
        extra = 1 if pool == "attention" else 0
        self.spatial = _stack(2, channels + extra, width, frame_depth, kernel=3)
        self.saliency = nn.Conv2d(width, heads, 1) if pool == "attention" else None
        pooled = width * (heads if pool == "attention" else self.rows)
        self.temporal = _stack(1, pooled, width, depth, kernel=3)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        b, c, f, h, w = x.shape
        frames = _standardise(x).transpose(1, 2).reshape(b * f, c, h, w)
        if self.pool == "attention":
            row = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=frames.dtype)
            frames = torch.cat([frames, row[:, None].expand(b * f, 1, h, w)], dim=1)
        z = _run(self.spatial, frames, emb.repeat_interleave(f, dim=0))  # (B F, width, H, W)
        if self.saliency is not None:
            weights = torch.softmax(self.saliency(z).flatten(2), dim=-1)  # (B F, heads, H W)
            z = torch.einsum("nkp,ncp->nkc", weights, z.flatten(2))
        else:
            z = F.adaptive_avg_pool1d(z.mean(-1), self.rows)  # (B F, width, rows)
        z = z.reshape(b, f, -1).transpose(1, 2)  # (B, pooled, F)
        return _run(self.temporal, z, emb)


class AudioConvEncoder(nn.Module):
    """``(B, C, T[, F])`` (time on ``time_axis`` of a clip's shape) and ``(B,)`` log-SNR ->
    ``(B, width, steps)`` features on ``steps`` time steps (the video's frames):
    ``frame_depth`` convolutions at the audio's own rate, ``depth`` over the steps."""

    def __init__(
        self,
        shape: tuple[int, ...],
        width: int,
        depth: int,
        frame_depth: int,
        steps: int,
        time_axis: int = 1,
    ) -> None:
        super().__init__()
        if len(shape) < 2:
            raise ValueError(f"audio latents need a channel and a time axis, got shape {shape}")
        self.time_axis = time_axis % len(shape) + 1  # of a batch
        shape = (*shape[: self.time_axis - 1], *shape[self.time_axis :], shape[self.time_axis - 1])
        self.steps, self.fold = steps, max(1, shape[-1] // steps)
        self.frame = _stack(1, math.prod(shape[:-1]), width, frame_depth, kernel=5)
        self.temporal = _stack(1, width * self.fold, width, depth, kernel=3)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = x.movedim(self.time_axis, -1)
        z = _run(self.frame, _standardise(x).flatten(1, -2), emb)  # (B, width, T)
        z = F.adaptive_avg_pool1d(z, self.steps * self.fold)
        b, width, _ = z.shape
        z = z.reshape(b, width, self.steps, self.fold).transpose(2, 3)
        return _run(self.temporal, z.reshape(b, width * self.fold, self.steps), emb)
