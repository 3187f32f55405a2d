"""Two small diffusion models of the synthetic world, each trained on one modality only.

They stand in for the frozen single-modal base models of MMDisCo: each learns its own
modality's marginal from world clips and knows nothing of the other, so sampling them
independently gives valid audio and valid video that do not agree (wrong class, unaligned
events) until a discriminator couples them.

* :class:`WorldAudioModel` works in a log-magnitude band spectrogram (``n_bands`` log-spaced
  bands x ``n_frames`` frames, values in about [-1, 1]) decoded to 16 kHz audio by a
  deterministic additive-synthesis vocoder (:class:`BandSpectrogram`); its network is a
  compact 1-D UNet over time with the bands as channels.
* :class:`WorldVideoModel` works in pixels ``(3, F, H, W)`` in [-1, 1]; its network is a
  factorised video UNet (2-D spatial then 1-D temporal convolutions, full frame rate kept at
  every level so that impacts stay frame-exact).

Both predict v (``v_prediction``) for a diffusers ``DDPMScheduler`` with 1000 steps and
the cosine ("squaredcos_cap_v2") schedule, chosen because the spaces are small and
low-dimensional, where the linear schedule wastes most steps on near-pure noise. Both networks
end their bottleneck with a clip-mean context and a self-attention block over all positions,
so that one class (pitch / colour) and one bounce pattern are chosen for the whole clip.
Sample with :func:`sample_world` (DPM-Solver++ 2M, x0-thresholding to [-1, 1],
``lambda_min_clipped=-5.1``) or with the DDPM scheduler of ``scheduler_config``
(``clip_sample=True``).

The shipped weights are ``mmdisco train-base --modality audio|video`` with its defaults
(``TrainConfig`` in each ``config.json``), on one CPU thread.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from mmdisco.base_models.base import BaseModel
from mmdisco.diffusion import from_epsilon
from mmdisco.io import save_tensors_atomic, write_json_atomic

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "world"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    # v = alpha * eps - sigma * x0: x0 = alpha * x_t - sigma * v stays well conditioned at high
    # noise, where epsilon prediction divides its error by alpha ~ 0 (slow to train, and the
    # clipped x0 estimates then bias early sampling steps).
    "prediction_type": "v_prediction",
    "clip_sample": True,  # the data lie in [-1, 1]: clipping x0-hat keeps sampling on range
    "clip_sample_range": 1.0,
    "variance_type": "fixed_small",
}


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


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention over all positions of a (B, C, *) feature map.

    Used at the lowest resolution only, where it is cheap: it lets every frame see the whole
    clip, so one class (pitch / colour) and one consistent event pattern span the clip,
    which local convolutions cannot enforce."""

    def __init__(self, channels: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, positions, C)
        out, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return x + out.transpose(1, 2).reshape(x.shape)


class ResBlock1d(nn.Module):
    """Pre-norm residual block over time with an additive timestep embedding."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv1d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv1d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AudioUNet(nn.Module):
    """1-D UNet over spectrogram frames; bands are channels. Downsamples time by 2 per level."""

    def __init__(
        self,
        in_channels: int = 32,
        channels: tuple[int, ...] = (64, 128, 128),
        emb_dim: int = 128,
        global_context: bool = False,
        attention: bool = False,
    ) -> None:
        super().__init__()
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.stem = nn.Conv1d(in_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        c_prev = channels[0]
        skips = []
        for c in channels:
            self.down.append(ResBlock1d(c_prev, c, emb_dim))
            skips.append(c)
            c_prev = c
        self.mid = ResBlock1d(c_prev, c_prev, emb_dim)
        # The clip's mean feature, added back at every frame: a pitch heard at one event then
        # informs the other, however far apart (the convolutions alone see +-~30 frames).
        self.context = nn.Linear(c_prev, c_prev) if global_context else None
        self.attn = SelfAttention(c_prev) if attention else None
        self.up = nn.ModuleList()
        for c in reversed(channels):
            self.up.append(ResBlock1d(c_prev + skips.pop(), c, emb_dim))
            c_prev = c
        self.out = nn.Sequential(
            _norm(c_prev), nn.SiLU(), nn.Conv1d(c_prev, in_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim))
        h = self.stem(x)
        hs = []
        for i, block in enumerate(self.down):
            if i > 0:
                h = F.avg_pool1d(h, 2)
            h = block(h, emb)
            hs.append(h)
        h = self.mid(h, emb)
        if self.context is not None:
            h = h + self.context(h.mean(-1))[:, :, None]
        if self.attn is not None:
            h = self.attn(h)
        for i, block in enumerate(self.up):
            if i > 0:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


class ResBlock3d(nn.Module):
    """Factorised residual block: a (1, 3, 3) spatial then a (3, 1, 1) temporal convolution."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = _norm(c_in)
        self.spatial = nn.Conv3d(c_in, c_out, (1, 3, 3), padding=(0, 1, 1))
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = _norm(c_out)
        self.temporal = nn.Conv3d(c_out, c_out, (3, 1, 1), padding=(1, 0, 0))
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.spatial(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None, None]
        h = self.temporal(F.silu(self.norm2(h)))
        return self.skip(x) + h


