"""Spectrogram-image models (Auffusion, Xue et al. 2024): Stable Diffusion on mel images.

A log-mel spectrogram is min-max normalised to [0, 1], flipped so low frequencies sit at the
bottom, repeated over three channels and treated as an RGB image (height = mel bins, width =
time); a separate HiFi-GAN vocoder turns mels back into audio. Folder layout (see
docs/real_models.md)::

    model/
      model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/
                                                  # a diffusers StableDiffusionPipeline
      vocoder/config.json + model.safetensors    # a transformers SpeechT5HifiGan
      spectrogram.json                            # optional: SpectrogramImageConfig fields
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmdisco.base_models._diffusers import DiffusersAdapter
from mmdisco.base_models.base import PromptEmbeds
from mmdisco.base_models.clip_text import clip_prompt_embeds
from mmdisco.base_models.mel import MelConfig, log_mel
from mmdisco.io import write_json_atomic

SPECTROGRAM_CONFIG = "spectrogram.json"


@dataclass(frozen=True)
class SpectrogramImageConfig:
    """How mels become images. Defaults follow the Auffusion release (16 kHz, 256 mels,
    hop 160, log-magnitude clipped to [log 1e-5, log 200], power 1)."""

    sample_rate: int = 16000
    n_fft: int = 2048
    win_length: int = 1024
    hop_length: int = 160
    n_mels: int = 256
    fmin: float = 0.0
    fmax: float = 8000.0
    min_value: float = 1e-5
    max_value: float = 200.0
    power: float = 1.0
    duration: float = 10.24  # seconds; 1024 mel frames

    @classmethod
    def load(cls, path: str) -> SpectrogramImageConfig:
        with open(path) as f:
            data = json.load(f)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown fields {sorted(unknown)}; expected {sorted(known)}")
        return cls(**data)

    def save(self, path: str) -> None:
        write_json_atomic(path, asdict(self))

    @property
    def mel(self) -> MelConfig:
        return MelConfig(
            self.sample_rate,
            self.n_fft,
            self.win_length,
            self.hop_length,
            self.n_mels,
            self.fmin,
            self.fmax,
            self.min_value,
        )


def mel_to_image(mel: Tensor, cfg: SpectrogramImageConfig) -> Tensor:
    """``(B, T, n_mels)`` log-mel -> ``(B, 3, n_mels, T)`` image in [-1, 1]."""
    lo, hi = math.log(cfg.min_value), math.log(cfg.max_value)
    x = ((mel.clamp(lo, hi) - lo) / (hi - lo)) ** cfg.power
    x = x.transpose(1, 2).flip(1)[:, None].expand(-1, 3, -1, -1)
    return x * 2 - 1


def image_to_mel(image: Tensor, cfg: SpectrogramImageConfig) -> Tensor:
    """Inverse of :func:`mel_to_image` (channels averaged)."""
    lo, hi = math.log(cfg.min_value), math.log(cfg.max_value)
    x = ((image.float() + 1) / 2).clamp(0, 1).mean(1).flip(1).transpose(1, 2)
    return x ** (1 / cfg.power) * (hi - lo) + lo


class SpectrogramImageModel(DiffusersAdapter):
    """Adapter for an SD-style UNet trained on mel images plus a separate vocoder.

    The UNet's latents are laid out like the image, ``(C, mels / 8, frames / 8)``; this
    adapter's space is their transpose ``(C, frames / 8, mels / 8)`` so that, as for AudioLDM,
    axis 1 is time (what the discriminator's 2-D audio stream expects). Transposing at the
    UNet's boundary changes nothing else: schedulers act elementwise.
    """

    modality = "audio"

    def __init__(
        self, pipe: Any, vocoder: Any, spectrogram: SpectrogramImageConfig | None = None
    ) -> None:
        super().__init__(pipe)
        self.vocoder = vocoder.requires_grad_(False).eval()
        self.spec = spectrogram or SpectrogramImageConfig()
        if self.spec.n_mels != vocoder.config.model_in_dim:
            raise ValueError(
                f"spectrogram n_mels={self.spec.n_mels} but the vocoder expects "
                f"model_in_dim={vocoder.config.model_in_dim}"
            )
        self.sample_rate = self.spec.sample_rate
        vsf = pipe.vae_scale_factor
        frames = round(self.spec.duration * self.sample_rate / self.spec.hop_length)
        self.num_frames = math.ceil(frames / vsf) * vsf
        self.num_samples = int(self.spec.duration * self.sample_rate)

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> SpectrogramImageModel:
        """Load ``path`` (folder layout in the module docstring); ``kwargs`` go to
        ``StableDiffusionPipeline.from_pretrained`` (e.g. ``torch_dtype``)."""
        from diffusers import StableDiffusionPipeline
        from transformers import SpeechT5HifiGan

        spec = kwargs.pop("spectrogram", None)
        if not isinstance(spec, SpectrogramImageConfig):
            # A dict (e.g. from a YAML config) overrides the folder's spectrogram.json.
            file = os.path.join(path, SPECTROGRAM_CONFIG)
            base = SpectrogramImageConfig.load(file) if os.path.isfile(file) else None
            spec = replace(base or SpectrogramImageConfig(), **(spec or {}))
        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
        pipe = StableDiffusionPipeline.from_pretrained(path, **kwargs)
        vocoder_dir = os.path.join(path, "vocoder")
        if not os.path.isdir(vocoder_dir):
            raise FileNotFoundError(f"{path}: no vocoder/ folder (a SpeechT5HifiGan) found")
        vocoder = SpeechT5HifiGan.from_pretrained(
            vocoder_dir, torch_dtype=kwargs.get("torch_dtype")
        )
        return cls(pipe, vocoder.to(pipe.unet.device), spec)

    def latent_shape(self) -> tuple[int, ...]:
        vsf = self.pipe.vae_scale_factor
        return (self.pipe.unet.config.in_channels, self.num_frames // vsf, self.spec.n_mels // vsf)

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if cond is None:
            raise ValueError("this model needs a text conditioning; use encode_prompt([''] * B)")
        out = self.pipe.unet(
            x_t.transpose(-1, -2),
            self.batch_timesteps(t, x_t.shape[0]),
            encoder_hidden_states=cond.hidden_states,
        ).sample
        return out.transpose(-1, -2)

    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        return clip_prompt_embeds(self.pipe.tokenizer, self.pipe.text_encoder, prompts)

    @torch.no_grad()
    def encode(self, media: Tensor) -> Tensor:
        """``(B, L)`` waveforms -> latents of their mel images (VAE posterior mean)."""
        mel = log_mel(media.to(self.device), self.spec.mel, self.num_frames)
        vae = self.pipe.vae
        image = mel_to_image(mel, self.spec).to(vae.dtype)
        latents = vae.encode(image).latent_dist.mode() * vae.config.scaling_factor
        return latents.transpose(-1, -2)

    @torch.no_grad()
    def decode_image(self, latents: Tensor) -> Tensor:
        vae = self.pipe.vae
        latents = latents.transpose(-1, -2).to(vae.dtype) / vae.config.scaling_factor
        return vae.decode(latents).sample

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> ``(B, L)`` waveforms at :attr:`sample_rate`."""
        mel = image_to_mel(self.decode_image(latents), self.spec)
        audio = self.vocoder(mel.to(self.vocoder.dtype)).float()
        return audio[:, : self.num_samples]


def spectrogram_config_from_vocoder(vocoder: Any, **overrides: Any) -> SpectrogramImageConfig:
    """A :class:`SpectrogramImageConfig` consistent with a vocoder's own config."""
    cfg = vocoder.config
    base = {
        "sample_rate": int(cfg.sampling_rate),
        "hop_length": int(np.prod(cfg.upsample_rates)),
        "n_mels": int(cfg.model_in_dim),
    }
    return SpectrogramImageConfig(**{**base, **overrides})
