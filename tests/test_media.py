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
    _place_audio,
    frames_to_video,
    load_wav,
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
    out = _place_audio([frame([9, 9, 1, 2], -2), frame([3, 4, 5, 6], 2)], stream)
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
