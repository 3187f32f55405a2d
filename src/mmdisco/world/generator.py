"""A procedural, seeded audio-visual world whose pairing can be measured exactly.

Each clip shows one coloured square bouncing on a grey floor over a black background and
plays one pure tone per bounce. Audio and video share two things, and only these two:

* the **class** ``c``: the square's colour (hue ``c / num_classes`` at full saturation) and
  the tone's pitch (``base_pitch * pitch_ratio ** c``);
* the **events**: the frames ``k`` at which the square touches the floor, heard as a
  percussive onset (instant attack, exponential decay) at ``k / fps`` seconds.

Classes are uniform and the event frames are uniform over every sorted tuple of
``events_per_clip`` frames in ``[1, num_frames - 2]`` at least ``min_event_spacing`` apart
(66 tuples for the defaults), so an audio clip and a video clip drawn independently agree on
the class with probability ``1 / num_classes`` and on the events only by chance
(:func:`mmdisco.world.detectors.chance_levels` gives the exact figures). Everything else is
fixed (the square's size and column, the bounce apex, the tone's loudness and decay), which
keeps each modality simple enough for a small diffusion model trained on a CPU while the
detectors in :mod:`mmdisco.world.detectors` read class and events back exactly.
"""

from __future__ import annotations

import colorsys
import itertools
import math
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

FLOOR_LEVEL = 0.0  # floor row colour in [-1, 1] (mid grey); the background is -1 (black)


