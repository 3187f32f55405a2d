"""Stable Audio Open (Evans et al. 2024): a v-prediction DiT over Oobleck VAE latents.

The model is trained on the continuous cosine path ``x_t = cos(pi t / 2) x_0 + sin(pi t / 2)
eps``, ``t`` in [0, 1], which diffusers samples as an EDM process with
``sigma = tan(pi t / 2)`` (``CosineDPMSolverMultistepScheduler``). That scheduler runs the
*stochastic* DPM-Solver++ and imports ``torchsde`` at module load. We sample with its
deterministic twin instead: :class:`CosineDPMSolverScheduler`, diffusers'
``EDMDPMSolverMultistepScheduler`` (``algorithm_type="dpmsolver++"``) with Stable Audio's
noise conditioning ``t = atan(sigma) * 2 / pi``; same sigmas, same preconditioning, no SDE
noise. ``scale_model_input`` then yields the variance-preserving ``x_t`` that the
discriminator sees.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import EDMDPMSolverMultistepScheduler
from torch import Tensor

from mmdisco.base_models._diffusers import DiffusersAdapter, masked_mean, vae_latents
from mmdisco.base_models.base import PromptEmbeds
from mmdisco.base_models.clip_text import tokenize
from mmdisco.diffusion import NoiseSchedule


class CosineDPMSolverScheduler(EDMDPMSolverMultistepScheduler):
    """Deterministic DPM-Solver++ on Stable Audio's cosine/EDM parameterisation."""

    def precondition_noise(self, sigma: float | Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma)
        return sigma.atan() / math.pi * 2


class CosineSchedule(NoiseSchedule):
    """``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)`` for continuous ``t`` in [0, 1]."""

    num_train_timesteps = 1

    @property
    def max_timestep(self) -> float:
        return 1.0

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = self.check_timesteps(t).float()
        return torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)

    def timesteps_from_fraction(self, u: Tensor) -> Tensor:
        return u.float()


def scheduler_config_for_sampling(config: dict[str, Any]) -> dict[str, Any]:
    """Stable Audio's scheduler config re-targeted at :class:`CosineDPMSolverScheduler`."""
    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    config["algorithm_type"] = "dpmsolver++"
    config["_class_name"] = CosineDPMSolverScheduler.__name__
    return config


