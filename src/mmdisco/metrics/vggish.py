"""VGGish (Hershey et al. 2017) for FAD, as used by AudioLDM's evaluation code.

Preprocessing reimplements ``vggish_input.waveform_to_examples`` / ``mel_features`` from
tensorflow/models (the numpy reference torchvggish also copies): mono, resample to 16 kHz,
25 ms periodic-Hann frames every 10 ms, |rfft(512)|, 64 HTK-mel bands 125-7500 Hz,
log(mel + 0.01), non-overlapping 96-frame (0.96 s) patches -> (n, 1, 96, 64).

The network keeps torchvggish's module layout (``features.*``, ``embeddings.*``) so the
harritaylor/torchvggish state dict converts by a plain format change. Like
``audioldm_eval`` (``use_pca=False, use_activation=False``) the embedding is the 128-d output
of the last linear layer, before its ReLU and without the PCA/quantisation postprocessor.

The waveform reaches the network as audioldm_eval feeds it (``audio_input="audioldm_eval"``,
the default: channel 0, mean removed, torchaudio sinc resampling, padded to 2 s) or as plain
torchvggish does (``"torchvggish"``: channel mean, no padding); see docs/metrics.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mmdisco.metrics.base import AudioClip, first_channel, load_weights, resample, to_mono

SAMPLE_RATE = 16000
STFT_WINDOW_SECONDS = 0.025
STFT_HOP_SECONDS = 0.010
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s at 100 frames per second
EXAMPLE_HOP_FRAMES = 96


def _hertz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + hz / 700.0)


def mel_matrix(num_spectrogram_bins: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """VGGish's (bins, 64) HTK-mel weights; the DC bin is zeroed as in the reference."""
    bins_mel = _hertz_to_mel(np.linspace(0.0, sample_rate / 2.0, num_spectrogram_bins))
    edges = np.linspace(
        _hertz_to_mel(np.array(MEL_MIN_HZ)), _hertz_to_mel(np.array(MEL_MAX_HZ)), NUM_MEL_BINS + 2
    )
    weights = np.empty((num_spectrogram_bins, NUM_MEL_BINS))
    for i in range(NUM_MEL_BINS):
        lower, center, upper = edges[i : i + 3]
        rising = (bins_mel - lower) / (center - lower)
        falling = (upper - bins_mel) / (upper - center)
        weights[:, i] = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


