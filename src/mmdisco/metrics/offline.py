"""Weight-free feature extractors for smoke tests and the synthetic world.

They need no downloads, so FAD/FVD/KVD can run anywhere (CI, the synthetic world), but
their values are NOT comparable with any published FAD/FVD: every report carries
``comparable_with_published = False`` for them. They are deterministic given ``seed``.

* audio: VGGish-style log-mel (16 kHz, 64 bands) -> per-band mean and std over time, plus a
  fixed Gaussian random projection of 0.96 s log-mel patches (one row per clip).
* video: per-channel colour histograms (16 bins) of all frames plus frame-difference motion
  statistics (mean / std / max of the per-frame mean absolute difference, and a histogram
  of the difference magnitudes), one row per clip.
"""

from __future__ import annotations

import numpy as np
import torch

from mmdisco.metrics.base import AudioClip, VideoClip, resample, to_mono
from mmdisco.metrics.vggish import EXAMPLE_FRAMES, SAMPLE_RATE, log_mel_spectrogram


class OfflineAudioExtractor:
    """Log-mel statistics + random projection; see the module docstring."""

    name = "offline-logmel"
    modality = "audio"
    comparable_with_published = False

    def __init__(self, projection_dim: int = 64, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        size = (EXAMPLE_FRAMES * 64, projection_dim)
        self.projection = torch.randn(size, generator=gen, dtype=torch.float64).numpy()
        self.projection /= np.sqrt(size[0])

    def preprocess(self, media: AudioClip) -> torch.Tensor:
        mono = resample(to_mono(media.samples), media.sample_rate, SAMPLE_RATE)
        if mono.shape[0] < SAMPLE_RATE // 10:
            raise ValueError(f"audio too short for log-mel features: {mono.shape[0]} samples")
        return torch.from_numpy(log_mel_spectrogram(mono, SAMPLE_RATE))  # (frames, 64)

    def __call__(self, media: AudioClip) -> np.ndarray:
        log_mel = self.preprocess(media).numpy()
        stats = np.concatenate([log_mel.mean(axis=0), log_mel.std(axis=0)])
        # Project the first 0.96 s (zero-padded if shorter) to capture spectro-temporal shape.
        patch = np.zeros((EXAMPLE_FRAMES, 64))
        n = min(EXAMPLE_FRAMES, log_mel.shape[0])
        patch[:n] = log_mel[:n] - log_mel.mean()
        return np.concatenate([stats, patch.reshape(-1) @ self.projection])[None]


class OfflineVideoExtractor:
    """Colour histograms + motion statistics; see the module docstring."""

    name = "offline-colour-motion"
    modality = "video"
    comparable_with_published = False

    def __init__(self, bins: int = 16) -> None:
        self.bins = bins

    def preprocess(self, media: VideoClip) -> torch.Tensor:
        frames = np.asarray(media.frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 2:
            raise ValueError(f"video must be (F>=2, H, W, 3) uint8, got shape {frames.shape}")
        return torch.from_numpy(frames.astype(np.float64) / 255.0)

    def __call__(self, media: VideoClip) -> np.ndarray:
        x = self.preprocess(media).numpy()
        colour = [
            np.histogram(x[..., c], bins=self.bins, range=(0.0, 1.0))[0] / x[..., c].size
            for c in range(3)
        ]
        diff = np.abs(np.diff(x, axis=0))  # (F-1, H, W, 3)
        per_frame = diff.mean(axis=(1, 2, 3))
        motion_hist = np.histogram(diff, bins=self.bins, range=(0.0, 1.0))[0] / diff.size
        motion = [per_frame.mean(), per_frame.std(), per_frame.max()]
        return np.concatenate([*colour, motion, motion_hist])[None]
