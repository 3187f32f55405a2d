"""The reference release's trained discriminators (SonyResearch/MMDisCo), converted to run here.

The release publishes checkpoints for AudioLDM + AnimateDiff, Auffusion + VideoCrafter2 and
MM-Diffusion (AIST++, Landscape). Their network differs from :class:`mmdisco.Discriminator`
in ways that change its output, so it has its own class, built from our blocks where they
compute the same thing:

* one noise embedding, of the audio model's integer timestep (diffusers' sinusoid and MLP),
  shared by both streams; pooled text embeddings are added per stream;
* residual blocks convolve *then* pool, have no final normalisation, and dilate 2-D audio
  along both axes;
* heads: ``aggregate_time_and_cat_ch`` (mean over time, concatenate video then audio, one
  Linear: the "separable" head), ``cat_time_and_apply_transformer`` and
  ``interp_time_and_cat_ch_and_apply_transformer`` (an x-transformers encoder with a class
  token and learned positions);
* guidance differentiates ``log(p + 1e-5) - log(1 - p + 1e-5)`` with ``p = sigmoid(h)``, not
  ``h``: that is what :meth:`OfficialDiscriminator.forward` returns (``logit`` gives ``h``).

It follows mmdisco's discriminator protocol, ``disc(audio, video, log_snr_audio, log_snr_video,
text_audio, text_video)``: the audio log-SNR is mapped back to the audio model's timestep on
the schedule stored in the config (exactly, at the sampler's integer timesteps). Its text
inputs are each base model's denoiser conditioning (``PromptEmbeds.hidden_states``), averaged
over tokens, and it has no learned "no text": the unconditional branch needs the empty
prompt's embedding. Convert a checkpoint with :func:`convert_official` (``mmdisco
convert-official``); the checkpoint is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, get_timestep_embedding
from einops import rearrange
from torch import Tensor, nn

from mmdisco.diffusion import NoiseSchedule, schedule_from_scheduler_config
from mmdisco.discriminator.blocks import FactorisedConv3d, ResBlock, audio_tokens, video_tokens
from mmdisco.errors import InputError
from mmdisco.io import (
    PretrainedMixin,
    read_json,
    read_json_object,
    state_dict_mismatches,
    write_json_atomic,
)

T = TypeVar("T")
KIND = "mmdisco-official-discriminator"
FUSIONS = (
    "aggregate_time_and_cat_ch",
    "cat_time_and_apply_transformer",
    "interp_time_and_cat_ch_and_apply_transformer",
)
GROUPS = 32  # the release's GroupNorm(32, channels) everywhere
# diffusers scheduler configs of the audio base model each release was trained with.
AUDIOLDM_SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.0015, "beta_end": 0.0195}
SD_SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
MMDIFFUSION_SCHEDULE = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}


@dataclass(frozen=True)
class OfficialConfig:
    """The release's ``residual_predictor`` settings (its Hydra configs), JSON-serialisable."""

    video_channels: int = 4
    audio_channels: int = 8
    audio_kind: str = "2d"  # the release's audio_conv_type
    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4)
    blocks_per_level: int = 4
    time_embed_dim: int = 128
    max_dilation: int = 1  # block n dilates audio by 2 ** (n % max_dilation)
    text_dim_video: int | None = 768
    text_dim_audio: int | None = 512
    fusion: str = "aggregate_time_and_cat_ch"
    fusion_layers: int = 4
    fusion_width: int = 256
    fusion_out: int = 256
    class_token: bool = True
    max_tokens: int = 128
    schedule: dict[str, Any] = field(default_factory=lambda: dict(AUDIOLDM_SCHEDULE))

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        if self.audio_kind not in ("1d", "2d"):
            raise ValueError(f"audio_kind must be '1d' or '2d', got {self.audio_kind!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if any((self.channels * m) % GROUPS for m in self.channel_mult):
            raise ValueError(f"channels * channel_mult must be multiples of {GROUPS}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, **asdict(self), "channel_mult": list(self.channel_mult)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OfficialConfig:
        data = {k: v for k, v in data.items() if k != "kind"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown OfficialConfig fields: {unknown}")
        return cls(**data)


# The released checkpoints (https://huggingface.co/AkioHayakawa/MMDisCo), as their configs in
# SonyResearch/MMDisCo conf/model/*.yaml describe them.
RELEASES: dict[str, OfficialConfig] = {
    "audioldm_animediff_vggsound": OfficialConfig(),
    "auffusion_videocrafter2_vggsound": OfficialConfig(
        audio_channels=4,
        text_dim_video=1024,
        text_dim_audio=768,
        fusion="cat_time_and_apply_transformer",
        schedule=dict(SD_SCHEDULE),
    ),
    **{
        f"mmdiffusion_{data}": OfficialConfig(
            video_channels=3,
            audio_channels=1,
            audio_kind="1d",
            blocks_per_level=2,
            max_dilation=10,
            text_dim_video=None,
            text_dim_audio=None,
            schedule=dict(MMDIFFUSION_SCHEDULE),
        )
        for data in ("aist++", "landscape")
    },
}

SAMPLING_FILE = "sampling.json"  # written beside a converted release's weights
# How the release samples with each discriminator (SonyResearch/MMDisCo scripts/generate.py
# with conf/inference/default.yaml; generate_mmdiffusion.py with conf/inference/mmdiff.yaml):
# the joint (discriminator) scales, CFG applied to the discriminator term as to the base
# models', ancestral DDPM at 50 steps. MM-Diffusion samples with its own DPM-Solver, which
# has no diffusers scheduler here: only its scales are recorded.
_VGGSOUND_SAMPLING = {
    "scheduler": "DDPMScheduler",
    "num_inference_steps": 50,
    "guidance_scale_audio": 1.0,
    "guidance_scale_video": 8.0,
    "cfg_on_discriminator": True,
}
RELEASE_SAMPLING: dict[str, dict[str, Any]] = {
    "audioldm_animediff_vggsound": _VGGSOUND_SAMPLING,
    "auffusion_videocrafter2_vggsound": _VGGSOUND_SAMPLING,
    "mmdiffusion_aist++": {"guidance_scale_audio": 1.0, "guidance_scale_video": 1.0},
    "mmdiffusion_landscape": {"guidance_scale_audio": 1.0, "guidance_scale_video": 1.0},
}


def write_release_sampling(directory: str | Path, release: str) -> Path:
    """Write ``release``'s sampling settings (:data:`RELEASE_SAMPLING`) to
    ``directory/sampling.json``, where :func:`release_sampling` finds them."""
    path = Path(directory) / SAMPLING_FILE
    write_json_atomic(path, {"release": release, "sampling": RELEASE_SAMPLING[release]})
    return path


def release_sampling(directory: str | Path) -> dict[str, Any] | None:
    """The sampling settings stored beside a converted release (``SamplingConfig`` fields),
    or None when ``directory`` has none."""
    path = Path(directory) / SAMPLING_FILE
    if not path.is_file():
        return None
    record = read_json(path)
    settings = record.get("sampling") if isinstance(record, dict) else None
    if not isinstance(settings, dict):
        raise InputError("must be an object with a 'sampling' object", str(path))
    unknown = sorted(set(settings) - set(_VGGSOUND_SAMPLING))
    if unknown:
        raise InputError(f"unknown sampling fields {unknown}", str(path))
    return settings


def with_release_sampling(sampling: T, directory: str | Path) -> T:
    """``sampling`` (a ``SamplingConfig``) with the fields a converted release stores beside
    its weights put in: sampling with a released discriminator as the release does."""
    settings = release_sampling(directory)
    return sampling if settings is None else dataclasses.replace(sampling, **settings)


# ------------------------------------------------------------------------------------------
# Fusion heads
# ------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """x-transformers' default self-attention: 8 heads of 64, no bias on q, k, v."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64) -> None:
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_k = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_v = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (rearrange(f(x), "b n (h d) -> b h n d", h=self.heads) for f in self.qkv)
        attn = (torch.einsum("bhid,bhjd->bhij", q, k) * self.scale).softmax(dim=-1)
        return self.to_out(rearrange(attn @ v, "b h n d -> b n (h d)"))

    @property
    def qkv(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        return self.to_q, self.to_k, self.to_v


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU()),
            nn.Dropout(0.0),
            nn.Linear(dim * mult, dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Positions(nn.Module):
    def __init__(self, dim: int, max_tokens: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(max_tokens, dim)


class Layers(nn.Module):
    """Pre-norm residual layers alternating attention and feed-forward."""

    def __init__(self, dim: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), Attention(dim)]))
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), FeedForward(dim)]))

    def forward(self, x: Tensor) -> Tensor:
        for norm, block in self.layers:
            x = block(norm(x)) + x
        return x


