"""Two small diffusion models of the synthetic world, each trained on one modality only.

They stand in for the frozen single-modal base models of MMDisCo: each learns its own
modality's marginal from world clips and knows nothing of the other, so sampling them
independently gives valid audio and valid video that do not agree (wrong class, unaligned
events) until a discriminator couples them.

* :class:`WorldAudioModel` works in a log-magnitude band spectrogram (``n_bands`` log-spaced
  bands x ``n_frames`` frames, values in about [-1, 1]) decoded to 16 kHz audio by a
  deterministic additive-synthesis vocoder (:class:`BandSpectrogram`).
* :class:`WorldVideoModel` works in pixels ``(3, F, H, W)`` in [-1, 1].

Both use one network, :class:`ClipMixer`: the clip is cut into one token per video frame and
mixed across time and channels. Both predict the clean clip (``prediction_type="sample"``)
for a diffusers ``DDPMScheduler`` with 1000 steps and the cosine ("squaredcos_cap_v2")
schedule, chosen because the spaces are small and low-dimensional, where the linear schedule
wastes most steps on near-pure noise. Sample with :func:`sample_world` (DPM-Solver++ 2M,
x0-thresholding to [-1, 1], ``lambda_min_clipped=-5.1``) or with the DDPM scheduler of
``scheduler_config`` (``clip_sample=True``).

The shipped weights are ``mmdisco train-base --modality audio|video`` with its defaults
(:mod:`mmdisco.world.train`, ``TrainConfig`` in each ``config.json``), on one CPU thread.
:mod:`mmdisco.world.paired` builds the models trained on pairs (the cascade's conditional
models, the joint model) from the same parts.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdisco.base_models.base import BaseModel
from mmdisco.errors import InputError
from mmdisco.io import (
    CONFIG_NAME,
    load_pretrained,
    save_pretrained,
    tensor_digest,
)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "world"

SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    # The network predicts the clean clip: both worlds are a few thousand distinct clips, and
    # x0 lies on them, where epsilon and v must also carry every pixel's noise through.
    "prediction_type": "sample",
    "clip_sample": True,  # the data lie in [-1, 1]: clipping x0-hat keeps sampling on range
    "clip_sample_range": 1.0,
    "variance_type": "fixed_small",
}
WORLD_FPS = 8.0  # WorldConfig().fps: the shipped configs predate an "fps" entry
NETWORK_CONFIG: dict[str, Any] = {"num_tokens": 16, "width": 128, "depth": 6}


# --------------------------------------------------------------------------------------------
# Audio codec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpectrogramConfig:
    """A log-magnitude band spectrogram of ``n_bands`` log-spaced bands and ``n_frames``
    frames (one every ``hop`` samples), mapped from dB to about [-1, 1]:
    ``x = (clamp(dB, db_min) - db_min) / (db_max - db_min) * 2 - 1``."""

    sample_rate: int = 16000
    num_samples: int = 32000
    n_fft: int = 1024
    hop: int = 500
    n_bands: int = 32
    f_min: float = 100.0
    f_max: float = 4000.0
    db_min: float = -80.0
    db_max: float = 0.0

    @property
    def n_frames(self) -> int:
        return self.num_samples // self.hop


class BandSpectrogram:
    """Deterministic audio <-> band spectrogram codec.

    ``encode``: STFT power, summed through triangular filters centred on log-spaced band
    frequencies, in dB, scaled to [-1, 1]. ``decode``: one sinusoid per band at its centre
    frequency, with the amplitude that gives a steady tone the encoded band power (calibrated
    once on pure tones), linearly interpolated between frames and phase-continuous. Pitch is
    kept to the nearest band (~2 semitones for the defaults) and onsets to one hop, which is
    what the world's detectors read.
    """

    def __init__(self, config: SpectrogramConfig) -> None:
        self.config = config
        c = config
        if c.num_samples % c.hop:
            raise ValueError(f"num_samples ({c.num_samples}) must be a multiple of hop ({c.hop})")
        edges = torch.logspace(
            math.log10(c.f_min), math.log10(c.f_max), c.n_bands + 2, dtype=torch.float64
        )
        self.centres = edges[1:-1]
        freqs = torch.fft.rfftfreq(c.n_fft, 1.0 / c.sample_rate).double()
        lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        self.filters = torch.clamp(torch.minimum(up, down), min=0.0).float()  # (bands, bins)
        self.window = torch.hann_window(c.n_fft, periodic=True)
        self.gain, self.spread = self._calibrate()

    def _power(self, audio: Tensor) -> Tensor:
        c = self.config
        spec = torch.stft(
            audio.float(),
            c.n_fft,
            hop_length=c.hop,
            window=self.window.to(audio.device),
            center=True,
            return_complex=True,
        )[..., : c.n_frames]
        power = spec.real**2 + spec.imag**2  # (N, bins, frames)
        return torch.einsum("kf,nft->nkt", self.filters.to(audio.device), power)

    def _calibrate(self) -> tuple[Tensor, Tensor]:
        """For a unit-amplitude tone at each band's centre (steady-state frames): the band's
        own power (``gain``, normalising ``encode`` to 0 dB) and the normalised power summed
        over the band and its two neighbours (``spread``, used by ``decode``)."""
        c = self.config
        t = torch.arange(c.num_samples, dtype=torch.float64) / c.sample_rate
        tones = torch.sin(2 * math.pi * self.centres[:, None] * t).float()
        power = self._power(tones)[:, :, 4:-4].mean(-1)  # (tone, band)
        gain = power.diagonal().clamp_min(1e-12)
        spread = _neighbour_sum((power / gain).T).diagonal()  # (band j, tone b) -> j = b
        return gain, spread

    def encode(self, audio: Tensor) -> Tensor:
        """(N, L) waveform in [-1, 1] -> (N, n_bands, n_frames) in about [-1, 1]."""
        c = self.config
        if audio.ndim != 2 or audio.shape[1] != c.num_samples:
            raise ValueError(
                f"audio must have shape (N, {c.num_samples}), got {tuple(audio.shape)}"
            )
        db = 10.0 * torch.log10(self._power(audio) / self.gain.to(audio.device)[:, None] + 1e-20)
        db = db.clamp(min=c.db_min)
        return (db - c.db_min) / (c.db_max - c.db_min) * 2.0 - 1.0

    def decode(self, spec: Tensor) -> Tensor:
        """(N, n_bands, n_frames) -> (N, L) waveform, clipped to [-1, 1]."""
        c = self.config
        if spec.ndim != 3 or spec.shape[1:] != (c.n_bands, c.n_frames):
            raise ValueError(
                f"spectrogram must have shape (N, {c.n_bands}, {c.n_frames}), "
                f"got {tuple(spec.shape)}"
            )
        db = (spec.float().clamp(-1.0, 1.0) + 1.0) / 2.0 * (c.db_max - c.db_min) + c.db_min
        power = torch.where(db <= c.db_min + 1e-3, torch.zeros_like(db), 10.0 ** (db / 10.0))
        # One sinusoid per spectral peak: a tone leaks into neighbouring bands, and resynthesising
        # every band would make close sinusoids beat (spurious onsets). A local maximum gets the
        # power of its band and both neighbours; other bands stay silent.
        padded = F.pad(power, (0, 0, 1, 1))
        peak = (power >= padded[:, :-2]) & (power > padded[:, 2:]) & (power > 0)
        amp = torch.where(peak, _neighbour_sum(power) / self.spread.to(spec.device)[:, None], 0.0)
        amp = amp.sqrt()
        # Frame k describes the window centred on sample k * hop: interpolate between centres.
        env = F.interpolate(amp, size=c.num_samples + c.hop, mode="linear", align_corners=False)[
            ..., c.hop // 2 : c.hop // 2 + c.num_samples
        ]
        t = torch.arange(c.num_samples, dtype=torch.float64, device=spec.device) / c.sample_rate
        carriers = torch.sin(2 * math.pi * self.centres.to(spec.device)[:, None] * t)
        return torch.einsum("nbl,bl->nl", env, carriers.float()).clamp(-1.0, 1.0)


def _neighbour_sum(power: Tensor) -> Tensor:
    """Sum over each band and its two neighbours along axis -2 (bands), zero-padded."""
    padded = F.pad(power, (0, 0, 1, 1))
    return padded[..., :-2, :] + padded[..., 1:-1, :] + padded[..., 2:, :]


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (float) timesteps, as in DDPM / diffusers."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MixerBlock(nn.Module):
    """Mixing across time slices, then across channels within each slice (MLP-Mixer), both
    pre-norm and modulated by the noise level with adaLN-Zero (DiT): scale, shift and a gate
    that starts at zero, so every block starts as the identity."""

    def __init__(self, width: int, num_tokens: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.token_mlp = nn.Sequential(
            nn.Linear(num_tokens, 4 * num_tokens), nn.GELU(), nn.Linear(4 * num_tokens, num_tokens)
        )
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.channel_mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )
        self.modulation = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        scale1, shift1, gate1, scale2, shift2, gate2 = self.modulation(emb)[:, None].chunk(6, -1)
        h = self.norm1(x) * (1 + scale1) + shift1
        x = x + gate1 * self.token_mlp(h.transpose(1, 2)).transpose(1, 2)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.channel_mlp(h)


def to_tokens(x: Tensor, num_tokens: int) -> Tensor:
    """``(B, C, T, *rest)`` -> ``(B, num_tokens, C * T / num_tokens * prod(rest))``: the time
    axis cut into ``num_tokens`` slices, each flattened into one token."""
    b, c, length = x.shape[:3]
    sliced = x.reshape(b, c, num_tokens, length // num_tokens, *x.shape[3:])
    return sliced.movedim(2, 1).reshape(b, num_tokens, -1)


def from_tokens(tokens: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Inverse of :func:`to_tokens` for a clip of ``shape`` (batch axis included)."""
    b, c, length = shape[:3]
    n = tokens.shape[1]
    return tokens.reshape(b, n, c, length // n, *shape[3:]).movedim(1, 2).reshape(shape)


def token_dim(shape: tuple[int, ...], num_tokens: int) -> int:
    """Size of one token of a clip of ``shape`` (no batch axis) cut into ``num_tokens``."""
    channels, length, *rest = shape
    if length % num_tokens:
        raise ValueError(f"time axis {length} is not a multiple of num_tokens={num_tokens}")
    return channels * (length // num_tokens) * math.prod(rest)


class MixerTrunk(nn.Module):
    """The part of every world denoiser between tokens in and tokens out: learned positions,
    the noise-level embedding, :class:`MixerBlock` s and an adaLN output norm.

    Subclasses add their own token embeddings and output layers around :meth:`mix`; they call
    :meth:`_build_trunk` between the two so that parameters are created (and drawn from the
    seeded RNG) in the same order as the shipped weights were.
    """

    def _build_trunk(self, num_tokens: int, width: int, depth: int) -> None:
        self.num_tokens, self.width = num_tokens, width
        self.positions = nn.Parameter(torch.randn(num_tokens, width))
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(MixerBlock(width, num_tokens) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.out_modulation = nn.Linear(width, 2 * width)

    def mix(self, z: Tensor, t: Tensor) -> Tensor:
        """Embedded tokens ``(B, num_tokens, width)`` at timesteps ``t`` -> output features."""
        z = z + self.positions
        emb = F.silu(self.time_mlp(timestep_embedding(t, self.width)))
        for block in self.blocks:
            z = block(z, emb)
        scale, shift = self.out_modulation(emb)[:, None].chunk(2, -1)
        return self.out_norm(z) * (1 + scale) + shift


class ClipMixer(MixerTrunk):
    """Denoiser for one clip ``(B, C, T, *rest)``: the time axis is cut into ``num_tokens``
    slices (one per video frame), each slice flattened into a token, and the tokens run
    through :class:`MixerBlock` s; a linear layer maps every token back to its slice.

    With ``cond_shape`` the network is conditional: a clean clip of that shape (the other
    modality, for the cascade's video-to-audio model) is cut into the same number of slices
    and each slice's embedding is added to the token of the same time, so a frame and the
    audio heard with it meet in one token.

    Why mixing over time and not attention: the world's clips are a handful of whole-clip
    patterns (a class and a bounce or onset pattern), and where these are decided, at high
    noise, the denoiser must weigh each frame's evidence by where the frame lies in the clip.
    A token-mixing MLP holds such position-specific weights directly; in our runs a DiT of the
    same size kept its frames independent (heights drawn per frame, validity 0.0 on the video
    detector's bounce check after 4000 steps) where this mixer reached 0.89 after 2750.
    """

    def __init__(
        self,
        latent_shape: tuple[int, ...],
        num_tokens: int = 16,
        width: int = 128,
        depth: int = 6,
        cond_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.latent_shape = tuple(latent_shape)
        dim = token_dim(self.latent_shape, num_tokens)
        self.embed = nn.Linear(dim, width)
        self._build_trunk(num_tokens, width, depth)
        self.out = nn.Linear(width, dim)
        self.cond_shape = None if cond_shape is None else tuple(cond_shape)
        self.cond_embed = (
            None if cond_shape is None else nn.Linear(token_dim(self.cond_shape, num_tokens), width)
        )

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        z = self.embed(to_tokens(x, self.num_tokens))
        if self.cond_embed is not None:
            if cond is None or tuple(cond.shape) != (x.shape[0], *self.cond_shape):
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(
                    f"this ClipMixer is conditional: cond must have shape "
                    f"({x.shape[0]}, {', '.join(map(str, self.cond_shape))}), got {got}"
                )
            z = z + self.cond_embed(to_tokens(cond, self.num_tokens))
        elif cond is not None:
            raise ValueError("this ClipMixer is unconditional; got a cond")
        return from_tokens(self.out(self.mix(z, t)), x.shape)


# --------------------------------------------------------------------------------------------
# Base models
# --------------------------------------------------------------------------------------------


class PixelCodec:
    """The video "codec" of the world models: pixels are the model space (checked, as float)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)

    def encode(self, video: Tensor) -> Tensor:
        if tuple(video.shape[1:]) != self.shape:
            raise ValueError(
                f"video must have shape (N, {', '.join(map(str, self.shape))}), "
                f"got {tuple(video.shape)}"
            )
        return video.float()

    def decode(self, latents: Tensor) -> Tensor:
        return latents.clamp(-1.0, 1.0)


def media_config() -> dict[str, Any]:
    """The default description of both modalities' spaces (``codec`` for audio, ``video``)."""
    return {
        "codec": asdict(SpectrogramConfig()),
        "video": {"channels": 3, "num_frames": 16, "frame_size": 16},
    }


def latent_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Each modality's latent shape (no batch axis) described by a model config; a config
    holds ``codec`` (audio), ``video`` or both."""
    shapes: dict[str, tuple[int, ...]] = {}
    if "codec" in config:
        codec = SpectrogramConfig(**config["codec"])
        shapes["audio"] = (codec.n_bands, codec.n_frames)
    if "video" in config:
        v = config["video"]
        shapes["video"] = (v["channels"], v["num_frames"], v["frame_size"], v["frame_size"])
    return shapes


def media_codecs(config: dict[str, Any]) -> dict[str, BandSpectrogram | PixelCodec]:
    """Encoders/decoders between media and latents for the modalities ``config`` describes."""
    codecs: dict[str, BandSpectrogram | PixelCodec] = {}
    if "codec" in config:
        codecs["audio"] = BandSpectrogram(SpectrogramConfig(**config["codec"]))
    if "video" in config:
        codecs["video"] = PixelCodec(latent_shapes(config)["video"])
    return codecs


class WorldNetwork:
    """Shared machinery of every world model: one denoising network, its config and I/O.

    ``config`` is a JSON-able dict holding everything needed to rebuild the model
    (``network`` kwargs, the media description and the scheduler config); it is saved as
    ``config.json`` beside ``model.safetensors``.
    """

    modality: str

    def __init__(self, config: dict[str, Any], net: nn.Module) -> None:
        self.config = config
        self.scheduler_config = dict(config.get("scheduler", SCHEDULER_CONFIG))
        self.net = net.eval().requires_grad_(requires_grad=False)
        self.codecs = media_codecs(config)

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def build_network(cls, config: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any] | None = None, seed: int = 0) -> Any:
        """A freshly initialised model; the seed fixes the initial weights without touching
        the global RNG."""
        config = config or cls.default_config()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = cls.build_network(config)
        return cls(config, net)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> Any:
        self.net.to(device)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def fingerprint(self) -> dict[str, Any]:
        """:meth:`BaseModel.fingerprint` with the weights' identity."""
        return {**super().fingerprint(), "weights": tensor_digest(self.net.state_dict())}

    def _check_input(self, x: Tensor, shape: tuple[int, ...], name: str = "x_t") -> None:
        if tuple(x.shape[1:]) != shape:
            raise ValueError(
                f"{type(self).__name__}.predict expects {name} of shape (B, "
                f"{', '.join(map(str, shape))}), got {tuple(x.shape)}"
            )

    # -- persistence -------------------------------------------------------------------------

    def save_pretrained(
        self, directory: str | os.PathLike, dtype: torch.dtype | None = None
    ) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (each atomically) into ``directory``;
        ``dtype`` (e.g. ``torch.float16``) stores the weights in that type to save space, and
        :meth:`from_pretrained` casts them back to float32."""
        model_type = type(self).__name__
        config = {"model_type": model_type, "modality": self.modality, **self.config}
        meta = {"model_type": model_type}
        return save_pretrained(directory, config, self.net, dtype, metadata=meta)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu"):
        configs: list[dict[str, Any]] = []

        def build(config: Any) -> nn.Module:
            configs.append(cls._network_config(config, Path(directory) / CONFIG_NAME))
            try:
                return cls.build_network(configs[0])
            except (KeyError, TypeError, ValueError) as err:
                raise InputError(
                    f"does not describe a valid network ({err!r})",
                    str(Path(directory) / CONFIG_NAME),
                ) from err

        net = load_pretrained(directory, build, f"a {cls.__name__}")
        return cls(configs[0], net).to(device)

    @classmethod
    def _network_config(cls, config: Any, path: Path) -> dict[str, Any]:
        """The saved config without its labels, after checking it is this class's."""
        model_type = config.pop("model_type", None) if isinstance(config, dict) else None
        if model_type != cls.__name__:
            raise InputError(f"describes a {model_type!r}, not a {cls.__name__!r}", str(path))
        config.pop("modality", None)
        missing = sorted(set(cls.default_config()) - set(config))
        if missing:
            raise InputError(f"has no {missing[0]!r} section", str(path))
        return config


class WorldDiffusionModel(WorldNetwork, BaseModel):
    """A world model of one modality as a frozen base model (:class:`BaseModel`)."""

    modality: ClassVar[str]

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        media = media_config()
        key = "codec" if cls.modality == "audio" else "video"
        return {
            key: media[key],
            "network": dict(NETWORK_CONFIG),
            "scheduler": dict(SCHEDULER_CONFIG),
        }

    @classmethod
    def shape_from_config(cls, config: dict[str, Any]) -> tuple[int, ...]:
        """The model's latent shape (no batch axis) as described by ``config``."""
        return latent_shapes(config)[cls.modality]

    @classmethod
    def build_network(cls, config: dict[str, Any]) -> nn.Module:
        return ClipMixer(cls.shape_from_config(config), **config["network"])

    def latent_shape(self) -> tuple[int, ...]:
        return self.shape_from_config(self.config)

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """The network's prediction in ``self.prediction_type`` (the clean clip, for the shipped
        models; :func:`mmdisco.diffusion.to_epsilon` converts). ``t``: a scalar or (B,) tensor
        of timesteps in [0, 1000)."""
        if cond is not None:
            raise ValueError(f"{type(self).__name__} is unconditional; got cond={cond!r}")
        self._check_input(x_t, self.latent_shape())
        return self.net(x_t, batch_timesteps(t, x_t))

    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Media -> latents through the modality's codec (deterministic: ``generator`` is
        unused)."""
        return self.codecs[self.modality].encode(media.to(self.device))

    def decode(self, latents: Tensor) -> Tensor:
        return self.codecs[self.modality].decode(latents)


def batch_timesteps(t: Tensor, x: Tensor) -> Tensor:
    """A scalar or ``(B,)`` timestep as ``(B,)`` float on ``x``'s device."""
    return torch.as_tensor(t, device=x.device).float().reshape(-1).expand(x.shape[0])


class WorldAudioModel(WorldDiffusionModel):
    """Audio base model in the band-spectrogram space of :class:`BandSpectrogram`:
    ``encode`` takes (N, L) waveforms, ``decode`` gives 16 kHz waveforms in [-1, 1]."""

    modality = "audio"

    @property
    def codec(self) -> BandSpectrogram:
        return self.codecs["audio"]  # type: ignore[return-value]

    @property
    def sample_rate(self) -> int:
        return self.codec.config.sample_rate

    @property
    def num_samples(self) -> int:
        return self.codec.config.num_samples


class WorldVideoModel(WorldDiffusionModel):
    """Video base model in pixel space: (3, F, H, W) in [-1, 1]."""

    modality = "video"

    @property
    def num_frames(self) -> int:
        return self.config["video"]["num_frames"]

    @property
    def height(self) -> int:
        return self.config["video"]["frame_size"]

    width = height

    @property
    def fps(self) -> float:
        return float(self.config["video"].get("fps", WORLD_FPS))


MODEL_CLASSES: dict[str, type[WorldDiffusionModel]] = {
    "audio": WorldAudioModel,
    "video": WorldVideoModel,
}


def load_world_models(
    device: str | torch.device = "cpu", directory: str | os.PathLike | None = None
) -> tuple[WorldAudioModel, WorldVideoModel]:
    """The shipped world base models (``src/mmdisco/assets/world/{audio,video}``)."""
    root = Path(directory) if directory is not None else ASSETS_DIR
    audio = WorldAudioModel.from_pretrained(root / "audio", device)
    video = WorldVideoModel.from_pretrained(root / "video", device)
    return audio, video  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_world(
    audio_model: WorldAudioModel,
    video_model: WorldVideoModel,
    batch_size: int,
    num_inference_steps: int = 25,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Independent samples (latents) from the two models with DPM-Solver++ (2M).

    ``lambda_min_clipped=-5.1`` (diffusers' advice for the cosine schedule) skips the first,
    near-pure-noise timesteps where ``alpha`` is ~1e-5: there the data prediction
    ``(x_t - sigma * eps) / alpha`` amplifies any epsilon error ~1e5-fold and sampling diverges.
    Thresholding keeps the data prediction in [-1, 1], the range of both models' data.

    This is the no-discriminator case of :func:`mmdisco.sampling.joint_sample`: each model
    draws from its own marginal, so classes and events of the pair are unrelated.
    """
    from diffusers import DPMSolverMultistepScheduler

    from mmdisco.sampling import Stream, joint_sample

    streams = [
        Stream(
            model=m,
            scheduler=m.make_scheduler(
                DPMSolverMultistepScheduler,
                lambda_min_clipped=-5.1,
                thresholding=True,
                sample_max_value=1.0,
            ),
            generator=torch.Generator(m.device).manual_seed(seed + i),
        )
        for i, m in enumerate((audio_model, video_model))
    ]
    return joint_sample(
        *streams,
        discriminator=None,
        batch_size=batch_size,
        num_inference_steps=num_inference_steps,
        progress=progress,
    )
