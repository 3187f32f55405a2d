"""DeSync protocol (av-benchmark) around a user-supplied Synchformer-interface model."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmdisco.metrics.base import AudioClip, VideoClip
from mmdisco.metrics.desync import (
    OFFSETS,
    WINDOW_SECONDS,
    DeSync,
    SyncModel,
    _resize_short_side_uint8,
    log_mel,
    mel_filters,
    preprocess_audio,
    preprocess_video,
    retime_indices,
)


def test_retiming_follows_ffmpegs_fps_filter():
    # 8 fps -> 25 fps: input frame i lands in slot floor(i * 25 / 8 + 0.5); slots keep the
    # latest frame at or before them (slots 0, 3, 6, 9, 13, ...).
    idx = retime_indices(16, 8.0, 25.0, 10)
    assert idx.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert retime_indices(50, 25.0, 25.0, 50).tolist() == list(range(50))
    assert retime_indices(100, 50.0, 25.0, 3).tolist() == [0, 2, 4]  # slot k: frames 2k-1, 2k


def test_mel_filters_are_torchaudios_htk_triangles():
    fb = mel_filters().numpy()  # (513, 128)
    hz = np.linspace(0, 8000, 513)
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    edges = 700 * (10 ** (np.linspace(mel(0), mel(8000), 130) / 2595) - 1)
    i = 40
    down = (hz - edges[i]) / (edges[i + 1] - edges[i])
    up = (edges[i + 2] - hz) / (edges[i + 2] - edges[i + 1])
    assert np.allclose(fb[:, i], np.maximum(0, np.minimum(down, up)), atol=1e-6)


def test_audio_segments_and_normalisation():
    rng = np.random.default_rng(0)
    audio = AudioClip((0.1 * rng.standard_normal(16000 * 8)).astype(np.float32), 16000)
    x = preprocess_audio(audio)
    assert x.shape == (24, 1, 128, 66)  # (128000 - 10240) // 5120 + 1 segments
    # The 66th frame is the zero padding of log-mel, normalised.
    assert torch.allclose(x[:, 0, :, 65], torch.full((24, 128), 4.2677393 / (2 * 4.5689974)))
    # Segment 3 starts at 3 x 5120 samples.
    seg = torch.from_numpy(audio.samples[3 * 5120 : 3 * 5120 + 10240])[None]
    assert torch.allclose(x[3], log_mel(seg), atol=1e-5)
    with pytest.raises(ValueError, match=r"shorter than DeSync's 8\.0 s"):
        preprocess_audio(AudioClip(audio.samples[: 16000 * 2], 16000))


def test_video_segments_crop_and_scale():
    frames = np.zeros((64, 90, 160, 3), np.uint8)  # 8 s at 8 fps
    frames[:, :, :, 0] = 255
    x = preprocess_video(VideoClip(frames, 8.0))
    assert x.shape == (24, 16, 3, 224, 224)  # 200 frames, 16 every 8
    assert torch.allclose(x[:, :, 0], torch.ones(1)) and torch.allclose(x[:, :, 1], -torch.ones(1))
    with pytest.raises(ValueError, match=r"shorter than DeSync's 8\.0 s"):
        preprocess_video(VideoClip(frames[:16], 8.0))


def _keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _fixed_point_weights(n_in: int, n_out: int) -> tuple[np.ndarray, int]:
    """Antialiased bicubic weights (Keys a = -0.5, support stretched by the downscale),
    normalised per output pixel in float64, then scaled to int16 with as many fraction bits
    as the largest weight allows and rounded half away from zero."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    rows = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo, hi = max(int(centre - 2 * stretch + 0.5), 0), min(int(centre + 2 * stretch + 0.5), n_in)
        w = _keys_cubic((np.arange(lo, hi) - centre + 0.5) / stretch)
        rows[i, lo:hi] = w / w.sum()
    bits = 0
    while bits < 22 and int(0.5 + rows.max() * (1 << (bits + 1))) < (1 << 15):
        bits += 1
    scaled = rows * (1 << bits)
    return np.trunc(scaled + np.where(scaled < 0, -0.5, 0.5)).astype(np.int64), bits


