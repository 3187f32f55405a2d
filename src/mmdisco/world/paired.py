"""World models trained on *pairs*: the alternatives a user weighs against MMDisCo.

* :class:`WorldConditionalModel`: one modality's denoiser conditioned on the other's clean
  clip, e.g. video-to-audio. After the world's text-to-video model (here: its unconditional
  video model) it makes the sequential cascade T2V -> V2A. It is a :class:`BaseModel` whose
  ``cond`` is the clean latents of the other modality, so ``joint_sample`` / a ``Stream``
  drive it like any base model.
* :class:`WorldJointModel`: one network that denoises audio and video together
  (MM-Diffusion-like): audio slice ``i`` and video frame ``i`` share token ``i`` of a
  :class:`~mmdisco.world.models.MixerTrunk`, so every layer couples the modalities. Both
  share one timestep, as in MM-Diffusion. ``.audio`` and ``.video`` are per-modality
  :class:`BaseModel` views whose ``cond`` is the other modality's current ``x_t``;
  :func:`mmdisco.sampling.joint_sample` sees that both streams view one joint model and runs
  the network once per step for both.

Both use the world base models' scheduler (x0 prediction, cosine DDPM) and codecs, and are
trained by :func:`mmdisco.world.train.train_world_model`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmdisco.base_models.base import BaseModel
from mmdisco.io import tensor_digest
from mmdisco.world.models import (
    ASSETS_DIR,
    NETWORK_CONFIG,
    SCHEDULER_CONFIG,
    ClipMixer,
    MixerTrunk,
    WorldNetwork,
    batch_timesteps,
    from_tokens,
    latent_shapes,
    media_config,
    to_tokens,
    token_dim,
)

PAIRED_ASSETS_DIR = ASSETS_DIR.parent / "world_paired"
MODALITIES = ("audio", "video")
# The joint network is wider than one base model so that it holds about as many parameters
# as the two base models together (3.5M vs 1.5M + 1.7M).
JOINT_NETWORK_CONFIG: dict[str, Any] = {**NETWORK_CONFIG, "width": 192}


def other(modality: str) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be 'audio' or 'video', got {modality!r}")
    return "video" if modality == "audio" else "audio"


class WorldConditionalModel(WorldNetwork, BaseModel):
    """Denoiser of ``config["target"]`` conditioned on the other modality's clean latents.

    ``predict(x_t, t, cond)``: ``cond`` is ``(B, *cond_shape)``, the given clip in its own
    model space (:meth:`encode_given` takes media there).
    """

    def __init__(self, config: dict[str, Any], net: nn.Module) -> None:
        super().__init__(config, net)
        self.modality = config["target"]
        self.given_modality = other(self.modality)

    @classmethod
    def default_config(cls, target: str = "audio") -> dict[str, Any]:
        other(target)  # checks the name
        return {
            **media_config(),
            "network": dict(NETWORK_CONFIG),
            "scheduler": dict(SCHEDULER_CONFIG),
            "target": target,
        }

    @classmethod
    def build_network(cls, config: dict[str, Any]) -> nn.Module:
        shapes = latent_shapes(config)
        target = config["target"]
        return ClipMixer(shapes[target], **config["network"], cond_shape=shapes[other(target)])

    def latent_shape(self) -> tuple[int, ...]:
        return latent_shapes(self.config)[self.modality]

    def given_shape(self) -> tuple[int, ...]:
        return latent_shapes(self.config)[self.given_modality]

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if not torch.is_tensor(cond):
            raise ValueError(
                f"{type(self).__name__} generates {self.modality} given {self.given_modality}: "
                f"pass the given clip's latents as cond, shape (B, "
                f"{', '.join(map(str, self.given_shape()))})"
            )
        self._check_input(x_t, self.latent_shape())
        self._check_input(cond, self.given_shape(), "cond")
        return self.net(x_t, batch_timesteps(t, x_t), cond.to(x_t.dtype))

    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.codecs[self.modality].encode(media.to(self.device))

    def decode(self, latents: Tensor) -> Tensor:
        return self.codecs[self.modality].decode(latents)

    def encode_given(self, media: Tensor) -> Tensor:
        """Media of the given modality -> the latents ``predict`` takes as ``cond``."""
        return self.codecs[self.given_modality].encode(media.to(self.device))


class JointClipMixer(MixerTrunk):
    """Denoiser of an audio-video pair: audio slice ``i`` and video frame ``i`` are embedded
    into one token (their embeddings summed), mixed by the trunk, and read out by one linear
    layer per modality. One timestep for both (MM-Diffusion)."""

    def __init__(
        self,
        audio_shape: tuple[int, ...],
        video_shape: tuple[int, ...],
        num_tokens: int = 16,
        width: int = 192,
        depth: int = 6,
    ) -> None:
        super().__init__()
        dim_a, dim_v = token_dim(audio_shape, num_tokens), token_dim(video_shape, num_tokens)
        self.embed_audio = nn.Linear(dim_a, width)
        self.embed_video = nn.Linear(dim_v, width)
        self._build_trunk(num_tokens, width, depth)
        self.out_audio = nn.Linear(width, dim_a)
        self.out_video = nn.Linear(width, dim_v)

    def forward(self, audio: Tensor, video: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        n = self.num_tokens
        z = self.embed_audio(to_tokens(audio, n)) + self.embed_video(to_tokens(video, n))
        h = self.mix(z, t)
        return from_tokens(self.out_audio(h), audio.shape), from_tokens(
            self.out_video(h), video.shape
        )


class WorldJointModel(WorldNetwork):
    """A joint audio-video diffusion model of the world, trained from scratch on pairs."""

    modality = "joint"

    def __init__(self, config: dict[str, Any], net: nn.Module) -> None:
        super().__init__(config, net)
        self.audio = JointView(self, "audio")
        self.video = JointView(self, "video")

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {
            **media_config(),
            "network": dict(JOINT_NETWORK_CONFIG),
            "scheduler": dict(SCHEDULER_CONFIG),
        }

    @classmethod
    def build_network(cls, config: dict[str, Any]) -> nn.Module:
        shapes = latent_shapes(config)
        return JointClipMixer(shapes["audio"], shapes["video"], **config["network"])

    def latent_shapes(self) -> dict[str, tuple[int, ...]]:
        return latent_shapes(self.config)

    def fingerprint(self) -> dict[str, Any]:
        """Not a base model itself: its class and weights (each view adds its own part)."""
        return {"class": type(self).__name__, "weights": tensor_digest(self.net.state_dict())}

    def predict_pair(
        self, audio_t: Tensor, video_t: Tensor, t_audio: Tensor, t_video: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Both modalities' predictions (clean clips) for a noisy pair at one timestep."""
        shapes = self.latent_shapes()
        self._check_input(audio_t, shapes["audio"], "audio_t")
        self._check_input(video_t, shapes["video"], "video_t")
        if audio_t.shape[0] != video_t.shape[0]:
            raise ValueError(
                f"{audio_t.shape[0]} audio samples but {video_t.shape[0]} video samples"
            )
        t_a, t_v = batch_timesteps(t_audio, audio_t), batch_timesteps(t_video, video_t)
        if not torch.equal(t_a, t_v):
            raise ValueError(
                "WorldJointModel denoises both modalities at one timestep (as MM-Diffusion); "
                f"got audio timesteps {t_a.tolist()} and video timesteps {t_v.tolist()}"
            )
        return self.net(audio_t, video_t, t_a)


