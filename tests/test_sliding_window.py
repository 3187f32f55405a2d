"""The sliding discriminator window: its gradient against finite differences, window by window,
and guidance of synthetic-world clips three windows long.

World clips three windows long are three world clips concatenated in time: :class:`Concatenated`
wraps a shipped world base model so that it denoises a long clip as three independent clips
(each third on its own), and the shipped world discriminator, trained on one clip, guides the
long clip through :class:`SlidingWindow`. Its windows cover the same stretch of time in both
modalities (64 spectrogram frames and 16 video frames per window).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mmdisco.base_models.base import BaseModel
from mmdisco.discriminator import load_discriminator
from mmdisco.discriminator.sliding import (
    SlidingWindow,
    coverage,
    paired_starts,
    window_count,
    window_starts,
)
from mmdisco.errors import InputError
from mmdisco.guidance import discriminator_gradients
from mmdisco.sampling import Stream, joint_sample

pytestmark = pytest.mark.usefixtures("one_thread")

WINDOW = (8, 4)  # audio (C, L) frames, video (C, F, H, W) frames


class WindowDisc(nn.Module):
    """A fixed nonlinear discriminator of one window that reads every input it is given."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.wa = nn.Parameter(torch.randn(2 * WINDOW[0], generator=g, dtype=torch.float64))
        self.wv = nn.Parameter(torch.randn(2 * WINDOW[1] * 4, generator=g, dtype=torch.float64))
        self.wt = nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))

    def forward(self, a: Tensor, v: Tensor, snr_a: Tensor, snr_v: Tensor, text: Tensor) -> Tensor:
        if a.shape[1:] != (2, WINDOW[0]) or v.shape[1:] != (2, WINDOW[1], 2, 2):
            raise AssertionError(f"not a window: {tuple(a.shape)}, {tuple(v.shape)}")
        ha, hv = torch.tanh(a.flatten(1) @ self.wa), torch.tanh(v.flatten(1) @ self.wv)
        return ha * hv * (1 + 0.1 * snr_a) + (a**2).mean((1, 2)) * (text @ self.wt) + 0.2 * snr_v


def long_inputs(batch: int = 2, audio_len: int = 20, video_len: int = 10):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(batch, 2, audio_len, generator=g, dtype=torch.float64)
    v = torch.randn(batch, 2, video_len, 2, 2, generator=g, dtype=torch.float64)
    snr = torch.randn(batch, generator=g, dtype=torch.float64)
    text = torch.randn(batch, 3, generator=g, dtype=torch.float64)
    return a, v, snr, -snr, text


def finite_difference(fn, x: Tensor, eps: float = 1e-6) -> Tensor:
    """Central differences of the scalar ``fn(x)`` with respect to every element of ``x``."""
    grad = torch.zeros_like(x)
    flat, out = x.view(-1), grad.view(-1)
    for i in range(flat.numel()):
        keep = flat[i].item()
        flat[i] = keep + eps
        up = fn(x)
        flat[i] = keep - eps
        down = fn(x)
        flat[i] = keep
        out[i] = (up - down) / (2 * eps)
    return grad


def test_gradient_is_each_windows_finite_difference_gradient_averaged_over_overlaps():
    disc = WindowDisc()
    sliding = SlidingWindow(disc, WINDOW, overlap=0.5)
    a, v, snr_a, snr_v, text = long_inputs()
    starts_a, starts_v = sliding.layout(a.shape[-1], v.shape[2])
    assert (starts_a, starts_v) == ([0, 4, 8, 12], [0, 2, 4, 6])  # same times in both
    out = discriminator_gradients(sliding, a, v, snr_a, snr_v, text=text)

    # Brute force: every window alone, differentiated numerically, added where it lies and
    # divided by the number of windows covering each frame.
    grad_a, grad_v, logits = torch.zeros_like(a), torch.zeros_like(v), torch.zeros(2).double()
    with torch.no_grad():
        for sa, sv in zip(starts_a, starts_v, strict=True):
            wa, wv = a[..., sa : sa + WINDOW[0]].clone(), v[:, :, sv : sv + WINDOW[1]].clone()
            logits += disc(wa, wv, snr_a, snr_v, text)
            grad_a[..., sa : sa + WINDOW[0]] += finite_difference(
                lambda x, wv=wv: disc(x, wv, snr_a, snr_v, text).sum(), wa
            )
            grad_v[:, :, sv : sv + WINDOW[1]] += finite_difference(
                lambda x, wa=wa: disc(wa, x, snr_a, snr_v, text).sum(), wv
            )
    grad_a /= coverage(a.shape[-1], WINDOW[0], starts_a).double()
    grad_v /= coverage(v.shape[2], WINDOW[1], starts_v).double()[:, None, None]
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.grad_audio, grad_a, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(out.grad_video, grad_v, rtol=1e-6, atol=1e-8)