@dataclass(frozen=True)
class WorldConfig:
    """Every parameter of the world; JSON-able through :meth:`to_dict` / :meth:`from_dict`."""

    num_classes: int = 4
    fps: int = 8
    num_frames: int = 16
    frame_size: int = 16
    sample_rate: int = 16000
    events_per_clip: int = 2
    min_event_spacing: int = 3
    base_pitch: float = 220.0
    pitch_ratio: float = 1.5
    decay: float = 0.08  # seconds, amplitude time constant of each impact's tone
    amplitude: float = 0.8
    random_x: bool = False  # if True, the square's column is uniform per clip (else centred)

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.frame_size < 8:
            raise ValueError(f"frame_size must be >= 8, got {self.frame_size}")
        if self.min_event_spacing < 2:
            raise ValueError(f"min_event_spacing must be >= 2, got {self.min_event_spacing}")
        if self.pitches[-1] * math.sqrt(self.pitch_ratio) >= self.sample_rate / 2:
            raise ValueError(
                f"highest pitch {self.pitches[-1]:.0f} Hz is too close to Nyquist "
                f"({self.sample_rate / 2:.0f} Hz): lower num_classes, base_pitch or pitch_ratio"
            )
        if not self.event_support:
            raise ValueError(
                f"no way to place {self.events_per_clip} events {self.min_event_spacing} frames "
                f"apart in frames [1, {self.num_frames - 2}]"
            )

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    @property
    def num_samples(self) -> int:
        return round(self.sample_rate * self.duration)

    @property
    def object_size(self) -> int:
        return self.frame_size // 4

    @property
    def apex(self) -> int:
        """Highest bounce in pixels above the floor (one free row stays above the square)."""
        return self.frame_size - self.object_size - 2

    @property
    def pitches(self) -> list[float]:
        return [self.base_pitch * self.pitch_ratio**c for c in range(self.num_classes)]

    @property
    def colours(self) -> list[tuple[float, float, float]]:
        """RGB in [0, 1] per class: evenly spaced hues at full saturation and value."""
        return [
            colorsys.hsv_to_rgb(c / self.num_classes, 1.0, 1.0) for c in range(self.num_classes)
        ]

    @cached_property
    def event_support(self) -> tuple[tuple[int, ...], ...]:
        """Every allowed sorted tuple of event frames; events are drawn uniformly from it."""
        frames = range(1, self.num_frames - 1)
        return tuple(
            ev
            for ev in itertools.combinations(frames, self.events_per_clip)
            if all(b - a >= self.min_event_spacing for a, b in itertools.pairwise(ev))
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown WorldConfig fields: {sorted(unknown)}")
        return cls(**data)


@dataclass
class Clips:
    """A batch of paired clips and the latent variables that generated them."""

    video: Tensor  # (N, 3, F, H, W) float in [-1, 1]
    audio: Tensor  # (N, L) float in [-1, 1]
    classes: Tensor  # (N,) long
    events: Tensor  # (N, E) long, sorted frame indices
    positions: Tensor  # (N,) long, the square's left column

    def __len__(self) -> int:
        return len(self.classes)


def bounce_heights(events: Tensor, config: WorldConfig) -> Tensor:
    """Height in pixels of the square above the floor, (N, E) events -> (N, F) long.

    Between consecutive contacts the square follows a parabola reaching ``config.apex``;
    before the first and after the last event it moves on arcs from / to virtual contacts
    outside the clip. Every frame that is not an event is at least one pixel in the air, so
    contacts (height 0) are exactly the event frames.
    """
    n, f = events.shape[0], config.num_frames
    first, last = events[:, :1], events[:, -1:]
    before = first - torch.clamp(first + 1, min=6)  # virtual contact at <= -1
    after = last + torch.clamp(f - last, min=6)  # virtual contact at >= F
    contacts = torch.cat([before, events, after], dim=1).double()
    frames = torch.arange(f, dtype=torch.float64).expand(n, f).contiguous()
    idx = torch.searchsorted(contacts, frames, right=True)
    a, b = contacts.gather(1, idx - 1), contacts.gather(1, idx)
    u = (frames - a) / (b - a)
    h = torch.round(config.apex * 4.0 * u * (1.0 - u)).long()
    return torch.where(frames == a, torch.zeros_like(h), h.clamp(min=1))


def render_video(classes: Tensor, events: Tensor, positions: Tensor, config: WorldConfig) -> Tensor:
    """(N,) classes, (N, E) events, (N,) columns -> (N, 3, F, H, W) video in [-1, 1]."""
    n, size, s = len(classes), config.frame_size, config.object_size
    bottom = (size - 2) - bounce_heights(events, config)  # (N, F) row of the square's base
    rows = torch.arange(size)
    in_rows = (rows <= bottom[..., None]) & (rows > bottom[..., None] - s)  # (N, F, H)
    cols = torch.arange(size)
    in_cols = (cols >= positions[:, None]) & (cols < positions[:, None] + s)  # (N, W)
    mask = in_rows[..., :, None] & in_cols[:, None, None, :]  # (N, F, H, W)
    colour = torch.tensor(config.colours, dtype=torch.float32)[classes] * 2 - 1  # (N, 3)
    video = torch.full((n, 3, config.num_frames, size, size), -1.0)
    video[..., -1, :] = FLOOR_LEVEL
    return torch.where(mask[:, None], colour[:, :, None, None, None], video)


def impact_sounds(config: WorldConfig) -> Tensor:
    """(num_classes, L) the sound of one impact at time 0 for each class: a sine at the class
    pitch with an instant attack and an exponential decay."""
    t = torch.arange(config.num_samples, dtype=torch.float64) / config.sample_rate
    pitch = torch.tensor(config.pitches, dtype=torch.float64)[:, None]
    return config.amplitude * torch.sin(2 * math.pi * pitch * t) * torch.exp(-t / config.decay)


def render_audio(classes: Tensor, events: Tensor, config: WorldConfig) -> Tensor:
    """(N,) classes, (N, E) events -> (N, L) audio in [-1, 1]: one decaying tone per event,
    starting on the sample nearest to ``k / fps``."""
    sounds = impact_sounds(config)
    audio = torch.zeros(len(classes), config.num_samples, dtype=torch.float64)
    onsets = torch.round(events.double() * config.sample_rate / config.fps).long()
    for i, (c, clip_onsets) in enumerate(zip(classes.tolist(), onsets.tolist(), strict=True)):
        for start in clip_onsets:
            audio[i, start:] += sounds[c, : config.num_samples - start]
    return audio.clamp(-1.0, 1.0).float()


def sample_latents(
    n: int, generator: torch.Generator, config: WorldConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw (classes, events, positions) for ``n`` clips."""
    classes = torch.randint(config.num_classes, (n,), generator=generator)
    support = torch.tensor(config.event_support, dtype=torch.long)
    events = support[torch.randint(len(support), (n,), generator=generator)]
    span = config.frame_size - config.object_size + 1
    if config.random_x:
        positions = torch.randint(span, (n,), generator=generator)
    else:
        positions = torch.full((n,), (span - 1) // 2, dtype=torch.long)
    return classes, events, positions


def generate_clips(n: int, seed: int, config: WorldConfig | None = None) -> Clips:
    """``n`` paired clips, deterministic given ``seed`` (and ``config``)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    config = config or WorldConfig()
    generator = torch.Generator().manual_seed(seed)
    classes, events, positions = sample_latents(n, generator, config)
    return Clips(
        video=render_video(classes, events, positions, config),
        audio=render_audio(classes, events, config),
        classes=classes,
        events=events,
        positions=positions,
    )