class VideoUNet(nn.Module):
    """Factorised video UNet on (C, F, H, W). The stem folds 2x2 pixels into channels; each
    further level halves H and W only, so every level keeps all frames."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: tuple[int, ...] = (48, 96, 96),
        emb_dim: int = 128,
        patch: int = 2,
        global_context: bool = False,
        attention: bool = False,
    ) -> None:
        super().__init__()
        self.emb_dim, self.patch = emb_dim, patch
        self.time_mlp = nn.Sequential(
            nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        c_patch = in_channels * patch * patch
        self.stem = nn.Conv3d(c_patch, channels[0], (3, 3, 3), padding=1)
        self.down = nn.ModuleList()
        c_prev, skips = channels[0], []
        for c in channels:
            self.down.append(ResBlock3d(c_prev, c, emb_dim))
            skips.append(c)
            c_prev = c
        self.mid = ResBlock3d(c_prev, c_prev, emb_dim)
        # As in AudioUNet: whole-clip context so that one colour and one bounce pattern are
        # chosen for all frames (the 3-frame temporal convolutions see only part of the clip).
        self.context = nn.Linear(c_prev, c_prev) if global_context else None
        self.attn = SelfAttention(c_prev) if attention else None
        self.up = nn.ModuleList()
        for c in reversed(channels):
            self.up.append(ResBlock3d(c_prev + skips.pop(), c, emb_dim))
            c_prev = c
        # The head also sees the raw patches: epsilon must pass every pixel's noise through,
        # which a trunk narrower than ``c_patch`` channels cannot do on its own.
        self.out_norm = _norm(c_prev)
        self.out = nn.Conv3d(c_prev + c_patch, c_patch, (3, 3, 3), padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        b, c, f, h, w = x.shape
        p = self.patch
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim))
        # (B, C, F, H, W) -> (B, C*p*p, F, H/p, W/p)
        z = x.reshape(b, c, f, h // p, p, w // p, p).permute(0, 1, 4, 6, 2, 3, 5)
        patches = z.reshape(b, c * p * p, f, h // p, w // p)
        z = self.stem(patches)
        hs = []
        for i, block in enumerate(self.down):
            if i > 0:
                z = F.avg_pool3d(z, (1, 2, 2))
            z = block(z, emb)
            hs.append(z)
        z = self.mid(z, emb)
        if self.context is not None:
            z = z + self.context(z.mean((2, 3, 4)))[:, :, None, None, None]
        if self.attn is not None:
            z = self.attn(z)
        for i, block in enumerate(self.up):
            if i > 0:
                z = F.interpolate(z, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
            z = block(torch.cat([z, hs.pop()], dim=1), emb)
        z = self.out(torch.cat([F.silu(self.out_norm(z)), patches], dim=1))
        z = z.reshape(b, c, p, p, f, h // p, w // p).permute(0, 1, 4, 5, 2, 6, 3)
        return z.reshape(b, c, f, h, w)


# --------------------------------------------------------------------------------------------
# Base models
# --------------------------------------------------------------------------------------------


class WorldDiffusionModel(BaseModel):
    """Shared machinery of the two world models: a denoising network, its config and I/O.

    ``config`` is a JSON-able dict holding everything needed to rebuild the model
    (``network`` kwargs, the media description and the scheduler config); it is saved as
    ``config.json`` beside ``model.safetensors``.
    """

    modality: ClassVar[str]

    def __init__(self, config: dict[str, Any], net: nn.Module) -> None:
        self.config = config
        self.scheduler_config = dict(config.get("scheduler", SCHEDULER_CONFIG))
        self.net = net.eval().requires_grad_(False)

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def build_network(cls, config: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def from_config(
        cls, config: dict[str, Any] | None = None, seed: int = 0
    ) -> WorldDiffusionModel:
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

    def to(self, device: str | torch.device) -> WorldDiffusionModel:
        self.net.to(device)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """The network's prediction in ``self.prediction_type`` (v for the shipped models;
        :func:`mmdisco.diffusion.to_epsilon` converts). ``t``: a scalar or (B,) tensor of
        timesteps in [0, 1000)."""
        if cond is not None:
            raise ValueError(f"{type(self).__name__} is unconditional; got cond={cond!r}")
        if tuple(x_t.shape[1:]) != self.latent_shape():
            raise ValueError(
                f"{type(self).__name__}.predict expects x_t of shape (B, "
                f"{', '.join(map(str, self.latent_shape()))}), got {tuple(x_t.shape)}"
            )
        t = torch.as_tensor(t, device=x_t.device).float().reshape(-1).expand(x_t.shape[0])
        return self.net(x_t, t)

    # -- persistence -------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (each atomically) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"model_type": type(self).__name__, "modality": self.modality, **self.config}
        write_json_atomic(directory / CONFIG_NAME, config)
        meta = {"model_type": type(self).__name__}
        save_tensors_atomic(directory / WEIGHTS_NAME, self.net.state_dict(), metadata=meta)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: str | torch.device = "cpu"
    ) -> WorldDiffusionModel:
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{cls.__name__}.from_pretrained: missing {path}")
        config = json.loads(config_path.read_text())
        model_type = config.pop("model_type", None)
        config.pop("modality", None)
        if model_type != cls.__name__:
            raise ValueError(f"{config_path} describes a {model_type!r}, not a {cls.__name__!r}")
        net = cls.build_network(config)
        state = load_file(weights_path)
        missing, unexpected = set(net.state_dict()) - set(state), set(state) - set(net.state_dict())
        if missing or unexpected:
            raise ValueError(
                f"{weights_path} does not match {config_path}: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        net.load_state_dict(state)
        return cls(config, net).to(device)


class WorldAudioModel(WorldDiffusionModel):
    """Audio base model in the band-spectrogram space of :class:`BandSpectrogram`."""

    modality = "audio"

    def __init__(self, config: dict[str, Any], net: nn.Module) -> None:
        super().__init__(config, net)
        self.codec = BandSpectrogram(SpectrogramConfig(**config["codec"]))

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {
            "codec": asdict(SpectrogramConfig()),
            "network": {
                "channels": [64, 128, 128],
                "emb_dim": 128,
                "global_context": True,
                "attention": True,
            },
            "scheduler": dict(SCHEDULER_CONFIG),
        }

    @classmethod
    def build_network(cls, config: dict[str, Any]) -> nn.Module:
        net = dict(config["network"])
        return AudioUNet(
            config["codec"]["n_bands"],
            tuple(net["channels"]),
            net["emb_dim"],
            net.get("global_context", False),
            net.get("attention", False),
        )

    def latent_shape(self) -> tuple[int, ...]:
        return (self.codec.config.n_bands, self.codec.config.n_frames)

    def encode(self, media: Tensor) -> Tensor:
        """(N, L) waveform -> (N, n_bands, n_frames) spectrogram."""
        return self.codec.encode(media.to(self.device))

    def decode(self, latents: Tensor) -> Tensor:
        """(N, n_bands, n_frames) spectrogram -> (N, L) 16 kHz waveform in [-1, 1]."""
        return self.codec.decode(latents)


class WorldVideoModel(WorldDiffusionModel):
    """Video base model in pixel space: (3, F, H, W) in [-1, 1]."""

    modality = "video"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {
            "video": {"channels": 3, "num_frames": 16, "frame_size": 16},
            "network": {
                "channels": [32, 64],
                "emb_dim": 128,
                "patch": 4,
                "global_context": True,
                "attention": True,
            },
            "scheduler": dict(SCHEDULER_CONFIG),
        }

    @classmethod
    def build_network(cls, config: dict[str, Any]) -> nn.Module:
        net = dict(config["network"])
        return VideoUNet(
            config["video"]["channels"],
            tuple(net["channels"]),
            net["emb_dim"],
            net["patch"],
            net.get("global_context", False),
            net.get("attention", False),
        )

    def latent_shape(self) -> tuple[int, ...]:
        v = self.config["video"]
        return (v["channels"], v["num_frames"], v["frame_size"], v["frame_size"])

    def encode(self, media: Tensor) -> Tensor:
        if tuple(media.shape[1:]) != self.latent_shape():
            raise ValueError(
                f"video must have shape (N, {', '.join(map(str, self.latent_shape()))}), "
                f"got {tuple(media.shape)}"
            )
        return media.to(self.device).float()

    def decode(self, latents: Tensor) -> Tensor:
        return latents.clamp(-1.0, 1.0)


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
# Training and sampling
# --------------------------------------------------------------------------------------------

DATA_SEED_OFFSET = 1_000_003  # training data seeds stay clear of small evaluation seeds


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train_world_model` (saved in the checkpoint's config.json)."""

    steps: int = 6400
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    decay: bool = False  # cosine decay to 0.1 * lr over ``steps``; off: constant after warmup
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    clips_per_chunk: int = 1024
    passes_per_chunk: int = 2
    seed: int = 0


