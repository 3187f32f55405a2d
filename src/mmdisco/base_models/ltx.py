"""LTX-Video (HaCohen et al. 2024): a rectified-flow video transformer in diffusers.

The pipeline samples in a *packed, normalised* latent space: VAE latents ``(C, F', H', W')``
are normalised per channel (``latents_mean``/``latents_std``/``scaling_factor``) and patched
into tokens. This adapter's space is the normalised latents *before* packing (so the
discriminator sees a video-shaped tensor); packing is an internal detail of :meth:`predict`.
Timesteps are ``sigma * 1000`` on the path ``x_t = (1 - sigma) x_0 + sigma eps`` with the
model predicting the velocity ``eps - x_0`` (``prediction_type`` "flow" in mmdisco).

The pipeline shifts its sigmas by ``mu``, a function of the token count, and passes
``sigmas = linspace(1, 1/N, N)``; :class:`LTXFlowMatchScheduler` does both inside
``set_timesteps(N)`` so that the generic joint sampler reproduces the pipeline.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmdisco.base_models._diffusers import DiffusersAdapter, masked_mean, vae_latents
from mmdisco.base_models._video import FlowSigmasScheduler, check_video_size, video_latent_grid
from mmdisco.base_models.base import PromptEmbeds


class LTXFlowMatchScheduler(FlowSigmasScheduler):
    """FlowMatchEuler whose ``set_timesteps(N)`` applies LTXPipeline's sigmas and shift."""

    def pipeline_sigmas(self, num_inference_steps: int) -> np.ndarray:
        return np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)


def calculate_shift(seq_len: int, config: Any) -> float:
    """LTXPipeline's ``mu``: linear in the token count between the configured end points."""
    base_len = config.get("base_image_seq_len", 256)
    max_len = config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    m = (top - base) / (max_len - base_len)
    return seq_len * m + base - m * base_len


class LTXVideoModel(DiffusersAdapter):
    """Adapter for :class:`diffusers.LTXPipeline` (``Lightricks/LTX-Video``)."""

    modality = "video"
    denoiser_name = "transformer"
    options = ("num_frames", "height", "width", "fps", "max_sequence_length", "decode_timestep")

    def __init__(
        self,
        pipe: Any,
        num_frames: int = 161,
        height: int = 512,
        width: int = 704,
        fps: float = 25.0,
        max_sequence_length: int = 128,
        decode_timestep: float = 0.0,
    ) -> None:
        super().__init__(pipe)
        self.num_frames, self.height, self.width = int(num_frames), int(height), int(width)
        check_video_size(
            "LTX-Video",
            self.num_frames,
            self.height,
            self.width,
            space=pipe.vae_spatial_compression_ratio,
            time=pipe.vae_temporal_compression_ratio,
            why=f" (its VAE compresses space by {pipe.vae_spatial_compression_ratio})",
        )
        self.fps, self.max_sequence_length = float(fps), int(max_sequence_length)
        self.decode_timestep = float(decode_timestep)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str, **kwargs: Any) -> LTXVideoModel:
        from diffusers import LTXPipeline

        return cls.load_pipeline(LTXPipeline, path_or_repo_id, kwargs)

    @property
    def latent_grid(self) -> tuple[int, int, int]:
        p = self.pipe
        space, time = p.vae_spatial_compression_ratio, p.vae_temporal_compression_ratio
        return video_latent_grid(self.num_frames, self.height, self.width, space=space, time=time)

    def latent_shape(self) -> tuple[int, ...]:
        return (self.pipe.transformer.config.in_channels, *self.latent_grid)

    def make_scheduler(self, cls: Any = None, **overrides: Any) -> Any:
        scheduler = super().make_scheduler(cls or LTXFlowMatchScheduler, **overrides)
        if isinstance(scheduler, LTXFlowMatchScheduler):
            f, h, w = self.latent_grid
            scheduler.mu = calculate_shift(f * h * w, scheduler.config)
        return scheduler

    def pack(self, latents: Tensor) -> Tensor:
        p = self.pipe
        return p._pack_latents(
            latents, p.transformer_spatial_patch_size, p.transformer_temporal_patch_size
        )

    def unpack(self, tokens: Tensor) -> Tensor:
        p = self.pipe
        return p._unpack_latents(
            tokens,
            *self.latent_grid,
            p.transformer_spatial_patch_size,
            p.transformer_temporal_patch_size,
        )

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if cond is None:
            raise ValueError("LTX-Video needs a text conditioning; use encode_prompt([''] * B)")
        p = self.pipe
        f, h, w = self.latent_grid
        cond = cond.to(self.device, self.dtype)
        out = p.transformer(
            hidden_states=self.model_input(self.pack(x_t)),
            encoder_hidden_states=cond.hidden_states,
            timestep=self.batch_timesteps(t, x_t.shape[0]),
            encoder_attention_mask=cond.attention_mask,
            num_frames=f,
            height=h,
            width=w,
            rope_interpolation_scale=(
                p.vae_temporal_compression_ratio / self.fps,
                p.vae_spatial_compression_ratio,
                p.vae_spatial_compression_ratio,
            ),
            return_dict=False,
        )[0]
        return self.unpack(out.float())

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        embeds, mask = self.pipe._get_t5_prompt_embeds(
            list(prompts), max_sequence_length=self.max_sequence_length, device=self.device
        )
        return PromptEmbeds(embeds, masked_mean(embeds, mask), attention_mask=mask)

    @torch.no_grad()
    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, 3, F, H, W)`` frames in [-1, 1] -> normalised latents (posterior mode, or a
        sample drawn with ``generator``)."""
        vae = self.pipe.vae
        latents = vae_latents(vae.encode(media.to(self.device, vae.dtype)).latent_dist, generator)
        return self.pipe._normalize_latents(
            latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor
        )

    @torch.no_grad()
    def decode(self, latents: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Normalised latents -> ``(B, 3, F, H, W)`` frames in [-1, 1], as LTXPipeline decodes
        with ``decode_noise_scale = decode_timestep`` (no noise at the default 0)."""
        from diffusers.utils.torch_utils import randn_tensor

        vae = self.pipe.vae
        x = self.pipe._denormalize_latents(
            latents.to(self.device, torch.float32),
            vae.latents_mean,
            vae.latents_std,
            vae.config.scaling_factor,
        )
        timestep = None
        if vae.config.timestep_conditioning:
            scale = self.decode_timestep
            noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = (1 - scale) * x + scale * noise
            timestep = torch.full((x.shape[0],), scale, device=x.device, dtype=x.dtype)
        return vae.decode(x.to(vae.dtype), timestep, return_dict=False)[0].float().clamp(-1, 1)
