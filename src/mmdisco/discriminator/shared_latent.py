"""A discriminator that factors the ratio through a learnt shared latent.

The exact log ratio of paired data whose modalities share a latent ``k`` (and are otherwise
independent given it) is

    log r_t(a, v) = log sum_k p(k | a_t) p(k | v_t) / pi_k,

the probability that what the audio says about ``k`` and what the video says about it agree,
over the prior. :class:`SharedLatentDiscriminator` writes ``h`` in this form with learnt
parts: each modality has a noise-aware encoder giving ``log q(k | x_t)`` over ``num_codes``
codes in each of ``num_factors`` independent groups (a group per shared aspect, e.g. what and
when), the priors ``pi`` are learnt, and

    h = sum_g log sum_k q_g(k | a_t) q_g(k | v_t) / pi_{g,k}.

Groups assume that a clip's posteriors over the aspects are independent. Where a noisy clip
ties them together (in the continuous world, what a blurred video says about the colour
depends on where and when it places the square), the product of groups misses part of the
ratio's input-gradient even with exact posteriors; ``benchmarks/shared_codes.py`` measures
how much, and how many codes one group needs instead.

No training example is stored and its size does not depend on the training set. The
log-sum-exp gives mismatched pairs very negative logits (their codes disagree) without any
one network producing them, and the video gradient depends on the audio through the audio's
code posterior (the modalities are coupled). The encoders (``encoder``) are MLPs over the
flattened latent or the convolutional encoders of :mod:`mmdisco.discriminator.conv_encoders`
(invariant to a horizontal shift of the video, keeping time), modulated by the log-SNR (FiLM);
their logits are multiplied by a learnt ``exp(a + b * lambda)`` per group: the exact posterior
sharpens like the signal-to-noise ratio as noise falls.

Heads (``head``): ``"shared_latent"`` (the formula above); ``"bilinear"``, ``h = <e_a, e_v> /
sqrt(dim) + b`` on the same outputs; ``"aligned"`` (convolutional encoders only), the bilinear
term plus one per time step, ``sum_s <u_s(a), w_s(v)> / sqrt(dim * steps)``, comparing what
the audio and the video say at the same time before anything is pooled.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mmdisco.discriminator.config import config_from_tagged_dict, tagged_config_dict
from mmdisco.discriminator.conv_encoders import AudioConvEncoder, VideoConvEncoder, snr_embedding
from mmdisco.discriminator.model import per_sample
from mmdisco.errors import check_int
from mmdisco.io import PretrainedMixin

KIND = "shared_latent"
ENCODERS = ("mlp", "conv")
HEADS = ("shared_latent", "bilinear", "aligned")
VIDEO_POOLS = ("mean", "attention")


# The network of the contrastive recipe (SharedLatentConfig.conv): what learnt the continuous
# world's density ratio (docs/training_the_discriminator.md, fifth round).
CONV_NETWORK: dict[str, Any] = {
    "num_codes": 64,
    "num_factors": 2,
    "width": 64,
    "depth": 2,
    "frame_depth": 1,
    "head": "aligned",
    "encoder": "conv",
    "video_pool": "mean",
}


@dataclass(frozen=True)
class SharedLatentConfig:
    audio_shape: tuple[int, ...]
    video_shape: tuple[int, ...]
    num_codes: int = 64
    num_factors: int = 2
    width: int = 512
    depth: int = 2
    # initial a and b of the logits' scale exp(a + b * lambda); a large enough a breaks the
    # symmetric saddle where every q is uniform and h = 0 has no gradient
    sharpness_offset: float = 1.5
    sharpness_slope: float = 0.25
    head: str = "shared_latent"  # or "bilinear", "aligned" (module doc)
    encoder: str = "mlp"  # or "conv"
    video_pool: str = "mean"  # conv: or "attention" (VideoConvEncoder)
    # conv: layers within a video frame / at the audio's rate (``depth``: over time)
    frame_depth: int = 1
    # conv: which axis of an audio latent is time; every other axis is a channel. Axis 1 is
    # the adapters' convention: (C, T) and (C, T, F) latents
    audio_time_axis: int = 1

    def __post_init__(self) -> None:
        for name, allowed in (
            ("encoder", ENCODERS),
            ("head", HEADS),
            ("video_pool", VIDEO_POOLS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"SharedLatentConfig.{name} must be one of {allowed}, "
                    f"got {getattr(self, name)!r}"
                )
        if self.head == "aligned" and self.encoder != "conv":
            raise ValueError(
                "SharedLatentConfig.head='aligned' needs encoder='conv' (it keeps time)"
            )
        for name in ("num_codes", "num_factors", "width", "depth", "frame_depth"):
            check_int(name, getattr(self, name), 1)
        check_int("audio_time_axis", self.audio_time_axis)
        rank = len(tuple(self.audio_shape))
        if not -rank <= self.audio_time_axis < rank:
            raise ValueError(
                f"SharedLatentConfig.audio_time_axis {self.audio_time_axis} is not an axis of "
                f"audio latents of shape {tuple(self.audio_shape)}"
            )
        object.__setattr__(self, "audio_shape", tuple(self.audio_shape))
        object.__setattr__(self, "video_shape", tuple(self.video_shape))

    @classmethod
    def conv(
        cls, audio_shape: tuple[int, ...], video_shape: tuple[int, ...], **changes: Any
    ) -> SharedLatentConfig:
        """The contrastive recipe's network (:data:`CONV_NETWORK`) for these latents."""
        return cls(audio_shape, video_shape, **{**CONV_NETWORK, **changes})

    def to_dict(self) -> dict[str, Any]:
        return tagged_config_dict(self, KIND)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SharedLatentConfig:
        return config_from_tagged_dict(cls, data, KIND)


