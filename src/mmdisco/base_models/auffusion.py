"""Spectrogram-image models: Stable Diffusion on mel images (Auffusion, Xue et al. 2024).

A log-mel spectrogram is min-max normalised to [0, 1], flipped so low frequencies sit at the
bottom, repeated over three channels and treated as an RGB image (height = mel bins, width =
time); a separate HiFi-GAN vocoder turns mels back into audio.

Two adapters:

* :class:`AuffusionModel` (``"auffusion"``) is Auffusion as its own pipeline runs it: each
  prompt is encoded whole and unpadded by every text encoder of ``condition_config.json``,
  its first 77 hidden states kept (zero-padded to 77) and passed through that encoder's
  condition adapter (Linear + LayerNorm); the unconditional input is all zeros; the vocoder
  is Auffusion's HiFi-GAN. Two things come from the MMDisCo release instead: the UNet always
  sees 10.24 s of latents (a shorter clip, then noised silence; Auffusion's pipeline always
  generates the full 10.24 s image) and, by default, the noise is drawn in the adapter's
  (frames, mels) layout (``noise_layout="auffusion"`` draws Auffusion's (mels, frames)).
  Audio is peak-normalised to 0.95 before the mel (``peak_level``, applied by the clip
  spec). Load a folder written by :func:`convert_auffusion` (``mmdisco convert-auffusion``)
  from the released checkpoint.
* :class:`SpectrogramImageModel` (``"spectrogram_image"``) is the generic layout: a diffusers
  ``StableDiffusionPipeline`` on mel images plus a ``SpeechT5HifiGan`` vocoder. It is *not*
  Auffusion (CLIP conditioning as Stable Diffusion does it, no latent context)::

      model/
        model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/
        vocoder/config.json + model.safetensors    # a transformers SpeechT5HifiGan
        spectrogram.json                            # optional: SpectrogramImageConfig fields
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from mmdisco.base_models._diffusers import DiffusersAdapter, loader_kwargs, vae_latents
from mmdisco.base_models.base import PromptEmbeds
from mmdisco.base_models.clip_text import clip_prompt_embeds
from mmdisco.base_models.hifigan import HifiGan, HifiGanConfig, fold_weight_norm
from mmdisco.base_models.mel import MelConfig, log_mel
from mmdisco.errors import check_choice
from mmdisco.io import load_pretrained, save_pretrained, write_json_atomic

SPECTROGRAM_CONFIG = "spectrogram.json"
CONDITION_CONFIG = "condition_config.json"
# Text encoders Auffusion's condition_config.json may name, by transformers architecture.
TEXT_ENCODERS = ("CLIPTextModel", "T5EncoderModel", "ClapTextModelWithProjection")
# Who draws the noise in which layout: the MMDisCo release in the adapter's (frames, mels),
# Auffusion's pipeline in its UNet's (mels, frames).
NOISE_LAYOUTS = ("mmdisco", "auffusion")


@dataclass(frozen=True)
class SpectrogramImageConfig:
    """How mels become images. Defaults follow the Auffusion release (16 kHz, 256 mels, n_fft
    2048, window 1024, hop 160, magnitude ``sqrt(|X|^2 + 1e-9)``, log-magnitude clipped to
    [log 1e-5, log 200], power 1)."""

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
    magnitude_floor: float = 1e-9
    duration: float = 10.24  # seconds; 1024 mel frames

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SpectrogramImageConfig:
        with open(path) as f:
            data = json.load(f)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown fields {sorted(unknown)}; expected {sorted(known)}")
        return cls(**data)

    def save(self, path: str | os.PathLike[str]) -> None:
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
            self.magnitude_floor,
        )


def mel_to_image(mel: Tensor, cfg: SpectrogramImageConfig) -> Tensor:
    """``(B, T, n_mels)`` log-mel -> ``(B, 3, n_mels, T)`` image in [-1, 1]."""
    lo, hi = math.log(cfg.min_value), math.log(cfg.max_value)
    x = ((mel.clamp(lo, hi) - lo) / (hi - lo)) ** cfg.power
    x = x.transpose(1, 2).flip(1)[:, None].expand(-1, 3, -1, -1)
    return x * 2 - 1


def image_to_mel(image: Tensor, cfg: SpectrogramImageConfig) -> Tensor:
    """Inverse of :func:`mel_to_image`. Like Auffusion, it reads the first channel."""
    lo, hi = math.log(cfg.min_value), math.log(cfg.max_value)
    x = ((image[:, 0].float() + 1) / 2).clamp(0, 1).flip(1).transpose(1, 2)
    return x ** (1 / cfg.power) * (hi - lo) + lo


def _spectrogram(path: str, spec: Any) -> SpectrogramImageConfig:
    """``spec`` as given, or the folder's spectrogram.json overridden by a dict (from YAML)."""
    if isinstance(spec, SpectrogramImageConfig):
        return spec
    file = os.path.join(path, SPECTROGRAM_CONFIG)
    base = SpectrogramImageConfig.load(file) if os.path.isfile(file) else SpectrogramImageConfig()
    return replace(base, **(spec or {}))


