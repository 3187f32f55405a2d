"""The continuous world: shared variables on a sub-frame lattice, nuisance continuous.

Each pair of clips shares a **class** ``c``, a within-class **shade** (the square's hue and
the tone's pitch move together) and two **event times** (the square touches the floor, the
tone starts). Each modality has its own **nuisance**, drawn independently of everything:

* video ``(3, F, H, W)`` in [-1, 1]: a ``s x s`` square over a black background and a grey
  floor row, at a continuous horizontal position ``x`` in ``[0, W - s]``, bouncing on
  parabolas through the two contacts. Its vertical and horizontal extent are rendered with
  exact pixel coverage (anti-aliased), so a sub-frame shift of an event moves the square by
  a fraction of a pixel in every frame;
* audio ``(bands, frames)`` in [-1, 1], a log-magnitude spectrogram rendered directly: each
  event is a Gaussian band profile centred on the pitch (a continuous band position) times an
  exponential decay that starts at the event's exact time, integrated over each audio frame
  (a sub-frame onset fills its first frame partially). Loudness ``g`` is continuous in
  ``[gain_min, gain_max]``; the decay constant is one of ``decays`` (audio frames).

The event times and shades lie on a lattice (``time_steps_per_frame`` per frame,
``shades_per_class`` per class): fine enough that the detectors' tolerances span several
lattice points and that a training set of thousands of pairs sees a few percent of the shared
states, coarse enough that :mod:`mmdisco.world.continuous_ratio` sums over every shared state
exactly. Position and loudness are continuous, and the images are piecewise linear in them,
so their integrals are closed-form (no quadrature error). Every clip is therefore a point of
the world, and the world has infinitely many of them.
"""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

FLOOR_LEVEL = 0.0


@dataclass(frozen=True)
class ContinuousWorldConfig:
    """Every parameter of the continuous world; JSON-able via :meth:`to_dict`."""

    num_classes: int = 4
    shades_per_class: int = 8
    shade_span: float = 0.7  # fraction of a class's hue / pitch interval the shades cover
    fps: int = 8
    num_frames: int = 8
    frame_size: int = 8
    object_size: int = 2
    apex: float = 4.0  # pixels above the floor at the top of each arc
    arc_frames: float = 4.0  # length of the arcs into the first and out of the last contact
    time_steps_per_frame: int = 6
    min_event_spacing: float = 2.0  # frames
    n_bands: int = 16
    audio_frames_per_frame: int = 4
    band_width: float = 0.8  # standard deviation of a tone's band profile, in bands
    band_margin: float = 1.5
    gain_min: float = 1.2
    gain_max: float = 2.2
    decays: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)  # audio frames

    def __post_init__(self) -> None:
        if self.num_classes < 2 or self.shades_per_class < 1:
            raise ValueError("need num_classes >= 2 and shades_per_class >= 1")
        if not self.event_pairs:
            raise ValueError("no event pair fits the clip at min_event_spacing")
        if self.apex + self.object_size > self.frame_size - 1:
            raise ValueError(f"apex {self.apex} + object_size leaves the frame")

    @property
    def num_shades(self) -> int:
        return self.num_classes * self.shades_per_class

    @property
    def audio_shape(self) -> tuple[int, int]:
        return (self.n_bands, self.num_frames * self.audio_frames_per_frame)

    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        return (3, self.num_frames, self.frame_size, self.frame_size)

    @property
    def event_times(self) -> Tensor:
        """Allowed event times in frames: the lattice on ``[1, num_frames - 2]``."""
        steps = (self.num_frames - 3) * self.time_steps_per_frame
        return 1.0 + torch.arange(steps + 1, dtype=torch.float64) / self.time_steps_per_frame

    @cached_property
    def event_pairs(self) -> tuple[tuple[int, int], ...]:
        """Every allowed (first, second) pair of indices into :attr:`event_times`."""
        gap = round(self.min_event_spacing * self.time_steps_per_frame)
        n = (self.num_frames - 3) * self.time_steps_per_frame + 1
        return tuple((i, j) for i in range(n) for j in range(i + gap, n))

    def shade_value(self, shade: Tensor) -> Tensor:
        """Position on the class axis, ``c + span * (j + 1/2) / J``, for shade index
        ``shade = c * J + j``: hue is this over ``num_classes``, pitch a band position."""
        j = self.shades_per_class
        c, k = shade // j, shade % j
        return c.double() + self.shade_span * (k.double() + 0.5) / j

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContinuousWorldConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown ContinuousWorldConfig fields: {sorted(unknown)}")
        data = {**data, "decays": tuple(data.get("decays", cls.decays))}
        return cls(**data)


@dataclass
class ContinuousClips:
    """Paired clips and their latent variables (indices into the config's lattices)."""

    video: Tensor  # (N, 3, F, H, W)
    audio: Tensor  # (N, bands, audio frames)
    shades: Tensor  # (N,) long, class * shades_per_class + shade within the class
    pairs: Tensor  # (N,) long, index into config.event_pairs
    positions: Tensor  # (N,) float64, the square's left edge in pixels
    gains: Tensor  # (N,) float64
    decays: Tensor  # (N,) long, index into config.decays

    classes: Tensor  # (N,) long

    def __len__(self) -> int:
        return len(self.shades)


def colours(config: ContinuousWorldConfig) -> Tensor:
    """(num_shades, 3) RGB of the square in [-1, 1], one row per shade."""
    hues = config.shade_value(torch.arange(config.num_shades)) / config.num_classes
    rgb = [colorsys.hsv_to_rgb(float(h), 1.0, 1.0) for h in hues]
    return torch.tensor(rgb, dtype=torch.float64) * 2 - 1