def test_windows_on_clip_boundaries_are_each_clip_alone():
    """No overlap on a clip three windows long: exactly the discriminator on each third."""
    disc = WindowDisc(seed=3)
    a, v, snr_a, snr_v, text = long_inputs(audio_len=3 * WINDOW[0], video_len=3 * WINDOW[1])
    sliding = discriminator_gradients(
        SlidingWindow(disc, WINDOW, overlap=0.0), a, v, snr_a, snr_v, text=text
    )

    def alone(a, v, snr_a, snr_v, text):
        thirds = disc(
            torch.cat(a.chunk(3, dim=-1)),
            torch.cat(v.chunk(3, dim=2)),
            snr_a.repeat(3),
            snr_v.repeat(3),
            text.repeat(3, 1),
        )
        return thirds.view(3, -1).sum(0)

    reference = discriminator_gradients(alone, a, v, snr_a, snr_v, text=text)
    for got, want in zip(
        (sliding.logits, sliding.grad_audio, sliding.grad_video),
        (reference.logits, reference.grad_audio, reference.grad_video),
        strict=True,
    ):
        torch.testing.assert_close(got, want)


def test_layout_counts_and_one_window_clips():
    assert window_count(16, 16, 0.5) == 1 and window_starts(16, 16, 1) == [0]
    assert window_count(48, 16, 0.5) == 5 and window_starts(48, 16, 5) == [0, 8, 16, 24, 32]
    assert window_count(48, 16, 0.0) == 3
    assert window_count(50, 16, 0.5) == 6  # never less overlap than asked
    starts = window_starts(50, 16, 6)
    assert starts[-1] == 34 and min(b - a for a, b in itertools.pairwise(starts)) >= 6
    disc = WindowDisc()
    a, v, snr_a, snr_v, text = long_inputs(audio_len=WINDOW[0], video_len=WINDOW[1])
    torch.testing.assert_close(
        SlidingWindow(disc, WINDOW)(a, v, snr_a, snr_v, text=text), disc(a, v, snr_a, snr_v, text)
    )


def test_audio_and_video_windows_cover_the_same_time():
    """Starts rounded in each modality on its own would put the video's second window at
    frame 5 (of 24) and the audio's at 21 (of 96), a quarter of a video frame apart; carried
    from the video they are exactly 4 times the video's. With a ratio that is not whole, each
    audio window starts within half an audio frame of its video window's time."""
    assert window_starts(24, 8, 4) == [0, 5, 11, 16] and window_starts(96, 32, 4)[1] == 21
    audio, video = paired_starts((96, 24), (32, 8), 4)
    assert video == [0, 5, 11, 16] and audio == [4 * s for s in video]
    assert SlidingWindow(WindowDisc(), (32, 8), overlap=0.25).layout(96, 24) == (audio, video)
    for lengths, window in (((50, 21), (17, 7)), ((37, 100), (11, 30)), ((30, 9), (10, 3))):
        count = window_count(max(lengths), max(window), 0.5)
        audio, video = paired_starts(lengths, window, count)
        assert audio[0] == video[0] == 0
        assert (audio[-1], video[-1]) == (lengths[0] - window[0], lengths[1] - window[1])
        for sa, sv in zip(audio, video, strict=True):  # as fractions of each clip's travel
            travel = (lengths[0] - window[0], lengths[1] - window[1])
            assert abs(sa - sv * travel[0] / travel[1]) <= 0.5 + 1e-9


