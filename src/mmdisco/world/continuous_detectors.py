"""Detectors of the continuous world: every latent variable read back by least squares.

A clip is explained by the world clip nearest to it: for every shared state (shade, event
pair) the best nuisance is found in closed form (the images are piecewise linear in position
and linear in gain, :func:`mmdisco.world.continuous_ratio.quadratic_max`), and the state with
the smallest residual wins. On clips of the world the residual is zero and every variable is
read back exactly (shade and event times on their lattice, position and gain to float
precision). A clip is **valid** when its RMS residual is at most ``VALID_RMS`` (in the
[-1, 1] units of both modalities): a generated clip that is not close to any world clip
cannot score.

Agreement of a pair (both sides valid):

* **semantic**: same class, and shades at most ``SHADE_TOL`` lattice steps apart (one step
  is ``shade_span / shades_per_class`` = 0.0875 of a class's hue / pitch interval for the
  defaults);
* **temporal**: both event times within ``TIME_TOL`` frames (1/4 frame, 31 ms at 8 fps).

:func:`continuous_chance_levels` gives both exactly for independent clips of the world.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmdisco.world.continuous import ContinuousWorldConfig, event_times_of
from mmdisco.world.continuous_ratio import ContinuousWorldTerms, quadratic_max

VALID_RMS = 0.1
SHADE_TOL = 1  # lattice steps
TIME_TOL = 0.25  # frames
COPY_POSITION_TOL = 0.25  # pixels
COPY_GAIN_TOL = 0.05


@dataclass
class ContinuousDetection:
    """What was read from N clips of one modality (tensors of length N)."""

    valid: Tensor  # bool
    rms: Tensor  # residual RMS of the best explanation
    shades: Tensor  # long, class * shades_per_class + shade
    pairs: Tensor  # long, index into config.event_pairs
    nuisance: Tensor  # float64: position (video) or gain (audio)
    decays: Tensor  # long, index into config.decays (audio; zeros for video)


def _best(terms: ContinuousWorldTerms, x: Tensor, modality: str) -> tuple[Tensor, Tensor, Tensor]:
    one = torch.ones(len(x), dtype=torch.float64)
    if modality == "video":
        a, b, k = terms.video_terms(x, one, one)
    else:
        a, b, k = terms.audio_terms(x, one, one)
    return quadratic_max(a, b, k)  # (N, S, P, pieces) each


def detect_continuous(
    x: Tensor, modality: str, terms: ContinuousWorldTerms, chunk: int = 64
) -> ContinuousDetection:
    """Read N clips of ``modality`` (``(N, *shape)`` in the world's spaces)."""
    c = terms.config
    parts = []
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            xs = x[start : start + chunk].double()
            value, u = _best(terms, xs, modality)
            flat = value.flatten(1)
            best = flat.argmax(1)
            s, p, piece = torch.unravel_index(best, value.shape[1:])
            u_best = u.flatten(1).gather(1, best[:, None])[:, 0]
            background = terms.video_background if modality == "video" else -1.0
            energy = (xs - background).pow(2).flatten(1).sum(1)
            rms = (
                (energy - 2 * flat.gather(1, best[:, None])[:, 0]).clamp_min(0) / xs[0].numel()
            ).sqrt()
            if modality == "video":
                nuisance, decay = piece.double() + u_best, torch.zeros_like(piece)
            else:
                nuisance = c.gain_min + (c.gain_max - c.gain_min) * u_best
                decay = piece
            parts.append((rms, s, p, nuisance, decay))
    rms, s, p, nuisance, decay = (torch.cat(t) for t in zip(*parts, strict=True))
    return ContinuousDetection(rms <= VALID_RMS, rms, s, p, nuisance, decay)


def agreement(
    audio: ContinuousDetection, video: ContinuousDetection, config: ContinuousWorldConfig
) -> dict[str, Tensor]:
    """Per pair: ``semantic`` and ``temporal`` agreement (bool, False if a side is invalid)."""
    both = audio.valid & video.valid
    per_class = config.shades_per_class
    same_class = audio.shades // per_class == video.shades // per_class
    close = (audio.shades - video.shades).abs() <= SHADE_TOL
    dt = (event_times_of(audio.pairs, config) - event_times_of(video.pairs, config)).abs()
    return {
        "semantic": both & same_class & close,
        "temporal": both & (dt <= TIME_TOL + 1e-9).all(1),
    }


def evaluate_continuous(
    audio: Tensor, video: Tensor, terms: ContinuousWorldTerms
) -> dict[str, float]:
    """``semantic``, ``temporal``, ``validity_audio``, ``validity_video`` of N pairs."""
    if len(audio) != len(video):
        raise ValueError(f"audio and video batch sizes differ: {len(audio)} vs {len(video)}")
    da = detect_continuous(audio, "audio", terms)
    dv = detect_continuous(video, "video", terms)
    agree = agreement(da, dv, terms.config)
    return {
        "semantic": float(agree["semantic"].double().mean()),
        "temporal": float(agree["temporal"].double().mean()),
        "validity_audio": float(da.valid.double().mean()),
        "validity_video": float(dv.valid.double().mean()),
    }


def continuous_chance_levels(config: ContinuousWorldConfig | None = None) -> dict[str, float]:
    """Exact ``semantic`` and ``temporal`` of independent valid clips of the world."""
    c = config or ContinuousWorldConfig()
    shades = torch.arange(c.num_shades)
    same = (shades[:, None] // c.shades_per_class == shades // c.shades_per_class) & (
        (shades[:, None] - shades).abs() <= SHADE_TOL
    )
    times = event_times_of(torch.arange(len(c.event_pairs)), c)
    close = ((times[:, None] - times[None]).abs() <= TIME_TOL + 1e-9).all(-1)
    return {
        "semantic": float(same.double().mean()),
        "temporal": float(close.double().mean()),
    }


def copy_flags(
    detection: ContinuousDetection,
    training: ContinuousDetection,
    modality: str,
    config: ContinuousWorldConfig,
) -> Tensor:
    """Per clip: does some training clip match all its variables within the tolerances
    (shade and times as above; position ``COPY_POSITION_TOL`` px, gain ``COPY_GAIN_TOL``,
    the same decay)?"""
    close = (detection.shades[:, None] - training.shades[None]).abs() <= SHADE_TOL
    close &= detection.shades[:, None] // config.shades_per_class == (
        training.shades[None] // config.shades_per_class
    )
    t_gen, t_train = event_times_of(detection.pairs, config), event_times_of(training.pairs, config)
    close &= ((t_gen[:, None] - t_train[None]).abs() <= TIME_TOL + 1e-9).all(-1)
    tol = COPY_POSITION_TOL if modality == "video" else COPY_GAIN_TOL
    close &= (detection.nuisance[:, None] - training.nuisance[None]).abs() <= tol
    close &= detection.decays[:, None] == training.decays[None]
    return detection.valid & close.any(1)
