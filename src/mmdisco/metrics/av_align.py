"""AV-Align (Yariv et al. 2024): temporal audio-video alignment as an IoU of peaks.

Audio peaks are librosa onsets; video peaks are local maxima of the mean Farneback
optical-flow magnitude between consecutive grayscale frames, as in the official script.
A peak of one modality is matched to a peak of the other if they are closer than
``window_frames / fps`` seconds (strictly; the official ``v - 1/fps < a < v + 1/fps``, i.e.
a three-frame window centred on the video peak, which is what the MMDisCo appendix A.10.1
calls "within three frames").

Difference from the official script (documented in docs/metrics.md): there every audio peak
counts as matched if *any* video peak is near, so several audio onsets around one video peak
all count and IoU = I / (|A| + |V| - I) can exceed 1. Here peaks are matched one-to-one
(maximum matching, computed exactly by a sweep because compatibility is an interval relation),
so 0 <= I <= min(|A|, |V|) and the score is always in [0, 1].

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


@dataclass(frozen=True)
class AVAlignConfig:
    """``min_onset_spacing`` in seconds (None: 0.768 / fps, i.e. 96 ms at 8 fps).

    ``sample_rate`` is the rate audio is resampled to before onset detection (librosa.load's
    default 22050 Hz in the official script); ``hop_length`` the onset-envelope hop.
    """

    window_frames: float = 1.0
    min_onset_spacing: float | None = None
    sample_rate: int = 22050
    hop_length: int = 512

    def onset_wait(self, fps: float) -> int:
        """librosa ``wait`` (in envelope frames) giving the minimum onset spacing."""
        spacing = 0.768 / fps if self.min_onset_spacing is None else self.min_onset_spacing
        return max(0, round(spacing * self.sample_rate / self.hop_length))


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


# Rises smaller than this fraction of the clip's largest flow are float noise, not motion:
# on still frames Farneback returns ~1e-7 px whose last bits depend on memory alignment (SIMD
# paths), so their strict maxima came and went from one process to the next.
FLOW_NOISE = 1e-4


def detect_video_peaks(frames: np.ndarray, fps: float) -> np.ndarray:
    """Times (s) of strict local maxima of the flow trajectory (index i -> i / fps), rising
    above both neighbours by more than ``FLOW_NOISE`` times the trajectory's maximum."""
    traj = flow_trajectory(frames)
    eps = FLOW_NOISE * float(traj.max(initial=0.0))
    idx = [
        i
        for i in range(1, len(traj) - 1)
        if traj[i] > traj[i - 1] + eps and traj[i] > traj[i + 1] + eps
    ]
    return np.array(idx, dtype=np.float64) / fps


def match_count(audio_peaks: Sequence[float], video_peaks: Sequence[float], window: float) -> int:
    """Size of a maximum one-to-one matching with |a - v| < window.

    Both lists sorted, the sweep that matches the earliest compatible pair is optimal for
    this interval relation (exchange argument), so no general bipartite solver is needed.
    """
    a, v = sorted(audio_peaks), sorted(video_peaks)
    i = j = count = 0
    while i < len(a) and j < len(v):
        if abs(a[i] - v[j]) < window:
            count, i, j = count + 1, i + 1, j + 1
        elif a[i] < v[j]:
            i += 1
        else:
            j += 1
    return count


def av_align_iou(
    audio_peaks: Sequence[float],
    video_peaks: Sequence[float],
    fps: float,
    window_frames: float = 1.0,
) -> float:
    """IoU = I / (|A| + |V| - I) with one-to-one matches; NaN when both sets are empty."""
    union_total = len(audio_peaks) + len(video_peaks)
    if union_total == 0:
        return math.nan
    inter = match_count(audio_peaks, video_peaks, window_frames / fps)
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
    video_peaks = detect_video_peaks(frames, fps)
    return av_align_iou(audio_peaks, video_peaks, fps, config.window_frames)


def _reference_iou(audio_peaks: Sequence[float], video_peaks: Sequence[float], fps: float) -> float:
    """The official script's formula (one-to-many): kept only to document/test the bug."""
    intersection = 0
    for audio_peak in audio_peaks:
        for video_peak in video_peaks:
            if video_peak - 1 / fps < audio_peak < video_peak + 1 / fps:
                intersection += 1
                break
    return intersection / (len(audio_peaks) + len(video_peaks) - intersection)