def _frame(x: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Frames without padding (a trailing partial frame is dropped, as in the reference)."""
    count = 1 + (x.shape[0] - window) // hop
    if count < 1:
        return np.zeros((0, window, *x.shape[1:]), dtype=x.dtype)
    idx = np.arange(window)[None, :] + hop * np.arange(count)[:, None]
    return x[idx]


def log_mel_spectrogram(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(N,) float waveform at ``sample_rate`` -> (frames, 64) log-mel, VGGish settings."""
    window = round(sample_rate * STFT_WINDOW_SECONDS)
    hop = round(sample_rate * STFT_HOP_SECONDS)
    fft_length = 2 ** int(np.ceil(np.log2(window)))
    periodic_hann = 0.5 - 0.5 * np.cos(2 * np.pi / window * np.arange(window))
    frames = _frame(np.asarray(waveform, np.float64), window, hop)
    magnitude = np.abs(np.fft.rfft(frames * periodic_hann, fft_length))
    return np.log(magnitude @ mel_matrix(magnitude.shape[1], sample_rate) + LOG_OFFSET)


# How the waveform reaches VGGish (docs/metrics.md, "FAD inputs").
AUDIO_INPUTS = ("audioldm_eval", "torchvggish")
AUDIOLDM_EVAL_MIN_SAMPLES = 32000  # audioldm_eval pads shorter clips to 2 s at 16 kHz


def audioldm_eval_waveform(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """audioldm_eval ``WaveDataset.read_from_file``: channel 0, minus its mean, torchaudio
    sinc resampling to 16 kHz, zero-padded at the end to at least 2 s."""
    audio = first_channel(samples)
    audio = resample(audio - audio.mean(), sample_rate, SAMPLE_RATE, method="torchaudio")
    return np.pad(audio, (0, max(0, AUDIOLDM_EVAL_MIN_SAMPLES - audio.shape[0])))


def waveform_to_examples(
    samples: np.ndarray, sample_rate: int, audio_input: str = "torchvggish"
) -> torch.Tensor:
    """Audio (N,) or (C, N) in [-1, 1] -> VGGish input (n, 1, 96, 64) float32.

    ``audio_input="torchvggish"``: channel mean, resampling to 16 kHz (soxr; torchvggish uses
    resampy); a clip shorter than 0.96 s gives n = 0 rows. ``"audioldm_eval"``: the input of
    the FAD in audioldm_eval (:func:`audioldm_eval_waveform`), e.g. 2 rows for a 1.6 s clip.
    """
    if audio_input == "audioldm_eval":
        mono = audioldm_eval_waveform(samples, sample_rate)
    elif audio_input == "torchvggish":
        mono = resample(to_mono(samples), sample_rate, SAMPLE_RATE)
    else:
        raise ValueError(f"unknown audio_input {audio_input!r}; choose from {AUDIO_INPUTS}")
    log_mel = log_mel_spectrogram(mono, SAMPLE_RATE)
    examples = _frame(log_mel, EXAMPLE_FRAMES, EXAMPLE_HOP_FRAMES)
    return torch.from_numpy(examples.astype(np.float32)).unsqueeze(1)


@dataclass(frozen=True)
class VGGishConfig:
    """Channel widths; the defaults are the published network, tests use tiny ones."""

    channels: tuple[int, int, int, int] = (64, 128, 256, 512)
    hidden: int = 4096
    embedding: int = 128


class VGGish(nn.Module):
    """VGG-like net on (n, 1, 96, 64) log-mel patches -> (n, embedding)."""

    def __init__(self, config: VGGishConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VGGishConfig()
        c1, c2, c3, c4 = config.channels
        self.features = nn.Sequential(
            *self._conv(1, c1),
            nn.MaxPool2d(2, 2),
            *self._conv(c1, c2),
            nn.MaxPool2d(2, 2),
            *self._conv(c2, c3),
            *self._conv(c3, c3),
            nn.MaxPool2d(2, 2),
            *self._conv(c3, c4),
            *self._conv(c4, c4),
            nn.MaxPool2d(2, 2),
        )
        self.embeddings = nn.Sequential(
            nn.Linear(c4 * 6 * 4, config.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(config.hidden, config.embedding),
        )

    @staticmethod
    def _conv(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, 1, 1), nn.ReLU(inplace=True)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        # TF flattens NHWC; torchvggish transposes before flattening to keep the same order.
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return self.embeddings(x)


class VGGishExtractor:
    """FAD features: one 128-d VGGish embedding per 0.96 s of audio."""

    name = "vggish"
    modality = "audio"
    reference = "haoheliu/audioldm_eval (FAD) with harritaylor/torchvggish"

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        config: VGGishConfig | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        audio_input: str = "audioldm_eval",
    ) -> None:
        if audio_input not in AUDIO_INPUTS:
            raise ValueError(f"unknown audio_input {audio_input!r}; choose from {AUDIO_INPUTS}")
        self.audio_input = audio_input
        self.model = VGGish(config).eval().to(device)
        if weights is not None:
            load_weights(self.model, weights)
        # Random weights are only meaningful for tests, never for reported numbers.
        self.comparable_with_published = weights is not None and config in (None, VGGishConfig())
        self.device, self.batch_size = device, batch_size

    def preprocess(self, media: AudioClip) -> torch.Tensor:
        return waveform_to_examples(media.samples, media.sample_rate, self.audio_input)

    @torch.no_grad()
    def __call__(self, media: AudioClip) -> np.ndarray:
        x = self.preprocess(media)
        outs = [
            self.model(chunk.to(self.device)).double().cpu() for chunk in x.split(self.batch_size)
        ]
        dim = self.model.config.embedding
        return torch.cat(outs).numpy() if outs else np.zeros((0, dim))
