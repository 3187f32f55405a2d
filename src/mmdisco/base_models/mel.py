"""Log-mel spectrograms as the mel-latent audio models (AudioLDM, Auffusion) expect them.

Both follow HiFi-GAN's ``mel_spectrogram``: magnitude STFT (not power) with a Hann window,
reflect padding of ``(n_fft - hop) / 2`` on each side and no centring, a Slaney-normalised mel
filterbank, then ``log(clamp(x, 1e-5))``. The vocoder inverts exactly this representation.
Auffusion's magnitude is ``sqrt(|X|^2 + 1e-9)`` (``magnitude_floor``), which lifts silence.
"""

from __future__ import annotations

from dataclasses import dataclass

import librosa
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = 8000.0
    clamp: float = 1e-5
    magnitude_floor: float = 0.0  # |X| is computed as sqrt(|X|^2 + magnitude_floor)


def log_mel(waveform: Tensor, config: MelConfig, num_frames: int | None = None) -> Tensor:
    """``(B, L)`` waveform -> ``(B, T, n_mels)`` log-mel, padded/cropped to ``num_frames``."""
    if waveform.ndim != 2:
        raise ValueError(f"waveform must have shape (B, L), got {tuple(waveform.shape)}")
    pad = (config.n_fft - config.hop_length) // 2
    x = F.pad(waveform.float()[:, None], (pad, pad), mode="reflect")[:, 0]
    window = torch.hann_window(config.win_length, device=x.device)
    spec = torch.stft(
        x,
        config.n_fft,
        hop_length=config.hop_length,
        win_length=config.win_length,
        window=window,
        center=False,
        return_complex=True,
    )
    if config.magnitude_floor:
        spec = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + config.magnitude_floor)
    else:
        spec = spec.abs()
    basis = librosa.filters.mel(
        sr=config.sample_rate,
        n_fft=config.n_fft,
        n_mels=config.n_mels,
        fmin=config.fmin,
        fmax=config.fmax,
    )
    mel = torch.from_numpy(basis).to(spec) @ spec  # (B, n_mels, T)
    mel = torch.log(mel.clamp_min(config.clamp)).transpose(1, 2)
    if num_frames is not None:
        mel = fit_frames(mel, num_frames, fill=float(torch.log(torch.tensor(config.clamp))))
    return mel


def fit_frames(mel: Tensor, num_frames: int, fill: float) -> Tensor:
    """Crop or pad (with ``fill``, i.e. silence) the time axis (dim 1) to ``num_frames``."""
    if mel.shape[1] >= num_frames:
        return mel[:, :num_frames]
    pad = mel.new_full((mel.shape[0], num_frames - mel.shape[1], mel.shape[2]), fill)
    return torch.cat([mel, pad], dim=1)
