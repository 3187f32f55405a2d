"""``Discriminator``: h(a_t, v_t, lambda_a, lambda_v [, text]) -> one logit per sample.

It follows the protocol of :mod:`mmdisco.guidance`: ``disc(audio, video, log_snr_audio,
log_snr_video, **cond)``. Noise levels are log-SNRs (schedule-independent), one per modality,
each with its own embedding, so either modality may be clean (log-SNR = +20) for
conditional generation. Nothing in the network mixes samples of a batch (GroupNorm, no
BatchNorm), so ``grad sum(h)`` is every sample's own gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mmdisco.discriminator.blocks import (
    NoiseLevelEmbedding,
    audio_stream,
    audio_tokens,
    video_stream,
    video_tokens,
)
from mmdisco.discriminator.config import DiscriminatorConfig
from mmdisco.discriminator.heads import build_head
from mmdisco.io import PretrainedMixin


class TextEmbedding(nn.Module):
    """Pooled text embedding ``(B, D)`` or ``(B, N, D)`` -> ``(B, E)``, with a learned null.

    The null embedding stands for "no text": it is used when no text is given and for the
    samples whose text is dropped in training (classifier-free guidance).
    """

    def __init__(self, text_dim: int, emb_dim: int, name: str) -> None:
        super().__init__()
        self.text_dim, self.name = text_dim, name
        self.proj = nn.Linear(text_dim, emb_dim)
        self.null = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, text: Tensor | None, batch: int, drop: Tensor | None) -> Tensor:
        null = self.null.expand(batch, -1)
        if text is None:
            return null
        if text.ndim == 3:
            text = text.mean(dim=1)
        if text.ndim != 2 or text.shape != (batch, self.text_dim):
            raise ValueError(
                f"{self.name} must have shape ({batch}, {self.text_dim}) or "
                f"({batch}, N, {self.text_dim}), got {tuple(text.shape)}"
            )
        emb = self.proj(text.to(self.proj.weight.dtype))
        return emb if drop is None else torch.where(drop[:, None], null, emb)


class Discriminator(PretrainedMixin, nn.Module):
    """MMDisCo's audio-video discriminator (paper A.3, A.8, Table 6); see the config."""

    config_class = DiscriminatorConfig
    pretrained_what = "a discriminator"
    pretrained_metadata = {"format": "pt"}  # noqa: RUF012

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        emb = config.time_embed_dim
        self.time_audio = NoiseLevelEmbedding(emb)
        self.time_video = NoiseLevelEmbedding(emb)
        self.text_audio = self._text(config.text_dim_audio, emb, "text_audio")
        self.text_video = self._text(config.text_dim_video, emb, "text_video")
        self.audio_stream = audio_stream(config)
        self.video_stream = video_stream(config)
        self.head = build_head(self.video_stream.out_channels, config)

    @staticmethod
    def _text(dim: int | None, emb: int, name: str) -> TextEmbedding | None:
        return None if dim is None else TextEmbedding(dim, emb, name)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each residual block's activations in the backward pass instead of
        keeping them (diffusers' name): less memory, about one more forward of compute. The
        double backward of L_DLSM goes through it (non-reentrant checkpointing)."""
        self.audio_stream.gradient_checkpointing = enabled
        self.video_stream.gradient_checkpointing = enabled

    @classmethod
    def for_shapes(
        cls,
        audio_shape: Sequence[int],
        video_shape: Sequence[int],
        head: str = "mlp",
        **changes: Any,
    ) -> Discriminator:
        """A small discriminator for these latent shapes (no batch axis); ``head`` = fusion."""
        return cls(DiscriminatorConfig.for_shapes(audio_shape, video_shape, fusion=head, **changes))

    # -- forward ---------------------------------------------------------------------------

    def forward(
        self,
        audio: Tensor,
        video: Tensor,
        log_snr_audio: Tensor | float,
        log_snr_video: Tensor | float,
        text_audio: Tensor | None = None,
        text_video: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        text_drop: Tensor | None = None,
    ) -> Tensor:
        """Logits ``h`` of shape ``(B,)`` (pre-sigmoid; ``h = log r_t`` at the optimum).

        ``log_snr_audio`` / ``log_snr_video`` are scalars or ``(B,)``. ``text_*`` are pooled
        text embeddings ``(B, D)`` or token embeddings ``(B, N, D)`` (averaged). In training
        mode each sample's texts are dropped together with probability ``text_drop_prob``,
        drawn from ``generator`` (or torch's global RNG when it is None), unless ``text_drop``
        ``(B,)`` says which (the trainer does, so that L_DLSM uses the matching prediction).
        """
        audio_feats, video_feats, cond = self._encode(
            audio, video, log_snr_audio, log_snr_video, text_audio, text_video, generator, text_drop
        )
        return self.head(audio_feats, video_feats, cond)

    def features(
        self,
        audio: Tensor,
        video: Tensor,
        log_snr_audio: Tensor | float,
        log_snr_video: Tensor | float,
        text_audio: Tensor | None = None,
        text_video: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The heads' inputs: audio tokens ``(B, La, C)``, per-frame video tokens ``(B, F, C)``."""
        audio_feats, video_feats, _ = self._encode(
            audio, video, log_snr_audio, log_snr_video, text_audio, text_video, generator, None
        )
        return audio_feats, video_feats

    def _encode(
        self,
        audio: Tensor,
        video: Tensor,
        log_snr_audio: Tensor | float,
        log_snr_video: Tensor | float,
        text_audio: Tensor | None,
        text_video: Tensor | None,
        generator: torch.Generator | None,
        text_drop: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        self._check_inputs(audio, video)
        batch = audio.shape[0]
        emb_audio = self.time_audio(per_sample(log_snr_audio, batch, "log_snr_audio", audio.device))
        emb_video = self.time_video(per_sample(log_snr_video, batch, "log_snr_video", video.device))
        if text_drop is not None and self.training:
            drop = text_drop.to(audio.device, torch.bool).reshape(batch)
        else:
            drop = self._text_drop(batch, audio.device, generator)
        emb_audio = emb_audio + self._text_emb(self.text_audio, text_audio, batch, drop, "audio")
        emb_video = emb_video + self._text_emb(self.text_video, text_video, batch, drop, "video")
        audio_feats = audio_tokens(self.audio_stream(audio, emb_audio))
        video_feats = video_tokens(self.video_stream(video, emb_video))
        return audio_feats, video_feats, torch.cat([emb_audio, emb_video], dim=-1)

    def _text_drop(
        self, batch: int, device: torch.device, generator: torch.Generator | None
    ) -> Tensor | None:
        """Per-sample mask of dropped texts (training only), shared by both modalities."""
        p = self.config.text_drop_prob
        if not self.training or p == 0.0 or (self.text_audio is None and self.text_video is None):
            return None
        rng_device = generator.device if generator is not None else device
        return (torch.rand(batch, generator=generator, device=rng_device) < p).to(device)

    @staticmethod
    def _text_emb(
        module: TextEmbedding | None,
        text: Tensor | None,
        batch: int,
        drop: Tensor | None,
        modality: str,
    ) -> Tensor | float:
        if module is None:
            if text is not None:
                raise ValueError(
                    f"text_{modality} was given but DiscriminatorConfig.text_dim_{modality} is "
                    f"None: this discriminator has no {modality} text conditioning"
                )
            return 0.0
        return module(text, batch, drop)

    def _check_inputs(self, audio: Tensor, video: Tensor) -> None:
        c = self.config
        n_down = c.num_downsamples
        if video.ndim != 5 or video.shape[1] != c.video_channels:
            raise ValueError(
                f"video must have shape (B, {c.video_channels}, F, H, W), got {tuple(video.shape)}"
            )
        if min(video.shape[3:]) < 2**n_down:
            raise ValueError(
                f"video H and W must be at least {2**n_down} for {n_down} (1, 2, 2) "
                f"downsamplings, got {tuple(video.shape)}"
            )
        if c.audio_kind == "1d":
            layout, ndim, min_size = "L", 3, c.audio_downsample**n_down
        else:
            layout, ndim, min_size = "T, F", 4, 2**n_down
        if audio.ndim != ndim or audio.shape[1] != c.audio_channels:
            raise ValueError(
                f"audio must have shape (B, {c.audio_channels}, {layout}) for audio_kind="
                f"{c.audio_kind!r}, got {tuple(audio.shape)}"
            )
        if audio.shape[-1] < min_size:
            raise ValueError(
                f"audio's last axis must be at least {min_size} for {n_down} downsamplings, "
                f"got {tuple(audio.shape)}"
            )
        if audio.shape[0] != video.shape[0]:
            raise ValueError(
                f"batch size mismatch: audio has {audio.shape[0]} samples, video {video.shape[0]}"
            )

    # -- persistence -----------------------------------------------------------------------

    @classmethod
    def num_parameters_for(cls, config: DiscriminatorConfig) -> int:
        """The parameter count of a discriminator with ``config``, without allocating it."""
        with torch.device("meta"):
            return sum(p.numel() for p in cls(config).parameters())


def per_sample(t: Tensor | float, batch: int, name: str, device: torch.device) -> Tensor:
    """``t`` (a scalar or one value per sample) as ``(batch,)`` float32 on ``device``."""
    t = torch.as_tensor(t, dtype=torch.float32, device=device).reshape(-1)
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise ValueError(
            f"{name} must be a scalar or have shape ({batch},), got {t.numel()} values"
        )
    return t
