"""CLAP text-audio score through transformers' ``ClapModel`` (LAION-CLAP), weights local only.

av-benchmark's LAION-CLAP score is the mean cosine similarity between the CLAP embedding of
each sample's caption and of its audio, with ``music_speech_audioset_epoch_15_esc_89.98.pt``
(HTSAT-base, no fusion); its transformers port is ``laion/larger_clap_music_and_speech``.
Give the *directory* of a transformers checkpoint (``config.json``, ``model.safetensors`` and
the processor files, e.g. from ``save_pretrained``); nothing is downloaded.

Audio input, as av-benchmark's ``AudioDataset`` + ``laion_clap``: channel mean, minus its
mean, torchaudio sinc resampling to 48 kHz, truncated to ``max_seconds`` (8 s), rounded
through int16 (laion_clap's quantisation), then the checkpoint's own ``ClapFeatureExtractor``
(for the non-fused models: repeat-pad to 10 s, log-mel). That last step is transformers'
numpy port of laion_clap's torchlibrosa front end, equal up to round-off, not bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmdisco.metrics.base import AudioClip, resample, to_mono

SAMPLE_RATE = 48000


def clap_waveform(samples: np.ndarray, sample_rate: int, max_seconds: float = 8.0) -> np.ndarray:
    """The waveform CLAP sees (module docstring), float32 at 48 kHz."""
    mono = to_mono(samples)
    wav = resample(mono - mono.mean(), sample_rate, SAMPLE_RATE, method="torchaudio")
    wav = wav[: int(SAMPLE_RATE * max_seconds)]
    return (np.round(np.clip(wav, -1.0, 1.0) * 32767.0) / 32767.0).astype(np.float32)


def _pooled(output) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and a ModelOutput in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClapScorer:
    """Unit-norm CLAP embeddings of audio clips and captions."""

    name = "laion-clap (transformers ClapModel)"
    reference = "hkchengrex/av-benchmark LAION-CLAP score"

    def __init__(
        self, model_dir: str | os.PathLike, device: str = "cpu", max_seconds: float = 8.0
    ) -> None:
        from transformers import ClapModel, ClapProcessor

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_dir}: not a transformers CLAP checkpoint directory (no config.json)"
            )
        self.model = ClapModel.from_pretrained(model_dir, local_files_only=True).eval().to(device)
        self.processor = ClapProcessor.from_pretrained(model_dir, local_files_only=True)
        self.device, self.max_seconds = device, max_seconds
        self.source = model_dir.name

    @torch.no_grad()
    def embed_audio(self, media: AudioClip) -> torch.Tensor:
        """(D,) unit vector."""
        wav = clap_waveform(media.samples, media.sample_rate, self.max_seconds)
        if wav.shape[0] == 0:
            raise ValueError("CLAP needs non-empty audio")
        inputs = self.processor(audio=[wav], sampling_rate=SAMPLE_RATE, return_tensors="pt")
        out = _pooled(self.model.get_audio_features(**inputs.to(self.device)))
        return F.normalize(out.float().cpu(), dim=-1)[0]

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, D) unit vectors."""
        inputs = self.processor(text=list(texts), return_tensors="pt", padding=True)
        out = _pooled(self.model.get_text_features(**inputs.to(self.device)))
        return F.normalize(out.float().cpu(), dim=-1)


def clap_score(text: torch.Tensor, audio: torch.Tensor) -> float:
    """Mean cosine similarity of row-paired text and audio embeddings (raw, in [-1, 1])."""
    if text.shape != audio.shape:
        raise ValueError(
            f"CLAP embeddings must be paired, got {tuple(text.shape)} vs {tuple(audio.shape)}"
        )
    return float(F.cosine_similarity(text.float(), audio.float(), dim=-1).mean())