class StableAudioModel(DiffusersAdapter):
    """Adapter for :class:`diffusers.StableAudioPipeline` (Stable Audio Open 1.0)."""

    modality = "audio"
    denoiser_name = "transformer"
    options = ("audio_end_in_s", "full_length")

    def __init__(
        self, pipe: Any, audio_end_in_s: float | None = None, full_length: bool = False
    ) -> None:
        if not isinstance(pipe.scheduler, CosineDPMSolverScheduler):
            pipe.scheduler = CosineDPMSolverScheduler.from_config(
                scheduler_config_for_sampling(pipe.scheduler.config)
            )
        super().__init__(pipe)
        self.sample_rate = int(pipe.vae.config.sampling_rate)
        max_len = pipe.transformer.config.sample_size * pipe.vae.hop_length / self.sample_rate
        self.audio_end_in_s = float(audio_end_in_s or max_len)
        if not 0 < self.audio_end_in_s <= max_len:
            raise ValueError(f"audio_end_in_s={self.audio_end_in_s} must lie in (0, {max_len}] s")
        frames = math.ceil(self.audio_end_in_s * self.sample_rate / pipe.vae.hop_length)
        self.latent_frames = int(pipe.transformer.config.sample_size) if full_length else frames

    @property
    def duration(self) -> float:
        return self.audio_end_in_s

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str, **kwargs: Any) -> StableAudioModel:
        """Load as ``StableAudioPipeline.from_pretrained``, swapping the torchsde scheduler for
        :class:`CosineDPMSolverScheduler` (built from the checkpoint's scheduler config)."""
        from diffusers import StableAudioPipeline

        options = {k: kwargs.pop(k) for k in cls.options if k in kwargs}
        kwargs.setdefault("use_safetensors", True)
        if "scheduler" not in kwargs:
            config = CosineDPMSolverScheduler.load_config(
                path_or_repo_id,
                subfolder="scheduler",
                **{
                    k: kwargs[k]
                    for k in ("cache_dir", "local_files_only", "revision")
                    if k in kwargs
                },
            )
            config = scheduler_config_for_sampling(config)
            scheduler = CosineDPMSolverScheduler.from_config(config)
            # Passing it as ``scheduler=`` would fail the class check against the torchsde
            # dummy, so load without a scheduler and attach ours.
            kwargs["scheduler"] = None
        else:
            scheduler = kwargs["scheduler"]
        pipe = StableAudioPipeline.from_pretrained(path_or_repo_id, **kwargs)
        pipe.scheduler = scheduler
        return cls(pipe, **options)

    @property
    def schedule(self) -> NoiseSchedule:
        return CosineSchedule()

    def make_scheduler(self, cls: Any = None, **overrides: Any) -> Any:
        cls = cls or CosineDPMSolverScheduler
        config = {k: v for k, v in self.scheduler_config.items() if not k.startswith("_")}
        return cls.from_config({**config, **overrides})

    def latent_shape(self) -> tuple[int, ...]:
        return (self.pipe.transformer.config.in_channels, self.latent_frames)

    def _rotary(self, length: int) -> Any:
        from diffusers.models.embeddings import get_1d_rotary_pos_embed

        return get_1d_rotary_pos_embed(
            self.pipe.rotary_embed_dim, length, use_real=True, repeat_interleave_real=False
        )

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if cond is None:
            raise ValueError("Stable Audio needs a conditioning; use encode_prompt([''] * B)")
        cond = cond.to(self.device, self.dtype)
        glob = cond.extra["global_hidden_states"]
        return self.pipe.transformer(
            self.model_input(x_t),
            self.batch_timesteps(t, x_t.shape[0]),
            encoder_hidden_states=cond.hidden_states,
            global_hidden_states=glob,
            rotary_embedding=self._rotary(x_t.shape[2] + glob.shape[1]),
            return_dict=False,
        )[0].float()

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], audio_start_in_s: float = 0.0) -> PromptEmbeds:
        """Text + timing conditioning. An empty prompt is the pipeline's unconditional input:
        zero text-and-timing tokens (the global timing vector is kept, as the pipeline does)."""
        prompts = list(prompts)
        pipe = self.pipe
        inputs = tokenize(pipe.tokenizer, prompts, self.device)
        embeds = pipe.text_encoder(inputs.input_ids, attention_mask=inputs.attention_mask)[0]
        hidden = pipe.encode_prompt(
            prompts,
            self.device,
            do_classifier_free_guidance=False,
            prompt_embeds=embeds,
            attention_mask=inputs.attention_mask,
        )
        start, end = pipe.encode_duration(
            audio_start_in_s,
            self.audio_end_in_s,
            self.device,
            do_classifier_free_guidance=False,
            batch_size=len(prompts),
        )
        tokens = torch.cat([hidden, start, end], dim=1)
        empty = torch.tensor([p == "" for p in prompts], device=self.device)
        tokens = torch.where(empty[:, None, None], torch.zeros_like(tokens), tokens)
        pooled = masked_mean(hidden, inputs.attention_mask)
        return PromptEmbeds(
            hidden_states=tokens,
            pooled=pooled,
            attention_mask=inputs.attention_mask,
            extra={"global_hidden_states": torch.cat([start, end], dim=2)},
        )

    @torch.no_grad()
    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, C, L)`` (or mono ``(B, L)``) waveforms -> latents (posterior mode, or a sample
        drawn with ``generator``)."""
        if media.ndim == 2:
            media = media[:, None]
        channels = self.pipe.vae.config.audio_channels
        if media.shape[1] != channels:
            media = media.mean(1, keepdim=True).expand(-1, channels, -1)
        length = self.latent_shape()[1] * self.pipe.vae.hop_length
        media = torch.nn.functional.pad(media, (0, max(0, length - media.shape[-1])))[..., :length]
        vae = self.pipe.vae
        return vae_latents(vae.encode(media.to(self.device, vae.dtype)).latent_dist, generator)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> ``(B, C, L)`` waveforms, cut to ``audio_end_in_s``."""
        audio = self.pipe.vae.decode(latents.to(self.device, self.pipe.vae.dtype)).sample
        return audio[..., : int(self.audio_end_in_s * self.sample_rate)].float()
