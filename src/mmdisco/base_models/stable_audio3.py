"""Stable Audio 3 (Stability AI 2026): a rectified-flow DiT over SAME autoencoder latents.

The DiT predicts the velocity ``eps - x_0`` on ``x_t = (1 - s) x_0 + s eps`` ("flow" in
mmdisco) with the timestep ``s`` itself (``num_train_timesteps=1``). Its pipeline places
the sigmas uniformly in log-SNR (``logsnr_sigma_schedule``) and steps them with
``FlowMatchEulerDiscreteScheduler``: deterministic Euler for the non-distilled ``base``
checkpoint, the stochastic "ping-pong" sampler (``stochastic_sampling=True``: predict
``x_0``, re-noise with fresh noise) for the distilled ``medium`` one.
:class:`LogSNRFlowMatchScheduler` puts the log-SNR sigmas inside ``set_timesteps(N)`` so the
generic joint sampler reproduces the pipeline; it draws the ping-pong noise from the
stream's generator, as the pipeline draws it from its own.

The conditioning is T5Gemma text tokens plus one duration token in cross-attention and the
same duration embedding as the DiT's global (AdaLN) input. The unconditional input for CFG
is the empty prompt encoded as any other.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import Tensor

from mmdisco.base_models._diffusers import DiffusersAdapter, masked_mean
from mmdisco.base_models.base import PromptEmbeds


class LogSNRFlowMatchScheduler(FlowMatchEulerDiscreteScheduler):
    """FlowMatchEuler whose ``set_timesteps(N)`` uses StableAudio3Pipeline's log-SNR sigmas."""

    logsnr_range: tuple[float, float] = (-6.2, 2.0)  # the pipeline's (logsnr_min, logsnr_max)
    init_noise_sigma = 1.0  # the generic sampler's interface; flow starts from N(0, I)

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: Any = None, **kwargs: Any
    ) -> None:
        from diffusers.pipelines.stable_audio_3.pipeline_stable_audio_3 import (
            logsnr_sigma_schedule,
        )

        if num_inference_steps and not kwargs.get("sigmas") and kwargs.get("timesteps") is None:
            kwargs["sigmas"] = logsnr_sigma_schedule(num_inference_steps, *self.logsnr_range)
            num_inference_steps = None
        super().set_timesteps(num_inference_steps, device, **kwargs)


class StableAudio3Model(DiffusersAdapter):
    """Adapter for :class:`diffusers.StableAudio3Pipeline` (``stabilityai/stable-audio-3-*``).

    ``duration`` is the clip length in seconds (the pipeline's ``duration``); the latent
    length is rounded up to whole latent frames and decoding cuts the waveform back to it.
    """

    modality = "audio"
    denoiser_name = "transformer"
    options = ("duration", "logsnr_min", "logsnr_max")

    def __init__(
        self,
        pipe: Any,
        duration: float = 10.0,
        logsnr_min: float = -6.2,
        logsnr_max: float = 2.0,
    ) -> None:
        super().__init__(pipe)
        self.duration = float(duration)
        max_seconds = pipe.duration_embedder.config.max_val
        if not 0 < self.duration <= max_seconds:
            raise ValueError(
                f"duration={duration}: Stable Audio 3 takes (0, {max_seconds}] seconds (its "
                "duration embedder's range)"
            )
        self.logsnr_range = (float(logsnr_min), float(logsnr_max))
        self.sample_rate = int(pipe.vae.config.sampling_rate)
        ratio = pipe.vae.downsampling_ratio
        self.latent_frames = math.ceil(self.duration * self.sample_rate / ratio)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str, **kwargs: Any) -> StableAudio3Model:
        from diffusers import StableAudio3Pipeline

        return cls.load_pipeline(StableAudio3Pipeline, path_or_repo_id, kwargs)

    def make_scheduler(self, cls: Any = None, **overrides: Any) -> Any:
        cls = cls or LogSNRFlowMatchScheduler
        config = {k: v for k, v in self.scheduler_config.items() if not k.startswith("_")}
        scheduler = cls.from_config({**config, **overrides})
        if isinstance(scheduler, LogSNRFlowMatchScheduler):
            scheduler.logsnr_range = self.logsnr_range
        return scheduler

    def latent_shape(self) -> tuple[int, ...]:
        return (self.pipe.vae.config.latent_dim, self.latent_frames)

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if cond is None:
            raise ValueError("Stable Audio 3 needs a conditioning; use encode_prompt([''] * B)")
        cond = cond.to(self.device, self.dtype)
        return self.pipe.transformer(
            self.model_input(x_t),
            self.batch_timesteps(t, x_t.shape[0]),
            encoder_hidden_states=cond.hidden_states,
            global_hidden_states=cond.extra["global_hidden_states"],
            encoder_attention_mask=cond.attention_mask,
            return_dict=False,
        )[0].float()

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        """Text tokens plus the duration token (the pipeline's cross-attention context), the
        duration embedding for AdaLN, and the text's masked mean for the discriminator."""
        pipe, prompts = self.pipe, list(prompts)
        text, mask = pipe.encode_prompt(prompts, self.device, 1)
        duration = pipe.encode_duration(self.duration, self.device, 1, len(prompts))
        context, context_mask = pipe.prepare_cross_attention(text, mask, duration)
        return PromptEmbeds(
            hidden_states=context,
            pooled=masked_mean(text, mask),
            attention_mask=context_mask,
            extra={"global_hidden_states": duration},
        )

    @torch.no_grad()
    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, C, L)`` (or mono ``(B, L)``) waveforms -> latents. The SAME encoder is
        deterministic, so ``generator`` is not used."""
        if media.ndim == 2:
            media = media[:, None]
        vae = self.pipe.vae
        channels = vae.config.audio_channels
        if media.shape[1] != channels:
            media = media.mean(1, keepdim=True).expand(-1, channels, -1)
        length = self.latent_frames * vae.downsampling_ratio
        media = torch.nn.functional.pad(media, (0, max(0, length - media.shape[-1])))[..., :length]
        return vae.encode(media.to(self.device, vae.dtype)).latents.float()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> ``(B, C, L)`` waveforms in [-1, 1], cut to ``duration``."""
        audio = self.pipe.vae.decode(latents.to(self.device, self.pipe.vae.dtype)).sample
        return audio[..., : int(self.duration * self.sample_rate)].clamp(-1, 1).float()
