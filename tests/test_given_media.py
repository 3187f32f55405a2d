"""Given clips for conditional generation: resampled where that is safe, refused (naming the
file and what was expected) where it would misalign; `mmdisco sample --given-*` end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mmdisco.cli import app
from mmdisco.errors import InputError, MissingInputError
from mmdisco.media import (
    MediaSpec,
    load_given,
    read_given_audio,
    read_given_video,
    read_mp4,
    save_wav,
    write_mp4,
)
from mmdisco.world import generate_clips

SPEC = MediaSpec(sample_rate=16000, num_samples=32000, fps=8.0, num_frames=16, height=16,
                 width=16)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def _peak_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[spectrum.argmax()])


def test_audio_at_another_rate_is_resampled_to_the_model_rate(tmp_path):
    path = save_wav(tmp_path / "tone.wav", _tone(2.0, 22050), 22050)
    audio = read_given_audio(path, SPEC)
    assert audio.shape == (32000,) and audio.dtype == np.float32
    assert _peak_hz(audio, 16000) == pytest.approx(440.0, abs=1.0)  # same pitch after resampling
    assert np.abs(audio[1000:-1000]).max() == pytest.approx(0.5, abs=0.01)


def test_audio_within_half_a_frame_is_trimmed_or_padded_at_the_end(tmp_path):
    long = read_given_audio(save_wav(tmp_path / "long.wav", _tone(2.05, 16000), 16000), SPEC)
    short = read_given_audio(save_wav(tmp_path / "short.wav", _tone(1.96, 16000), 16000), SPEC)
    assert long.shape == short.shape == (32000,)
    # The start is untouched: both begin with the same samples as the tone.
    np.testing.assert_allclose(long[:100], _tone(2.0, 16000)[:100], atol=1e-4)
    assert np.abs(short[-600:]).max() == 0.0  # the missing end is silence


@pytest.mark.parametrize(("seconds", "rate", "lasts"), [
    (1.5, 16000, "1.500 s (24000 samples at 16000 Hz)"),
    (2.5, 44100, "2.500 s (40000 samples at 16000 Hz)"),  # counted at the model's rate
    (600.0, 8000, "600.000 s (9600000 samples at 16000 Hz)"),  # refused from the header
])  # fmt: skip
def test_audio_of_the_wrong_length_is_refused_naming_the_file(tmp_path, seconds, rate, lasts):
    path = save_wav(tmp_path / "clip.wav", np.zeros(round(seconds * rate), np.float32), rate)
    with pytest.raises(InputError) as info:
        read_given_audio(path, SPEC)
    assert str(info.value) == (
        f"{path}: audio lasts {lasts}; the model makes 2.000 s clips (32000 samples)"
    )


def test_a_video_files_audio_track_of_the_wrong_length_is_refused(tmp_path):
    """A long file's track is read only up to a second past the model's duration."""
    path = write_mp4(tmp_path / "long.mp4", torch.zeros(3, 80, 16, 16), fps=8,
                     audio=np.zeros(160000, np.float32), sample_rate=16000)  # fmt: skip
    with pytest.raises(InputError) as info:
        read_given_audio(path, SPEC)
    assert str(info.value) == (
        f"{path}: audio lasts more than 3.000 s; the model makes 2.000 s clips (32000 samples)"
    )
    silent = write_mp4(tmp_path / "silent.mp4", torch.zeros(3, 16, 16, 16), fps=8)
    with pytest.raises(InputError, match=r"silent\.mp4: no audio track"):
        read_given_audio(silent, SPEC)


@pytest.fixture(scope="module")
def world_clips():
    return generate_clips(2, seed=5)


def test_video_written_upscaled_reads_back_at_the_model_size(tmp_path, world_clips):
    path = write_mp4(tmp_path / "v.mp4", world_clips.video[0], fps=8, audio=world_clips.audio[0],
                     sample_rate=16000, upscale=8)  # fmt: skip
    frames = read_given_video(path, SPEC)
    assert frames.shape == (16, 16, 16, 3) and frames.dtype == np.uint8
    video = load_given([path], "video", SPEC)
    assert video.shape == (1, 3, 16, 16, 16)
    assert (video[0] - world_clips.video[0]).abs().mean() < 0.03
    # The same file gives its sound too (audio-to-video from a video file's track).
    audio = load_given([path], "audio", SPEC)
    assert audio.shape == (1, 32000)


@pytest.mark.parametrize(
    ("fps", "frames", "size", "match"),
    [
        (10, 16, 16, r"v\.mp4: 10 fps; the model makes 8 fps clips"),
        (8, 12, 16, r"v\.mp4: 12 frames; the model makes 16 frames \(2 s at 8 fps\)"),
        (8, 40, 16, r"v\.mp4: more than 16 frames; the model makes 16 frames \(2 s at 8 fps\)"),
        (8, 16, 20, r"v\.mp4: frames of 20x20 pixels; the model makes 16x16 \(or an integer"),
    ],
)
def test_video_of_the_wrong_rate_length_or_size_is_refused(tmp_path, fps, frames, size, match):
    video = torch.zeros(3, frames, size, size)
    path = write_mp4(tmp_path / "v.mp4", video, fps=fps)
    with pytest.raises(InputError, match=match):
        read_given_video(path, SPEC)


def test_missing_or_unreadable_given_files_are_named(tmp_path):
    with pytest.raises(MissingInputError, match=r"nowhere\.mp4: no such file"):
        read_given_video(tmp_path / "nowhere.mp4", SPEC)
    with pytest.raises(MissingInputError, match=r"nowhere\.wav: no such file"):
        load_given([tmp_path / "nowhere.wav"], "audio", SPEC)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 10)
    with pytest.raises(InputError, match=r"garbage\.mp4: cannot read video file"):
        read_given_video(garbage, SPEC)
    noise = tmp_path / "noise.wav"
    noise.write_bytes(b"RIFF not a wav" * 10)
    with pytest.raises(InputError, match=r"noise\.wav: cannot read audio file"):
        read_given_audio(noise, SPEC)


def _tiny_discriminator(path):
    from mmdisco.world.recipes import build_discriminator

    disc = build_discriminator(
        "mlp", (32, 64), (3, 16, 16, 16), seed=0, video_pool=4, channels=8,
        channel_mult=(1, 2), norm_groups=4, time_embed_dim=16,
    )  # fmt: skip
    disc.save_pretrained(path)
    return path


def test_sample_cli_generates_audio_for_given_videos(tmp_path, world_clips):
    from mmdisco.demo import write_videos

    given = write_videos(tmp_path, "given", world_clips.audio, world_clips.video, range(2), 8)
    disc = _tiny_discriminator(tmp_path / "disc")
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(
            app,
            ["sample", "--discriminator", str(disc), "--out", str(tmp_path / "out"),
             "--given-video", str(given[0]), "--given-video", str(given[1]), "--steps", "2",
             "--scheduler", "ddpm", "--given-mode", "renoise"],
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output + repr(result.exception)
    written = sorted(p.name for p in (tmp_path / "out").glob("*.mp4"))
    assert written == ["guided_00.mp4", "guided_01.mp4", "independent_00.mp4",
                       "independent_01.mp4"]  # fmt: skip
    for i in range(2):  # the given video is kept; new audio came with it
        clip = read_mp4(tmp_path / "out" / f"guided_{i:02d}.mp4", downscale=8)
        original = read_mp4(given[i], downscale=8)
        assert np.abs(clip.frames.astype(int) - original.frames.astype(int)).mean() < 3
        assert clip.audio is not None and len(clip.audio) > 16000


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--given-audio", "b.wav"], "--given-audio: give either --given-video (video-to-audio) "
                                     "or --given-audio (audio-to-video), not both"),
        (["--n", "3"], "--n: 3 pairs but 1 --given-video files; give one per file"),
        (["--prompt", "a", "--prompt", "b"],
         "--prompt: 2 prompts but 1 --given-video files; give one per file"),
        (["--given-mode", "noisy"], "--given-mode: must be one of 'clean', 'renoise', got 'noisy'"),
        (["--n", "0"], "--n: must be >= 1, got 0"),
        ([], "{tmp}/a.mp4: no such file (--given-video)"),
    ],
)  # fmt: skip
def test_sample_cli_refuses_inconsistent_given_options(tmp_path, extra, message):
    """Refused in one line before any model is loaded (the files are checked last)."""
    result = CliRunner().invoke(
        app, ["sample", "--discriminator", "d", "--out", str(tmp_path), "--given-video",
              str(tmp_path / "a.mp4"), *extra],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.output == f"error: {message.format(tmp=tmp_path)}\n"


def test_sample_cli_names_a_bad_given_file(tmp_path):
    path = write_mp4(tmp_path / "short.mp4", torch.zeros(3, 10, 16, 16), fps=8)
    disc = _tiny_discriminator(tmp_path / "disc")
    result = CliRunner().invoke(
        app, ["sample", "--discriminator", str(disc), "--out", str(tmp_path / "o"),
              "--given-video", str(path)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.output == (
        f"error: {path}: 10 frames; the model makes 16 frames (2 s at 8 fps)\n"
    )
