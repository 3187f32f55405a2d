"""HunyuanVideo 1.5 (Tencent 2025): a rectified-flow video transformer in diffusers.

The adapter's space is the pipeline's latents: VAE latents times ``scaling_factor``, shape
``(C, F', H', W')``. The transformer sees them concatenated with an all-zero conditioning
latent and mask (``2C + 1`` channels; the image-to-video inputs, empty for text to video) and
predicts the velocity ``eps - x_0`` at float timesteps ``sigma * 1000`` ("flow" in mmdisco).
:class:`HunyuanVideo15Scheduler` steps through the pipeline's sigmas, ``linspace(1, 0, N + 1)``
without the last, shifted by the scheduler's ``shift``.

Text: Qwen2.5-VL states of a chat template whose fixed 108-token system prefix is cropped (as
the pipeline crops it), and ByT5 states of the prompt's quoted text (zeros without quotes).
Classifier-free guidance is the sampler's: the checkpoint's guider gives the scale
(:attr:`HunyuanVideo15Model.default_cfg_scale`); guider extras the sampler does not
reproduce (rescaling, the original formulation, a step range) are refused.

In half precision the pipeline keeps its latents in the transformer's dtype; mmdisco keeps
them in float32 (the sampler's precision) and casts what enters the transformer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmdisco.base_models._diffusers import DiffusersAdapter, masked_mean, vae_latents
from mmdisco.base_models._video import FlowSigmasScheduler, check_video_size, video_latent_grid
from mmdisco.base_models.base import PromptEmbeds


class HunyuanVideo15Scheduler(FlowSigmasScheduler):
    """FlowMatchEuler whose ``set_timesteps(N)`` takes HunyuanVideo15Pipeline's sigmas."""

    def pipeline_sigmas(self, num_inference_steps: int) -> np.ndarray:
        return np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]


class HunyuanVideo15Model(DiffusersAdapter):
    """Adapter for :class:`diffusers.HunyuanVideo15Pipeline`
    (``hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v`` and its 720p sibling)."""

    modality = "video"
    denoiser_name = "transformer"
    options = ("num_frames", "height", "width", "fps")

    def __init__(
        self,
        pipe: Any,
        num_frames: int = 121,
        height: int = 480,
        width: int = 848,
        fps: float = 24.0,
    ) -> None:
        super().__init__(pipe)
        self.num_frames, self.height, self.width = int(num_frames), int(height), int(width)
        self.fps = float(fps)
        self._check_size()
        self._check_guider()

    def _check_size(self) -> None:
        p = self.pipe
        check_video_size(
            "HunyuanVideo 1.5",
            self.num_frames,
            self.height,
            self.width,
            space=p.vae_scale_factor_spatial * p.transformer.config.patch_size,
            time=p.vae_scale_factor_temporal,
            why=" (VAE compression times the transformer's patch size)",
        )

    def _check_guider(self) -> None:
        config = self.pipe.guider.config
        extras = {
            "guidance_rescale": config.get("guidance_rescale", 0.0) != 0.0,
            "use_original_formulation": bool(config.get("use_original_formulation", False)),
            "start": config.get("start", 0.0) != 0.0,
            "stop": config.get("stop", 1.0) != 1.0,
        }
        for key, unsupported in extras.items():
            if unsupported:
                raise ValueError(
                    f"guider/guider_config.json: {key}={config.get(key)!r} is not supported; "
                    "mmdisco mixes CFG as pred_uncond + scale * (pred_cond - pred_uncond) at "
                    "every step"
                )

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str, **kwargs: Any) -> HunyuanVideo15Model:
        from diffusers import HunyuanVideo15Pipeline

        return cls.load_pipeline(HunyuanVideo15Pipeline, path_or_repo_id, kwargs)

    @property
    def default_cfg_scale(self) -> float:
        """The CFG scale the checkpoint's guider uses (1.0 when its guider is disabled)."""
        guider = self.pipe.guider
        return float(guider.guidance_scale) if guider.config.get("enabled", True) else 1.0

    def make_scheduler(self, cls: Any = None, **overrides: Any) -> Any:
        return super().make_scheduler(cls or HunyuanVideo15Scheduler, **overrides)

    @property
    def latent_grid(self) -> tuple[int, int, int]:
        space, time = self.pipe.vae_scale_factor_spatial, self.pipe.vae_scale_factor_temporal
        return video_latent_grid(self.num_frames, self.height, self.width, space=space, time=time)

    def latent_shape(self) -> tuple[int, ...]:
        return (self.pipe.num_channels_latents, *self.latent_grid)

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if cond is None:
            raise ValueError("HunyuanVideo 1.5 needs a text conditioning; use encode_prompt")
        if self.device.type == "meta":
            raise RuntimeError(
                "HunyuanVideo 1.5 cannot run on the meta device: its transformer reorders the "
                "text tokens by their masks (data-dependent shapes); estimate on a real device"
            )
        p, batch = self.pipe, x_t.shape[0]
        x = self.model_input(x_t)
        # Text to video: the image-conditioning latent, its mask and image embeddings are zero.
        mask = x.new_zeros(batch, 1, *x.shape[2:])
        image_embeds = x.new_zeros(batch, p.vision_num_semantic_tokens, p.vision_states_dim)
        cond = cond.to(self.device, self.dtype)
        out = p.transformer(
            hidden_states=torch.cat([x, torch.zeros_like(x), mask], dim=1),
            image_embeds=image_embeds,
            timestep=self.batch_timesteps(t, batch).to(self.dtype),
            encoder_hidden_states=cond.hidden_states,
            encoder_attention_mask=cond.attention_mask,
            encoder_hidden_states_2=cond.extra["hidden_states_2"],
            encoder_attention_mask_2=cond.extra["attention_mask_2"],
            return_dict=False,
        )[0]
        return out.float()

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        """The pipeline's own prompt encoding (chat template, 108-token crop, ByT5 glyphs)."""
        embeds, mask, embeds_2, mask_2 = self.pipe.encode_prompt(
            list(prompts), device=self.device, dtype=self.dtype, batch_size=len(prompts)
        )
        return PromptEmbeds(
            embeds,
            masked_mean(embeds.float(), mask),
            attention_mask=mask,
            extra={"hidden_states_2": embeds_2, "attention_mask_2": mask_2},
        )

    @torch.no_grad()
    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, 3, F, H, W)`` frames in [-1, 1] -> scaled latents (posterior mode, or a
        sample drawn with ``generator``)."""
        vae = self.pipe.vae
        latents = vae_latents(vae.encode(media.to(self.device, vae.dtype)).latent_dist, generator)
        return latents * vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents -> ``(B, 3, F, H, W)`` frames in [-1, 1], one sample at a time: the
        VAE's decoder fails on a batch of more than one (diffusers 0.42.1)."""
        vae = self.pipe.vae
        z = latents.to(self.device, vae.dtype) / vae.config.scaling_factor
        frames = [vae.decode(one, return_dict=False)[0] for one in z.split(1)]
        return torch.cat(frames).float().clamp(-1, 1)