def _world_batches(model: WorldDiffusionModel, cfg: TrainConfig, world_config: Any):
    """Endless minibatches in the model's space from freshly generated world clips.

    Chunk ``i`` is ``generate_clips(clips_per_chunk, seed=DATA_SEED_OFFSET + 1000 * seed + i)``,
    encoded once and visited ``passes_per_chunk`` times in seeded random order.
    """
    from mmdisco.world.generator import generate_clips

    gen = torch.Generator().manual_seed(cfg.seed)
    chunk = 0
    while True:
        clips = generate_clips(
            cfg.clips_per_chunk,
            seed=DATA_SEED_OFFSET + 1000 * cfg.seed + chunk,
            config=world_config,
        )
        media = clips.audio if model.modality == "audio" else clips.video
        with torch.no_grad():
            data = model.encode(media).cpu()
        for _ in range(cfg.passes_per_chunk):
            order = torch.randperm(len(data), generator=gen)
            for start in range(0, len(data) - cfg.batch_size + 1, cfg.batch_size):
                yield data[order[start : start + cfg.batch_size]]
        chunk += 1


def train_world_model(
    modality: str,
    cfg: TrainConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    world_config: Any = None,
    progress: bool = True,
    callback: Callable[[int, WorldDiffusionModel], bool] | None = None,
    callback_every: int = 250,
) -> WorldDiffusionModel:
    """Train one world base model on its own modality with the DDPM loss on the
    scheduler's ``prediction_type`` (v for the defaults).

    Adam with linear warmup then a constant rate (or cosine decay if ``cfg.decay``),
    gradient clipping, and an EMA of the weights (the EMA is what is returned and saved).
    Every randomness (initial weights, data, t, noise) derives from ``cfg.seed``, so the same
    seed gives the same weights on one machine; with a constant rate the first N steps of a
    longer run are exactly an N-step run, so a run stopped early is still reproducible.

    ``callback(step, ema_model)`` runs every ``callback_every`` steps (e.g. to measure
    sample validity); returning True stops training there, recorded as ``training.steps``.
    """
    from tqdm.auto import tqdm

    from mmdisco.world.generator import WorldConfig

    if modality not in MODEL_CLASSES:
        raise ValueError(f"modality must be one of {sorted(MODEL_CLASSES)}, got {modality!r}")
    cfg = cfg or TrainConfig()
    world_config = world_config or WorldConfig()
    cls = MODEL_CLASSES[modality]
    config = cls.default_config()
    if modality == "audio":
        config["codec"].update(
            sample_rate=world_config.sample_rate,
            num_samples=world_config.num_samples,
        )
    else:
        config["video"].update(
            num_frames=world_config.num_frames, frame_size=world_config.frame_size
        )
    config["training"] = asdict(cfg)
    model = cls.from_config(config, seed=cfg.seed)
    net = model.net.train().requires_grad_(True)
    ema = cls.build_network(config).eval().requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        if not cfg.decay:
            return 1.0
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    alphas_cumprod = model.schedule.alphas_cumprod.float()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    batches = _world_batches(model, cfg, world_config)
    bar = tqdm(range(cfg.steps), desc=f"train-base {modality}", disable=not progress)
    for step in bar:
        x0 = next(batches)
        t = torch.randint(0, len(alphas_cumprod), (len(x0),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        abar = alphas_cumprod[t].reshape(-1, *[1] * (x0.ndim - 1))
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        target = from_epsilon(noise, x_t, abar.sqrt(), (1 - abar).sqrt(), model.prediction_type)
        loss = F.mse_loss(net(x_t, t.float()), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        due = callback is not None and (step + 1) % callback_every == 0
        if due and callback(step + 1, cls(config, ema)):
            config["training"]["steps"] = step + 1
            break
    trained = cls(config, ema)
    if out_dir is not None:
        trained.save_pretrained(out_dir)
    return trained


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
