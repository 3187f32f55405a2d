"""Discriminators built from others: pooled inputs, summed logits, and the one loader.

``PooledDiscriminator`` runs a discriminator on average-pooled inputs (pooling is linear, so
guidance still acts in the full spaces); ``SummedDiscriminators`` adds logits, the product
of several ratio estimates. :func:`load_discriminator` reads every kind the library saves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdisco.errors import InputError, check_int
from mmdisco.io import read_json, read_json_object, write_json_atomic

POOL_CONFIG = "pooling.json"
SUM_CONFIG = "summed.json"


class PooledDiscriminator(nn.Module):
    """A :class:`mmdisco.discriminator.Discriminator` that sees the video average-pooled by
    ``video_pool`` in H and W and the audio average-pooled by ``audio_pool`` along time.

    Pooling is linear, so the input-gradient is the discriminator's gradient spread evenly
    back over each pooled cell, and guidance works in the full spaces. It cuts the
    discriminator's cost on a CPU by the pool size, while one-pixel shifts of the world's
    object still change the pooled values. ``audio_pool=4`` would bring the audio to the
    video's frame rate; the demo keeps the audio's full rate (pooled, the mlp head stayed on
    its starting saddle for 700 steps in our runs).
    """

    def __init__(self, disc: nn.Module, video_pool: int = 1, audio_pool: int = 1) -> None:
        super().__init__()
        self.disc = disc
        self.video_pool = check_int("video_pool", video_pool, 1)
        self.audio_pool = check_int("audio_pool", audio_pool, 1)

    def forward(
        self, audio: Tensor, video: Tensor, log_snr_audio: Tensor, log_snr_video: Tensor, **kw: Any
    ):
        if self.video_pool > 1:
            video = F.avg_pool3d(video, (1, self.video_pool, self.video_pool))
        if self.audio_pool > 1:
            audio = F.avg_pool1d(audio, self.audio_pool)
        return self.disc(audio, video, log_snr_audio, log_snr_video, **kw)

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        self.disc.save_pretrained(directory, dtype=dtype)
        write_json_atomic(
            Path(directory) / POOL_CONFIG,
            {"video_pool": self.video_pool, "audio_pool": self.audio_pool},
        )


class SummedDiscriminators(nn.Module):
    """Logits of several discriminators added: the product of their ratio estimates.

    In the world, class and event times are independent, in real pairs and in fakes alike, so
    the log ratio is a class term plus an event term. Each head tends to learn one of them
    (the time-aligned head the events, which alone tell almost every fake apart, so its class
    features never get a gradient; the pooled mlp head only the class), and their sum guides
    towards both.
    """

    def __init__(self, *discs: nn.Module) -> None:
        super().__init__()
        self.discs = nn.ModuleList(discs)

    def forward(
        self, audio: Tensor, video: Tensor, log_snr_audio: Tensor, log_snr_video: Tensor, **kw: Any
    ):
        return sum(d(audio, video, log_snr_audio, log_snr_video, **kw) for d in self.discs)

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Each part in ``directory/part_{i}``, listed in ``directory/summed.json``."""
        parts = [f"part_{i}" for i in range(len(self.discs))]
        for name, disc in zip(parts, self.discs, strict=True):
            disc.save_pretrained(Path(directory) / name, dtype=dtype)
        write_json_atomic(Path(directory) / SUM_CONFIG, {"parts": parts})


def build_discriminator(config: Any) -> nn.Module:
    """The untrained discriminator a config describes (:class:`DiscriminatorConfig` or
    :class:`SharedLatentConfig`), under the caller's random state and default device."""
    from mmdisco.discriminator.model import Discriminator
    from mmdisco.discriminator.shared_latent import SharedLatentConfig, SharedLatentDiscriminator

    if isinstance(config, SharedLatentConfig):
        return SharedLatentDiscriminator(config)
    return Discriminator(config)


def text_dims(config: Any) -> tuple[int | None, int | None]:
    """The widths of the pooled text embeddings a discriminator config takes (audio, video);
    None for a modality it reads no text for."""
    return getattr(config, "text_dim_audio", None), getattr(config, "text_dim_video", None)


def load_discriminator(directory: str | Path, device: str = "cpu") -> nn.Module:
    """A discriminator saved by ``Discriminator``, :class:`CodebookDiscriminator`,
    :class:`SharedLatentDiscriminator`, :class:`PooledDiscriminator` or
    :class:`SummedDiscriminators`, or converted from the
    reference release by :func:`mmdisco.discriminator.official.convert_official`: the one
    loader for every saved discriminator."""
    from mmdisco.discriminator.codebook import CodebookDiscriminator, discriminator_kind
    from mmdisco.discriminator.model import Discriminator
    from mmdisco.discriminator.official import OfficialDiscriminator, is_official
    from mmdisco.discriminator.shared_latent import KIND as SHARED_LATENT
    from mmdisco.discriminator.shared_latent import SharedLatentDiscriminator

    sum_file = Path(directory) / SUM_CONFIG
    if sum_file.exists():
        parts = read_json_object(sum_file).get("parts")
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            message = f"'parts' must be a list of folder names, got {parts!r}"
            raise InputError(message, str(sum_file))
        return SummedDiscriminators(
            *(load_discriminator(Path(directory) / p, device) for p in parts)
        )
    if is_official(directory):
        return OfficialDiscriminator.from_pretrained(directory, device)
    config_file = Path(directory) / "config.json"
    config = read_json_object(config_file) if config_file.is_file() else {}
    if discriminator_kind(config) == "codebook":
        return CodebookDiscriminator.from_pretrained(directory, device)
    if config.get("discriminator_type") == SHARED_LATENT:
        return SharedLatentDiscriminator.from_pretrained(directory, device)
    disc = Discriminator.from_pretrained(directory, device)
    pool_file = Path(directory) / POOL_CONFIG
    if pool_file.exists():
        pooling = read_json(pool_file)
        if not isinstance(pooling, dict) or set(pooling) - {"video_pool", "audio_pool"}:
            raise InputError(f"expected video_pool and audio_pool, got {pooling!r}", str(pool_file))
        try:
            return PooledDiscriminator(disc, **pooling)
        except InputError as err:
            raise InputError(str(err), str(pool_file)) from None
    return disc
