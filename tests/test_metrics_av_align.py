"""AV-Align on synthesised clips: clicks at known times, a square that jumps at known frames."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from mmdisco.metrics.av_align import (
    VERSIONS,
    AVAlignConfig,
    av_align_iou,
    av_align_score,
    detect_audio_peaks,
    detect_video_peaks,
    match_count,
)

FPS, SR = 8.0, 16000
EVENTS = (5, 12, 20, 27)  # frames of the 32-frame (4 s) clip


def clicks(times, seconds=4.0):
    """Decaying noise bursts starting at ``times`` (s)."""
    rng = np.random.default_rng(0)
    y = np.zeros(int(SR * seconds), np.float32)
    n = int(0.02 * SR)
    for t in times:
        start = int(t * SR)
        y[start : start + n] += 0.8 * rng.standard_normal(n) * np.exp(-np.arange(n) / (0.004 * SR))
    return y


def jumping_square(event_frames, num_frames=32, size=64):
    """A white square on black that teleports between two corners at ``event_frames``."""
    video = np.zeros((num_frames, size, size, 3), np.uint8)
    pos = 8
    for i in range(num_frames):
        if i in event_frames:
            pos = 40 if pos == 8 else 8
        video[i, pos : pos + 16, pos : pos + 16] = 255
    return video


def test_detectors_find_the_synthesised_events():
    assert np.array_equal(detect_video_peaks(jumping_square(EVENTS), FPS) * FPS, EVENTS)
    onsets = detect_audio_peaks(clicks([k / FPS for k in EVENTS]), SR, FPS)
    assert np.allclose(onsets * FPS, EVENTS, atol=0.25)  # within a quarter frame


def test_perfect_alignment_scores_one():
    score = av_align_score(jumping_square(EVENTS), FPS, clicks([k / FPS for k in EVENTS]), SR)
    assert score == pytest.approx(1.0)


def test_shifted_audio_scores_low():
    video = jumping_square(EVENTS)
    shifted = clicks([(k + 3) / FPS for k in EVENTS])
    assert av_align_score(video, FPS, shifted, SR) == pytest.approx(0.0)
    # Half the events one frame off the +-1 frame window edge: IoU 2 / (4 + 4 - 2).
    half = clicks([(k + (2 if i % 2 else 0)) / FPS for i, k in enumerate(EVENTS)])
    assert av_align_score(video, FPS, half, SR) == pytest.approx(1 / 3)


def test_2023_version_exceeds_one_and_2025_does_not():
    # Three onsets 80 ms apart around a single video peak, detected with the original 32 ms
    # onset interval: the 2023 formula counts all three as matches -> 3 / (3 + 1 - 3).
    video = jumping_square({16})
    audio = clicks([16 / FPS - 0.08, 16 / FPS, 16 / FPS + 0.08])
    onsets = detect_audio_peaks(audio, SR, FPS, AVAlignConfig(min_onset_spacing=0.032))
    peaks = detect_video_peaks(video, FPS)
    assert len(onsets) == 3 and len(peaks) == 1
    assert av_align_iou(onsets, peaks, FPS, matching="one_to_many") == pytest.approx(3.0)
    assert av_align_iou(onsets, peaks, FPS) == pytest.approx(1 / 3)
    old = AVAlignConfig.version("2023-10-26", min_onset_spacing=0.032)
    new = AVAlignConfig.version("2025-02-13", min_onset_spacing=0.032)
    assert av_align_score(video, FPS, audio, SR, old) == pytest.approx(3.0)
    assert av_align_score(video, FPS, audio, SR, new) == pytest.approx(1 / 3)


def test_wait_follows_the_paper_setting():
    # 96 ms at 8 fps and 32 ms at 24 fps (hop 512 at 22.05 kHz = 23.2 ms per envelope frame).
    assert AVAlignConfig().onset_wait(8.0) == round(0.096 * 22050 / 512)
    assert AVAlignConfig().onset_wait(24.0) == round(0.032 * 22050 / 512)
    assert AVAlignConfig(min_onset_spacing=0.2).onset_wait(8.0) == round(0.2 * 22050 / 512)


def test_matching_is_maximum_one_to_one_and_bounded():
    # Nearest-first greedy would pair 0.10 with 0.09 and leave 0.00 and 0.20 unmatched.
    assert match_count([0.0, 0.10], [0.09, 0.20], window=0.125) == 2
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = np.sort(rng.uniform(0, 2, rng.integers(0, 8)))
        v = np.sort(rng.uniform(0, 2, rng.integers(1, 8)))
        compatible = (np.abs(a[:, None] - v[None, :]) < 1 / FPS).astype(float)
        rows, cols = linear_sum_assignment(compatible, maximize=True)
        assert match_count(a, v, 1 / FPS) == compatible[rows, cols].sum()  # a maximum matching
        score = av_align_iou(a, v, FPS)
        assert 0.0 <= score <= 1.0
        # Never more matches than the one-to-many reference counts; equal when no video peak
        # has two audio peaks in its window (the documented agreement condition).
        reference_count = int(compatible.any(axis=1).sum())
        assert match_count(a, v, 1 / FPS) <= reference_count
        if compatible.sum(axis=0).max(initial=0) <= 1:
            assert match_count(a, v, 1 / FPS) == reference_count
    assert np.isnan(av_align_iou([], [], FPS))


def test_flow_threshold_of_the_2025_version(monkeypatch):
    """Maxima below 0.1 px (Farneback's noise on still frames) are not peaks in 2025; the
    2023 script counted every strict maximum."""
    from mmdisco.metrics import av_align

    traj = np.array([0.0, 1e-9, 0.0, 1.0, 0.0, 0.09, 0.0, 0.5, 0.4])
    monkeypatch.setattr(av_align, "flow_trajectory", lambda frames: traj)
    frames = np.zeros((9, 2, 2, 3), np.uint8)
    assert np.array_equal(detect_video_peaks(frames, 8.0) * 8, [3, 7])
    assert np.array_equal(detect_video_peaks(frames, 8.0, flow_threshold=0.0) * 8, [1, 3, 5, 7])


def reference_iou_2023(audio_peaks, video_peaks, fps):
    """TempoTokens av_align.py at 2023-10-26, transcribed."""
    intersection_length = 0
    for audio_peak in audio_peaks:
        for video_peak in video_peaks:
            if video_peak - 1 / fps < audio_peak < video_peak + 1 / fps:
                intersection_length += 1
                break
    return intersection_length / (len(audio_peaks) + len(video_peaks) - intersection_length)


def reference_iou_2025(audio_peaks, video_peaks, fps):
    """TempoTokens av_align.py at 2025-02-13, transcribed."""
    intersection_length = 0
    used_video_peaks = [False] * len(video_peaks)
    for audio_peak in audio_peaks:
        for j, video_peak in enumerate(video_peaks):
            if not used_video_peaks[j] and video_peak - 1 / fps < audio_peak < video_peak + 1 / fps:
                intersection_length += 1
                used_video_peaks[j] = True
                break
    return intersection_length / (len(audio_peaks) + len(video_peaks) - intersection_length)


def test_both_versions_equal_the_published_scripts():
    rng = np.random.default_rng(1)
    for _ in range(300):
        a = np.sort(rng.uniform(0, 2, rng.integers(0, 9)))
        v = np.sort(rng.uniform(0, 2, rng.integers(1, 9)))
        assert av_align_iou(a, v, FPS, matching="one_to_many") == reference_iou_2023(a, v, FPS)
        assert av_align_iou(a, v, FPS) == reference_iou_2025(a, v, FPS)


def test_versions_are_named_and_recorded():
    assert AVAlignConfig() == AVAlignConfig.version("2025-02-13")
    assert AVAlignConfig().version_name == "2025-02-13"
    assert AVAlignConfig.version("2023-10-26").version_name == "2023-10-26"
    assert AVAlignConfig(flow_threshold=0.5).version_name == "custom"
    assert set(VERSIONS) == {"2023-10-26", "2025-02-13"}
    with pytest.raises(ValueError, match="unknown AV-Align version '2024'"):
        AVAlignConfig.version("2024")
    with pytest.raises(ValueError, match="matching must be one of"):
        AVAlignConfig(matching="nearest")
