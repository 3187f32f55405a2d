"""The synthetic world: generation, exact detectors and the alignment metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmdisco.world import (
    WorldConfig,
    chance_levels,
    data_histograms,
    detect_audio,
    detect_video,
    evaluate,
    generate_clips,
    match_events,
)
from mmdisco.world.generator import bounce_heights, render_audio, render_video

CFG = WorldConfig()


@pytest.fixture(scope="module")
def clips():
    return generate_clips(400, seed=123)


def _exact(detections, clips) -> int:
    """How many detections are valid with the generating class and events."""
    return sum(
        d.valid and d.cls == int(c) and d.events == tuple(e.tolist())
        for d, c, e in zip(detections, clips.classes, clips.events, strict=True)
    )


def test_config_json_round_trip_and_validation():
    cfg = WorldConfig(num_classes=6, random_x=True)
    assert WorldConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.duration == 2.0 and cfg.num_samples == 32000
    assert len(CFG.event_support) == 66  # pairs in [1, 14] at least 3 apart
    with pytest.raises(ValueError, match="unknown WorldConfig fields"):
        WorldConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="Nyquist"):
        WorldConfig(num_classes=12)
    with pytest.raises(ValueError, match="no way to place"):
        WorldConfig(events_per_clip=6)


def test_generation_is_deterministic_by_seed():
    a, b, c = generate_clips(8, seed=7), generate_clips(8, seed=7), generate_clips(8, seed=8)
    for field in ("video", "audio", "classes", "events", "positions"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.events, c.events) or not torch.equal(a.classes, c.classes)


def test_shapes_ranges_and_latents(clips):
    n = len(clips)
    assert clips.video.shape == (n, 3, 16, 16, 16) and clips.video.dtype == torch.float32
    assert clips.audio.shape == (n, 32000) and clips.audio.dtype == torch.float32
    assert clips.video.min() >= -1 and clips.video.max() <= 1
    assert clips.audio.abs().max() <= 1
    assert clips.classes.dtype == torch.long and set(clips.classes.tolist()) == {0, 1, 2, 3}
    support = set(CFG.event_support)
    assert all(tuple(e) in support for e in clips.events.tolist())


def test_video_shows_the_class_colour_and_contacts_at_events(clips):
    heights = bounce_heights(clips.events, CFG)
    assert torch.equal((heights == 0).nonzero()[:, 1].view(-1, 2), clips.events)
    for i in range(5):
        colour = torch.tensor(CFG.colours[int(clips.classes[i])]) * 2 - 1
        for f in range(CFG.num_frames):
            frame = clips.video[i, :, f]
            bottom = CFG.frame_size - 2 - int(heights[i, f])
            x = int(clips.positions[i])
            square = frame[:, bottom - 3 : bottom + 1, x : x + 4]
            assert torch.equal(square, colour[:, None, None].expand(3, 4, 4))
            assert (frame[:, :-1] != -1).any(0).sum() == 16  # nothing else above the floor
            assert torch.equal(frame[:, -1], torch.zeros(3, 16))  # grey floor


def test_audio_is_silent_before_the_first_onset_and_has_the_class_pitch(clips):
    for i in range(5):
        onset = int(clips.events[i, 0]) * CFG.sample_rate // CFG.fps
        assert clips.audio[i, :onset].abs().max() == 0
        assert clips.audio[i, onset : onset + 40].abs().max() > 0.5
        spectrum = torch.fft.rfft(clips.audio[i]).abs()
        peak_hz = float(spectrum.argmax()) * CFG.sample_rate / CFG.num_samples
        assert peak_hz == pytest.approx(CFG.pitches[int(clips.classes[i])], abs=1.0)


def test_detectors_are_exact_on_clean_clips(clips):
    assert _exact(detect_video(clips.video), clips) == len(clips)
    assert _exact(detect_audio(clips.audio), clips) == len(clips)


def test_detectors_exact_for_other_configs():
    cfg = WorldConfig(num_classes=6, random_x=True, events_per_clip=3)
    c = generate_clips(60, seed=1, config=cfg)
    assert len(set(c.positions.tolist())) > 1
    assert _exact(detect_video(c.video, cfg), c) == 60
    assert _exact(detect_audio(c.audio, cfg), c) == 60


def test_detectors_tolerate_noise_blur_and_dimming(clips):
    gen = torch.Generator().manual_seed(0)
    noisy_v = clips.video + 0.1 * torch.randn(clips.video.shape, generator=gen)
    noisy_a = clips.audio + 0.1 * torch.randn(clips.audio.shape, generator=gen)
    assert _exact(detect_video(noisy_v.clamp(-1, 1)), clips) == len(clips)
    assert _exact(detect_audio(noisy_a), clips) == len(clips)
    frames = clips.video.flatten(0, 1)[:, None]
    blurred = F.avg_pool3d(frames, (1, 3, 3), 1, (0, 1, 1), count_include_pad=False)
    assert _exact(detect_video(blurred.view_as(clips.video)), clips) == len(clips)
    dimmed = (clips.video + 1) * 0.8 - 1  # objects at 80 % brightness
    assert _exact(detect_video(dimmed), clips) == len(clips)
    assert _exact(detect_audio(0.3 * clips.audio), clips) == len(clips)


def test_detectors_reject_noise_and_blank():
    gen = torch.Generator().manual_seed(0)
    noise_v = torch.randn(50, 3, 16, 16, 16, generator=gen).clamp(-1, 1)
    uniform_v = torch.rand(50, 3, 16, 16, 16, generator=gen) * 2 - 1
    for video in (noise_v, uniform_v, -torch.ones(3, 3, 16, 16, 16), torch.zeros(3, 3, 16, 16, 16)):
        assert not any(d.valid for d in detect_video(video))
    noise_a = torch.randn(50, 32000, generator=gen).clamp(-1, 1)
    for audio in (noise_a, 0.1 * noise_a, torch.zeros(3, 32000)):
        assert not any(d.valid for d in detect_audio(audio))
    assert {d.reason for d in detect_audio(torch.zeros(2, 32000))} == {"silent"}


def test_detectors_reject_clips_outside_the_world(clips):
    t = torch.arange(32000) / 16000
    drone = (0.5 * torch.sin(2 * math.pi * CFG.pitches[1] * t))[None]
    assert not detect_audio(drone)[0].valid  # no percussive events
    three = torch.tensor([[2, 7, 12]] * 4)
    classes = torch.arange(4)
    cfg3 = WorldConfig(events_per_clip=3)
    positions = torch.full((4,), 6)
    for det in detect_video(render_video(classes, three, positions, cfg3)):
        assert det.reason == "3 events, expected 2"
    for det in detect_audio(render_audio(classes, three, cfg3)):
        assert det.reason == "3 events, expected 2"
    # An object that changes colour half way, and a sound that changes pitch.
    video = clips.video[:8].clone()
    video[:, :, 8:] = render_video(
        (clips.classes[:8] + 1) % 4, clips.events[:8], clips.positions[:8], CFG
    )[:, :, 8:]
    assert {d.reason for d in detect_video(video)} == {"object colour changes between frames"}
    first = render_audio(clips.classes[:8], clips.events[:8, :1], CFG)
    second = render_audio((clips.classes[:8] + 1) % 4, clips.events[:8, 1:], CFG)
    assert {d.reason for d in detect_audio(first + second)} == {"events have different pitches"}


def test_video_detector_rejects_frames_that_do_not_bounce(clips):
    """Frames in another order keep the contacts but not the bounce's arcs."""
    from mmdisco.world.detectors import TRAJECTORY_TOL
    from mmdisco.world.generator import bounce_heights

    video = clips.video[:16].clone()
    heights = bounce_heights(clips.events[:16], CFG)
    # Swap one airborne frame with another airborne frame of a clearly different height.
    rejected = 0
    for i in range(16):
        air = [k for k in range(16) if heights[i, k] > 0]
        a, b = max(air, key=lambda k: heights[i, k]), min(air, key=lambda k: heights[i, k])
        if heights[i, a] - heights[i, b] <= TRAJECTORY_TOL:
            continue
        video[i, :, [a, b]] = video[i, :, [b, a]]
        det = detect_video(video[i : i + 1])[0]
        assert not det.valid and "a bounce has" in det.reason, det
        rejected += 1
    assert rejected >= 12