class TokenEncoder(nn.Module):
    """Class token, learned positions, encoder, LayerNorm, output projection (the release's
    ``TransformerWrapperNoTokenEmb``, which adds one layer for the class token)."""

    def __init__(self, c: OfficialConfig) -> None:
        super().__init__()
        width = c.fusion_width
        self.class_token = c.class_token
        if c.class_token:
            self.cls_emb = nn.Parameter(width**-0.5 * torch.randn(1, 1, width))
        self.max_tokens = c.max_tokens
        self.pos_emb = Positions(width, c.max_tokens)
        self.attn_layers = Layers(width, c.fusion_layers + int(c.class_token))
        self.norm = nn.LayerNorm(width)
        self.out_layer = nn.Linear(width, c.fusion_out)

    def forward(self, x: Tensor) -> Tensor:
        if self.class_token:
            x = torch.cat([self.cls_emb.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        if x.shape[1] > self.max_tokens:
            raise ValueError(
                f"{x.shape[1]} tokens exceed the release's {self.max_tokens} learned positions"
            )
        x = x + self.pos_emb.emb(torch.arange(x.shape[1], device=x.device))[None]
        out = self.out_layer(self.norm(self.attn_layers(x)))
        return out[:, 0] if self.class_token else out.mean(dim=1)


class Head(nn.Module):
    """The release's ``FusionModel`` and ``last_linear``: per-frame features to one logit."""

    def __init__(self, c: OfficialConfig, channels: int) -> None:
        super().__init__()
        self.fusion = c.fusion
        if c.fusion == FUSIONS[0]:
            self.last_linear = nn.Linear(2 * channels, 1)
            return
        half = c.fusion == FUSIONS[2]
        width_in = c.fusion_width // 2 if half else c.fusion_width
        self.fm_video_in = nn.Linear(channels, width_in)
        self.fm_audio_in = nn.Linear(channels, width_in)
        self.fm_time_in = nn.Linear(c.time_embed_dim, c.fusion_width)
        self.fm = TokenEncoder(c)
        self.last_linear = nn.Linear(c.fusion_out, 1)

    def forward(self, video: Tensor, audio: Tensor, temb: Tensor) -> Tensor:
        if self.fusion == FUSIONS[0]:
            return self.last_linear(torch.cat([video.mean(1), audio.mean(1)], dim=-1))[:, 0]
        if self.fusion == FUSIONS[2]:  # nearest-neighbour to the longer sequence, then channels
            length = max(video.shape[1], audio.shape[1])
            video, audio = (_stretch(x, length) for x in (video, audio))
        v, a = self.fm_video_in(video), self.fm_audio_in(audio)
        tokens = torch.cat([v, a], dim=-1) if self.fusion == FUSIONS[2] else torch.cat([v, a], 1)
        tokens = torch.cat([self.fm_time_in(temb)[:, None], tokens], dim=1)
        return self.last_linear(self.fm(tokens))[:, 0]


def _stretch(tokens: Tensor, length: int) -> Tensor:
    if tokens.shape[1] >= length:
        return tokens
    return F.interpolate(tokens.transpose(1, 2), length).transpose(1, 2)


# ------------------------------------------------------------------------------------------
# The network
# ------------------------------------------------------------------------------------------


def _audio_conv(kind: str, kernel: int, dilation: int = 1):
    if kind == "1d":
        return lambda i, o: nn.Conv1d(
            i, o, kernel, padding=dilation * (kernel // 2), dilation=dilation
        )
    return lambda i, o: nn.Conv2d(i, o, kernel, padding=dilation * (kernel // 2), dilation=dilation)


class OfficialDiscriminator(PretrainedMixin, nn.Module):
    """The release's ``MultimodalDiscriminator`` (``sample_only`` inputs); see the module
    docstring."""

    config_class = OfficialConfig
    pretrained_what = "a converted release discriminator"
    # Text inputs are the base models' denoiser conditioning (averaged over tokens here).
    text_from_hidden_states = True

    def __init__(self, config: OfficialConfig) -> None:
        super().__init__()
        self.config = c = config
        emb = c.time_embed_dim
        self.time_embed = TimestepEmbedding(emb, emb)
        self.text_video = nn.Linear(c.text_dim_video, emb) if c.text_dim_video else None
        self.text_audio = nn.Linear(c.text_dim_audio, emb) if c.text_dim_audio else None
        ch = c.channels * c.channel_mult[0]
        self.video_in = FactorisedConv3d(c.video_channels, ch)
        self.audio_in = _audio_conv(c.audio_kind, 3)(c.audio_channels, ch)
        self.video_blocks, self.audio_blocks = nn.ModuleList(), nn.ModuleList()
        n = 0
        for level, mult in enumerate(c.channel_mult):
            last = level == len(c.channel_mult) - 1
            for is_down in [False] * c.blocks_per_level + ([] if last else [True]):
                n += 1
                out = ch if is_down else c.channels * mult
                self._add_blocks(ch, out, n, is_down)
                ch = out
        self.out_channels = ch
        self.head = Head(c, ch)
        with torch.device("cpu"):  # a table of numbers, whatever device the weights are built on
            self.schedule: NoiseSchedule = schedule_from_scheduler_config(c.schedule)

    def _add_blocks(self, ch: int, out: int, n: int, down: bool) -> None:
        c, emb = self.config, self.config.time_embed_dim
        dilation = 2 ** (n % c.max_dilation)
        audio_pool = nn.AvgPool1d(4) if c.audio_kind == "1d" else nn.AvgPool2d((1, 2))
        self.video_blocks.append(
            ResBlock(
                ch,
                out,
                emb,
                FactorisedConv3d,
                lambda i, o: nn.Conv3d(i, o, 1),
                nn.AvgPool3d((1, 2, 2)) if down else None,
                GROUPS,
                0.0,
                down_after_conv=True,
            )
        )
        self.audio_blocks.append(
            ResBlock(
                ch,
                out,
                emb,
                _audio_conv(c.audio_kind, 3, dilation),
                _audio_conv(c.audio_kind, 1),
                audio_pool if down else None,
                GROUPS,
                0.0,
                down_after_conv=True,
            )
        )

    def timesteps(self, log_snr: Tensor) -> Tensor:
        """The audio model's timestep (float, exact at integers) for each log-SNR."""
        table = self.schedule.log_snr(torch.arange(self.schedule.num_train_timesteps, device="cpu"))
        ascending = table.flip(0).to(log_snr.device)  # log-SNR falls with t
        x = log_snr.float().clamp(ascending[0], ascending[-1])
        j = torch.searchsorted(ascending, x).clamp(1, len(ascending) - 1)
        lo, hi = ascending[j - 1], ascending[j]
        frac = (hi - x) / (hi - lo)  # 0 when x is exactly a table entry
        return (len(ascending) - 1 - j).float() + frac

    def logit(
        self,
        audio: Tensor,
        video: Tensor,
        log_snr_audio: Tensor | float,
        log_snr_video: Tensor | float = 0.0,
        text_audio: Tensor | None = None,
        text_video: Tensor | None = None,
    ) -> Tensor:
        """``h`` of shape ``(B,)``; ``log_snr_video`` is unused: the release conditions both
        streams on the audio model's timestep (here its log-SNR, ``log_snr_audio``)."""
        batch = audio.shape[0]
        log_snr = torch.as_tensor(log_snr_audio, dtype=torch.float32, device=audio.device)
        steps = self.timesteps(log_snr.reshape(-1).expand(batch))
        temb = self.time_embed(get_timestep_embedding(steps, self.config.time_embed_dim))
        emb_v = temb + self._text(self.text_video, text_video, "text_video", batch)
        emb_a = temb + self._text(self.text_audio, text_audio, "text_audio", batch)
        v, a = self.video_in(video), self.audio_in(audio)
        for video_block, audio_block in zip(self.video_blocks, self.audio_blocks, strict=True):
            v, a = video_block(v, emb_v), audio_block(a, emb_a)
        return self.head(video_tokens(v), audio_tokens(a), temb)

    def forward(
        self,
        audio: Tensor,
        video: Tensor,
        log_snr_audio: Tensor | float,
        log_snr_video: Tensor | float = 0.0,
        text_audio: Tensor | None = None,
        text_video: Tensor | None = None,
    ) -> Tensor:
        """What the release's guidance differentiates: ``log(p + 1e-5) - log(1 - p + 1e-5)``."""
        p = torch.sigmoid(
            self.logit(audio, video, log_snr_audio, log_snr_video, text_audio, text_video)
        )
        return torch.log(p + 1e-5) - torch.log1p(-p + 1e-5)

    @staticmethod
    def _text(module: nn.Linear | None, text: Tensor | None, name: str, batch: int) -> Any:
        if module is None:
            if text is not None:
                raise ValueError(f"{name} was given but this discriminator takes no text")
            return 0.0
        if text is None:
            raise ValueError(
                f"{name} is required: the release's discriminator has no learned 'no text'; "
                "for the unconditional branch pass the empty prompt's embedding"
            )
        text = text.mean(dim=1) if text.ndim == 3 else text
        if text.shape != (batch, module.in_features):
            raise ValueError(
                f"{name} must have shape ({batch}, {module.in_features}) or "
                f"({batch}, N, {module.in_features}), got {tuple(text.shape)}"
            )
        return module(text.to(module.weight.dtype))

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu"
    ) -> OfficialDiscriminator:
        return super().from_pretrained(directory, device).eval()


def is_official(directory: str | Path) -> bool:
    """Whether ``directory`` holds a converted release discriminator."""
    config = Path(directory) / "config.json"
    return config.is_file() and read_json_object(config).get("kind") == KIND


# ------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------

_BLOCK = re.compile(r"feature_extractor\.input_blocks\.(\d+)\.0\.(.+)")
_BLOCK_PARTS = {
    "video_in_layers.0.GroupNorm.": "video_blocks.{k}.norm_in.",
    "video_in_layers.2.video_conv_spatial.": "video_blocks.{k}.conv_in.spatial.",
    "video_in_layers.2.video_conv_temporal.": "video_blocks.{k}.conv_in.temporal.",
    "video_out_layers.0.projection.1.": "video_blocks.{k}.film.proj.1.",
    "video_out_layers.3.video_conv.": "video_blocks.{k}.conv_out.",
    "video_skip_connection.video_conv.": "video_blocks.{k}.skip.",
    "audio_in_layers.0.GroupNorm.": "audio_blocks.{k}.norm_in.",
    "audio_in_layers.2.audio_conv.": "audio_blocks.{k}.conv_in.",
    "audio_out_layers.0.projection.1.": "audio_blocks.{k}.film.proj.1.",
    "audio_out_layers.3.audio_conv.": "audio_blocks.{k}.conv_out.",
    "audio_skip_connection.audio_conv.": "audio_blocks.{k}.skip.",
}
_TOP = {
    "time_embed.projection.": "time_embed.",
    "video_text_embed.": "text_video.",
    "audio_text_embed.": "text_audio.",
    "feature_extractor.input_blocks.0.0.video_conv.video_conv_spatial.": "video_in.spatial.",
    "feature_extractor.input_blocks.0.0.video_conv.video_conv_temporal.": "video_in.temporal.",
    "feature_extractor.input_blocks.0.0.audio_conv.audio_conv.": "audio_in.",
    "fusion_model.": "head.",
    "last_linear.": "head.last_linear.",
}


def official_to_ours(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename (and, for the factorised video convolutions, reshape) a release state dict;
    returns the converted tensors and the keys nothing maps."""
    out, unknown = {}, []
    for key, value in state.items():
        name = None
        if (m := _BLOCK.fullmatch(key)) and int(m.group(1)) > 0:
            for theirs, ours in _BLOCK_PARTS.items():
                if m.group(2).startswith(theirs):
                    rest = m.group(2)[len(theirs) :]
                    name = ours.format(k=int(m.group(1)) - 1) + rest
        else:
            for theirs, ours in _TOP.items():
                if key.startswith(theirs):
                    name = ours + key[len(theirs) :]
                    break
        if name is None:
            unknown.append(key)
            continue
        if name.endswith("spatial.weight"):  # Conv2d (o, i, k, k) -> Conv3d (o, i, 1, k, k)
            value = value[:, :, None]
        elif name.endswith("temporal.weight"):  # Conv1d (o, i, k) -> Conv3d (o, i, k, 1, 1)
            value = value[..., None, None]
        out[name] = value
    return out, unknown


def convert_official(
    checkpoint: str | Path, release: str | OfficialConfig, out: str | Path | None = None
) -> OfficialDiscriminator:
    """Load a release checkpoint (``.pt``, read with ``weights_only=True``) for ``release``
    (a key of :data:`RELEASES` or a config); saved to ``out`` when given, with the named
    release's sampling settings in ``out/sampling.json`` (:func:`release_sampling`)."""
    checkpoint = Path(checkpoint)
    name = release if isinstance(release, str) else None
    if isinstance(release, str):
        if release not in RELEASES:
            raise ValueError(f"unknown release {release!r}; known: {sorted(RELEASES)}")
        release = RELEASES[release]
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # weights_only refuses anything but tensors and containers
        raise ValueError(
            f"{checkpoint}: refused or unreadable ({type(err).__name__}: {err})"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{checkpoint}: expected a state dict of tensors")
    prefix = "residual_predictor."
    state = {k.removeprefix(prefix): v for k, v in state.items()}
    ours, unknown = official_to_ours(state)
    model = OfficialDiscriminator(release)
    problems = state_dict_mismatches(model.state_dict(), ours)
    problems += [f"unknown key {k}" for k in unknown]
    if problems:
        raise ValueError(
            f"{checkpoint} does not match the release config given:\n  " + "\n  ".join(problems)
        )
    model.load_state_dict(ours)
    model.eval()
    if out is not None:
        model.save_pretrained(out)
        if name is not None:
            write_release_sampling(out, name)
    return model
