"""AnimateDiff (Guo et al. 2024): a Stable Diffusion UNet with temporal motion modules.

Latents are ``(4, F, H/8, W/8)``: the SD VAE applied frame by frame. Text enters through
CLIP cross-attention.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mmdisco.base_models._diffusers import DiffusersAdapter, loader_kwargs, vae_latents
from mmdisco.base_models.base import PromptEmbeds
from mmdisco.base_models.clip_text import clip_prompt_embeds


class AnimateDiffModel(DiffusersAdapter):
    """Adapter for :class:`diffusers.AnimateDiffPipeline` (SD 1.5 + a MotionAdapter)."""

    modality = "video"
    options = ("motion_adapter", "num_frames", "height", "width", "fps")

    def __init__(
        self,
        pipe: Any,
        num_frames: int = 16,
        height: int | None = None,
        width: int | None = None,
        fps: float = 8.0,
    ) -> None:
        super().__init__(pipe)
        default = pipe.unet.config.sample_size * pipe.vae_scale_factor
        self.num_frames, self.fps = int(num_frames), float(fps)
        self.height, self.width = int(height or default), int(width or default)

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str, motion_adapter: Any = None, **kwargs: Any
    ) -> AnimateDiffModel:
        """``path_or_repo_id`` is an SD 1.5 checkpoint (or a saved AnimateDiff pipeline);
        ``motion_adapter`` a MotionAdapter or its path/repo id (e.g.
        ``guoyww/animatediff-motion-adapter-v1-5-2``)."""
        from diffusers import AnimateDiffPipeline, MotionAdapter

        options = {k: kwargs.pop(k) for k in cls.options if k in kwargs}
        kwargs.setdefault("use_safetensors", True)
        if isinstance(motion_adapter, str):
            motion_adapter = MotionAdapter.from_pretrained(
                motion_adapter, **loader_kwargs(kwargs, "variant")
            )
        if motion_adapter is not None:
            kwargs["motion_adapter"] = motion_adapter
        return cls(AnimateDiffPipeline.from_pretrained(path_or_repo_id, **kwargs), **options)

    def latent_shape(self) -> tuple[int, ...]:
        vsf = self.pipe.vae_scale_factor
        c = self.pipe.unet.config.in_channels
        return (c, self.num_frames, self.height // vsf, self.width // vsf)

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if cond is None:
            raise ValueError("AnimateDiff needs a text conditioning; use encode_prompt([''] * B)")
        # UNetMotionModel folds frames into the batch and expects one text row per frame.
        text = cond.hidden_states.to(self.device, self.dtype)
        text = text.repeat_interleave(x_t.shape[2], dim=0)
        return self.pipe.unet(
            self.model_input(x_t), self.batch_timesteps(t, x_t.shape[0]), encoder_hidden_states=text
        ).sample.float()

    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        return clip_prompt_embeds(self.pipe.tokenizer, self.pipe.text_encoder, prompts)

    @torch.no_grad()
    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, 3, F, H, W)`` frames in [-1, 1] -> latents, frame by frame (posterior mode, or a
        sample drawn with ``generator``)."""
        b, _, f, h, w = media.shape
        frames = media.permute(0, 2, 1, 3, 4).reshape(b * f, 3, h, w)
        vae = self.pipe.vae
        posterior = vae.encode(frames.to(self.device, vae.dtype)).latent_dist
        latents = vae_latents(posterior, generator) * vae.config.scaling_factor
        return latents.reshape(b, f, *latents.shape[1:]).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> ``(B, 3, F, H, W)`` frames in [-1, 1] at :attr:`fps`."""
        latents = latents.to(self.device, self.pipe.vae.dtype)
        return self.pipe.decode_latents(latents).float().clamp(-1, 1)