class SpectrogramImageModel(DiffusersAdapter):
    """Adapter for an SD-style UNet trained on mel images plus a separate vocoder.

    The UNet's latents are laid out like the image, ``(C, mels / 8, frames / 8)``; this
    adapter's space is their transpose ``(C, frames / 8, mels / 8)`` so that, as for AudioLDM,
    axis 1 is time (what the discriminator's 2-D audio stream expects). Transposing at the
    UNet's boundary changes nothing else: schedulers act elementwise.
    """

    modality = "audio"
    options = ("spectrogram",)

    def __init__(
        self, pipe: Any, vocoder: nn.Module, spectrogram: SpectrogramImageConfig | None = None
    ) -> None:
        super().__init__(pipe)
        self.vocoder = self.add_module("vocoder", vocoder)
        self.spec = spectrogram or SpectrogramImageConfig()
        mels = getattr(vocoder.config, "model_in_dim", None) or vocoder.config.num_mels
        if self.spec.n_mels != mels:
            raise ValueError(
                f"spectrogram n_mels={self.spec.n_mels} but the vocoder expects {mels} mel bins"
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

        spec = _spectrogram(path, kwargs.pop("spectrogram", None))
        kwargs.setdefault("use_safetensors", True)
        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
        pipe = StableDiffusionPipeline.from_pretrained(path, **kwargs)
        vocoder_dir = os.path.join(path, "vocoder")
        if not os.path.isdir(vocoder_dir):
            raise FileNotFoundError(f"{path}: no vocoder/ folder (a SpeechT5HifiGan) found")
        vocoder = SpeechT5HifiGan.from_pretrained(vocoder_dir, **loader_kwargs(kwargs))
        return cls(pipe, vocoder.to(pipe.unet.device), spec)

    @property
    def duration(self) -> float:
        return self.spec.duration

    def latent_shape(self) -> tuple[int, ...]:
        vsf = self.pipe.vae_scale_factor
        return (self.pipe.unet.config.in_channels, self.num_frames // vsf, self.spec.n_mels // vsf)

    def unet(self, x: Tensor, t: Tensor, text: Tensor) -> Tensor:
        """The UNet on latents in its own layout ``(B, C, mels / 8, frames / 8)``."""
        return self.pipe.unet(
            self.model_input(x),
            self.batch_timesteps(t, x.shape[0]),
            encoder_hidden_states=text.to(self.device, self.dtype),
        ).sample.float()

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if cond is None:
            raise ValueError("this model needs a text conditioning; use encode_prompt([''] * B)")
        return self.unet(x_t.transpose(-1, -2), t, cond.hidden_states).transpose(-1, -2)

    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        return clip_prompt_embeds(self.pipe.tokenizer, self.pipe.text_encoder, prompts)

    @torch.no_grad()
    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, L)`` waveforms -> latents of their mel images (posterior mode, or a sample
        drawn with ``generator``)."""
        return self.encode_frames(media, self.num_frames, generator)

    def encode_frames(
        self, media: Tensor, frames: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Latents ``(B, C, frames / 8, mels / 8)`` of the first ``frames`` mel frames (padded
        with silence)."""
        mel = log_mel(media.to(self.device), self.spec.mel, frames)
        vae = self.pipe.vae
        image = mel_to_image(mel, self.spec).to(vae.dtype)
        latents = vae_latents(vae.encode(image).latent_dist, generator)
        return (latents * vae.config.scaling_factor).transpose(-1, -2)

    @torch.no_grad()
    def decode_image(self, latents: Tensor) -> Tensor:
        vae = self.pipe.vae
        latents = latents.transpose(-1, -2).to(self.device, vae.dtype) / vae.config.scaling_factor
        return vae.decode(latents).sample

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> ``(B, L)`` waveforms at :attr:`sample_rate`."""
        mel = image_to_mel(self.decode_image(latents), self.spec)
        audio = self.vocoder(mel.to(self.vocoder.dtype)).float()
        return audio[:, : self.num_samples]


class ConditionAdapter(nn.Module):
    """Auffusion's per-encoder adapter: ``LayerNorm(Linear(text hidden states))``."""

    def __init__(self, condition_dim: int, cross_attention_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(condition_dim, cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))

    def save_pretrained(self, directory: str | Path) -> None:
        dims = (self.proj.in_features, self.proj.out_features)
        config = dict(zip(("condition_dim", "cross_attention_dim"), dims, strict=True))
        save_pretrained(directory, config, self)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, torch_dtype: torch.dtype | None = None
    ) -> ConditionAdapter:
        def build(config: dict) -> ConditionAdapter:
            return cls(int(config["condition_dim"]), int(config["cross_attention_dim"]))

        adapter = load_pretrained(directory, build, "a converted condition adapter")
        return adapter.to(dtype=torch_dtype) if torch_dtype else adapter


