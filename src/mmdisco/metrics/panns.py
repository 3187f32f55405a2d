"""PANNs CNN14 (Kong et al. 2020) for FD, KL and IS on audio, as av-benchmark computes them.

The network is qiuqiangkong/audioset_tagging_cnn ``Cnn14`` at 16 kHz (``Cnn14_16k_mAP=0.438``:
512-sample periodic-Hann STFT every 160 samples, 64 Slaney mel bands 50-8000 Hz, power in dB),
the one audioldm_eval and hkchengrex/av-benchmark load. Module and parameter names are the
official ones, including torchlibrosa's STFT-as-convolution kernels
(``spectrogram_extractor.stft.conv_real/conv_imag``) and the mel matrix
(``logmel_extractor.melW``), so ``checkpoint["model"]`` converts by a format change
(``mmdisco convert panns Cnn14_16k_mAP=0.438.pth panns.safetensors``).

Outputs, as av-benchmark's copy returns them: ``"2048"`` = ReLU(fc1(pooled)), the FD
embedding, and ``logits`` = fc_audioset(ReLU(fc1(pooled))), the KL / IS input (one row per
clip).

Input (``audio_input``): ``"av_benchmark"`` (default): channel mean, minus its mean,
torchaudio sinc resampling to 16 kHz, truncated to ``max_seconds`` (8 s);
``"audioldm_eval"``: channel 0, minus its mean, resampled, padded to 2 s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmdisco.metrics.base import AudioClip, load_weights, resample, to_mono
from mmdisco.metrics.vggish import audioldm_eval_waveform

SAMPLE_RATE = 16000
AUDIO_INPUTS = ("av_benchmark", "audioldm_eval")


@dataclass(frozen=True)
class PANNsConfig:
    """The 16 kHz CNN14 by default; tests shrink ``channels`` and ``embedding``."""

    sample_rate: int = SAMPLE_RATE
    window_size: int = 512
    hop_size: int = 160
    mel_bins: int = 64
    fmin: float = 50.0
    fmax: float = 8000.0
    classes: int = 527
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    embedding: int = 2048


class STFT(nn.Module):
    """torchlibrosa ``STFT``: a DFT as two strided convolutions whose kernels are the
    periodic-Hann-windowed cosine / negative sine rows (stored in the checkpoint)."""

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        bins = n_fft // 2 + 1
        window = librosa.filters.get_window("hann", n_fft, fftbins=True)
        phase = -2 * np.pi * np.outer(np.arange(n_fft), np.arange(bins)) / n_fft
        self.conv_real = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        with torch.no_grad():
            self.conv_real.weight.copy_(
                torch.from_numpy(np.cos(phase) * window[:, None]).T[:, None]
            )
            self.conv_imag.weight.copy_(
                torch.from_numpy(np.sin(phase) * window[:, None]).T[:, None]
            )
        self.requires_grad_(requires_grad=False)  # torchlibrosa's freeze_parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N) -> power spectrogram (B, 1, frames, bins), centred with reflect padding."""
        x = F.pad(x[:, None], (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        real, imag = self.conv_real(x), self.conv_imag(x)
        return (real**2 + imag**2).transpose(1, 2)[:, None]


class Spectrogram(nn.Module):
    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.stft = STFT(n_fft, hop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stft(x)


class LogmelFilterBank(nn.Module):
    """Power spectrogram -> 10 log10(max(mel, 1e-10)) with librosa's Slaney mel matrix."""

    def __init__(self, config: PANNsConfig) -> None:
        super().__init__()
        mel = librosa.filters.mel(
            sr=config.sample_rate,
            n_fft=config.window_size,
            n_mels=config.mel_bins,
            fmin=config.fmin,
            fmax=config.fmax,
        )
        self.melW = nn.Parameter(torch.from_numpy(mel.T).float(), requires_grad=False)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(torch.clamp(power @ self.melW, min=1e-10))


class ConvBlock(nn.Module):
    """Two 3x3 conv (no bias) + BatchNorm + ReLU, then average pooling."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.avg_pool2d(x, pool)


class Cnn14(nn.Module):
    """(B, N) 16 kHz waveform -> {"2048": (B, embedding), "logits": (B, classes)}."""

    def __init__(self, config: PANNsConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PANNsConfig()
        self.spectrogram_extractor = Spectrogram(config.window_size, config.hop_size)
        self.logmel_extractor = LogmelFilterBank(config)
        self.bn0 = nn.BatchNorm2d(config.mel_bins)
        cin = 1
        for i, cout in enumerate(config.channels, start=1):
            setattr(self, f"conv_block{i}", ConvBlock(cin, cout))
            cin = cout
        self.fc1 = nn.Linear(cin, config.embedding)
        self.fc_audioset = nn.Linear(config.embedding, config.classes)

    def forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.logmel_extractor(self.spectrogram_extractor(waveform))  # (B, 1, T, mel)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # BatchNorm over mel bands
        blocks = len(self.config.channels)
        for i in range(1, blocks + 1):
            x = getattr(self, f"conv_block{i}")(x, (2, 2) if i < blocks else (1, 1))
        x = x.mean(dim=3)  # over frequency
        x = x.max(dim=2).values + x.mean(dim=2)  # over time
        embedding = F.relu(self.fc1(x))
        return {"2048": embedding, "logits": self.fc_audioset(embedding)}


def prepare_waveform(
    samples: np.ndarray, sample_rate: int, audio_input: str = "av_benchmark", max_seconds=8.0
) -> np.ndarray:
    """The waveform PANNs sees (module docstring)."""
    if audio_input == "audioldm_eval":
        return audioldm_eval_waveform(samples, sample_rate)
    if audio_input != "av_benchmark":
        raise ValueError(f"unknown audio_input {audio_input!r}; choose from {AUDIO_INPUTS}")
    mono = to_mono(samples)
    mono = resample(mono - mono.mean(), sample_rate, SAMPLE_RATE, method="torchaudio")
    return mono[: int(SAMPLE_RATE * max_seconds)]


class PANNsExtractor:
    """One CNN14 embedding (FD) and one logit row (KL, IS) per clip."""

    name = "panns-cnn14-16k"
    modality = "audio"
    reference = "hkchengrex/av-benchmark (PANNs Cnn14_16k_mAP=0.438)"

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        config: PANNsConfig | None = None,
        device: str = "cpu",
        audio_input: str = "av_benchmark",
        max_seconds: float = 8.0,
    ) -> None:
        if audio_input not in AUDIO_INPUTS:
            raise ValueError(f"unknown audio_input {audio_input!r}; choose from {AUDIO_INPUTS}")
        self.model = Cnn14(config).eval().to(device)
        if weights is not None:
            load_weights(self.model, weights)
        self.comparable_with_published = weights is not None and config in (None, PANNsConfig())
        self.device, self.audio_input, self.max_seconds = device, audio_input, max_seconds

    def preprocess(self, media: AudioClip) -> torch.Tensor:
        wav = prepare_waveform(media.samples, media.sample_rate, self.audio_input, self.max_seconds)
        if wav.shape[0] <= self.model.config.window_size // 2:
            raise ValueError(f"audio too short for PANNs: {wav.shape[0]} samples at 16 kHz")
        return torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None]

    @torch.no_grad()
    def extract(self, media: AudioClip) -> tuple[np.ndarray, np.ndarray]:
        """(embedding (1, 2048), logits (1, 527)) float64."""
        out = self.model(self.preprocess(media).to(self.device))
        return out["2048"].double().cpu().numpy(), out["logits"].double().cpu().numpy()

    def __call__(self, media: AudioClip) -> np.ndarray:
        return self.extract(media)[0]


def kl_divergences(generated_logits: np.ndarray, reference_logits: np.ndarray) -> dict[str, float]:
    """av-benchmark ``compute_kl``: KL(reference || generated) of row-paired logits, summed
    over classes and averaged over pairs, with softmax and with per-class sigmoids."""
    gen = torch.as_tensor(np.asarray(generated_logits), dtype=torch.float64)
    ref = torch.as_tensor(np.asarray(reference_logits), dtype=torch.float64)
    if gen.shape != ref.shape or gen.ndim != 2:
        raise ValueError(
            f"paired logits must have equal (N, C) shapes, got {gen.shape} vs {ref.shape}"
        )
    n = gen.shape[0]

    def kl(log_p_gen: torch.Tensor, log_p_ref: torch.Tensor) -> float:
        return float(F.kl_div(log_p_gen, log_p_ref, reduction="sum", log_target=True) / n)

    return {
        "softmax": kl(F.log_softmax(gen, dim=1), F.log_softmax(ref, dim=1)),
        "sigmoid": kl(F.logsigmoid(gen), F.logsigmoid(ref)),
    }


def inception_score(logits: np.ndarray, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """audioldm_eval / av-benchmark ``compute_isc``: rows shuffled with
    ``np.random.RandomState(seed)``, split into ``splits`` chunks, exp(mean KL(p || mean p))
    per chunk; returns (mean, std) over chunks."""
    feats = np.asarray(logits, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < splits:
        raise ValueError(
            f"IS needs at least {splits} logit rows (one per split), got {feats.shape}"
        )
    n = feats.shape[0]
    x = torch.from_numpy(feats[np.random.RandomState(seed).permutation(n)])
    p, log_p = x.softmax(dim=1), x.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(dim=0, keepdim=True)
        scores.append(float((p[lo:hi] * (log_p[lo:hi] - q.log())).sum(dim=1).mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))
