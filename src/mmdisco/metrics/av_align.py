"""AV-Align (Yariv et al. 2024): temporal audio-video alignment as an IoU of peaks.

Audio peaks are librosa onsets; video peaks are local maxima of the mean Farneback
optical-flow magnitude between consecutive grayscale frames, as in the official script
(guyyariv/TempoTokens ``av_align.py``). An audio and a video peak match if they are closer
than ``window_frames / fps`` seconds (strictly; the official ``v - 1/fps < a < v + 1/fps``,
i.e. a three-frame window centred on the video peak, which is what the MMDisCo appendix
A.10.1 calls "within three frames"). IoU = I / (|A| + |V| - I).

The official script exists in two published versions, selectable with
:meth:`AVAlignConfig.version` and recorded in every report:

* ``2023-10-26`` (``matching="one_to_many"``, ``flow_threshold=0``): an audio peak counts as
  matched if *any* video peak is near, so several onsets around one video peak all count and
  the IoU can exceed 1. MMDisCo (ICLR 2025) used this version; it is where its remark about
  values above 1 comes from. (As published, its ``find_local_max_indexes`` reads an undefined
  ``n``; ``n = len(arr)`` is the evident intent and what this module does.)
* ``2025-02-13`` (``matching="one_to_one"``, ``flow_threshold=0.1`` px, the default): each
  audio peak, in time order, takes the first unused video peak in its window, and flow maxima
  below 0.1 px are not peaks. For sorted peaks this greedy rule is a maximum one-to-one
  matching (tested against the Hungarian algorithm), so 0 <= IoU <= 1.

MMDisCo evaluates 8 fps video and sets the onset detection interval to 96 ms (vs. 32 ms for
24 fps in the original); the default ``min_onset_spacing = 0.768 / fps`` reproduces both.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import librosa
import numpy as np

from mmdisco.metrics.base import resample, to_mono

# Farneback parameters of the official script: pyr_scale, levels, winsize, iterations,
# poly_n, poly_sigma, flags.
FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)


MATCHINGS = ("one_to_one", "one_to_many")


@dataclass(frozen=True)
class AVAlignConfig:
    """Settings of one AV-Align computation; the defaults are the 2025-02-13 script.

    ``matching``: ``"one_to_one"`` (2025) or ``"one_to_many"`` (2023, can exceed 1).
    ``flow_threshold``: flow maxima below this many pixels are not video peaks (2025: 0.1,
    2023: 0). ``min_onset_spacing`` in seconds (None: 0.768 / fps, i.e. 96 ms at 8 fps).
    ``sample_rate`` is the rate audio is resampled to before onset detection (librosa.load's
    default 22050 Hz in the official script); ``hop_length`` the onset-envelope hop.
    """

    window_frames: float = 1.0
    min_onset_spacing: float | None = None
    matching: str = "one_to_one"
    flow_threshold: float = 0.1
    sample_rate: int = 22050
    hop_length: int = 512

    def __post_init__(self) -> None:
        if self.matching not in MATCHINGS:
            raise ValueError(f"matching must be one of {MATCHINGS}, got {self.matching!r}")
        if self.flow_threshold < 0:
            raise ValueError(f"flow_threshold must be >= 0 px, got {self.flow_threshold}")

    @classmethod
    def version(cls, name: str, **overrides) -> AVAlignConfig:
        """The settings of a published version of the official script (see VERSIONS)."""
        if name not in VERSIONS:
            raise ValueError(f"unknown AV-Align version {name!r}; choose from {list(VERSIONS)}")
        return cls(**{**VERSIONS[name], **overrides})

    @property
    def version_name(self) -> str:
        """The published version these settings reproduce, or "custom"."""
        for name, settings in VERSIONS.items():
            if all(getattr(self, k) == v for k, v in settings.items()):
                return name
        return "custom"

    def onset_wait(self, fps: float) -> int:
        """librosa ``wait`` (in envelope frames) giving the minimum onset spacing."""
        spacing = 0.768 / fps if self.min_onset_spacing is None else self.min_onset_spacing
        return max(0, round(spacing * self.sample_rate / self.hop_length))


# guyyariv/TempoTokens av_align.py, by commit date.
VERSIONS: dict[str, dict] = {
    "2023-10-26": {"matching": "one_to_many", "flow_threshold": 0.0},
    "2025-02-13": {"matching": "one_to_one", "flow_threshold": 0.1},
}


def detect_audio_peaks(
    samples: np.ndarray, sample_rate: int, fps: float, config: AVAlignConfig | None = None
) -> np.ndarray:
    """Onset times in seconds (librosa onset_strength + onset_detect, configurable ``wait``)."""
    config = config or AVAlignConfig()
    y = resample(to_mono(samples), sample_rate, config.sample_rate)
    sr, hop = config.sample_rate, config.hop_length
    envelope = librosa.onset.onset_strength(y=y, sr=sr, hop_length=hop)
    frames = librosa.onset.onset_detect(
        onset_envelope=envelope, sr=sr, hop_length=hop, wait=config.onset_wait(fps)
    )
    return librosa.frames_to_time(frames, sr=sr, hop_length=hop)


def flow_trajectory(frames: np.ndarray) -> np.ndarray:
    """Mean Farneback flow magnitude per frame (F,), frame 0 repeating frame 1's value."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 2:
        raise ValueError(f"video must be uint8 (F>=2, H, W, 3), got shape {frames.shape}")
    gray = [
        cv2.cvtColor(np.ascontiguousarray(f, dtype=np.uint8), cv2.COLOR_RGB2GRAY) for f in frames
    ]
    mags = []
    for prev, curr in itertools.pairwise(gray):
        flow = cv2.calcOpticalFlowFarneback(prev, curr, None, *FARNEBACK)
        mags.append(float(cv2.magnitude(flow[..., 0], flow[..., 1]).mean()))
    return np.array([mags[0], *mags])