class AuffusionModel(SpectrogramImageModel):
    """Auffusion (``auffusion/auffusion-full``) as its own pipeline runs it; see the module
    docstring. ``encoders`` are ``(tokenizer, text encoder, condition adapter)`` triples in
    the order of ``condition_config.json``.

    Latent context: the UNet was trained on 10.24 s clips (1024 mel frames, 128 latent
    frames), so a shorter clip's latents are followed by latents of silence noised to the
    current timestep, as the reference release does, and the prediction is cut back. The
    release draws that noise afresh (from torch's global RNG) at every call; here it is drawn
    once from ``pad_seed`` so that the conditional and unconditional predictions of one step
    see the same context and runs repeat. The silence latent is the posterior mode.
    Auffusion's own pipeline has no such padding: it always generates 10.24 s.

    Noise layout: the adapter's space is the transpose of the UNet's latents. With
    ``noise_layout="mmdisco"`` (the default, as the MMDisCo release) the initial noise and
    each stochastic scheduler step's noise are drawn in the adapter's (frames, mels) layout;
    with ``"auffusion"`` both are drawn in the UNet's (mels, frames) layout, as Auffusion's
    pipeline draws them, so a generator seeded alike gives Auffusion's sample (for a 10.24 s
    clip, where no context padding is involved). The two layouts give equally distributed,
    different samples.
    """

    options = ("spectrogram", "context_frames", "pad_seed", "noise_layout")
    peak_level = 0.95  # Auffusion normalises every waveform's peak to 0.95 before the mel
    remove_dc = False

    def __init__(
        self,
        pipe: Any,
        vocoder: HifiGan,
        encoders: list[tuple[Any, nn.Module, nn.Module]],
        spectrogram: SpectrogramImageConfig | None = None,
        context_frames: int = 1024,
        pad_seed: int = 0,
        max_length: int = 77,
        noise_layout: str = "mmdisco",
    ) -> None:
        super().__init__(pipe, vocoder, spectrogram)
        if not encoders:
            raise ValueError("Auffusion needs at least one (tokenizer, text encoder, adapter)")
        self.tokenizers = [tok for tok, _, _ in encoders]
        for i, (_, encoder, adapter) in enumerate(encoders):
            self.add_module(f"text_encoder_{i}", encoder)
            self.add_module(f"condition_adapter_{i}", adapter)
        self.max_length = int(max_length)  # hidden states kept per encoder, zero-padded
        self.noise_layout = check_choice("noise_layout", noise_layout, NOISE_LAYOUTS)
        self.num_encoders = len(encoders)
        vsf = pipe.vae_scale_factor
        self.context_frames = max(math.ceil(context_frames / vsf) * vsf, self.num_frames)
        self.pad_seed = int(pad_seed)
        self._context: tuple[Tensor, Tensor] | None = None  # silence latents, their noise

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> AuffusionModel:
        """Load a folder written by :func:`convert_auffusion` (``kwargs``: ``torch_dtype``,
        ``use_safetensors`` and the options ``spectrogram``, ``context_frames``,
        ``pad_seed``, ``noise_layout``)."""
        from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline
        from diffusers import UNet2DConditionModel as UNet

        root = Path(path)
        if (root / "vocoder" / "vocoder.pt").is_file():
            raise ValueError(
                f"{path} is the released Auffusion checkpoint (pickled vocoder and adapters); "
                f"convert it first: mmdisco convert-auffusion --source {path} --out DIR"
            )
        if not (root / CONDITION_CONFIG).is_file():
            raise FileNotFoundError(
                f"{path}: no {CONDITION_CONFIG}; expected a folder written by "
                "`mmdisco convert-auffusion`"
            )
        options = {k: kwargs.pop(k) for k in cls.options if k in kwargs}
        options["spectrogram"] = _spectrogram(path, options.get("spectrogram"))
        kwargs.setdefault("use_safetensors", True)
        load = loader_kwargs(kwargs)
        dtype = kwargs.get("torch_dtype")
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL.from_pretrained(path, subfolder="vae", **load),
            unet=UNet.from_pretrained(path, subfolder="unet", **load),
            scheduler=PNDMScheduler.from_pretrained(path, subfolder="scheduler"),
            text_encoder=None,
            tokenizer=None,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        encoders = []
        for i, item in enumerate(json.loads((root / CONDITION_CONFIG).read_text())):
            enc_dir = root / item["text_encoder_name"]
            encoders.append(
                (
                    _tokenizer(enc_dir),
                    _text_encoder(enc_dir, load, f"{CONDITION_CONFIG}[{i}]"),
                    ConditionAdapter.from_pretrained(
                        root / item["condition_adapter_name"], torch_dtype=dtype
                    ),
                )
            )
        vocoder = HifiGan.from_pretrained(root / "vocoder", torch_dtype=dtype)
        return cls(pipe, vocoder, encoders, **options)

    def text_modules(self, i: int) -> tuple[nn.Module, nn.Module]:
        return self.extra_modules[f"text_encoder_{i}"], self.extra_modules[f"condition_adapter_{i}"]

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        """Auffusion's conditioning, prompt by prompt: each encoder reads the whole prompt,
        unpadded; its first 77 hidden states are kept, zero-padded to 77, and go through its
        adapter; the encoders' outputs are concatenated along tokens. ``""`` is the
        pipeline's unconditional input: zeros. ``pooled`` is the token mean (what the
        reference release gives its discriminator).

        An encoder with learned positions (CLIP: 77) cannot read more tokens than it has
        positions; its ids are cut there (Auffusion's pipeline fails on such a prompt).
        """
        rows = []
        for prompt in prompts:
            parts = []
            for i, tokenizer in enumerate(self.tokenizers):
                encoder, adapter = self.text_modules(i)
                ids = tokenizer(prompt, return_tensors="pt", verbose=False).input_ids
                positions = getattr(encoder.config, "max_position_embeddings", None)
                hidden = encoder(ids[:, :positions].to(self.device)).last_hidden_state
                hidden = hidden[:, : self.max_length]
                hidden = nn.functional.pad(hidden, (0, 0, 0, self.max_length - hidden.shape[1]))
                parts.append(adapter(hidden.to(adapter.proj.weight.dtype)))
            row = torch.cat(parts, dim=1).float()
            rows.append(torch.zeros_like(row) if prompt == "" else row)
        hidden = torch.cat(rows)
        return PromptEmbeds(hidden_states=hidden, pooled=hidden.mean(dim=1))

    def initial_noise(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Unit noise, drawn in the layout ``noise_layout`` names (class docstring)."""
        if self.noise_layout == "mmdisco":
            return super().initial_noise(batch_size, generator)
        c, frames, mels = self.latent_shape()
        shape = (batch_size, c, mels, frames)
        return randn_tensor(shape, generator=generator, device=self.device).transpose(-1, -2)

    def make_scheduler(self, cls: Any = None, **overrides: Any) -> Any:
        """The configured scheduler (or ``cls``); with ``noise_layout="auffusion"`` its
        ``step`` runs in the UNet's layout, so a stochastic step (DDPM) draws its noise as
        Auffusion's pipeline does. Every other part of a step is elementwise."""
        scheduler = super().make_scheduler(cls, **overrides)
        if self.noise_layout == "auffusion":
            scheduler.step = _step_in_unet_layout(scheduler.step)
        return scheduler

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if cond is None:
            raise ValueError("Auffusion needs a text conditioning; use encode_prompt([''] * B)")
        x = x_t.transpose(-1, -2)  # the UNet's layout: (B, C, mels / 8, frames / 8)
        frames = x.shape[-1]
        context = self.context_frames // self.pipe.vae_scale_factor
        if frames < context:
            silence, noise = self._context_latents()
            alpha, sigma = self.schedule.alpha_sigma(torch.as_tensor(t).reshape(-1).cpu())
            shape = (-1, 1, 1, 1)
            pad = (
                alpha.reshape(shape).to(x) * silence[..., frames:]
                + sigma.reshape(shape).to(x) * noise[..., frames:]
            )
            x = torch.cat([x, pad.expand(x.shape[0], -1, -1, -1)], dim=-1)
        return self.unet(x, t, cond.hidden_states)[..., :frames].transpose(-1, -2)

    def _context_latents(self) -> tuple[Tensor, Tensor]:
        """Latents of 10.24 s of silence (UNet layout) and the noise that pads with them."""
        if self._context is None or self._context[0].device != self.device:
            silence = torch.zeros(1, self.context_frames * self.spec.hop_length, device=self.device)
            latents = self.encode_frames(silence, self.context_frames).transpose(-1, -2)
            generator = torch.Generator().manual_seed(self.pad_seed)
            noise = torch.randn(latents.shape, generator=generator).to(latents.device)
            self._context = (latents, noise)
        return self._context

    @torch.no_grad()
    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, L)`` waveforms -> latents. As Auffusion does, the mel image is padded with
        silence to 10.24 s before the VAE and the latents are cut to the clip."""
        latents = self.encode_frames(media, self.context_frames, generator)
        return latents[:, :, : self.latent_shape()[1]]

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> ``(B, L)`` waveforms: VAE, first image channel, Auffusion's HiFi-GAN."""
        mel = image_to_mel(self.decode_image(latents), self.spec)
        audio = self.vocoder(mel.transpose(1, 2).to(self.vocoder.dtype)).float()
        return audio[:, : self.num_samples]


