"""The feature-extractor interface shared by every metric, and strict weight loading.

An extractor turns one media item into a (n, D) block of feature rows (VGGish gives one row
per 0.96 s patch, I3D one per clip). Metrics only ever see these rows, so a pretrained
network and a weight-free offline extractor are interchangeable; the
``comparable_with_published`` flag travels into every report so numbers from the two are
never confused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn


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


def load_weights(module: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a safetensors state dict into ``module`` strictly, with a readable error.

    Missing / unexpected keys and shape mismatches are all listed with the file name, because
    a silently half-loaded network gives plausible-looking but meaningless features.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix != ".safetensors":
        raise ValueError(
            f"{path}: expected a .safetensors file; convert checkpoints with "
            "`python -m mmdisco.metrics.convert` (see docs/metrics.md)"
        )
    state = load_file(str(path))
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


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling (librosa's soxr_hq); a no-op at equal rates."""
    if orig_sr == target_sr:
        return np.asarray(samples, dtype=np.float32)
    import librosa

    return librosa.resample(
        np.asarray(samples, dtype=np.float32), orig_sr=orig_sr, target_sr=target_sr
    )