def heights(times: Tensor, config: ContinuousWorldConfig) -> Tensor:
    """(P, 2) event times in frames -> (P, F) height of the square's base above the floor at
    each frame, on parabolas of apex ``config.apex`` through the contacts."""
    before = times[:, :1] - config.arc_frames
    after = times[:, -1:] + config.arc_frames
    contacts = torch.cat([before, times, after], dim=1)
    frames = torch.arange(config.num_frames, dtype=torch.float64).expand(len(times), -1)
    idx = torch.searchsorted(contacts, frames.contiguous(), right=True).clamp(1, 3)
    a, b = contacts.gather(1, idx - 1), contacts.gather(1, idx)
    u = ((frames - a) / (b - a)).clamp(0.0, 1.0)
    return config.apex * 4.0 * u * (1.0 - u)


def coverage(start: Tensor, size: int, length: int) -> Tensor:
    """Fraction of each unit cell ``[k, k + 1)``, ``k < length``, covered by the interval
    ``[start, start + size)``: (...,) starts -> (..., length)."""
    k = torch.arange(length, dtype=torch.float64)
    lo = torch.maximum(k, start[..., None])
    hi = torch.minimum(k + 1, start[..., None] + size)
    return (hi - lo).clamp(min=0.0)


def row_coverage(config: ContinuousWorldConfig) -> Tensor:
    """(P, F, H) the square's row coverage for every event pair (rows from the top)."""
    times = config.event_times[torch.tensor(config.event_pairs)]
    top = (config.frame_size - 1 - config.object_size) - heights(times, config)
    return coverage(top, config.object_size, config.frame_size)


def band_profiles(config: ContinuousWorldConfig) -> Tensor:
    """(num_shades, bands) each shade's Gaussian band profile (peak 1)."""
    spacing = (config.n_bands - 1 - 2 * config.band_margin) / (config.num_classes - 1e-9)
    centre = config.band_margin + spacing * config.shade_value(torch.arange(config.num_shades))
    bands = torch.arange(config.n_bands, dtype=torch.float64)
    return torch.exp(-0.5 * ((bands - centre[:, None]) / config.band_width) ** 2)


def envelopes(config: ContinuousWorldConfig) -> Tensor:
    """(decays, times, audio frames) the decay started at each event time, averaged over
    each audio frame (exact integral of ``exp(-(t - onset) / decay)`` from the onset on)."""
    onset = config.event_times * config.audio_frames_per_frame  # audio frames
    k = torch.arange(config.audio_shape[1], dtype=torch.float64)
    d = torch.tensor(config.decays, dtype=torch.float64)[:, None, None]
    lo = torch.maximum(k, onset[:, None])
    hi = (k + 1).expand_as(lo)
    inside = hi > lo
    value = d * (torch.exp(-(lo - onset[:, None]) / d) - torch.exp(-(hi - onset[:, None]) / d))
    return torch.where(inside, value, torch.zeros_like(value))


def render_video(
    shades: Tensor, pairs: Tensor, positions: Tensor, config: ContinuousWorldConfig
) -> Tensor:
    """(N,) shades, pairs, positions -> (N, 3, F, H, W) float32 video in [-1, 1]."""
    rows = row_coverage(config)[pairs]  # (N, F, H)
    cols = coverage(positions.double(), config.object_size, config.frame_size)  # (N, W)
    mask = rows[..., None] * cols[:, None, None, :]  # (N, F, H, W)
    lift = colours(config)[shades] + 1.0  # (N, 3) colour above the black background
    video = torch.full((len(shades), *config.video_shape), -1.0, dtype=torch.float64)
    video[..., -1, :] = FLOOR_LEVEL
    return (video + lift[:, :, None, None, None] * mask[:, None]).float()


def render_audio(
    shades: Tensor, pairs: Tensor, gains: Tensor, decays: Tensor, config: ContinuousWorldConfig
) -> Tensor:
    """(N,) shades, pairs, gains, decays -> (N, bands, frames) float32 spectrogram."""
    env = envelopes(config)  # (D, T, K)
    idx = torch.tensor(config.event_pairs)[pairs]  # (N, 2)
    both = env[decays, idx[:, 0]] + env[decays, idx[:, 1]]  # (N, K)
    profile = band_profiles(config)[shades]  # (N, bands)
    return (-1.0 + gains.double()[:, None, None] * profile[:, :, None] * both[:, None]).float()


def generate_continuous_clips(
    n: int, seed: int, config: ContinuousWorldConfig | None = None
) -> ContinuousClips:
    """``n`` paired clips of the continuous world, deterministic given ``seed``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    config = config or ContinuousWorldConfig()
    gen = torch.Generator().manual_seed(seed)
    shades = torch.randint(config.num_shades, (n,), generator=gen)
    pairs = torch.randint(len(config.event_pairs), (n,), generator=gen)
    positions = torch.rand(n, generator=gen, dtype=torch.float64) * (
        config.frame_size - config.object_size
    )
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    gains = config.gain_min + (config.gain_max - config.gain_min) * u
    decays = torch.randint(len(config.decays), (n,), generator=gen)
    return ContinuousClips(
        video=render_video(shades, pairs, positions, config),
        audio=render_audio(shades, pairs, gains, decays, config),
        shades=shades,
        pairs=pairs,
        positions=positions,
        gains=gains,
        decays=decays,
        classes=shades // config.shades_per_class,
    )


def event_times_of(pairs: Tensor, config: ContinuousWorldConfig) -> Tensor:
    """(N,) pair indices -> (N, 2) event times in frames."""
    return config.event_times[torch.tensor(config.event_pairs)[pairs]]