def _step_in_unet_layout(step: Callable[..., Any]) -> Callable[..., Any]:
    """A scheduler ``step`` fed and answering in the adapter's layout that runs in the
    UNet's: the last two axes swapped on the way in and back on the way out. It keeps
    ``step``'s signature, by which samplers see whether it takes a generator."""

    @functools.wraps(step)
    def unet_layout_step(model_output: Tensor, timestep: Any, sample: Tensor, *args, **kwargs):
        out = step(
            model_output.transpose(-1, -2), timestep, sample.transpose(-1, -2), *args, **kwargs
        )
        if isinstance(out, tuple):
            return tuple(_swap_last_axes(x) for x in out)
        return type(out)(**{k: _swap_last_axes(v) for k, v in out.items()})

    return unet_layout_step


def _swap_last_axes(x: Any) -> Any:
    return x.transpose(-1, -2) if isinstance(x, Tensor) else x


def _tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def _text_encoder(directory: Path, load: dict[str, Any], where: str) -> nn.Module:
    """A text encoder of an allowed architecture (never code shipped with the checkpoint)."""
    import transformers

    config = json.loads((directory / "config.json").read_text())
    names = [a for a in config.get("architectures") or [] if a in TEXT_ENCODERS]
    if not names:
        raise ValueError(
            f"{where}: {directory} holds a {config.get('architectures')} text encoder; "
            f"Auffusion's are one of {list(TEXT_ENCODERS)}"
        )
    cls = getattr(transformers, names[0])
    return cls.from_pretrained(str(directory), **load)


