"""``DiscriminatorConfig``: every architectural choice of the discriminator, JSON-serialisable.

Presets reproduce the paper's two real-data discriminators (appendix A.3, Table 6):

* :meth:`DiscriminatorConfig.mm_diffusion`: MM-Diffusion pixels / raw 16 kHz waveform.
* :meth:`DiscriminatorConfig.text_to_av`: AudioLDM / Auffusion + AnimateDiff / VideoCrafter2
  latents with pooled text conditioning.

:meth:`DiscriminatorConfig.for_shapes` builds a small configuration for any pair of latent
shapes (used by the synthetic-world demo).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from mmdisco.errors import InputError, check_bool, check_float, check_int, check_ints

AUDIO_KINDS = ("1d", "2d")
FUSIONS = ("separable", "mlp", "transformer", "time_aligned")


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Architecture of :class:`mmdisco.Discriminator`.

    Inputs are audio ``(B, audio_channels, L)`` (``audio_kind="1d"``: waveform or any 1-D
    sequence whose last axis is time) or ``(B, audio_channels, T, F)`` (``"2d"``: spectrogram
    or latent, axis ``T`` is time), and video ``(B, video_channels, F, H, W)``.

    Both streams have ``len(channel_mult)`` levels of ``blocks_per_level`` residual blocks;
    between levels a downsampling residual block halves the video's H and W (factor
    ``(1, 2, 2)``, frames are kept) and, for 2-D audio, the frequency axis (``(1, 2)``). For
    1-D audio the *time* axis is the only axis, so it is divided by ``audio_downsample``
    (the paper's 4 for waveforms: 25600 samples -> 1600 tokens, still 100 per video frame).
    Pick 1 or 2 for short sequences so the audio keeps at least one token per video frame.
    """

    audio_channels: int = 1
    video_channels: int = 3
    audio_kind: str = "1d"
    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4)
    blocks_per_level: int = 2
    time_embed_dim: int = 128
    audio_downsample: int = 4
    # The n-th audio block (counted from 1 over all levels) dilates time by 2 ** (n % cycle);
    # cycle 1 means no dilation (the paper's setting for 2-D latents).
    audio_dilation_cycle: int = 10
    norm_groups: int = 32
    dropout: float = 0.0
    fusion: str = "mlp"
    fusion_width: int = 256
    fusion_layers: int = 4
    fusion_heads: int = 4
    # Also feed the mlp head the elementwise product of the pooled audio and video features
    # (low-rank bilinear pooling). When each base model matches its marginal, no function of
    # one modality alone tells real from fake pairs: training starts on a saddle, which
    # product features leave faster, since agreement between a category seen and one heard is
    # then linear in the head's input. Off in the paper's presets; ignored by other heads.
    fusion_product: bool = False
    # Anchors of the learned positional table; it is linearly resampled to each token
    # sequence, so a position means "relative time in the clip" for audio and video alike.
    num_positions: int = 64
    text_dim_audio: int | None = None
    text_dim_video: int | None = None
    text_drop_prob: float = 0.0

    def __post_init__(self) -> None:
        mult = check_ints("DiscriminatorConfig.channel_mult", self.channel_mult, minimum=1)
        object.__setattr__(self, "channel_mult", mult)
        positive = (
            "audio_channels",
            "video_channels",
            "channels",
            "blocks_per_level",
            "time_embed_dim",
            "audio_downsample",
            "audio_dilation_cycle",
            "norm_groups",
            "fusion_width",
            "fusion_layers",
            "fusion_heads",
            "num_positions",
        )
        for name in positive:
            check_int(f"DiscriminatorConfig.{name}", getattr(self, name), 1)
        for name in ("dropout", "text_drop_prob"):
            value = check_float(
                f"DiscriminatorConfig.{name}", getattr(self, name), 0.0, 1.0, open_max=True
            )
            object.__setattr__(self, name, value)
        check_bool("DiscriminatorConfig.fusion_product", self.fusion_product)
        if self.audio_kind not in AUDIO_KINDS:
            raise InputError(
                f"DiscriminatorConfig.audio_kind must be one of {AUDIO_KINDS}, "
                f"got {self.audio_kind!r}"
            )
        if self.fusion not in FUSIONS:
            raise InputError(
                f"DiscriminatorConfig.fusion must be one of {FUSIONS}, got {self.fusion!r}"
            )
        if self.fusion_width % self.fusion_heads:
            raise InputError(
                f"DiscriminatorConfig.fusion_width ({self.fusion_width}) must be divisible by "
                f"fusion_heads ({self.fusion_heads})"
            )
        if self.fusion == "time_aligned" and self.fusion_width % 2:
            raise InputError(
                f"DiscriminatorConfig.fusion_width must be even for fusion='time_aligned' (half "
                f"audio, half video channels per frame), got {self.fusion_width}"
            )
        for name in ("text_dim_audio", "text_dim_video"):
            if getattr(self, name) is not None:
                check_int(f"DiscriminatorConfig.{name}", getattr(self, name), 1)

    # -- serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiscriminatorConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown DiscriminatorConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DiscriminatorConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> DiscriminatorConfig:
        """A copy with some fields changed; unknown names raise a ``ValueError``."""
        return replace(self, **_checked_fields(changes))

    @property
    def num_downsamples(self) -> int:
        return len(self.channel_mult) - 1

    # -- presets ---------------------------------------------------------------------------

    @classmethod
    def mm_diffusion(cls, **changes: Any) -> DiscriminatorConfig:
        """Table 6, IND: MM-Diffusion's spaces, audio (1, 25600) waveform, video (3, 16, 64, 64).

        Channels 128 x (1, 2, 4), 2 blocks per level, 1-D dilated audio convolutions
        (dilation 2 ** (n % 10), as the reference release's ``max_dila=10``), audio downsample
        4, timestep dim 128. 12.72M parameters with the reference's linear ("separable")
        head, exactly the paper's 12.7M; 13.11M with the default MLP head.
        """
        base = cls(
            audio_channels=1,
            video_channels=3,
            audio_kind="1d",
            channels=128,
            channel_mult=(1, 2, 4),
            blocks_per_level=2,
            time_embed_dim=128,
            audio_downsample=4,
            audio_dilation_cycle=10,
        )
        return base.replace(**changes)

    @classmethod
    def text_to_av(cls, **changes: Any) -> DiscriminatorConfig:
        """Table 6, OOD: audio latent (8, 50, 16) (C, T, F), video latent (4, 16, 32, 32).

        Channels 256 x (1, 2, 4), 4 blocks per level, 2-D audio without dilation, timestep
        dim 256, pooled text embeddings of 512 (audio) and 768 (video) dims added to the
        timestep embeddings, 10 % text dropout for classifier-free guidance. 132.7M
        parameters with the linear ("separable") head (paper: 132M); 133.4M with the MLP head.
        """
        base = cls(
            audio_channels=8,
            video_channels=4,
            audio_kind="2d",
            channels=256,
            channel_mult=(1, 2, 4),
            blocks_per_level=4,
            time_embed_dim=256,
            audio_dilation_cycle=1,
            text_dim_audio=512,
            text_dim_video=768,
            text_drop_prob=0.1,
        )
        return base.replace(**changes)

    @classmethod
    def for_shapes(
        cls,
        audio_shape: Sequence[int],
        video_shape: Sequence[int],
        fusion: str = "mlp",
        **changes: Any,
    ) -> DiscriminatorConfig:
        """A small discriminator for audio ``(C, L)`` / ``(C, T, F)`` and video ``(C, F, H, W)``.

        Shapes exclude the batch axis (``BaseModel.latent_shape()``). Unless given in
        ``changes``, the 1-D audio downsample factor is the largest of 4, 2, 1 that keeps at
        least one audio token per video frame, and the dilation cycle stops dilations from
        outgrowing the sequence.
        """
        audio_shape, video_shape = tuple(audio_shape), tuple(video_shape)
        if len(audio_shape) not in (2, 3):
            raise InputError(f"audio_shape must be (C, L) or (C, T, F), got {audio_shape}")
        if len(video_shape) != 4:
            raise InputError(f"video_shape must be (C, F, H, W), got {video_shape}")
        settings: dict[str, Any] = {
            "audio_channels": audio_shape[0],
            "video_channels": video_shape[0],
            "audio_kind": "1d" if len(audio_shape) == 2 else "2d",
            "channels": 32,
            "channel_mult": (1, 2, 2),
            "blocks_per_level": 1,
            "time_embed_dim": 64,
            "fusion": fusion,
            "fusion_width": 64,
            "fusion_layers": 2,
            "fusion_heads": 4,
            "audio_dilation_cycle": 1,
        }
        settings.update(_checked_fields(changes))
        if settings["audio_kind"] == "1d":
            length, frames = audio_shape[1], video_shape[1]
            n_down = len(settings["channel_mult"]) - 1
            if "audio_downsample" not in changes:
                fits = [f for f in (4, 2, 1) if length // f**n_down >= frames]
                settings["audio_downsample"] = fits[0] if fits else 1
            if "audio_dilation_cycle" not in changes:
                settings["audio_dilation_cycle"] = max(1, min(10, int(math.log2(max(length, 2)))))
        return cls(**settings)


def _checked_fields(changes: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(DiscriminatorConfig)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise InputError(f"unknown DiscriminatorConfig field(s): {', '.join(unknown)}")
    return changes


def tagged_config_dict(config: Any, kind: str) -> dict[str, Any]:
    """A shape-carrying discriminator config as JSON data, tagged with its ``kind`` (the
    ``discriminator_type`` that :func:`mmdisco.discriminator.load_discriminator` reads)."""
    data = asdict(config)
    data["audio_shape"], data["video_shape"] = list(config.audio_shape), list(config.video_shape)
    return {"discriminator_type": kind, **data}


def config_from_tagged_dict(cls: Any, data: dict[str, Any], kind: str) -> Any:
    """``cls`` from what :func:`tagged_config_dict` wrote; another kind or an unknown field is
    a ``ValueError`` naming it."""
    data = dict(data)
    found = data.pop("discriminator_type", kind)
    if found != kind:
        raise ValueError(f"not a {kind} discriminator config (discriminator_type={found!r})")
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**data)
