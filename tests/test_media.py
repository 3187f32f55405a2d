"""mp4 (H.264 + AAC) and wav round trips: frames, audio alignment, duration, errors."""

from __future__ import annotations

import re
from fractions import Fraction
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch

from mmdisco.media import (
    frames_to_video,
    load_wav,
    place_audio,
    read_mp4,
    save_wav,
    to_uint8_frames,
    write_mp4,
)
from mmdisco.world import detect_audio, detect_video, generate_clips

SR = 16000
ONE_MS = SR // 1000


@pytest.mark.parametrize("click", [0, 4321, 12345, 31990])
def test_audio_lines_up_within_one_ms(tmp_path, click):
    audio = np.zeros(2 * SR, np.float32)
    audio[click] = 0.9
    path = write_mp4(tmp_path / "c.mp4", np.zeros((16, 16, 16, 3), np.uint8), 8, audio, SR)
    clip = read_mp4(path)
    assert clip.sample_rate == SR and clip.audio.shape == (2 * SR,)  # duration exact
    assert abs(int(np.abs(clip.audio).argmax()) - click) <= ONE_MS


def test_world_clip_round_trip(tmp_path):
    clips = generate_clips(4, seed=0)
    videos, audios = [], []
    for i in range(len(clips)):
        path = tmp_path / f"clip{i}.mp4"
        write_mp4(path, clips.video[i], fps=8, audio=clips.audio[i], sample_rate=SR, upscale=4)
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
            assert (stream.width, stream.height) == (64, 64)
            assert container.streams.audio[0].codec_context.name == "aac"
        clip = read_mp4(path, downscale=4)
        assert clip.frames.shape == (16, 16, 16, 3) and clip.fps == 8.0
        diff = np.abs(clip.frames.astype(int) - to_uint8_frames(clips.video[i]).astype(int))
        assert diff.mean() < 3 and diff.max() <= 32
        lag = np.correlate(clip.audio, clips.audio[i].numpy(), "full").argmax() - (2 * SR - 1)
        assert abs(lag) <= ONE_MS
        videos.append(frames_to_video(clip.frames))
        audios.append(torch.from_numpy(clip.audio))
    for dets in (detect_video(torch.stack(videos)), detect_audio(torch.stack(audios))):
        assert [d.cls for d in dets] == clips.classes.tolist()
        assert [d.events for d in dets] == [tuple(e) for e in clips.events.tolist()]


def test_priming_samples_before_zero_are_dropped():
    """Frames are placed by pts whatever the decoder did: negative-pts priming is cut."""

    def frame(values, pts):
        f = av.AudioFrame.from_ndarray(np.asarray(values, np.float32)[None], "flt", "mono")
        f.sample_rate, f.pts, f.time_base = SR, pts, Fraction(1, SR)
        return f

    stream = SimpleNamespace(
        codec_context=SimpleNamespace(sample_rate=SR),
        start_time=0,
        time_base=Fraction(1, SR),
        duration=6,
    )
    out = place_audio([frame([9, 9, 1, 2], -2), frame([3, 4, 5, 6], 2)], stream)
    assert out.tolist() == [1, 2, 3, 4, 5, 6]


def test_write_is_atomic_and_checks_input(tmp_path):
    path = tmp_path / "v.mp4"
    write_mp4(path, np.zeros((4, 16, 16, 3), np.uint8), 8)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="even frame sizes"):
        write_mp4(path, np.zeros((4, 15, 15, 3), np.uint8), 8)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        write_mp4(path, np.zeros((4, 16, 16), np.uint8), 8)
    with pytest.raises(ValueError, match=r"audio must have shape \(L,\)"):
        write_mp4(path, np.zeros((4, 16, 16, 3), np.uint8), 8, np.zeros((2, 10)))
    with pytest.raises(ValueError, match=r"upscaled 600x exceed H\.264's 8192 pixels a side"):
        write_mp4(path, np.zeros((4, 16, 16, 3), np.uint8), 8, upscale=600)
    assert path.read_bytes() == before