class CodeScale(nn.Module):
    """A learnt ``exp(a + b * lambda)`` per group: ``(B,)`` log-SNR -> ``(B, groups, 1)``."""

    def __init__(self, groups: int, offset: float, slope: float) -> None:
        super().__init__()
        self.sharpness = nn.Parameter(torch.tensor([[offset, slope]] * groups))  # (groups, 2)

    def forward(self, log_snr: Tensor) -> Tensor:
        a, b = self.sharpness[:, 0], self.sharpness[:, 1]
        return torch.exp(a + b * log_snr.clamp(-10, 10)[:, None])[..., None]


class NoiseAwareEncoder(nn.Module):
    """``(x_t, lambda) -> ((B, groups, codes) log-posteriors over codes, None)``: an MLP over
    the flattened latent, nothing per time step."""

    def __init__(self, shape: tuple[int, ...], config: SharedLatentConfig) -> None:
        super().__init__()
        self.groups, self.codes = config.num_factors, config.num_codes
        dims = [math.prod(shape)] + [config.width] * config.depth
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in itertools.pairwise(dims))
        self.films = nn.ModuleList(nn.Linear(16, 2 * config.width) for _ in range(config.depth))
        self.out = nn.Linear(config.width, self.groups * self.codes)
        self.scale = CodeScale(self.groups, config.sharpness_offset, config.sharpness_slope)

    def forward(self, x: Tensor, log_snr: Tensor) -> tuple[Tensor, None]:
        emb = snr_embedding(log_snr)
        z = torch.nn.functional.layer_norm(x.flatten(1), (x[0].numel(),))
        for layer, film in zip(self.layers, self.films, strict=True):
            scale, shift = film(emb).chunk(2, dim=-1)
            z = torch.nn.functional.silu(layer(z) * (1 + scale) + shift)
        logits = self.out(z).reshape(len(x), self.groups, self.codes)
        return logits * self.scale(log_snr), None


class ConvCodeEncoder(nn.Module):
    """``(x_t, lambda) -> ((B, groups, codes), (B, width, steps))``: code logits from the
    time-pooled features of a convolutional encoder, and per-time features for the
    ``"aligned"`` head."""

    def __init__(self, trunk: nn.Module, config: SharedLatentConfig) -> None:
        super().__init__()
        self.groups, self.codes = config.num_factors, config.num_codes
        self.trunk = trunk
        self.out = nn.Linear(config.width, self.groups * self.codes)
        self.scale = CodeScale(self.groups, config.sharpness_offset, config.sharpness_slope)
        self.timeline = nn.Conv1d(config.width, config.width, 1)
        # what one time step says grows with the SNR as well; it starts small at high noise
        self.time_scale = CodeScale(1, 0.0, config.sharpness_slope)

    def forward(self, x: Tensor, log_snr: Tensor) -> tuple[Tensor, Tensor]:
        z = self.trunk(x, snr_embedding(log_snr))  # (B, width, steps)
        # unit-scale features at every step: small ones would start the heads on the saddle
        # h = 0 where the gradient of every product of the two modalities' outputs vanishes
        z = torch.nn.functional.layer_norm(z.transpose(1, 2), z.shape[1:2]).transpose(1, 2)
        logits = self.out(z.mean(-1)).reshape(len(x), self.groups, self.codes)
        return logits * self.scale(log_snr), self.timeline(z) * self.time_scale(log_snr)


