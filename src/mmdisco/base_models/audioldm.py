"""AudioLDM (Liu et al. 2023): a latent diffusion model over log-mel spectrograms.

The UNet sees VAE latents of a ``(1, T, 64)`` mel image (time is the height axis) and is
conditioned on one CLAP text vector (``class_labels``, no cross-attention). A HiFi-GAN vocoder
turns mels into 16 kHz audio. AudioLDM was trained on waveforms with the mean removed and
peak-normalised to 0.5 (``peak_level``; the clip spec applies it by default).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmdisco.base_models._diffusers import DiffusersAdapter, loader_kwargs, vae_latents
from mmdisco.base_models.base import PromptEmbeds
from mmdisco.base_models.clip_text import tokenize
from mmdisco.base_models.mel import MelConfig, log_mel


class AudioLDMModel(DiffusersAdapter):
    """Adapter for :class:`diffusers.AudioLDMPipeline` (e.g. ``cvssp/audioldm-s-full-v2``)."""

    modality = "audio"
    options = ("audio_length_in_s", "n_fft")
    peak_level = 0.5  # AudioLDM's training data: mean removed, peak at 0.5
    name = "AudioLDM"  # in error messages
    remove_dc = True

    def __init__(self, pipe: Any, audio_length_in_s: float | None = None, n_fft: int = 1024):
        super().__init__(pipe)
        vocoder = pipe.vocoder.config
        self.sample_rate = int(vocoder.sampling_rate)
        hop = int(np.prod(vocoder.upsample_rates))
        if audio_length_in_s is None:
            audio_length_in_s = pipe.unet.config.sample_size * pipe.vae_scale_factor * hop
            audio_length_in_s /= self.sample_rate
        self.audio_length_in_s = float(audio_length_in_s)
        # The pipeline's rounding: whole mel frames, up to a multiple of the VAE's factor.
        frames = int(self.audio_length_in_s / (hop / self.sample_rate))
        self.num_frames = math.ceil(frames / pipe.vae_scale_factor) * pipe.vae_scale_factor
        self.num_samples = int(self.audio_length_in_s * self.sample_rate)
        self.mel = MelConfig(
            sample_rate=self.sample_rate,
            n_fft=n_fft,
            win_length=n_fft,
            hop_length=hop,
            n_mels=int(vocoder.model_in_dim),
            fmax=self.sample_rate / 2,
        )

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str, **kwargs: Any) -> AudioLDMModel:
        """Load as ``AudioLDMPipeline.from_pretrained`` does; adapter options are popped first."""
        from diffusers import AudioLDMPipeline

        return cls.load_pipeline(AudioLDMPipeline, path_or_repo_id, kwargs)

    @property
    def duration(self) -> float:
        """Seconds of audio one sample holds."""
        return self.audio_length_in_s

    def latent_shape(self) -> tuple[int, ...]:
        vsf = self.pipe.vae_scale_factor
        width = int(self.pipe.vocoder.config.model_in_dim) // vsf
        return (self.pipe.unet.config.in_channels, self.num_frames // vsf, width)

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        cond = self._text_cond(cond)
        return self.pipe.unet(
            self.model_input(x_t),
            self.batch_timesteps(t, x_t.shape[0]),
            encoder_hidden_states=None,
            class_labels=cond.hidden_states,
        ).sample.float()

    def _text_cond(self, cond: PromptEmbeds | None) -> PromptEmbeds:
        """``cond`` on the model's device and dtype; AudioLDMs have no unconditional mode."""
        if cond is None:
            raise ValueError(f"{self.name} needs a text conditioning; use encode_prompt([''] * B)")
        return cond.to(self.device, self.dtype)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        inputs = tokenize(self.pipe.tokenizer, prompts, self.device)
        out = self.pipe.text_encoder(inputs.input_ids, attention_mask=inputs.attention_mask)
        embeds = F.normalize(out.text_embeds.float(), dim=-1)
        return PromptEmbeds(hidden_states=embeds, pooled=embeds)

    @torch.no_grad()
    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, L)`` waveforms at :attr:`sample_rate` -> latents (posterior mode, or a sample
        drawn with ``generator``)."""
        mel = log_mel(media.to(self.device), self.mel, self.num_frames)[:, None]
        vae = self.pipe.vae
        posterior = vae.encode(mel.to(vae.dtype)).latent_dist
        return vae_latents(posterior, generator) * vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> ``(B, L)`` waveforms at :attr:`sample_rate`, as the pipeline decodes."""
        vae = self.pipe.vae
        mel = vae.decode(latents.to(self.device, vae.dtype) / vae.config.scaling_factor).sample
        return self.pipe.mel_spectrogram_to_waveform(mel)[:, : self.num_samples].float()


