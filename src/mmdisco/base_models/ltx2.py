"""LTX-2 (Lightricks): one transformer that denoises video and audio together.

A *joint* model: its video and audio streams attend to each other in every block, so it is
exposed as a pair of :class:`~mmdisco.base_models.base.BaseModel` views (``.video``,
``.audio``) of one :class:`LTX2Model`, as the world's joint model is
(:mod:`mmdisco.world.paired`). :func:`mmdisco.sampling.joint_sample` sees that both streams
view one joint model and calls :meth:`LTX2Model.predict_pair` once per step; MMDisCo's
discriminator term is then added to both velocities, which guides the frozen joint model.

Spaces. Video: normalised VAE latents ``(C, F', H', W')`` as in :mod:`.ltx` (packing into
tokens is internal). Audio: normalised latent spectrograms ``(C, L, M')`` of the audio VAE
(normalisation is per packed feature, ``C * M'``, as the pipeline does it). Both run on the
rectified-flow path with timesteps ``sigma * 1000``; both schedulers take the pipeline's
sigmas ``linspace(1, 1/N, N)`` shifted by ``mu`` of the *video* token count.

Guidance, as ``LTX2Pipeline`` does it, in x0 space per modality: CFG (each stream's own
``cfg_scale``: the pipeline's ``guidance_scale`` and ``audio_guidance_scale``), STG (a pass
with self-attention skipped in ``stg_blocks``), modality guidance (a pass with the
audio-video cross-attention off) and rescaling of the result towards the conditional
prediction's standard deviation. The pipeline draws the video noise, then the audio noise,
from one generator (``draws_video_first``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mmdisco.base_models._diffusers import DiffusersAdapter, masked_mean, vae_latents
from mmdisco.base_models._video import check_video_size, video_latent_grid
from mmdisco.base_models.base import BaseModel, PromptEmbeds
from mmdisco.base_models.ltx import LTXFlowMatchScheduler, calculate_shift

# LTX2Pipeline's defaults for its guidance extras (video, audio).
GUIDANCE_DEFAULTS: dict[str, Any] = {
    "stg_scale": 1.0,
    "audio_stg_scale": 1.0,
    "modality_scale": 3.0,
    "audio_modality_scale": 3.0,
    "guidance_rescale": 0.7,
    "audio_guidance_rescale": 0.7,
    "stg_blocks": (28,),
}


def rescale(guided: Tensor, reference: Tensor, amount: float) -> Tensor:
    """Move ``guided`` towards ``guided`` rescaled to ``reference``'s per-sample std
    (Lin et al. 2024, section 3.4; the pipeline's ``rescale_noise_cfg``)."""
    if amount <= 0:
        return guided
    dims = list(range(1, guided.ndim))
    scaled = guided * (reference.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return amount * scaled + (1 - amount) * guided


class LTX2Model(DiffusersAdapter):
    """Adapter for :class:`diffusers.LTX2Pipeline` (``Lightricks/LTX-2``): the joint model.

    Not sampled directly: its ``.video`` and ``.audio`` views are the base models of a joint
    run. ``num_frames``/``height``/``width``/``frame_rate`` fix both latent shapes (the audio
    lasts ``num_frames / frame_rate`` seconds).
    """

    modality = "joint"
    denoiser_name = "transformer"
    draws_video_first = True
    options = (
        "num_frames",
        "height",
        "width",
        "frame_rate",
        "max_sequence_length",
        "use_cross_timestep",
        "decode_timestep",
        "n_fft",
        *GUIDANCE_DEFAULTS,
    )

    def __init__(
        self,
        pipe: Any,
        num_frames: int = 121,
        height: int = 512,
        width: int = 768,
        frame_rate: float = 24.0,
        max_sequence_length: int = 1024,
        use_cross_timestep: bool = True,
        decode_timestep: float = 0.0,
        n_fft: int = 1024,
        **guidance: Any,
    ) -> None:
        super().__init__(pipe)
        unknown = set(guidance) - set(GUIDANCE_DEFAULTS)
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]}: unknown LTX-2 option")
        self.guidance = {**GUIDANCE_DEFAULTS, **guidance}
        self.guidance["stg_blocks"] = tuple(int(b) for b in self.guidance["stg_blocks"] or ())
        self.num_frames, self.height, self.width = int(num_frames), int(height), int(width)
        check_video_size(
            "LTX-2",
            self.num_frames,
            self.height,
            self.width,
            space=pipe.vae_spatial_compression_ratio,
            time=pipe.vae_temporal_compression_ratio,
        )
        self.frame_rate, self.max_sequence_length = float(frame_rate), int(max_sequence_length)
        self.use_cross_timestep, self.decode_timestep = bool(use_cross_timestep), decode_timestep
        self.n_fft = int(n_fft)
        self.video = LTX2View(self, "video")
        self.audio = LTX2View(self, "audio")

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str, **kwargs: Any) -> LTX2Model:
        from diffusers import LTX2Pipeline

        return cls.load_pipeline(LTX2Pipeline, path_or_repo_id, kwargs)

    # ------------------------------------------------------------------ shapes
    @property
    def video_grid(self) -> tuple[int, int, int]:
        p = self.pipe
        space, time = p.vae_spatial_compression_ratio, p.vae_temporal_compression_ratio
        return video_latent_grid(self.num_frames, self.height, self.width, space=space, time=time)

    @property
    def audio_frames(self) -> int:
        p = self.pipe
        per_second = (
            p.audio_sampling_rate / p.audio_hop_length / p.audio_vae_temporal_compression_ratio
        )
        return round(self.num_frames / self.frame_rate * per_second)

    @property
    def mel_bins(self) -> int:
        return self.pipe.audio_vae.config.mel_bins // self.pipe.audio_vae_mel_compression_ratio

    def latent_shapes(self) -> dict[str, tuple[int, ...]]:
        p = self.pipe
        return {
            "video": (p.transformer.config.in_channels, *self.video_grid),
            "audio": (p.audio_vae.config.latent_channels, self.audio_frames, self.mel_bins),
        }

    def latent_shape(self) -> tuple[int, ...]:
        raise TypeError("LTX-2 is a joint model; use the shapes of its .video and .audio views")

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        raise TypeError("LTX-2 is a joint model; sample its .video and .audio views together")

    def make_scheduler(self, cls: Any = None, **overrides: Any) -> Any:
        """The pipeline's scheduler: FlowMatchEuler with its sigmas and the shift ``mu`` of the
        video token count (the audio stream takes the same: the pipeline deep-copies it)."""
        scheduler = super().make_scheduler(cls or LTXFlowMatchScheduler, **overrides)
        if isinstance(scheduler, LTXFlowMatchScheduler):
            f, h, w = self.video_grid
            scheduler.mu = calculate_shift(f * h * w, scheduler.config)
        return scheduler

    def fingerprint(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "latent_shapes": {k: list(v) for k, v in self.latent_shapes().items()},
            "guidance": {k: list(v) if k == "stg_blocks" else v for k, v in self.guidance.items()},
        }

    # ------------------------------------------------------------------ tokens
    def pack_video(self, latents: Tensor) -> Tensor:
        p = self.pipe
        return p._pack_latents(
            latents, p.transformer_spatial_patch_size, p.transformer_temporal_patch_size
        )

    def unpack_video(self, tokens: Tensor) -> Tensor:
        p = self.pipe
        return p._unpack_latents(
            tokens,
            *self.video_grid,
            p.transformer_spatial_patch_size,
            p.transformer_temporal_patch_size,
        )

    def pack_audio(self, latents: Tensor) -> Tensor:
        return self.pipe._pack_audio_latents(latents)

    def unpack_audio(self, tokens: Tensor) -> Tensor:
        return self.pipe._unpack_audio_latents(tokens, self.audio_frames, self.mel_bins)

    # ------------------------------------------------------------------ prediction
    def _forward(
        self, audio: Tensor, video: Tensor, t_a: Tensor, t_v: Tensor, cond: PromptEmbeds, **kw: Any
    ) -> tuple[Tensor, Tensor]:
        """One transformer pass on packed tokens: (audio, video) velocities in float32."""
        from diffusers.pipelines.ltx2.utils import conditioning_frame_rate

        f, h, w = self.video_grid
        video_out, audio_out = self.pipe.transformer(
            hidden_states=self.model_input(video),
            audio_hidden_states=self.model_input(audio),
            encoder_hidden_states=cond.hidden_states,
            audio_encoder_hidden_states=cond.extra["audio_hidden_states"],
            timestep=t_v,
            audio_timestep=t_a,
            sigma=t_v,
            audio_sigma=t_a,
            encoder_attention_mask=cond.attention_mask,
            audio_encoder_attention_mask=cond.attention_mask,
            num_frames=f,
            height=h,
            width=w,
            fps=conditioning_frame_rate(self.frame_rate, 1.0),
            audio_num_frames=self.audio_frames,
            use_cross_timestep=self.use_cross_timestep,
            return_dict=False,
            **kw,
        )
        return audio_out.float(), video_out.float()

    def predict_pair(
        self,
        audio_t: Tensor,
        video_t: Tensor,
        t_audio: Tensor,
        t_video: Tensor,
        cond: PromptEmbeds | None = None,
        uncond: PromptEmbeds | None = None,
        cfg_scales: tuple[float, float] = (1.0, 1.0),
    ) -> tuple[Tensor, Tensor]:
        """Both velocities with the pipeline's guidance: CFG at ``cfg_scales`` (audio, video)
        against ``uncond`` (when given), STG, modality guidance and rescaling."""
        if cond is None:
            raise ValueError("LTX-2 needs a text conditioning; use encode_prompt([''] * B)")
        g = self.guidance
        batch = audio_t.shape[0]
        t_a, t_v = self.batch_timesteps(t_audio, batch), self.batch_timesteps(t_video, batch)
        x = (self.pack_audio(audio_t), self.pack_video(video_t))
        sigmas = (t_a.float() / self.num_train_timesteps, t_v.float() / self.num_train_timesteps)
        cond = cond.to(self.device, self.dtype)

        def x0(velocities: tuple[Tensor, Tensor]) -> list[Tensor]:
            return [
                xi - s.view(-1, 1, 1) * vi for xi, s, vi in zip(x, sigmas, velocities, strict=True)
            ]

        base = x0(self._forward(*x, t_a, t_v, cond))
        # Each extra pass: (audio, video) weights of (base - its x0), its text, its options.
        passes: list[tuple[tuple[float, float], PromptEmbeds, dict[str, Any]]] = []
        if uncond is not None:
            passes.append(((cfg_scales[0] - 1, cfg_scales[1] - 1), uncond, {}))
        if g["stg_scale"] > 0 or g["audio_stg_scale"] > 0:
            blocks = {"spatio_temporal_guidance_blocks": list(g["stg_blocks"])}
            passes.append(((g["audio_stg_scale"], g["stg_scale"]), cond, blocks))
        if g["modality_scale"] > 1 or g["audio_modality_scale"] > 1:
            scales = (g["audio_modality_scale"] - 1, g["modality_scale"] - 1)
            passes.append((scales, cond, {"isolate_modalities": True}))
        guided = list(base)
        for scales, text, kw in passes:
            other = x0(self._forward(*x, t_a, t_v, text.to(self.device, self.dtype), **kw))
            guided = [
                gi + s * (b - o) for gi, s, b, o in zip(guided, scales, base, other, strict=True)
            ]
        amounts = (g["audio_guidance_rescale"], g["guidance_rescale"])
        guided = [rescale(gi, b, r) for gi, b, r in zip(guided, base, amounts, strict=True)]
        audio, video = (
            (xi - gi) / s.view(-1, 1, 1) for xi, gi, s in zip(x, guided, sigmas, strict=True)
        )
        return self.unpack_audio(audio), self.unpack_video(video)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        """Gemma hidden states through the pipeline's connectors: the video stream's text
        tokens (``hidden_states``), the audio stream's (``extra``) and their mask."""
        p = self.pipe
        embeds, mask = p._get_gemma_prompt_embeds(
            list(prompts), max_sequence_length=self.max_sequence_length, device=self.device
        )
        side = getattr(p.tokenizer, "padding_side", "left")
        video, audio, mask = p.connectors(embeds, mask, padding_side=side)
        return PromptEmbeds(
            hidden_states=video,
            pooled=masked_mean(video, mask),
            attention_mask=mask,
            extra={"audio_hidden_states": audio, "audio_pooled": masked_mean(audio, mask)},
        )

    # ------------------------------------------------------------------ media
    def video_vae_latents(self, latents: Tensor) -> Tensor:
        """Normalised video latents -> the VAE's own latents (the pipeline's latent output)."""
        vae = self.pipe.vae
        return self.pipe._denormalize_latents(
            latents.to(self.device, torch.float32),
            vae.latents_mean,
            vae.latents_std,
            vae.config.scaling_factor,
        )

    def audio_vae_latents(self, latents: Tensor) -> Tensor:
        """Normalised audio latents -> the audio VAE's own (the pipeline's latent output)."""
        vae = self.pipe.audio_vae
        tokens = self.pipe._denormalize_audio_latents(
            self.pack_audio(latents.to(self.device, torch.float32)),
            vae.latents_mean,
            vae.latents_std,
        )
        return self.unpack_audio(tokens)

    @torch.no_grad()
    def encode_video(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        vae = self.pipe.vae
        latents = vae_latents(vae.encode(media.to(self.device, vae.dtype)).latent_dist, generator)
        return self.pipe._normalize_latents(
            latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor
        )

    @torch.no_grad()
    def decode_video(self, latents: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Normalised latents -> ``(B, 3, F, H, W)`` frames in [-1, 1], decoded as the
        pipeline decodes (noise of ``decode_timestep`` for a timestep-conditioned VAE)."""
        from diffusers.utils.torch_utils import randn_tensor

        vae = self.pipe.vae
        x, timestep = latents.to(self.device, torch.float32), None
        if vae.config.timestep_conditioning:
            scale = float(self.decode_timestep)
            noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = (1 - scale) * x + scale * noise
            timestep = torch.full((x.shape[0],), scale, device=x.device, dtype=x.dtype)
        x = self.video_vae_latents(x)
        return vae.decode(x.to(vae.dtype), timestep, return_dict=False)[0].float().clamp(-1, 1)

    def log_mel(self, waveform: Tensor) -> Tensor:
        """``(B, C, L)`` waveforms -> ``(B, C, T, mel_bins)`` log-mel as the audio VAE reads it:
        centred magnitude STFT (Hann, ``n_fft``), Slaney mel to Nyquist, ``log(max(x, 1e-5))``."""
        import librosa

        config = self.pipe.audio_vae.config
        b, c, length = waveform.shape
        spec = torch.stft(
            waveform.reshape(b * c, length).float(),
            self.n_fft,
            hop_length=config.mel_hop_length,
            window=torch.hann_window(self.n_fft, device=waveform.device),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        ).abs()
        basis = librosa.filters.mel(sr=config.sample_rate, n_fft=self.n_fft, n_mels=config.mel_bins)
        mel = torch.from_numpy(basis).to(spec) @ spec
        return mel.clamp_min(1e-5).log().reshape(b, c, config.mel_bins, -1).transpose(2, 3)

    @torch.no_grad()
    def encode_audio(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, C, L)`` (or mono ``(B, L)``) waveforms at the audio VAE's rate -> normalised
        latents, cropped or padded with silence to the clip's latent length."""
        vae = self.pipe.audio_vae
        if media.ndim == 2:
            media = media[:, None]
        channels = vae.config.in_channels
        if media.shape[1] != channels:
            media = media.mean(1, keepdim=True).expand(-1, channels, -1)
        samples = math.ceil(self.audio_frames * self.pipe.audio_vae_temporal_compression_ratio)
        samples *= self.pipe.audio_hop_length
        media = torch.nn.functional.pad(media, (0, max(0, samples - media.shape[-1])))
        mel = self.log_mel(media[..., :samples].to(self.device))
        posterior = vae.encode(mel.to(vae.dtype)).latent_dist
        latents = vae_latents(posterior, generator)[:, :, : self.audio_frames]
        tokens = self.pipe._normalize_audio_latents(
            self.pack_audio(latents), vae.latents_mean, vae.latents_std
        )
        return self.unpack_audio(tokens)

    @torch.no_grad()
    def decode_audio(self, latents: Tensor) -> Tensor:
        """Normalised latents -> ``(B, C, L)`` waveforms at the vocoder's output rate."""
        vae = self.pipe.audio_vae
        mel = vae.decode(self.audio_vae_latents(latents).to(vae.dtype), return_dict=False)[0]
        return self.pipe.vocoder(mel).float()

    def pooled_text_embedding(self, cond: Any) -> Tensor | None:
        return None if cond is None else cond.pooled.float()


class LTX2View(BaseModel):
    """One modality of an :class:`LTX2Model` as a base model (see :mod:`mmdisco.world.paired`'s
    ``JointView``). Its predictions come from :meth:`LTX2Model.predict_pair`, which the joint
    sampler calls once per step for both views."""

    def __init__(self, joint: LTX2Model, modality: str) -> None:
        self.joint, self.modality = joint, modality
        self.scheduler_config = joint.scheduler_config

    @property
    def device(self) -> torch.device:
        return self.joint.device

    @property
    def dtype(self) -> torch.dtype:
        return self.joint.dtype

    def latent_shape(self) -> tuple[int, ...]:
        return self.joint.latent_shapes()[self.modality]

    def make_scheduler(self, cls: Any = None, **overrides: Any) -> Any:
        return self.joint.make_scheduler(cls, **overrides)

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "joint": self.joint.fingerprint()}

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        raise NotImplementedError(
            f"LTX-2's {self.modality} view predicts only together with the other modality "
            "(joint_sample with both views, neither given); conditional generation from a "
            "given clip is not supported for LTX-2"
        )

    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        return self.joint.encode_prompt(prompts)

    def encode_prompt_pair(self, prompts: list[str]) -> tuple[PromptEmbeds, PromptEmbeds]:
        return self.joint.encode_prompt_pair(prompts)

    def pooled_text_embedding(self, cond: Any) -> Tensor | None:
        if cond is None:
            return None
        pooled = cond.extra["audio_pooled"] if self.modality == "audio" else cond.pooled
        return pooled.float()

    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.modality == "audio":
            return self.joint.encode_audio(media, generator)
        return self.joint.encode_video(media, generator)

    def decode(self, latents: Tensor) -> Tensor:
        if self.modality == "audio":
            return self.joint.decode_audio(latents)
        return self.joint.decode_video(latents)