def test_read_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.mp4"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_mp4(missing)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError, match=re.escape(str(junk))):
        read_mp4(junk)
    silent = write_mp4(tmp_path / "silent.mp4", np.zeros((4, 16, 16, 3), np.uint8), 8)
    with pytest.raises(ValueError, match=re.escape(f"{silent}: no audio track")):
        read_mp4(silent)
    clip = read_mp4(silent, require_audio=False)
    assert clip.audio is None and clip.frames.shape == (4, 16, 16, 3)


def test_wav_round_trip(tmp_path):
    audio = generate_clips(1, seed=0).audio[0]
    path = save_wav(tmp_path / "a.wav", audio, SR)
    data, rate = load_wav(path)
    assert rate == SR and data.shape == (2 * SR,)
    assert np.abs(data - audio.numpy()).max() < 1 / 2**14
    nope, bad = tmp_path / "nope.wav", tmp_path / "bad.wav"
    with pytest.raises(FileNotFoundError, match=re.escape(str(nope))):
        load_wav(nope)
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        load_wav(bad)


# ---------------------------------------------------------------- long files: decode the window


LONG_FPS, LONG_SR, LONG_SECONDS = 4, 8000, 600


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    """A 10-minute file: frame i has red level i % 256, and a tone plays throughout."""
    n = LONG_SECONDS * LONG_FPS
    frames = np.zeros((n, 32, 32, 3), np.uint8)
    frames[..., 0] = (np.arange(n) % 256)[:, None, None]
    t = np.arange(LONG_SECONDS * LONG_SR) / LONG_SR
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + (t // 60) % 2)).astype(np.float32) / 2
    path = tmp_path_factory.mktemp("long") / "ten_minutes.mp4"
    return write_mp4(path, frames, LONG_FPS, audio, sample_rate=LONG_SR, crf=30)


def _peak_bytes(fn):
    """Peak memory of ``fn()`` as tracemalloc sees it (numpy arrays included)."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_clip_of_a_long_file_costs_what_the_clip_costs(long_file):
    from mmdisco.data import ClipItem, ClipSpec, read_clip

    spec = ClipSpec(duration=2.0, fps=4.0, size=32, sample_rate=LONG_SR)
    clip_bytes = 4 * (spec.num_samples + 3 * spec.num_frames * spec.size**2)
    whole, whole_peak = _peak_bytes(lambda: read_mp4(long_file))
    assert whole.frames.shape[0] == LONG_SECONDS * LONG_FPS
    for start in (1.0, 300.0, 590.0):  # near the start, the middle and the end
        clip, peak = _peak_bytes(lambda s=start: read_clip(ClipItem(long_file, start=s), spec))
        # The same pixels and samples as decoding the whole file, at a cost set by the clip.
        first = round(start * LONG_FPS)
        want = whole.frames[first : first + spec.num_frames].astype(np.float32) / 127.5 - 1
        got = clip.video.permute(1, 2, 3, 0).numpy()
        assert np.abs(got - want).max() <= 1 / 127.5 + 1e-6
        lo = round(start * LONG_SR)
        np.testing.assert_allclose(clip.audio.numpy(), whole.audio[lo : lo + spec.num_samples],
                                   atol=2e-3)  # fmt: skip
        assert peak < 10 * clip_bytes < whole_peak / 10, (start, peak, whole_peak)
    window, peak = _peak_bytes(lambda: read_mp4(long_file, start=300.0, duration=2.0))
    assert window.frames.shape[0] == 8 and window.audio.shape == (2 * LONG_SR,)
    assert peak < whole_peak / 20
    diff = window.frames.astype(int) - whole.frames[1200:1208]
    assert np.abs(diff).max() <= 1  # the same H.264 frames, decoded after a seek
