"""End-to-end `mmdisco evaluate` on tiny synthesised directories, plus weight conversion."""

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import soundfile
import torch
from typer.testing import CliRunner

from mmdisco.cli import app
from mmdisco.metrics import convert as convert_mod
from mmdisco.metrics.base import load_weights
from mmdisco.metrics.evaluate import EvalOptions, evaluate_directories
from mmdisco.metrics.io import load_media
from mmdisco.metrics.offline import OfflineAudioExtractor
from mmdisco.metrics.vggish import VGGish, VGGishConfig

FPS, SR = 8, 16000


def _clip(events, seed):
    """32 frames at 8 fps: a square jumping at ``events`` and clicks at the same times."""
    rng = np.random.default_rng(seed)
    video = np.zeros((32, 64, 64, 3), np.uint8)
    pos = 8
    for i in range(32):
        if i in events:
            pos = 40 if pos == 8 else 8
        video[i, pos : pos + 16, pos : pos + 16] = (255, 200 - 20 * seed, 50)
    audio = np.zeros(4 * SR, np.float32)
    n = int(0.02 * SR)
    for k in events:
        s = int(k / FPS * SR)
        audio[s : s + n] += 0.8 * rng.standard_normal(n) * np.exp(-np.arange(n) / 64.0)
    return video, audio


