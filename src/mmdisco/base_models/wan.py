"""Wan 2.1 and 2.2 (Wan team 2025): rectified-flow video transformers in diffusers' WanPipeline.

The adapter's space is the pipeline's latents: VAE latents normalised per channel,
``(z - latents_mean) / latents_std``, shape ``(C, F', H', W')`` (C = 16 for Wan 2.1 and 2.2
A14B, 48 for 2.2 TI2V-5B, whose VAE compresses space by 16 instead of 8). The shipped
scheduler is UniPC on the flow path (``use_flow_sigmas``, ``flow_shift``): the model predicts
the velocity ``eps - x_0`` at integer timesteps ``sigma * 1000`` ("flow" in mmdisco).

Two Wan 2.2 variants differ from 2.1 inside a step, and :meth:`WanModel.predict` follows the
pipeline in both:

* A14B has two experts: ``transformer`` denoises while ``t >= boundary_ratio * 1000`` (high
  noise) and ``transformer_2`` below, with its own CFG scale ``guidance_scale_2`` (by default
  the stream's; see :meth:`WanModel.cfg_scale_at`).
* TI2V-5B (``expand_timesteps``) gives the transformer one timestep per 2x2 latent patch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mmdisco.base_models._diffusers import DiffusersAdapter, masked_mean, vae_latents
from mmdisco.base_models._video import check_video_size, video_latent_grid
from mmdisco.base_models.base import PromptEmbeds


class WanModel(DiffusersAdapter):
    """Adapter for :class:`diffusers.WanPipeline` (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``,
    ``Wan-AI/Wan2.2-T2V-A14B-Diffusers``, ``Wan-AI/Wan2.2-TI2V-5B-Diffusers``)."""

    modality = "video"
    denoiser_name = "transformer"
    options = (
        "num_frames",
        "height",
        "width",
        "fps",
        "max_sequence_length",
        "guidance_scale_2",
    )

    def __init__(
        self,
        pipe: Any,
        num_frames: int = 81,
        height: int = 480,
        width: int = 832,
        fps: float = 16.0,
        max_sequence_length: int = 512,
        guidance_scale_2: float | None = None,
    ) -> None:
        super().__init__(pipe)
        self.num_frames, self.height, self.width = int(num_frames), int(height), int(width)
        self.fps, self.max_sequence_length = float(fps), int(max_sequence_length)
        self.boundary_ratio = pipe.config.boundary_ratio
        if guidance_scale_2 is not None and self.boundary_ratio is None:
            raise ValueError(
                "guidance_scale_2: only a two-expert Wan 2.2 checkpoint (boundary_ratio set in "
                "its model_index.json) has a second CFG scale"
            )
        self.guidance_scale_2 = None if guidance_scale_2 is None else float(guidance_scale_2)
        self._check_size()

    def _check_size(self) -> None:
        check_video_size(
            "Wan",
            self.num_frames,
            self.height,
            self.width,
            space=self.pipe.vae_scale_factor_spatial * self.denoiser.config.patch_size[1],
            time=self.pipe.vae_scale_factor_temporal,
            why=" (this checkpoint's VAE compression times its transformer's patch size)",
        )

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str, **kwargs: Any) -> WanModel:
        from diffusers import WanPipeline

        return cls.load_pipeline(WanPipeline, path_or_repo_id, kwargs)

    @property
    def denoiser(self) -> nn.Module:
        """The high-noise transformer, or the low-noise one where a checkpoint ships only it."""
        return self.pipe.transformer or self.pipe.transformer_2

    @property
    def boundary_timestep(self) -> float | None:
        """Where A14B hands over from ``transformer`` to ``transformer_2`` (None: one expert)."""
        if self.boundary_ratio is None:
            return None
        return self.boundary_ratio * self.pipe.scheduler.config.num_train_timesteps

    def expert(self, t: Tensor | float) -> nn.Module:
        """The transformer that denoises at timestep ``t``, as WanPipeline picks it."""
        boundary = self.boundary_timestep
        if boundary is None or float(t) >= boundary:
            return self.pipe.transformer
        return self.pipe.transformer_2

    def cfg_scale_at(self, t: Tensor | float, cfg_scale: float) -> float | Tensor:
        """The CFG scale at timestep ``t`` given the stream's ``cfg_scale``: A14B's low-noise
        expert uses ``guidance_scale_2`` when one is set. A batch of timesteps gets one scale
        per sample, shaped ``(B, 1, 1, 1, 1)``."""
        boundary = self.boundary_timestep
        if self.guidance_scale_2 is None or boundary is None:
            return cfg_scale
        t = torch.as_tensor(t)
        if t.ndim == 0:
            return self.guidance_scale_2 if float(t) < boundary else cfg_scale
        scales = torch.where(t < boundary, self.guidance_scale_2, cfg_scale)
        return scales.float().view(-1, 1, 1, 1, 1)

    @property
    def latent_grid(self) -> tuple[int, int, int]:
        space, time = self.pipe.vae_scale_factor_spatial, self.pipe.vae_scale_factor_temporal
        return video_latent_grid(self.num_frames, self.height, self.width, space=space, time=time)

    def latent_shape(self) -> tuple[int, ...]:
        return (self.denoiser.config.in_channels, *self.latent_grid)

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if cond is None:
            raise ValueError("Wan needs a text conditioning; use encode_prompt([''] * B)")
        t, text = self.batch_timesteps(t, x_t.shape[0]), cond.hidden_states
        boundary = self.boundary_timestep
        if boundary is None or t.device.type == "meta":  # one expert, or shapes only
            return self._run(self.denoiser, x_t, t, text)
        high = t >= boundary
        if high.all() or not high.any():
            return self._run(self.expert(t[0]), x_t, t, text)
        # Samples at different noise levels (training batches) need both experts.
        out = torch.empty(x_t.shape, dtype=torch.float32, device=self.device)
        for expert, rows in ((self.pipe.transformer, high), (self.pipe.transformer_2, ~high)):
            out[rows] = self._run(expert, x_t[rows], t[rows], text[rows])
        return out

    def _run(self, expert: nn.Module, x_t: Tensor, t: Tensor, text: Tensor) -> Tensor:
        if self.pipe.config.expand_timesteps:
            # TI2V-5B: one timestep per 2x2 patch of each latent frame (all equal for text
            # to video), laid out as WanPipeline builds them.
            tokens = x_t[0, 0, :, ::2, ::2].numel()
            t = t.float()[:, None].expand(-1, tokens)
        out = expert(
            hidden_states=x_t.to(self.device, expert.dtype),
            timestep=t,
            encoder_hidden_states=text.to(self.device, expert.dtype),
            return_dict=False,
        )[0]
        return out.float()

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        """UMT5 states zero-padded to ``max_sequence_length``, as WanPipeline builds them; the
        pooled vector averages the prompt's own tokens (the nonzero rows)."""
        embeds = self.pipe._get_t5_prompt_embeds(
            list(prompts), max_sequence_length=self.max_sequence_length, device=self.device
        )
        mask = (embeds.abs().amax(-1) > 0).long()
        return PromptEmbeds(embeds, masked_mean(embeds, mask), attention_mask=mask)

    def _latent_stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The VAE's per-channel ``latents_mean`` and ``1 / latents_std``, shaped to broadcast."""
        config = self.pipe.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(like.device, like.dtype)
        inv_std = 1.0 / torch.tensor(config.latents_std).view(shape).to(like.device, like.dtype)
        return mean, inv_std

    @torch.no_grad()
    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, 3, F, H, W)`` frames in [-1, 1] -> normalised latents (posterior mode, or a
        sample drawn with ``generator``)."""
        vae = self.pipe.vae
        latents = vae_latents(vae.encode(media.to(self.device, vae.dtype)).latent_dist, generator)
        mean, inv_std = self._latent_stats(latents)
        return (latents - mean) * inv_std

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents -> ``(B, 3, F, H, W)`` frames in [-1, 1], as WanPipeline decodes."""
        vae = self.pipe.vae
        latents = latents.to(self.device, vae.dtype)
        mean, inv_std = self._latent_stats(latents)
        return vae.decode(latents / inv_std + mean, return_dict=False)[0].float().clamp(-1, 1)