def test_bad_layouts_are_named():
    a, v, snr_a, snr_v, text = long_inputs(audio_len=20, video_len=10)
    with pytest.raises(InputError, match="overlap must lie in"):
        SlidingWindow(WindowDisc(), WINDOW, overlap=1.0)
    with pytest.raises(InputError, match="the video is 3 latent frames long, shorter than"):
        SlidingWindow(WindowDisc(), WINDOW)(a, v[:, :, :3], snr_a, snr_v, text=text)
    with pytest.raises(InputError, match=r"the audio spans 2.50 windows but the video 1.50"):
        SlidingWindow(WindowDisc(), WINDOW)(a, v[:, :, :6], snr_a, snr_v, text=text)


# -- the synthetic world: clips three windows long -------------------------------------------

THIRDS, STEPS, PAIRS = 3, 25, 4


class Concatenated(BaseModel):
    """A world base model denoising a clip ``THIRDS`` clips long along its time axis ``dim``
    (unbatched) as that many independent world clips, one after the other."""

    def __init__(self, model: BaseModel, dim: int) -> None:
        self.model, self.dim, self.modality = model, dim, model.modality
        self.scheduler_config = model.scheduler_config

    def latent_shape(self) -> tuple[int, ...]:
        shape = list(self.model.latent_shape())
        shape[self.dim] *= THIRDS
        return tuple(shape)

    def thirds(self, x: Tensor) -> Tensor:
        """(B, ..., 3T, ...) -> (3B, ..., T, ...), third-major."""
        return torch.cat(x.chunk(THIRDS, dim=self.dim + 1))

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        t = torch.as_tensor(t).reshape(-1).expand(x_t.shape[0]).repeat(THIRDS)
        out = self.model.predict(self.thirds(x_t), t)
        return torch.cat(out.chunk(THIRDS), dim=self.dim + 1)

    def decode(self, latents: Tensor) -> Tensor:
        return self.model.decode(self.thirds(latents))


@pytest.fixture(scope="module")
def world():
    from mmdisco.world.models import ASSETS_DIR, load_world_models

    audio, video = load_world_models()
    disc = load_discriminator(ASSETS_DIR / "pipeline" / "discriminator").eval()
    return Concatenated(audio, dim=1), Concatenated(video, dim=1), disc


def world_scores(audio: Concatenated, video: Concatenated, disc: Any) -> dict[str, float]:
    from mmdisco.world import evaluate

    streams = [
        Stream(m, m.make_scheduler(), generator=torch.Generator().manual_seed(10 + i))
        for i, m in enumerate((audio, video))
    ]
    a, v = joint_sample(*streams, disc, batch_size=PAIRS, num_inference_steps=STEPS, progress=False)
    return evaluate(video.decode(v), audio.decode(a))


def test_world_clip_three_windows_long_aligns_as_each_window_alone(world):
    """Guided through windows on the clip's thirds, a world clip three windows long scores as
    its three clips guided alone (each with the discriminator on itself).

    Overlapping windows are not used here: on concatenated clips a window that straddles two
    thirds sees the end of one world clip spliced to the start of another, which no world
    clip looks like, and the shipped discriminator (a codebook of whole clips) pulls both
    halves towards whole clips. Measured on 32 clips three windows long (96 thirds), 25 DDPM
    steps, semantic / temporal alignment: 1.00 / 1.00 with windows on the thirds, 0.72 / 0.72
    with overlap 0.5, 0.74 / 0.75 with overlap 0.25, 0.20 / 0.34 unguided. A real video
    model's long clips are continuous and have no such seams. The continuous world's network,
    which reads time through convolutions, keeps most of its alignment across such seams
    (benchmarks/sliding_window.py; tests/test_continuous_benchmark.py runs it).
    """
    audio, video, disc = world
    window = (audio.model.latent_shape()[-1], video.model.latent_shape()[1])

    def alone(a: Tensor, v: Tensor, snr_a: Tensor, snr_v: Tensor) -> Tensor:
        logits = disc(audio.thirds(a), video.thirds(v), snr_a.repeat(THIRDS), snr_v.repeat(THIRDS))
        return logits.view(THIRDS, -1).sum(0)

    sliding = world_scores(audio, video, SlidingWindow(disc, window, overlap=0.0))
    reference = world_scores(audio, video, alone)
    assert reference["semantic"] > 0.9 and reference["temporal"] > 0.9
    for key in ("semantic", "temporal", "validity_audio", "validity_video"):
        assert math.isclose(sliding[key], reference[key], abs_tol=0.02), key
