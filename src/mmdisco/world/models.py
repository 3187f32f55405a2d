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
(``TrainConfig`` in each ``config.json``), on one CPU thread.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdisco.base_models.base import BaseModel
from mmdisco.diffusion import from_epsilon
from mmdisco.errors import (
    InputError,
    MissingInputError,
    check_float,
    check_fraction_range,
    check_int,
)
from mmdisco.io import (
    load_tensors,
    read_json,
    save_tensors_atomic,
    state_dict_mismatches,
    tensor_digest,
    write_json_atomic,
)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "world"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

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


class ClipMixer(nn.Module):
    """Denoiser for one clip ``(B, C, T, *rest)``: the time axis is cut into ``num_tokens``
    slices (one per video frame), each slice flattened into a token, and the tokens run
    through :class:`MixerBlock` s; a linear layer maps every token back to its slice.

    Why mixing over time and not attention: the world's clips are a handful of whole-clip
    patterns (a class and a bounce or onset pattern), and where these are decided, at high
    noise, the denoiser must weigh each frame's evidence by where the frame lies in the clip.
    A token-mixing MLP holds such position-specific weights directly; in our runs a DiT of the
    same size kept its frames independent (heights drawn per frame, validity 0.0 on the video
    detector's bounce check after 4000 steps) where this mixer reached 0.89 after 2750.
    """

    def __init__(
        self, latent_shape: tuple[int, ...], num_tokens: int = 16, width: int = 128, depth: int = 6
    ) -> None:
        super().__init__()
        channels, length, *rest = latent_shape
        if length % num_tokens:
            raise ValueError(f"time axis {length} is not a multiple of num_tokens={num_tokens}")
        self.latent_shape, self.num_tokens, self.width = tuple(latent_shape), num_tokens, width
        token_dim = channels * (length // num_tokens) * math.prod(rest)
        self.embed = nn.Linear(token_dim, width)
        self.positions = nn.Parameter(torch.randn(num_tokens, width))
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(MixerBlock(width, num_tokens) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.out_modulation = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, token_dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        b, c, length = x.shape[:3]
        rest, n = x.shape[3:], self.num_tokens
        tokens = x.reshape(b, c, n, length // n, *rest).movedim(2, 1).reshape(b, n, -1)
        z = self.embed(tokens) + self.positions
        emb = F.silu(self.time_mlp(timestep_embedding(t, self.width)))
        for block in self.blocks:
            z = block(z, emb)
        scale, shift = self.out_modulation(emb)[:, None].chunk(2, -1)
        y = self.out(self.out_norm(z) * (1 + scale) + shift)
        return y.reshape(b, n, c, length // n, *rest).movedim(1, 2).reshape(x.shape)


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
    def shape_from_config(cls, config: dict[str, Any]) -> tuple[int, ...]:
        """The model's latent shape (no batch axis) as described by ``config``."""
        raise NotImplementedError

    @classmethod
    def build_network(cls, config: dict[str, Any]) -> nn.Module:
        return ClipMixer(cls.shape_from_config(config), **config["network"])

    def latent_shape(self) -> tuple[int, ...]:
        return self.shape_from_config(self.config)

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

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "weights": tensor_digest(self.net.state_dict())}

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """The network's prediction in ``self.prediction_type`` (the clean clip, for the shipped
        models; :func:`mmdisco.diffusion.to_epsilon` converts). ``t``: a scalar or (B,) tensor
        of timesteps in [0, 1000)."""
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

    def save_pretrained(
        self, directory: str | os.PathLike, dtype: torch.dtype | None = None
    ) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (each atomically) into ``directory``;
        ``dtype`` (e.g. ``torch.float16``) stores the weights in that type to save space, and
        :meth:`from_pretrained` casts them back to float32."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"model_type": type(self).__name__, "modality": self.modality, **self.config}
        write_json_atomic(directory / CONFIG_NAME, config)
        meta = {"model_type": type(self).__name__}
        state = {k: v.to(dtype or v.dtype) for k, v in self.net.state_dict().items()}
        save_tensors_atomic(directory / WEIGHTS_NAME, state, metadata=meta)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: str | torch.device = "cpu"
    ) -> WorldDiffusionModel:
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise MissingInputError(f"{cls.__name__}.from_pretrained: missing {path}")
        config = read_json(config_path)
        model_type = config.pop("model_type", None) if isinstance(config, dict) else None
        if model_type != cls.__name__:
            raise InputError(
                f"describes a {model_type!r}, not a {cls.__name__!r}", str(config_path)
            )
        config.pop("modality", None)
        missing = sorted(set(cls.default_config()) - set(config))
        if missing:
            raise InputError(f"has no {missing[0]!r} section", str(config_path))
        try:
            net = cls.build_network(config)
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(
                f"does not describe a valid network ({err!r})", str(config_path)
            ) from err
        state, _ = load_tensors(weights_path)
        problems = state_dict_mismatches(net.state_dict(), state)
        if problems:
            raise ValueError(
                f"{weights_path} does not match {config_path}:\n  " + "\n  ".join(problems)
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
            "network": dict(NETWORK_CONFIG),
            "scheduler": dict(SCHEDULER_CONFIG),
        }

    @classmethod
    def shape_from_config(cls, config: dict[str, Any]) -> tuple[int, ...]:
        codec = SpectrogramConfig(**config["codec"])
        return (codec.n_bands, codec.n_frames)

    @property
    def sample_rate(self) -> int:
        return self.codec.config.sample_rate

    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(N, L) waveform -> (N, n_bands, n_frames) spectrogram (deterministic)."""
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
            "network": dict(NETWORK_CONFIG),
            "scheduler": dict(SCHEDULER_CONFIG),
        }

    @classmethod
    def shape_from_config(cls, config: dict[str, Any]) -> tuple[int, ...]:
        v = config["video"]
        return (v["channels"], v["num_frames"], v["frame_size"], v["frame_size"])

    @property
    def fps(self) -> float:
        from mmdisco.world.generator import WorldConfig

        return float(WorldConfig().fps)

    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
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

    steps: int = 6000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    decay: bool = True  # cosine decay to 0.1 * lr over ``steps``; off: constant after warmup
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    clips_per_chunk: int = 1024
    passes_per_chunk: int = 2
    # Half of every batch draws t uniformly from this fraction of [0, T): the high-noise range
    # where a clip's class and events are decided, which uniform t visits too rarely.
    t_focus: tuple[float, float] | None = (0.6, 0.95)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "clips_per_chunk", "passes_per_chunk"):
            check_int(name, getattr(self, name), 1)
        check_int("warmup", self.warmup, 0)
        check_int("seed", self.seed, 0)
        check_float("lr", self.lr, 0.0, open_min=True)
        check_float("ema_decay", self.ema_decay, 0.0, 1.0, open_max=True)
        check_float("grad_clip", self.grad_clip, 0.0, open_min=True)
        if self.t_focus is not None:
            check_fraction_range("t_focus", self.t_focus)


def _sample_timesteps(
    n: int, num_steps: int, focus: tuple[float, float] | None, gen: torch.Generator
) -> Tensor:
    """``n`` training timesteps: uniform, or half uniform and half uniform in ``focus``."""
    t = torch.randint(0, num_steps, (n,), generator=gen)
    if focus is not None:
        lo, hi = round(focus[0] * num_steps), round(focus[1] * num_steps)
        focused = torch.randint(lo, hi, (n,), generator=gen)
        t = torch.where(torch.arange(n) % 2 == 1, focused, t)
    return t


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
    weights_dtype: torch.dtype | None = None,
) -> WorldDiffusionModel:
    """Train one world base model on its own modality with the DDPM loss on the
    scheduler's ``prediction_type`` (the clean clip for the defaults).

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
        t = _sample_timesteps(len(x0), len(alphas_cumprod), cfg.t_focus, gen)
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
        trained.save_pretrained(out_dir, dtype=weights_dtype)
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
