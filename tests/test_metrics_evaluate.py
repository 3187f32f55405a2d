"""evaluate_directories: sibling wav files, per-metric skips, name pairing, protocols, GT row."""

import numpy as np
import pytest
import torch

from mmdisco.media import save_wav, write_mp4
from mmdisco.metrics.av_align import AVAlignConfig
from mmdisco.metrics.base import VideoClip
from mmdisco.metrics.desync import DeSync
from mmdisco.metrics.evaluate import EvalOptions, _reference_window, evaluate_directories
from mmdisco.metrics.offline import OfflineAudioExtractor, OfflineVideoExtractor
from mmdisco.metrics.panns import PANNsConfig, PANNsExtractor
from mmdisco.metrics.protocols import PROTOCOLS, get_protocol

FPS, SR = 8, 16000
EVENTS = (3, 9, 14)  # frames of a 20-frame (2.5 s) clip


def clip(seed, events=EVENTS, frames=20):
    rng = np.random.default_rng(seed)
    video = np.zeros((frames, 32, 32, 3), np.uint8)
    pos = 2
    for i in range(frames):
        if i in events:
            pos = 18 if pos == 2 else 2
        video[i, pos : pos + 12, pos : pos + 12] = (255, 40 * seed % 255, 60)
    audio = np.zeros(frames * SR // FPS, np.float32)
    n = int(0.02 * SR)
    for k in events:
        s = int(k / FPS * SR)
        audio[s : s + n] += 0.8 * rng.standard_normal(n) * np.exp(-np.arange(n) / 64.0)
    return video, audio


def opts(*metrics, **kw):
    return EvalOptions(metrics=metrics, progress=False, **kw)


@pytest.fixture(scope="module")
def wav_dirs(tmp_path_factory):
    """s0: an mp4 whose AAC track is silent, with the real audio in s0.wav; s1: no audio."""
    root = tmp_path_factory.mktemp("wav")
    video, audio = clip(0)
    write_mp4(root / "s0.mp4", video, FPS, np.zeros_like(audio), SR)
    save_wav(root / "s0.wav", audio, SR)
    write_mp4(root / "s1.mp4", *clip(1)[:1], FPS)
    return root


def test_sibling_wav_replaces_the_aac_track(wav_dirs):
    report = evaluate_directories(wav_dirs, None, opts("av_align"))
    assert report["metrics"]["av_align"] == pytest.approx(1.0)  # onsets from the wav
    counts = report["counts"]["generated"]
    assert counts["ok"] == 2 and counts["audio_from_sibling_file"] == 1  # s0.wav is no sample
    without = evaluate_directories(wav_dirs, None, opts("av_align", prefer_sibling_audio=False))
    assert without["metrics"]["av_align"] == pytest.approx(0.0)  # silent AAC: no onset
    assert without["counts"]["generated"]["ok"] == 3  # s0.wav is now a sample of its own


def test_missing_audio_is_a_counted_skip_for_that_metric_only(wav_dirs):
    report = evaluate_directories(
        wav_dirs, wav_dirs, opts("fvd", "av_align"), video_extractor=OfflineVideoExtractor()
    )
    counts = report["counts"]["generated"]
    assert counts["used"]["video"]["samples"] == 2  # s1 still counts for FVD
    assert counts["used"]["av_align"] == 1
    assert counts["skipped_per_metric"] == {"av_align": 1}
    (skip,) = [s for s in report["skipped"] if s["set"] == "generated"]
    assert skip["path"].endswith("s1.mp4") and skip["metric"] == "av_align"
    assert "no audio track" in skip["reason"]


class _ZeroOffsetSync:
    def extract_vfeats(self, vis):
        return torch.zeros(vis.shape[0], vis.shape[1], 8, 4)

    def extract_afeats(self, aud):
        return torch.zeros(aud.shape[0], aud.shape[1], 6, 4)

    def compare_v_a(self, vis, aud):
        logits = torch.zeros(1, 21)
        logits[0, 10] = 1.0
        return logits


def test_clip_shorter_than_the_window_is_skipped_and_named(tmp_path):
    video, audio = clip(0)
    write_mp4(tmp_path / "short.mp4", video, FPS, audio, SR)
    video, audio = clip(1, frames=72)  # 9 s
    write_mp4(tmp_path / "long.mp4", video, FPS, audio, SR)
    report = evaluate_directories(
        tmp_path, None, opts("desync", ground_truth=False), desync=DeSync(_ZeroOffsetSync())
    )
    assert report["metrics"]["desync"] == pytest.approx(0.0)
    (skip,) = report["skipped"]
    assert skip["path"].endswith("short.mp4") and "shorter than DeSync's 8.0 s" in skip["reason"]
    only_short = tmp_path / "only"
    only_short.mkdir()
    (tmp_path / "short.mp4").rename(only_short / "short.mp4")
    report = evaluate_directories(
        only_short, None, opts("desync"), desync=DeSync(_ZeroOffsetSync())
    )
    assert report["metrics"]["desync"] is None  # no usable clip: None, counted, never NaN
    assert report["counts"]["generated"]["skipped_per_metric"] == {"desync": 1}


@pytest.fixture(scope="module")
def named_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("named")
    gen, ref = root / "gen", root / "ref"
    for i in range(4):
        video, audio = clip(i)
        write_mp4(gen / f"s{i}.mp4", video, FPS, audio, SR)
        # The reference holds audio only, named s0..s2 and r3: s3 has no partner for KL.
        save_wav(ref / f"{'s' if i < 3 else 'r'}{i}.wav", clip(i + 4)[1], SR)
    return gen, ref


def test_kl_pairs_by_name_and_counts_the_unpaired(named_dirs):
    gen, ref = named_dirs
    panns = PANNsExtractor(
        config=PANNsConfig(channels=(4, 4, 8, 8, 8, 16), embedding=16, classes=5)
    )
    report = evaluate_directories(gen, ref, opts("fd_panns", "kl_panns"), panns=panns)
    assert report["metrics"]["kl_panns"] >= 0 and report["metrics"]["fd_panns"] >= 0
    unpaired = [s for s in report["skipped"] if s["metric"] == "kl_panns"]
    assert [s["path"] for s in unpaired] == ["s3"]
    assert report["metric_info"]["kl_panns"]["options"]["audio_input"] == "av_benchmark"
    with pytest.raises(ValueError, match="IS needs at least 10 logit rows"):
        evaluate_directories(gen, ref, opts("is_panns"), panns=panns)
    empty = ref.parent / "other"
    empty.mkdir()
    save_wav(empty / "x.wav", clip(9)[1], SR)
    with pytest.raises(ValueError, match="none of the 4 generated names"):
        evaluate_directories(gen, empty, opts("kl_panns"), panns=panns)


def test_unequal_set_sizes_and_protocol_deviations_are_reported(named_dirs):
    gen, ref = named_dirs
    (ref / "extra.wav").write_bytes((ref / "s0.wav").read_bytes())
    options = opts("fad", protocol=get_protocol("mmdisco-t2av-vggsound"))
    report = evaluate_directories(gen, ref, options, audio_extractor=OfflineAudioExtractor())
    warnings = report["warnings"]
    assert any("4 generated vs 5 reference samples" in w for w in warnings)
    assert any("uses 2048 generated samples, found 4" in w for w in warnings)
    assert report["protocol"]["name"] == "mmdisco-t2av-vggsound"
    (ref / "extra.wav").unlink()


def test_ground_truth_row_on_the_reference_set(named_dirs):
    gen, _ = named_dirs
    report = evaluate_directories(gen, gen, opts("av_align"))
    assert report["metrics"]["av_align"] == pytest.approx(1.0)
    assert report["metrics"]["av_align_reference"] == pytest.approx(1.0)
    report = evaluate_directories(gen, gen, opts("av_align", ground_truth=False))
    assert "av_align_reference" not in report["metrics"]


def test_stylegan_v_reference_window_is_seeded_and_in_range():
    frames = np.arange(40)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    clip40 = VideoClip(frames.astype(np.uint8), 8.0)
    starts = []
    for seed in (0, 0, 1):
        window = _reference_window(opts("fvd", fvd_reference_clips="random", seed=seed))
        starts.append([int(window(clip40).frames[0, 0, 0, 0]) for _ in range(5)])
    assert starts[0] == starts[1] and starts[0] != starts[2]
    assert all(0 <= s <= 24 for s in starts[0] + starts[2])
    assert _reference_window(opts("fvd")) is None
    with pytest.raises(ValueError, match="fvd_reference_clips must be one of"):
        _reference_window(opts("fvd", fvd_reference_clips="middle"))


def test_protocols_are_complete():
    assert set(PROTOCOLS) == {
        "mmdisco-t2av-vggsound",
        "mmdisco-t2av-landscape",
        "mmdisco-landscape",
        "mmdisco-aist",
        "av-benchmark",
    }
    vgg = get_protocol("mmdisco-t2av-vggsound")
    assert AVAlignConfig.version(vgg.av_align_version).matching == "one_to_many"
    assert vgg.onset_spacing == 0.096 and vgg.num_samples == 2048
    with pytest.raises(ValueError, match="unknown protocol 'vggsound'"):
        get_protocol("vggsound")


def test_cli_protocol_and_av_align_flags(named_dirs, tmp_path):
    import json

    from typer.testing import CliRunner

    from mmdisco.cli import app

    gen, _ = named_dirs
    args = ["evaluate", "--generated", str(gen), "--out", str(tmp_path / "a")]
    result = CliRunner().invoke(
        app, [*args, "--protocol", "mmdisco-t2av-vggsound", "--metrics", "av_align"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "a" / "metrics.json").read_text())
    info = report["metric_info"]["av_align"]
    assert info["version"] == "2023-10-26" and info["options"]["min_onset_spacing"] == 0.096
    assert "uses 2048 generated samples, found 4" in result.output
    args[-1] = str(tmp_path / "b")
    result = CliRunner().invoke(app, [*args, "--metrics", "av_align", "--flow-threshold", "0.5"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert report["metric_info"]["av_align"]["version"] == "custom"
    assert report["metric_info"]["av_align"]["options"]["flow_threshold"] == 0.5
