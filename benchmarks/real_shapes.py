"""The base models of ``configs/audioldm_animatediff.yaml`` at their real size, randomly
initialised (their weights do not change cost or memory; downloading them is not needed).

Architectures from the published configs: AudioLDM-M's UNet (``cvssp/audioldm-m-full``,
``unet/config.json``: 192-384-576-960 channels, CLAP class-label conditioning) and AnimateDiff's
``UNetMotionModel`` (Stable Diffusion 1.5's UNet, whose fine-tune Realistic Vision 5.1 keeps
the architecture, with ``guoyww/animatediff-motion-adapter-v1-5-2``'s motion modules). Each is
wrapped as an mmdisco base model conditioned on text embeddings of the real shapes (a
normalised 512-d CLAP vector; 77 CLIP tokens of 768), so ``joint_sample``, the trainer and the
memory estimate drive them as they drive the adapters.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from torch import Tensor

from mmdisco.base_models.base import BaseModel

AUDIO_SHAPE = (8, 50, 16)  # AudioLDM latents of 2 s: 200 mel frames / 4, 64 mels / 4
VIDEO_SHAPE = (4, 16, 32, 32)  # 16 frames of 256 x 256 through SD's VAE
AUDIOLDM_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0015,
    "beta_end": 0.0195,
}
SD_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "steps_offset": 1,
}


def audioldm_m_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=128,
        in_channels=8,
        out_channels=8,
        block_out_channels=(192, 384, 576, 960),
        layers_per_block=2,
        down_block_types=("DownBlock2D", *["CrossAttnDownBlock2D"] * 3),
        up_block_types=(*["CrossAttnUpBlock2D"] * 3, "UpBlock2D"),
        cross_attention_dim=(192, 384, 576, 960),
        attention_head_dim=8,
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=512,
        class_embeddings_concat=True,
    )


def animatediff_unet() -> UNetMotionModel:
    sd15 = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=(*["CrossAttnDownBlock2D"] * 3, "DownBlock2D"),
        up_block_types=("UpBlock2D", *["CrossAttnUpBlock2D"] * 3),
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    adapter = MotionAdapter(
        block_out_channels=(320, 640, 1280, 1280),
        motion_layers_per_block=2,
        motion_mid_block_layers_per_block=1,
        motion_num_attention_heads=8,
        motion_norm_num_groups=32,
        motion_max_seq_length=32,
        use_motion_mid_block=True,
    )
    return UNetMotionModel.from_unet2d(sd15, adapter)


class UNetBase(BaseModel):
    """A real-size UNet as a base model; ``cond`` is its text conditioning tensor."""

    def __init__(self, unet: Any, modality: str, shape: tuple[int, ...], scheduler: dict) -> None:
        self.unet = unet.eval().requires_grad_(False)
        self.modality, self.shape, self.scheduler_config = modality, shape, scheduler

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device: Any) -> UNetBase:
        self.unet.to(device)
        return self

    def modules(self) -> dict[str, Any]:
        return {"unet": self.unet}

    def latent_shape(self) -> tuple[int, ...]:
        return self.shape

    def encode_prompt(self, prompts: list[str]) -> Tensor:
        n = len(prompts)
        if self.modality == "audio":
            return torch.nn.functional.normalize(torch.ones(n, 512), dim=-1).to(self.device)
        return torch.zeros(n, 77, 768, device=self.device)

    def pooled_text_embedding(self, cond: Tensor) -> Tensor:
        return cond.float() if cond.ndim == 2 else cond.float().mean(dim=1)

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        x = x_t.to(self.device, self.dtype)
        t = torch.as_tensor(t, device=self.device).reshape(-1).expand(x.shape[0])
        cond = cond.to(self.device, self.dtype)
        if self.modality == "audio":
            out = self.unet(x, t, encoder_hidden_states=None, class_labels=cond).sample
        else:
            text = cond.repeat_interleave(x.shape[2], dim=0)  # one row per frame
            out = self.unet(x, t, encoder_hidden_states=text).sample
        return out.float()


def base_models(dtype: torch.dtype = torch.float32, device: Any = "cpu") -> tuple[UNetBase, ...]:
    """(audio, video) at real size; ``device='meta'`` builds them without memory or time."""
    with torch.device(device):
        torch.manual_seed(0)
        audio = UNetBase(audioldm_m_unet().to(dtype), "audio", AUDIO_SHAPE, AUDIOLDM_SCHEDULER)
        torch.manual_seed(1)
        video = UNetBase(animatediff_unet().to(dtype), "video", VIDEO_SHAPE, SD_SCHEDULER)
    return audio, video