def detect_video_peaks(frames: np.ndarray, fps: float, flow_threshold: float = 0.1) -> np.ndarray:
    """Times (s) of strict local maxima of the flow trajectory (index i -> i / fps) whose
    flow is at least ``flow_threshold`` px (the 2025 script's 0.1 keeps still frames, whose
    ~1e-7 px Farneback noise varies between processes, from producing peaks)."""
    return trajectory_peaks(flow_trajectory(frames), fps, flow_threshold)


def trajectory_peaks(traj: np.ndarray, fps: float, flow_threshold: float = 0.1) -> np.ndarray:
    """Times (s) of the strict local maxima of a flow trajectory of at least ``flow_threshold``."""
    idx = [
        i
        for i in range(1, len(traj) - 1)
        if traj[i - 1] < traj[i] > traj[i + 1] and traj[i] >= flow_threshold
    ]
    return np.array(idx, dtype=np.float64) / fps


def match_count(
    audio_peaks: Sequence[float],
    video_peaks: Sequence[float],
    window: float,
    matching: str = "one_to_one",
) -> int:
    """Intersection I of the official scripts: audio peaks with a video peak within ``window``.

    ``one_to_many`` (2023): every audio peak with any video peak near counts. ``one_to_one``
    (2025): each audio peak, in time order, takes the first unused video peak near it.
    """
    if matching not in MATCHINGS:
        raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}")
    video = sorted(video_peaks)
    used = [False] * len(video)
    count = 0
    for a in sorted(audio_peaks):
        for j, v in enumerate(video):
            if (matching == "one_to_many" or not used[j]) and v - window < a < v + window:
                used[j], count = True, count + 1
                break
    return count


def av_align_iou(
    audio_peaks: Sequence[float],
    video_peaks: Sequence[float],
    fps: float,
    window_frames: float = 1.0,
    matching: str = "one_to_one",
) -> float:
    """IoU = I / (|A| + |V| - I) (see :func:`match_count`); NaN when both sets are empty."""
    union_total = len(audio_peaks) + len(video_peaks)
    if union_total == 0:
        return math.nan
    inter = match_count(audio_peaks, video_peaks, window_frames / fps, matching)
    return inter / (union_total - inter)


def av_align_score(
    frames: np.ndarray,
    fps: float,
    samples: np.ndarray,
    sample_rate: int,
    config: AVAlignConfig | None = None,
) -> float:
    """AV-Align of one clip (frames uint8 (F, H, W, 3), audio (N,) or (C, N))."""
    config = config or AVAlignConfig()
    audio_peaks = detect_audio_peaks(samples, sample_rate, fps, config)
    video_peaks = detect_video_peaks(frames, fps, config.flow_threshold)
    return av_align_iou(audio_peaks, video_peaks, fps, config.window_frames, config.matching)