def test_detectors_name_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, 3, 16, 16, 16\)"):
        detect_video(torch.zeros(2, 3, 8, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 32000\)"):
        detect_audio(torch.zeros(2, 16000))


def test_match_events_is_one_to_one_within_a_frame():
    assert match_events((1, 5), (2, 9)) == 1
    assert match_events((4, 5), (5,)) == 1
    assert match_events((1, 3), (2, 4)) == 2
    assert match_events((1, 3), (3, 5), tolerance=0) == 1
    assert match_events((), (3,)) == 0


def test_evaluate_real_pairs_is_perfect(clips):
    metrics = evaluate(clips.video, clips.audio, reference_clips=clips)
    assert metrics["semantic"] == metrics["temporal"] == 1.0
    assert metrics["validity_audio"] == metrics["validity_video"] == 1.0
    assert metrics["diversity"] == 1.0  # the clips' own labels are the reference
    exact = evaluate(clips.video, clips.audio)
    assert 0.9 < exact["diversity"] < 1.0  # finite-sample histograms vs the exact ones


def test_evaluate_shuffled_pairs_is_near_chance(clips):
    perm = torch.randperm(len(clips), generator=torch.Generator().manual_seed(0))
    metrics = evaluate(clips.video, clips.audio[perm])
    chance = chance_levels()
    assert chance["semantic"] == 0.25
    assert metrics["semantic"] == pytest.approx(chance["semantic"], abs=0.07)
    assert metrics["temporal"] == pytest.approx(chance["temporal"], abs=0.07)
    assert metrics["temporal"] < 0.6 and metrics["validity_audio"] == 1.0


def test_evaluate_scores_invalid_and_collapsed_samples(clips):
    video = clips.video[:40].clone()
    video[:20] = -1  # blank: invalid
    m = evaluate(video, clips.audio[:40])
    assert m["validity_video"] == 0.5 and m["semantic"] == 0.5 and m["temporal"] == 0.5
    same = clips.video[:1].expand(40, -1, -1, -1, -1)
    collapsed = evaluate(same, clips.audio[:1].expand(40, -1))
    assert collapsed["class_tv_video"] == pytest.approx(0.75)  # one class of four
    cls_hist, ev_hist = data_histograms(CFG)
    assert cls_hist.sum() == pytest.approx(1) and ev_hist.sum() == pytest.approx(1)
    assert ev_hist[0] == 0 and ev_hist[-1] == 0  # events never on the first or last frame