class JointView(BaseModel):
    """One modality of a :class:`WorldJointModel` as a base model.

    ``predict(x_t, t, cond)`` needs the other modality's ``x_t`` at the same timestep as
    ``cond``. ``joint_sample`` recognises two views of one joint model (``.joint``) and calls
    :meth:`WorldJointModel.predict_pair` once per step instead; when the partner stream is
    given (conditional generation), the view sees it as the sampler enters it, which with
    ``given="renoise"`` is the replacement method.
    """

    def __init__(self, joint: WorldJointModel, modality: str) -> None:
        self.joint, self.modality = joint, modality
        self.partner_modality = other(modality)
        self.scheduler_config = joint.scheduler_config

    @property
    def device(self) -> torch.device:
        return self.joint.device

    def latent_shape(self) -> tuple[int, ...]:
        return self.joint.latent_shapes()[self.modality]

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "joint": self.joint.fingerprint()}

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if not torch.is_tensor(cond):
            raise ValueError(
                f"the joint model's {self.modality} view needs the {self.partner_modality} "
                f"x_t at the same timestep as cond"
            )
        if self.modality == "audio":
            return self.joint.predict_pair(x_t, cond, t, t)[0]
        return self.joint.predict_pair(cond, x_t, t, t)[1]

    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.joint.codecs[self.modality].encode(media.to(self.device))

    def decode(self, latents: Tensor) -> Tensor:
        return self.joint.codecs[self.modality].decode(latents)


def load_paired_models(
    directory: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """The shipped models trained on pairs (``src/mmdisco/assets/world_paired``): the
    cascade's ``video-to-audio`` and ``audio-to-video`` models and the ``joint`` model."""
    root = Path(directory) if directory is not None else PAIRED_ASSETS_DIR
    return {
        "video-to-audio": WorldConditionalModel.from_pretrained(root / "video-to-audio", device),
        "audio-to-video": WorldConditionalModel.from_pretrained(root / "audio-to-video", device),
        "joint": WorldJointModel.from_pretrained(root / "joint", device),
    }