# ------------------------------------------------------------------------------------------
# Converting the released checkpoint
# ------------------------------------------------------------------------------------------


def convert_auffusion(source: str | Path, out: str | Path) -> Path:
    """Convert a local copy of the released Auffusion checkpoint into :class:`AuffusionModel`'s
    folder: every weight as safetensors, the HiFi-GAN with its weight normalisation folded.

    Pickled files (``vocoder.pt``, ``condition_adapter.pt`` and any ``.bin``) are read with
    ``torch.load(weights_only=True)``, which builds tensors and nothing else. ``out`` is
    written under a temporary name and renamed when complete.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    source, out = Path(source), Path(out)
    items = json.loads(_need(source / CONDITION_CONFIG).read_text())
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for cls, sub in ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae")):
        model = cls.from_pretrained(source, subfolder=sub, use_safetensors=None)
        model.save_pretrained(tmp / sub, safe_serialization=True)
    shutil.copytree(source / "scheduler", tmp / "scheduler")
    for i, item in enumerate(items):
        name, adapter_name = item["text_encoder_name"], item["condition_adapter_name"]
        where = f"{CONDITION_CONFIG}[{i}]"
        encoder = _text_encoder(source / name, {"use_safetensors": None}, where)
        encoder.save_pretrained(tmp / name, safe_serialization=True)
        _tokenizer(source / name).save_pretrained(tmp / name)
        config = json.loads(_need(source / adapter_name / "config.json").read_text())
        adapter = ConditionAdapter(int(config["condition_dim"]), int(config["cross_attention_dim"]))
        state = _load_pickled(source / adapter_name / "condition_adapter.pt")
        adapter.load_state_dict(state)
        adapter.save_pretrained(tmp / adapter_name)
    vocoder_config = json.loads(_need(source / "vocoder" / "config.json").read_text())
    vocoder = HifiGan(HifiGanConfig.from_dict(vocoder_config))
    state = _load_pickled(source / "vocoder" / "vocoder.pt")
    vocoder.load_state_dict(fold_weight_norm(state.get("generator", state)))
    vocoder.save_pretrained(tmp / "vocoder")
    write_json_atomic(tmp / CONDITION_CONFIG, items)
    # The mel settings the vocoder was trained with (HiFi-GAN config names), else Auffusion's.
    names = {"n_fft": "n_fft", "win_size": "win_length", "fmin": "fmin", "fmax": "fmax"}
    mel = {ours: vocoder_config[key] for key, ours in names.items() if key in vocoder_config}
    spec = SpectrogramImageConfig(
        sample_rate=vocoder.config.sampling_rate,
        hop_length=vocoder.config.hop_length,
        n_mels=vocoder.config.num_mels,
        **mel,
    )
    spec.save(tmp / SPECTROGRAM_CONFIG)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"not an Auffusion checkpoint: {path} is missing")
    return path


def _load_pickled(path: Path) -> dict[str, Tensor]:
    """A state dict from a ``torch.save`` file, refusing anything but tensors and containers."""
    try:
        return torch.load(_need(path), map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only raises UnpicklingError for any other object
        raise ValueError(f"{path}: refused or unreadable ({type(err).__name__}: {err})") from err


def spectrogram_config_from_vocoder(vocoder: Any, **overrides: Any) -> SpectrogramImageConfig:
    """A :class:`SpectrogramImageConfig` consistent with a vocoder's own config."""
    cfg = vocoder.config
    base = {
        "sample_rate": int(cfg.sampling_rate),
        "hop_length": int(np.prod(cfg.upsample_rates)),
        "n_mels": int(getattr(cfg, "model_in_dim", None) or cfg.num_mels),
    }
    return SpectrogramImageConfig(**{**base, **overrides})
