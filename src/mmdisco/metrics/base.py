"""The feature-extractor interface shared by every metric, and strict weight loading.

An extractor turns one media item into a (n, D) block of feature rows (VGGish gives one row
per 0.96 s patch, I3D one per clip). Metrics only ever see these rows, so a pretrained
network and a weight-free offline extractor are interchangeable; the
``comparable_with_published`` flag travels into every report so numbers from the two are
never confused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmdisco.io import load_tensors


@dataclass
class AudioClip:
    """Mono or multi-channel audio: ``samples`` float32 (N,) or (C, N) in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int


@dataclass
class VideoClip:
    """``frames`` uint8 (F, H, W, 3) RGB."""

    frames: np.ndarray
    fps: float


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps media to feature rows; see the module docstring."""

    name: str
    modality: str  # "audio" or "video"
    comparable_with_published: bool

    def preprocess(self, media: AudioClip | VideoClip) -> torch.Tensor:
        """Media -> the network's input batch (reference-implementation preprocessing)."""
        ...

    def __call__(self, media: AudioClip | VideoClip) -> np.ndarray:
        """Media -> features (n, D) float64."""
        ...


def check_state_dict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise naming missing / unexpected keys and shape mismatches (works on meta models)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if shapes:
        parts.append(f"shape mismatches {shapes[:8]}")
    if parts:
        raise ValueError(f"{source} does not match {type(module).__name__}: " + "; ".join(parts))


def read_weights(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a converted weights file; a missing file or another format is
    an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix != ".safetensors":
        raise ValueError(
            f"{path}: expected a .safetensors file; convert checkpoints with "
            "`mmdisco convert` (see docs/metrics.md)"
        )
    return load_tensors(path, device, finite=False)


def load_weights(module: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a safetensors state dict into ``module`` strictly, with a readable error.

    Missing / unexpected keys and shape mismatches are all listed with the file name, because
    a silently half-loaded network gives plausible-looking but meaningless features.
    """
    state, _ = read_weights(path)
    check_state_dict(module, state, str(path))
    module.load_state_dict(state, strict=True)
    return module


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(N,) or (C, N) -> (N,) float32 by channel averaging (as VGGish and ImageBind do)."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=0)
    if samples.ndim != 1:
        raise ValueError(f"audio must be (N,) or (C, N), got shape {samples.shape}")
    return samples


def first_channel(samples: np.ndarray) -> np.ndarray:
    """(N,) or (C, N) -> (N,) float32, channel 0 (what torchaudio-based references read)."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim not in (1, 2):
        raise ValueError(f"audio must be (N,) or (C, N), got shape {samples.shape}")
    return samples if samples.ndim == 1 else samples[0]


RESAMPLERS = ("soxr", "torchaudio")


def resample(samples: np.ndarray, orig_sr: int, target_sr: int, method: str = "soxr") -> np.ndarray:
    """Band-limited resampling of (N,) or (C, N); a no-op at equal rates.

    ``"soxr"`` is librosa's soxr_hq (flat to 0.9 x Nyquist); ``"torchaudio"`` reproduces
    ``torchaudio.functional.resample``'s default (see :func:`sinc_resample`), which the
    reference scripts of audioldm_eval, ImageBind and av-benchmark use.
    """
    if method not in RESAMPLERS:
        raise ValueError(f"unknown resampler {method!r}; choose from {RESAMPLERS}")
    samples = np.asarray(samples, dtype=np.float32)
    if orig_sr == target_sr:
        return samples
    if method == "torchaudio":
        return sinc_resample(torch.from_numpy(samples), orig_sr, target_sr).numpy()
    import librosa

    return librosa.resample(samples, orig_sr=orig_sr, target_sr=target_sr)


def sinc_resample(
    waveform: torch.Tensor,
    orig_sr: int,
    target_sr: int,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
) -> torch.Tensor:
    """Polyphase windowed-sinc resampling equal to ``torchaudio.functional.resample``'s
    default ``sinc_interp_hann`` (we cannot depend on torchaudio).

    The rates are reduced by their gcd; the low-pass cutoff is ``rolloff`` times the lower
    Nyquist frequency and the sinc is tapered by a squared-cosine (Hann) window that reaches
    zero after ``lowpass_filter_width`` zero crossings. Kernels are built in float64, applied
    in the input's dtype, and the output has ``ceil(target * N / orig)`` samples.
    """
    gcd = math.gcd(int(orig_sr), int(target_sr))
    orig, new = int(orig_sr) // gcd, int(target_sr) // gcd
    if orig == new:
        return waveform
    base_freq = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base_freq)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx) * base_freq
    t = t.clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, 1.0, t))
    kernel = (sinc * window * base_freq / orig).to(waveform.dtype)  # (new, 1, 2 width + orig)
    shape = waveform.shape
    x = waveform.reshape(-1, 1, shape[-1])
    x = F.pad(x, (width, width + orig))
    y = F.conv1d(x, kernel, stride=orig).transpose(1, 2).reshape(x.shape[0], -1)
    length = math.ceil(new * shape[-1] / orig)
    return y[..., :length].reshape(*shape[:-1], length)