def _resize_axis_uint8(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    if x.shape[axis] == n_out:
        return x
    weights, bits = _fixed_point_weights(x.shape[axis], n_out)
    y = (np.moveaxis(x.astype(np.int64), axis, -1) @ weights.T + (1 << (bits - 1))) >> bits
    return np.moveaxis(np.clip(y, 0, 255), -1, axis).astype(np.uint8)


@pytest.mark.parametrize(
    ("shape", "short_side", "float_gap"), [((2, 3, 90, 160), 224, 10), ((2, 3, 120, 96), 40, 1)]
)
def test_video_resize_is_the_uint8_kernel_torchvision_runs(shape, short_side, float_gap):
    # torchvision's Resize on uint8 CPU frames runs torch's uint8 kernel: a horizontal then a
    # vertical pass, each with fixed-point weights, rounded and clipped to 0..255 in between.
    # The reference builds those weights in float64 and runs both passes in integers.
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, shape, np.uint8))
    ours = _resize_short_side_uint8(frames, short_side)
    h, w = ours.shape[-2:]
    assert min(h, w) == short_side
    reference = _resize_axis_uint8(_resize_axis_uint8(frames.numpy(), w, axis=3), h, axis=2)
    assert ours.dtype == torch.uint8
    assert np.abs(ours.numpy().astype(int) - reference).max() == 0
    # Resizing in float and rounding once is another answer, far off where an upscale
    # overshoots (noise frames to 224: up to 24 grey levels), by one level on a downscale.
    once = F.interpolate(frames.float(), size=(h, w), mode="bicubic", antialias=True)
    assert (once.round().clamp(0, 255) - ours.float()).abs().max() >= float_gap


class _StubSync:
    """Synchformer's interface; the 'predicted' offset class is read off the audio input."""

    def __init__(self, first: int, last: int):
        self.first, self.last, self.calls = first, last, []

    def extract_vfeats(self, vis):
        return torch.arange(vis.shape[1], dtype=torch.float32)[None, :, None, None].expand(
            1, -1, 8, 4
        )

    def extract_afeats(self, aud):
        return torch.arange(aud.shape[1], dtype=torch.float32)[None, :, None, None].expand(
            1, -1, 6, 4
        )

    def compare_v_a(self, vis, aud):
        segments = aud[0, :, 0, 0].long().tolist()
        self.calls.append(segments)
        logits = torch.zeros(1, 21)
        logits[0, self.first if segments[0] == 0 else self.last] = 1
        return logits


def test_desync_averages_the_first_and_last_window():
    assert isinstance(_StubSync(0, 0), SyncModel)
    assert pytest.approx(4.8) == WINDOW_SECONDS
    stub = _StubSync(first=13, last=4)  # offsets +0.6 s and -1.2 s
    video = VideoClip(np.zeros((64, 32, 32, 3), np.uint8), 8.0)
    audio = AudioClip(np.zeros(16000 * 8, np.float32), 16000)
    assert DeSync(stub)(video, audio) == pytest.approx((0.6 + 1.2) / 2, abs=1e-6)
    assert stub.calls == [list(range(14)), list(range(10, 24))]
    assert float(OFFSETS[10]) == 0.0
    with pytest.raises(ValueError, match=r"DeSync needs at least 4\.8 s"):
        DeSync(stub, seconds=4.0)


def recording_sync() -> _StubSync:
    """``--sync-model test_metrics_desync:recording_sync``: the stub, kept for inspection."""
    recording_sync.last = _StubSync(first=10, last=10)
    return recording_sync.last


def test_evaluate_sets_the_clip_length_by_option_or_protocol(tmp_path):
    from typer.testing import CliRunner

    from mmdisco.cli import app
    from mmdisco.media import write_mp4

    gen = tmp_path / "gen"
    gen.mkdir()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (40, 16, 16, 3), dtype=np.uint8)  # 5 s at 8 fps
    write_mp4(gen / "s0.mp4", frames, 8.0, 0.1 * rng.standard_normal(16000 * 5), 16000)
    base = ["evaluate", "--generated", str(gen), "--metrics", "desync", "--no-ground-truth"]
    base += ["--sync-model", "test_metrics_desync:recording_sync"]

    def run(*extra: str) -> dict:
        out = tmp_path / f"out{len(extra)}"
        result = CliRunner().invoke(app, [*base, "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        return json.loads((out / "metrics.json").read_text())

    # av-benchmark's 8 s (the default and the protocol's): a 5 s clip is a counted skip.
    for report in (run(), run("--protocol", "av-benchmark")):
        assert report["metrics"]["desync"] is None
        assert "shorter than DeSync's 8.0 s" in report["skipped"][0]["reason"]
    # 5 s: 14 segments, so both 4.8 s windows are the whole clip's segments 0-13.
    report = run("--desync-seconds", "5")
    assert report["metrics"]["desync"] == pytest.approx(0.0)
    assert recording_sync.last.calls == [list(range(14)), list(range(14))]
    bad = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "x"), "--desync-seconds", "3"])
    assert bad.exit_code == 2 and "--desync-seconds: must be >= 4.8, got 3.0" in bad.output