def build_encoders(config: SharedLatentConfig) -> tuple[nn.Module, nn.Module]:
    """The audio and the video encoder ``config.encoder`` names."""
    if config.encoder == "mlp":
        return NoiseAwareEncoder(config.audio_shape, config), NoiseAwareEncoder(
            config.video_shape, config
        )
    steps = config.video_shape[1]
    sizes = {"width": config.width, "depth": config.depth, "frame_depth": config.frame_depth}
    audio = AudioConvEncoder(
        config.audio_shape, steps=steps, time_axis=config.audio_time_axis, **sizes
    )
    video = VideoConvEncoder(config.video_shape, pool=config.video_pool, **sizes)
    return ConvCodeEncoder(audio, config), ConvCodeEncoder(video, config)


def _row_dot(x: Tensor, y: Tensor) -> Tensor:
    """``(B, i, j), (B, i, j) -> (B,)``: the inner product of each row with its own."""
    return (x * y).sum((-1, -2))


def _every_pair_dot(x: Tensor, y: Tensor) -> Tensor:
    """``(Ba, i, j), (Bv, i, j) -> (Ba, Bv)``, as a matrix product (broadcasting would hold a
    ``(Ba, Bv, i, j)`` tensor)."""
    return torch.einsum("aij,vij->av", x, y)


class SharedLatentDiscriminator(PretrainedMixin, nn.Module):
    """``h(a_t, v_t) = sum_g log sum_k q_g(k | a_t) q_g(k | v_t) / pi_{g,k}`` (module doc)."""

    config_class = SharedLatentConfig
    pretrained_what = "a shared-latent discriminator"

    def __init__(self, config: SharedLatentConfig) -> None:
        super().__init__()
        self.config = config
        self.audio_encoder, self.video_encoder = build_encoders(config)
        self.prior_logits = nn.Parameter(torch.zeros(config.num_factors, config.num_codes))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(
        self,
        audio: Tensor,
        video: Tensor,
        log_snr_audio: Tensor,
        log_snr_video: Tensor,
        **cond: Any,
    ) -> Tensor:
        if cond:
            raise ValueError(f"SharedLatentDiscriminator is unconditional; got {sorted(cond)}")
        batch = audio.shape[0]
        snr_a = per_sample(log_snr_audio, batch, "log_snr_audio", audio.device)
        snr_v = per_sample(log_snr_video, batch, "log_snr_video", video.device)
        codes_a, time_a = self.audio_encoder(audio.float(), snr_a)
        codes_v, time_v = self.video_encoder(video.float(), snr_v)
        return self.head(codes_a, codes_v, time_a, time_v)

    def head(
        self,
        out_a: Tensor,
        out_v: Tensor,
        time_a: Tensor | None,
        time_v: Tensor | None,
        *,
        every_pair: bool = False,
    ) -> Tensor:
        """Logits of pairs of encoder outputs, codes ``(B, groups, codes)`` and per-time
        features ``(B, width, steps)``: row ``i`` of the audio with row ``i`` of the video,
        ``(B,)``, or with ``every_pair`` every audio row with every video row, ``(Ba, Bv)``."""
        if self.config.head in ("bilinear", "aligned"):
            dot = _every_pair_dot if every_pair else _row_dot
            h = dot(out_a, out_v) / math.sqrt(out_a[0].numel()) + self.bias
            if self.config.head == "aligned" and time_a is not None and time_v is not None:
                h = h + dot(time_a, time_v) / math.sqrt(time_a[0].numel())
            return h
        if every_pair:
            out_a, out_v = out_a[:, None], out_v[None]
        log_qa, log_qv = torch.log_softmax(out_a, -1), torch.log_softmax(out_v, -1)
        log_prior = torch.log_softmax(self.prior_logits, dim=-1)
        return torch.logsumexp(log_qa + log_qv - log_prior, dim=-1).sum(-1)

    def cross_logits(
        self,
        audio: Tensor,
        video: Tensor,
        log_snr_audio: Tensor,
        log_snr_video: Tensor | None = None,
    ) -> Tensor:
        """``h(a_i, v_j)`` for every i, j: ``(Ba, Bv)``, each clip encoded once. Every audio
        sits at ``log_snr_audio`` and every video at ``log_snr_video`` (default: the audio's),
        0-d or 1-element tensors: a pair's two log-SNRs must not depend on which pair it is."""
        if log_snr_video is None:
            log_snr_video = log_snr_audio
        snr_a = per_sample(log_snr_audio, len(audio), "log_snr_audio", audio.device)
        snr_v = per_sample(log_snr_video, len(video), "log_snr_video", video.device)
        codes_a, time_a = self.audio_encoder(audio.float(), snr_a)
        codes_v, time_v = self.video_encoder(video.float(), snr_v)
        return self.head(codes_a, codes_v, time_a, time_v, every_pair=True)