class AudioLDM2Model(AudioLDMModel):
    """Adapter for :class:`diffusers.AudioLDM2Pipeline` (e.g. ``cvssp/audioldm2``).

    Same mel-VAE space and vocoder as AudioLDM; the UNet cross-attends to two sequences: the
    GPT-2 "language of audio" tokens generated from the CLAP + T5 text embeddings, and the T5
    embeddings themselves. The discriminator gets the CLAP text embedding.
    """

    name = "AudioLDM 2"

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str, **kwargs: Any) -> AudioLDM2Model:
        """Load as ``AudioLDM2Pipeline.from_pretrained``. Released checkpoints store the
        language model as a ``GPT2Model``, which transformers 5 can no longer ``generate``
        with; it is loaded into a ``GPT2LMHeadModel`` (same weights; the head is tied to the
        token embedding and unused: only hidden states are generated)."""
        from diffusers import AudioLDM2Pipeline

        options = {k: kwargs.pop(k) for k in cls.options if k in kwargs}
        kwargs.setdefault("use_safetensors", True)
        if "language_model" not in kwargs:
            kwargs["language_model"] = _language_model(path_or_repo_id, kwargs)
        return cls(AudioLDM2Pipeline.from_pretrained(path_or_repo_id, **kwargs), **options)

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        cond = self._text_cond(cond)
        return self.pipe.unet(
            self.model_input(x_t),
            self.batch_timesteps(t, x_t.shape[0]),
            encoder_hidden_states=cond.hidden_states,
            encoder_hidden_states_1=cond.extra["text_embeds"],
            encoder_attention_mask_1=cond.attention_mask,
        ).sample.float()

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        embeds, mask, generated = self.pipe.encode_prompt(
            list(prompts), self.device, 1, do_classifier_free_guidance=False
        )
        return self._embeds(prompts, embeds, mask, generated)

    @torch.no_grad()
    def encode_prompt_pair(self, prompts: list[str]) -> tuple[PromptEmbeds, PromptEmbeds]:
        """As the pipeline does it: the empty prompt's T5 tokens are padded to the prompts'
        length, which changes the GPT-2 tokens generated from them."""
        n = len(prompts)
        embeds, mask, generated = self.pipe.encode_prompt(
            list(prompts), self.device, 1, do_classifier_free_guidance=True
        )
        cond = self._embeds(prompts, embeds[n:], mask[n:], generated[n:])
        uncond = self._embeds([""] * n, embeds[:n], mask[:n], generated[:n])
        return cond, uncond

    def _embeds(
        self, prompts: list[str], embeds: Tensor, mask: Tensor, generated: Tensor
    ) -> PromptEmbeds:
        inputs = tokenize(self.pipe.tokenizer, prompts, self.device)
        clap = self.pipe.text_encoder.get_text_features(
            inputs.input_ids, attention_mask=inputs.attention_mask
        )
        clap = getattr(clap, "pooler_output", clap)
        return PromptEmbeds(
            hidden_states=generated,
            pooled=F.normalize(clap.float(), dim=-1),
            attention_mask=mask,
            extra={"text_embeds": embeds},
        )


def _language_model(path_or_repo_id: str, kwargs: dict[str, Any]) -> Any:
    """The checkpoint's language model as a ``GPT2LMHeadModel`` (see AudioLDM2Model)."""
    from transformers import AutoConfig, GPT2LMHeadModel

    where = loader_kwargs(kwargs, "variant")
    files = {k: v for k, v in where.items() if k in ("cache_dir", "local_files_only", "revision")}
    config = AutoConfig.from_pretrained(path_or_repo_id, subfolder="language_model", **files)
    if config.model_type != "gpt2":
        raise ValueError(
            f"{path_or_repo_id}: language_model is a {config.model_type!r} model; AudioLDM 2 "
            "needs GPT-2"
        )
    return GPT2LMHeadModel.from_pretrained(path_or_repo_id, subfolder="language_model", **where)
