"""Exact, hand-written detectors of the world's class and events, and the metrics built on them.

No learning is involved: the detectors parse a clip the way the generator drew it and refuse
(``valid=False``, with a ``reason``) anything that is not a well-formed clip of the world, so
"validity" measures fidelity and garbage cannot score.

Video: in each frame (floor row excluded) the brightest ``s x s`` box of the objectness map
(max over RGB) must be bright (mean >= 0.6 in [0, 1]) against a dark rest (mean <= 0.15), its
mean colour, scaled to a maximum channel of 1 (so a darkened or blurred object still
matches), must be within 0.35 of one class colour, the same class in every frame, and the
floor row must be mid grey (within 0.25). Contacts are the frames where the box rests on the floor,
and the box's height in every frame must follow the world's bounce through those contacts
(within ``TRAJECTORY_TOL`` pixels): a square that jumps between unrelated heights is not a
bouncing object, however many contacts it happens to make.

Audio: an 8 ms RMS envelope is thresholded with hysteresis (on above 25 %, off below 10 % of
the way from the median level to the peak), so each percussive onset is counted once and the
sound must decay between impacts; the peak must be >= 0.05 and >= 2x the median (a clear
event over any background). Within 150 ms after each onset, at least half the spectral energy
must lie in one class's pitch band (bounded by the geometric midpoints to the neighbouring
pitches), the same class for every onset. Onset times are converted to frames by rounding.

Both then require the clip's event structure: exactly ``events_per_clip`` events, in frames
``[1, num_frames - 2]``, at least ``min_event_spacing`` frames apart.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmdisco.world.generator import Clips, WorldConfig, bounce_heights

BOX_MIN = 0.6
REST_MAX = 0.15
COLOUR_TOL = 0.35
FLOOR_TOL = 0.25
TRAJECTORY_TOL = 1  # pixels
ENVELOPE_WINDOW = 0.008  # seconds
ONSET_ON, ONSET_OFF = 0.25, 0.10
PEAK_MIN, PEAK_OVER_MEDIAN = 0.05, 2.0
TONE_WINDOW = 0.15  # seconds
TONE_FRACTION = 0.5


@dataclass(frozen=True)
class Detection:
    """What a detector read from one clip; ``cls`` is None and ``events`` empty if invalid."""

    valid: bool
    cls: int | None
    events: tuple[int, ...]
    reason: str = ""


def _invalid(reason: str) -> Detection:
    return Detection(valid=False, cls=None, events=(), reason=reason)


def _check_events(events: Sequence[int], config: WorldConfig) -> str:
    """Why ``events`` is not a valid event tuple of the world ("" if it is)."""
    if len(events) != config.events_per_clip:
        return f"{len(events)} events, expected {config.events_per_clip}"
    if any(not 1 <= k <= config.num_frames - 2 for k in events):
        return f"event frames {tuple(events)} outside [1, {config.num_frames - 2}]"
    if any(b - a < config.min_event_spacing for a, b in itertools.pairwise(events)):
        return f"events {tuple(events)} closer than {config.min_event_spacing} frames"
    return ""


def _check_trajectory(height: Tensor, events: tuple[int, ...], config: WorldConfig) -> str:
    """Why the per-frame heights are not the bounce through ``events`` ("" if they are)."""
    expected = bounce_heights(torch.tensor([events]), config)[0]
    off = (height - expected).abs()
    if int(off.max()) > TRAJECTORY_TOL:
        k = int(off.argmax())
        return f"frame {k}: height {int(height[k])}, a bounce has {int(expected[k])}"
    return ""


def _nearest_colour(colours: Tensor, config: WorldConfig) -> tuple[Tensor, Tensor]:
    """(..., 3) RGB in [0, 1] -> (nearest class, distance to it), after scaling each colour
    to a maximum channel of 1 (the palette's value) so that a darkened object still matches."""
    palette = torch.tensor(config.colours, dtype=colours.dtype)
    colours = colours / colours.amax(-1, keepdim=True).clamp_min(1e-6)
    dist = torch.linalg.vector_norm(colours[..., None, :] - palette, dim=-1)
    best = dist.min(-1)
    return best.indices, best.values


def detect_video(video: Tensor, config: WorldConfig | None = None) -> list[Detection]:
    """(N, 3, F, H, W) video in [-1, 1] -> one :class:`Detection` per clip."""
    config = config or WorldConfig()
    f, size, s = config.num_frames, config.frame_size, config.object_size
    if video.ndim != 5 or tuple(video.shape[1:]) != (3, f, size, size):
        raise ValueError(
            f"video must have shape (N, 3, {f}, {size}, {size}), got {tuple(video.shape)}"
        )
    n = video.shape[0]
    u = (video.detach().float().cpu().clamp(-1, 1) + 1) / 2  # (N, 3, F, H, W) in [0, 1]
    floor = u[..., -1, :].mean(dim=(1, 3))  # (N, F)
    scene = u[..., :-1, :].permute(0, 2, 1, 3, 4).reshape(n * f, 3, size - 1, size)
    objectness = scene.amax(1, keepdim=True)  # (NF, 1, H-1, W)
    box = F.avg_pool2d(objectness, s, stride=1).flatten(1)  # (NF, positions)
    inside, where = box.max(1)
    rest = (objectness.flatten(1).sum(1) - inside * s * s) / ((size - 1) * size - s * s)
    box_width = size - s + 1
    top = where // box_width
    colour = F.avg_pool2d(scene, s, stride=1).flatten(2)  # (NF, 3, positions)
    colour = colour.gather(2, where[:, None, None].expand(-1, 3, 1))[..., 0]  # (NF, 3)
    cls, dist = _nearest_colour(colour, config)
    height = ((size - 2) - (top + s - 1)).view(n, f)
    frame_ok = (inside >= BOX_MIN) & (rest <= REST_MAX)
    frame_ok, cls, dist = frame_ok.view(n, f), cls.view(n, f), dist.view(n, f)

    detections = []
    for i in range(n):
        if not bool(frame_ok[i].all()):
            bad = int((~frame_ok[i]).nonzero()[0])
            detections.append(_invalid(f"no clear object in frame {bad}"))
        elif bool((floor[i] - 0.5).abs().max() > FLOOR_TOL):
            detections.append(_invalid("no grey floor"))
        elif bool(dist[i].max() > COLOUR_TOL):
            detections.append(_invalid("object colour matches no class"))
        elif bool((cls[i] != cls[i, 0]).any()):
            detections.append(_invalid("object colour changes between frames"))
        else:
            events = tuple(int(k) for k in (height[i] == 0).nonzero()[:, 0])
            reason = _check_events(events, config) or _check_trajectory(height[i], events, config)
            detections.append(
                _invalid(reason)
                if reason
                else Detection(valid=True, cls=int(cls[i, 0]), events=events)
            )
    return detections


def _class_bands(config: WorldConfig) -> list[tuple[float, float]]:
    half = math.sqrt(config.pitch_ratio)
    return [(p / half, p * half) for p in config.pitches]


def _onsets(envelope: np.ndarray) -> tuple[list[int], str]:
    """Hysteresis onset picking on one clip's envelope -> (onset windows, failure reason)."""
    peak, floor = float(envelope.max()), float(np.median(envelope))
    if peak < PEAK_MIN:
        return [], "silent"
    if peak < PEAK_OVER_MEDIAN * floor:
        return [], "no event stands out of the background"
    on = floor + ONSET_ON * (peak - floor)
    off = floor + ONSET_OFF * (peak - floor)
    onsets, active = [], False
    for j, level in enumerate(envelope.tolist()):
        if not active and level > on:
            onsets.append(j)
            active = True
        elif active and level < off:
            active = False
    return onsets, ""


def _tone_classes(x: np.ndarray, starts: list[tuple[int, int]], config: WorldConfig):
    """Class band holding the most energy in the ``TONE_WINDOW`` after each (clip, sample)
    start, and the fraction of the window's energy in that band."""
    sr, seg = config.sample_rate, round(TONE_WINDOW * config.sample_rate)
    padded = np.pad(x, ((0, 0), (0, seg)))
    segments = np.stack([padded[i, a : a + seg] for i, a in starts]) * np.hanning(seg)
    power = np.abs(np.fft.rfft(segments)) ** 2  # (events, bins)
    freqs = np.fft.rfftfreq(seg, 1.0 / sr)
    in_band = np.stack(
        [power[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in _class_bands(config)], 1
    )
    fraction = in_band.max(1) / np.maximum(power.sum(1), 1e-20)
    return in_band.argmax(1), fraction


def detect_audio(audio: Tensor, config: WorldConfig | None = None) -> list[Detection]:
    """(N, L) audio in [-1, 1] -> one :class:`Detection` per clip (events in video frames)."""
    config = config or WorldConfig()
    if audio.ndim != 2 or audio.shape[1] != config.num_samples:
        raise ValueError(
            f"audio must have shape (N, {config.num_samples}), got {tuple(audio.shape)}"
        )
    sr = config.sample_rate
    x = audio.detach().cpu().double().numpy()
    w = max(1, round(ENVELOPE_WINDOW * sr))
    usable = x.shape[1] // w * w
    envelope = np.sqrt((x[:, :usable].reshape(len(x), -1, w) ** 2).mean(-1))  # (N, windows)

    picked = [_onsets(env) for env in envelope]
    starts = [(i, j * w) for i, (onsets, _) in enumerate(picked) for j in onsets]
    cls, fraction = _tone_classes(x, starts, config) if starts else ([], [])
    detections, k = [], 0
    for onsets, reason in picked:
        c, frac = cls[k : k + len(onsets)], fraction[k : k + len(onsets)]
        k += len(onsets)
        if reason:
            detections.append(_invalid(reason))
        elif (frac < TONE_FRACTION).any():
            detections.append(_invalid("an event is not a tone of any class"))
        elif (c != c[0]).any():
            detections.append(_invalid("events have different pitches"))
        else:
            events = tuple(round(j * w / sr * config.fps) for j in onsets)
            reason = _check_events(events, config)
            detections.append(
                _invalid(reason) if reason else Detection(valid=True, cls=int(c[0]), events=events)
            )
    return detections


def match_events(a: Sequence[int], b: Sequence[int], tolerance: int = 1) -> int:
    """Size of the largest one-to-one matching of sorted frames with ``|a_i - b_j| <= tol``.

    On a line the greedy two-pointer sweep is optimal: matching the earliest compatible pair
    never blocks a larger matching.
    """
    i = j = matched = 0
    while i < len(a) and j < len(b):
        if abs(a[i] - b[j]) <= tolerance:
            matched, i, j = matched + 1, i + 1, j + 1
        elif a[i] < b[j]:
            i += 1
        else:
            j += 1
    return matched


def _pair_temporal(video: Detection, audio: Detection) -> float:
    """Matched fraction of the pair's events; the denominator counts the longer list so that
    spurious events on either side cost (it equals the number of video events on valid pairs)."""
    if not (video.valid and audio.valid):
        return 0.0
    return match_events(video.events, audio.events) / max(len(video.events), len(audio.events), 1)


def total_variation(p: Tensor, q: Tensor) -> float:
    """Total variation distance between two histograms (each normalised here)."""
    if p.sum() <= 0:
        return 1.0
    return 0.5 * float((p / p.sum() - q / q.sum()).abs().sum())


def _histograms(
    classes: Sequence[int], events: Sequence[Sequence[int]], config: WorldConfig
) -> tuple[Tensor, Tensor]:
    cls_hist = torch.bincount(torch.tensor(classes, dtype=torch.long), minlength=config.num_classes)
    flat = [k for ev in events for k in ev]
    ev_hist = torch.bincount(torch.tensor(flat, dtype=torch.long), minlength=config.num_frames)
    return cls_hist.double(), ev_hist[: config.num_frames].double()


def data_histograms(config: WorldConfig) -> tuple[Tensor, Tensor]:
    """The world's exact class and event-frame distributions (classes uniform, event tuples
    uniform over :attr:`WorldConfig.event_support`)."""
    cls_hist = torch.ones(config.num_classes, dtype=torch.float64)
    _, ev_hist = _histograms([0], config.event_support, config)
    return cls_hist / cls_hist.sum(), ev_hist / ev_hist.sum()


def evaluate(
    video: Tensor,
    audio: Tensor,
    config: WorldConfig | None = None,
    reference_clips: Clips | None = None,
) -> dict[str, float]:
    """Score N generated pairs with the exact detectors.

    * ``semantic``: fraction of pairs whose video and audio are both valid and of one class;
    * ``temporal``: mean over pairs of the fraction of events matched one-to-one within one
      video frame (0 for a pair with an invalid side);
    * ``validity_audio`` / ``validity_video``: fraction of clips the detector accepts;
    * ``class_tv_*`` / ``event_tv_*``: total variation between the valid clips' class /
      event-frame histograms and the data's (``reference_clips``' labels if given, else the
      exact distribution); ``diversity`` = 1 - their mean (1: the data's spread, 0: none).
    """
    config = config or WorldConfig()
    if len(video) != len(audio):
        raise ValueError(f"video and audio batch sizes differ: {len(video)} vs {len(audio)}")
    return summarize(
        detect_video(video, config), detect_audio(audio, config), config, reference_clips
    )


def summarize(
    dv: Sequence[Detection],
    da: Sequence[Detection],
    config: WorldConfig | None = None,
    reference_clips: Clips | None = None,
) -> dict[str, float]:
    """:func:`evaluate`'s metrics from detections already made (``dv[i]`` and ``da[i]`` are
    pair ``i``), e.g. for subsets of a scored pool of candidates."""
    config = config or WorldConfig()
    if len(dv) != len(da):
        raise ValueError(f"{len(dv)} video detections but {len(da)} audio detections")
    n = max(len(dv), 1)
    if reference_clips is None:
        ref_cls, ref_ev = data_histograms(config)
    else:
        ref_cls, ref_ev = _histograms(
            reference_clips.classes.tolist(), reference_clips.events.tolist(), config
        )
    metrics = {
        "semantic": sum(v.valid and a.valid and v.cls == a.cls for v, a in zip(dv, da, strict=True))
        / n,
        "temporal": sum(_pair_temporal(v, a) for v, a in zip(dv, da, strict=True)) / n,
        "validity_audio": sum(a.valid for a in da) / n,
        "validity_video": sum(v.valid for v in dv) / n,
    }
    for name, dets in (("audio", da), ("video", dv)):
        valid = [d for d in dets if d.valid]
        cls_hist, ev_hist = _histograms([d.cls for d in valid], [d.events for d in valid], config)
        metrics[f"class_tv_{name}"] = total_variation(cls_hist, ref_cls)
        metrics[f"event_tv_{name}"] = total_variation(ev_hist, ref_ev)
    tvs = [v for k, v in metrics.items() if "_tv_" in k]
    metrics["diversity"] = 1.0 - sum(tvs) / len(tvs)
    return metrics


def chance_levels(config: WorldConfig | None = None) -> dict[str, float]:
    """Exact expected ``semantic`` and ``temporal`` for valid audio and video drawn
    independently from the world (the score of unpaired but perfect base models)."""
    config = config or WorldConfig()
    support = config.event_support
    matched = sum(match_events(a, b) for a in support for b in support)
    return {
        "semantic": 1.0 / config.num_classes,
        "temporal": matched / (len(support) ** 2 * config.events_per_clip),
    }