def _write_mp4(path, video, audio):
    with av.open(str(path), "w") as container:
        vs = container.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        # One encoder thread: x264's threaded output depends on scheduling, and optical-flow
        # peaks on the decoded frames must not.
        vs.options = {"threads": "1"}
        aus = container.add_stream("aac", rate=SR)
        aus.layout = "mono"
        for frame in video:
            container.mux(vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(vs.encode())
        frame = av.AudioFrame.from_ndarray(audio[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = SR, 0
        container.mux(aus.encode(frame))
        container.mux(aus.encode())


def _write_folder(path, video, audio):
    path.mkdir()
    for i, frame in enumerate(video):
        cv2.imwrite(str(path / f"{i:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    soundfile.write(str(path / "audio.wav"), audio, SR)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    gen, ref = root / "generated", root / "reference"
    gen.mkdir()
    ref.mkdir()
    for i in range(4):
        events = (4 + i, 12, 20 + i % 2, 27)
        _write_mp4(gen / f"s{i}.mp4", *_clip(events, i))
        _write_folder(ref / f"r{i}", *_clip(events, i + 4))
    (gen / "broken.mp4").write_bytes(b"\x00not an mp4 at all")
    return gen, ref


def test_readers_round_trip(dirs):
    gen, ref = dirs
    item = load_media(gen / "s0.mp4")
    video, audio = _clip((4, 12, 20, 27), 0)
    assert item.video.frames.shape == video.shape and item.video.fps == FPS
    assert np.abs(item.video.frames.astype(int) - video).mean() < 4
    samples = item.audio.samples.reshape(-1)
    assert item.audio.sample_rate == SR and samples.shape[0] >= audio.shape[0]
    # The first click starts at 0.5 s; the decoded audio must line up within 5 ms.
    onset = np.argmax(np.abs(samples) > 0.2) / SR
    assert abs(onset - 0.5) < 0.005
    folder = load_media(ref / "r0", fps=FPS)
    assert folder.video.frames.shape == video.shape and folder.audio.sample_rate == SR


def test_cli_offline_writes_labelled_report(dirs, tmp_path):
    gen, ref = dirs
    out = tmp_path / "out"
    args = ["evaluate", "--generated", str(gen), "--reference", str(ref), "--out", str(out)]
    args += ["--metrics", "fad,fvd,kvd,av_align", "--kvd-subsets", "5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "metrics.json").read_text())
    m = report["metrics"]
    assert set(m) == {"fad", "fvd", "kvd", "av_align", "av_align_reference"}
    assert m["fad"] > 0 and m["fvd"] > 0
    assert m["av_align"] == pytest.approx(1.0) and m["av_align_reference"] == pytest.approx(1.0)
    assert report["comparable_with_published"] is False
    assert report["extractors"]["audio"]["name"] == "offline-logmel"
    assert report["counts"]["generated"] == {
        "ok": 4,
        "skipped": 1,
        "audio_from_sibling_file": 0,
        "used": {
            "audio": {"samples": 4, "feature_rows": 4},
            "video": {"samples": 4, "feature_rows": 4},
            "av_align": 4,
        },
        "skipped_per_metric": {},
    }
    info = report["metric_info"]
    assert info["av_align"]["version"] == "2025-02-13"
    assert info["av_align"]["options"]["matching"] == "one_to_one"
    assert info["kvd"]["reference"] == "researchmm/MM-Diffusion polynomial_mmd"
    (skipped,) = report["skipped"]
    assert skipped["path"].endswith("broken.mp4") and skipped["reason"]
    table = (out / "metrics.md").read_text()
    assert "| fvd |" in table and "**NO**" in table and "1 skipped" in table
    assert "broken.mp4" in result.output


def test_cli_rejects_pretrained_without_weights(dirs, tmp_path):
    gen, ref = dirs
    args = ["evaluate", "--generated", str(gen), "--reference", str(ref)]
    args += ["--out", str(tmp_path), "--metrics", "fad", "--extractor", "pretrained"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "--vggish-weights" in str(result.output) + str(
        result.exception
    )


class _ToyEmbedder:
    def embed(self, modality, inputs):
        if modality == "text":
            return torch.tensor([[1.0, float(len(t))] for t in inputs])
        flat = inputs.flatten(1)
        return torch.stack([flat.mean(1), flat.std(1)], -1)


def test_imagebind_scores_through_directories(dirs):
    gen, _ = dirs
    captions = {f"s{i}": "x" * (i + 1) for i in range(4)}
    options = EvalOptions(metrics=("ib",), progress=False)
    report = evaluate_directories(
        gen, None, options, embedding_model=_ToyEmbedder(), captions=captions
    )
    assert set(report["metrics"]) == {"ib_av", "ib_tv", "ib_ta"}
    assert report["counts"]["generated"]["ok"] == 4
    assert all(-1 <= v <= 1 for v in report["metrics"].values())
    with pytest.raises(ValueError, match="need --reference"):
        evaluate_directories(gen, None, EvalOptions(metrics=("fad",)))


def test_convert_state_dict(tmp_path, monkeypatch):
    tiny = VGGishConfig(channels=(2, 4, 4, 8), hidden=16, embedding=8)
    monkeypatch.setitem(convert_mod.ARCHITECTURES, "vggish", lambda: VGGish(tiny))
    src = VGGish(tiny)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    state["pproc._pca_matrix"] = torch.zeros(8, 8)  # torchvggish's PCA params are dropped
    torch.save(state, tmp_path / "ckpt.pth")
    dst = convert_mod.convert("vggish", tmp_path / "ckpt.pth", tmp_path / "vggish.safetensors")
    loaded = load_weights(VGGish(tiny), dst)
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    with pytest.raises(ValueError, match=r"arch: must be one of .* got 'resnet'"):
        convert_mod.convert("resnet", tmp_path / "ckpt.pth", tmp_path / "x.safetensors")


def test_unusable_entries_are_named_and_counted(dirs, tmp_path):
    """NaN audio, dangling and looping links and folders named like videos are skipped with
    their reasons and counted, never silently ignored and never fatal."""
    gen, _ = dirs
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("s0.mp4", "s1.mp4"):
        (mixed / name).symlink_to(gen / name)
    audio = np.zeros(SR, np.float32)
    audio[100] = np.nan
    soundfile.write(str(mixed / "nan.wav"), audio, SR, subtype="FLOAT")
    (mixed / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (mixed / "loop.mp4").symlink_to(mixed / "loop.mp4")
    (mixed / "folder.mp4").mkdir()
    report = evaluate_directories(mixed, None, EvalOptions(metrics=("av_align",), progress=False))
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert report["counts"]["generated"]["ok"] == 2
    assert report["counts"]["generated"]["skipped"] == 4 == len(reasons)
    assert reasons["nan.wav"] == "ValueError: audio has NaN or infinite samples (nan.wav)"
    assert reasons["gone.mp4"].startswith("ValueError: dangling symbolic link")
    assert reasons["loop.mp4"] == "ValueError: symbolic link loop"
    assert "folder named like a media file" in reasons["folder.mp4"]


def test_non_finite_features_skip_the_sample_and_name_it(dirs):
    gen, ref = dirs

    class NaNOnThirdSample(OfflineAudioExtractor):
        calls = 0

        def __call__(self, media):
            self.calls += 1
            out = super().__call__(media)
            return out * np.nan if self.calls == 3 else out

    options = EvalOptions(metrics=("fad",), progress=False)
    report = evaluate_directories(gen, ref, options, NaNOnThirdSample(), None)
    bad = [s for s in report["skipped"] if "not finite" in s["reason"]]
    assert [Path(s["path"]).name for s in bad] == ["s2.mp4"]  # broken.mp4 never reaches it
    assert bad[0]["reason"] == "ValueError: audio features are not finite (NaN or infinity)"
    counts = report["counts"]["generated"]
    assert (counts["ok"], counts["skipped"]) == (4, 1)  # loaded; broken.mp4 was not
    assert counts["used"]["audio"]["samples"] == 3 and counts["skipped_per_metric"] == {"audio": 1}
    assert bad[0]["metric"] == "audio"
    assert np.isfinite(report["metrics"]["fad"])


def test_max_seconds_bounds_what_a_long_file_costs(tmp_path):
    """Memory follows the evaluated window, not the file: a 60 s file read for 2 s."""
    import tracemalloc

    folder = tmp_path / "long"
    folder.mkdir()
    video, audio = _clip((4, 12, 20, 27), 0)
    _write_mp4(folder / "long.mp4", np.tile(video, (15, 1, 1, 1)), np.tile(audio, 15))
    evaluate_directories(
        folder, None, EvalOptions(metrics=("av_align",), progress=False, max_seconds=0.5)
    )
    peaks = {}  # measured after a first run, which imports and compiles what the metric uses
    for seconds in (2.0, None):
        options = EvalOptions(metrics=("av_align",), progress=False, max_seconds=seconds)
        tracemalloc.start()
        report = evaluate_directories(folder, None, options)
        peaks[seconds] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert (
            report["counts"]["generated"]["ok"] == 1 and report["options"]["max_seconds"] == seconds
        )
    assert peaks[2.0] * 10 < peaks[None], peaks
