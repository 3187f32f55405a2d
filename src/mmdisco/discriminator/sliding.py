"""A sliding discriminator window, for clips longer than the discriminator was trained on.

A discriminator sees clips of one length, its training window: ``window = (audio, video)``
latent frames. :class:`SlidingWindow` cuts a longer clip, in both modalities at once, into
overlapping windows whose starts are evenly spaced from the clip's first frame to its last,
runs the discriminator on all of them as one batch, and adds each window's input-gradient back
where the window lies, divided by the number of windows that cover each frame: a frame seen by
one window gets that window's gradient unchanged, a frame seen by two the mean of theirs.

The starts are placed in the modality with the fewer frames per window (window ``k`` of ``K``
at ``round(k * (length - window) / (K - 1))``) and carried to the other by the ratio of the two
clips' travel ``length - window``, so each audio window covers its video window's stretch of
time to within half a frame of the finer modality. (Rounding each modality's starts on its own
can shift an audio window against its video window by half a video frame, and a discriminator
that reads timing then guides the events by that shift.)

The wrapper is itself a discriminator (same call, one logit per sample), so guidance and the
sampler use it as they use any other. Its logit is the sum of the windows' logits; its
input-gradient is, by construction, not that sum's but the overlap average above: each
window's input passes through a gradient scale of ``1 / coverage`` (identity forward).

tests/test_sliding_window.py checks the gradient against finite differences window by window,
and guides clips of the synthetic world three windows long, built by concatenating world clips
in time (each third denoised by the shipped world base model on its own);
benchmarks/sliding_window.py measures overlapping windows on such clips of the continuous world.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from mmdisco.errors import InputError


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by ``weight``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(weight)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (weight,) = ctx.saved_tensors
        return grad * weight, None


def window_starts(length: int, window: int, count: int) -> list[int]:
    """``count`` starts of ``window``-frame windows spread evenly over ``length`` frames, the
    first at 0 and the last at ``length - window``."""
    if count == 1:
        return [0]
    return [round(k * (length - window) / (count - 1)) for k in range(count)]


def paired_starts(
    lengths: tuple[int, int], window: tuple[int, int], count: int
) -> tuple[list[int], list[int]]:
    """``count`` window starts in each of two modalities covering the same time: evenly spaced
    in the one with fewer frames per window, carried to the other by the ratio of their travel
    ``length - window`` (exact when the clips' frame rates are whole multiples)."""
    coarse = 0 if window[0] <= window[1] else 1
    fine = 1 - coarse
    starts = window_starts(lengths[coarse], window[coarse], count)
    travel = (lengths[coarse] - window[coarse], lengths[fine] - window[fine])
    if travel[0] == 0:  # one window in the coarse modality: nothing to carry
        carried = window_starts(lengths[fine], window[fine], count)
    else:
        carried = [round(s * travel[1] / travel[0]) for s in starts]
    pair = (starts, carried) if coarse == 0 else (carried, starts)
    return pair[0], pair[1]


def window_count(length: int, window: int, overlap: float) -> int:
    """The fewest windows covering ``length`` frames whose neighbours share at least
    ``overlap`` of a window."""
    stride = max(1, math.floor(window * (1 - overlap)))
    return 1 + math.ceil((length - window) / stride)


def coverage(length: int, window: int, starts: list[int]) -> Tensor:
    """How many windows cover each of ``length`` frames."""
    count = torch.zeros(length)
    for start in starts:
        count[start : start + window] += 1
    return count


class SlidingWindow(nn.Module):
    """``discriminator`` applied over a long clip in overlapping windows, gradients averaged.

    ``window``: the discriminator's training length ``(audio, video)`` in latent frames along
    ``time_dims`` (batched dims; default: axis 1 of each clip, the audio's time as the
    adapters lay it out, ``(C, T)`` and ``(C, T, F)``, and the video's frames of
    ``(C, F, H, W)``). ``overlap``: the least fraction of a window
    that neighbouring windows share, in ``[0, 1)``. A clip exactly one window long is passed
    to the discriminator whole; a shorter one is refused.
    """

    def __init__(
        self,
        discriminator: nn.Module,
        window: tuple[int, int],
        *,
        overlap: float = 0.5,
        time_dims: tuple[int, int] = (2, 2),
    ) -> None:
        super().__init__()
        if not 0.0 <= overlap < 1.0:
            raise InputError(f"overlap must lie in [0, 1), got {overlap}")
        if min(window) < 1:
            raise InputError(f"window must be positive latent frame counts, got {window}")
        self.discriminator = discriminator
        self.window = (int(window[0]), int(window[1]))
        self.overlap = float(overlap)
        self.time_dims = time_dims

    def layout(self, audio_len: int, video_len: int) -> tuple[list[int], list[int]]:
        """The windows' starts in the audio and in the video of a clip of these lengths."""
        (wa, wv), lengths = self.window, (audio_len, video_len)
        for name, length, w in (("audio", audio_len, wa), ("video", video_len, wv)):
            if length < w:
                raise InputError(
                    f"the {name} is {length} latent frames long, shorter than the "
                    f"discriminator's window of {w}"
                )
        spans = (audio_len / wa, video_len / wv)
        if abs(spans[0] - spans[1]) > 0.05 * max(spans):
            raise InputError(
                f"the audio spans {spans[0]:.2f} windows but the video {spans[1]:.2f} "
                f"(lengths {lengths}, window {self.window}); both must cover the same time"
            )
        count = max(
            window_count(n, w, self.overlap) for n, w in zip(lengths, self.window, strict=True)
        )
        return paired_starts(lengths, self.window, count)

    def _windows(self, x: Tensor, dim: int, window: int, starts: list[int]) -> Tensor:
        """``x``'s windows along ``dim``, stacked along the batch (window-major), each
        passing ``1 / coverage`` of its gradient back."""
        shape = [1] * x.ndim
        shape[dim] = window
        weight = 1.0 / coverage(x.shape[dim], window, starts).to(x.device, x.dtype)
        pieces = []
        for start in starts:
            piece = x.narrow(dim, start, window)
            scale = weight[start : start + window].reshape(shape)
            pieces.append(_ScaleGradient.apply(piece, scale))
        return torch.cat(pieces)

    def forward(
        self, audio: Tensor, video: Tensor, log_snr_audio: Tensor, log_snr_video: Tensor, **cond
    ) -> Tensor:
        da, dv = (d % x.ndim for d, x in zip(self.time_dims, (audio, video), strict=True))
        starts_a, starts_v = self.layout(audio.shape[da], video.shape[dv])
        count, batch = len(starts_a), audio.shape[0]
        if count == 1:  # the clip is one window long
            return self.discriminator(audio, video, log_snr_audio, log_snr_video, **cond)

        def repeat(x: Any) -> Any:  # per-sample inputs follow their windows
            if torch.is_tensor(x) and x.ndim > 0 and x.shape[0] == batch:
                return x.repeat(count, *([1] * (x.ndim - 1)))
            return x

        logits = self.discriminator(
            self._windows(audio, da, self.window[0], starts_a),
            self._windows(video, dv, self.window[1], starts_v),
            repeat(log_snr_audio),
            repeat(log_snr_video),
            **{k: repeat(v) for k, v in cond.items()},
        )
        return logits.view(count, batch).sum(0)
