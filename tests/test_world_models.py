"""The synthetic world's base models: codec, persistence, shipped weights, training, sampling."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file
from typer.testing import CliRunner

from mmdisco.cli import app
from mmdisco.diffusion import to_epsilon
from mmdisco.world import detect_audio, evaluate, generate_clips
from mmdisco.world.models import (
    ASSETS_DIR,
    BandSpectrogram,
    SpectrogramConfig,
    WorldAudioModel,
    WorldVideoModel,
    load_world_models,
    sample_world,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clips():
    return generate_clips(24, seed=123)


@pytest.fixture(scope="module")
def shipped():
    return load_world_models()


def test_band_spectrogram_round_trip_keeps_class_and_onsets(clips):
    codec = BandSpectrogram(SpectrogramConfig())
    spec = codec.encode(clips.audio)
    assert spec.shape == (24, 32, 64)
    assert spec.min() >= -1.0 and spec.max() <= 1.0
    audio = codec.decode(spec)
    assert audio.shape == clips.audio.shape and audio.abs().max() <= 1.0
    detections = detect_audio(audio)
    for det, cls, events in zip(detections, clips.classes, clips.events, strict=True):
        assert det.valid, det.reason
        assert det.cls == int(cls)
        assert det.events == tuple(events.tolist())


def test_band_spectrogram_encodes_a_tone_in_its_band_at_its_level():
    codec = BandSpectrogram(SpectrogramConfig())
    band = 10
    t = torch.arange(32000, dtype=torch.float64) / 16000
    tone = (0.5 * torch.sin(2 * torch.pi * codec.centres[band] * t)).float()[None]
    spec = codec.encode(tone)[0, :, 8:-8]
    assert int(spec.mean(1).argmax()) == band
    # 0.5 amplitude is -6.02 dB; the scale maps [-80, 0] dB to [-1, 1].
    expected = (-20 * torch.log10(torch.tensor(2.0)) + 80) / 80 * 2 - 1
    assert torch.allclose(spec[band], expected.expand_as(spec[band]), atol=0.02)
    # Decoding re-creates the tone at the same level (RMS of a sine is A / sqrt(2)).
    rms = codec.decode(codec.encode(tone))[0, 4000:-4000].pow(2).mean().sqrt()
    assert rms == pytest.approx(0.5 / 2**0.5, rel=0.05)


def test_codec_rejects_wrong_shapes():
    codec = BandSpectrogram(SpectrogramConfig())
    with pytest.raises(ValueError, match=r"audio must have shape \(N, 32000\)"):
        codec.encode(torch.zeros(2, 100))
    with pytest.raises(ValueError, match=r"spectrogram must have shape \(N, 32, 64\)"):
        codec.decode(torch.zeros(2, 16, 64))


@pytest.mark.parametrize("cls", [WorldAudioModel, WorldVideoModel])
def test_save_load_round_trip_gives_identical_predictions(cls, tmp_path):
    model = cls.from_config(seed=3)
    for p in model.net.parameters():  # the output layer starts at zero: make it matter
        p.data.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    x = torch.randn(2, *model.latent_shape(), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 900])
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = cls.from_pretrained(tmp_path)
    for key, value in model.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[key], value), key
    torch.testing.assert_close(loaded.predict(x, t), model.predict(x, t))
    assert loaded.predict(x, t).abs().sum() > 0
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == cls.__name__


def test_half_precision_weights_load_back_as_float32(tmp_path):
    model = WorldVideoModel.from_config(seed=3)
    model.save_pretrained(tmp_path, dtype=torch.float16)
    assert {t.dtype for t in load_file(tmp_path / "model.safetensors").values()} == {torch.float16}
    loaded = WorldVideoModel.from_pretrained(tmp_path)
    for k, p in loaded.net.state_dict().items():
        assert p.dtype == torch.float32
        assert torch.equal(p, model.net.state_dict()[k].half().float()), k


def test_from_pretrained_names_the_problem(tmp_path):
    WorldVideoModel.from_config().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="describes a 'WorldVideoModel', not a 'WorldAudioModel'"):
        WorldAudioModel.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        WorldVideoModel.from_pretrained(tmp_path)


def test_predict_checks_its_inputs():
    model = WorldAudioModel.from_config()
    with pytest.raises(ValueError, match=r"expects x_t of shape \(B, 32, 64\)"):
        model.predict(torch.zeros(1, 3, 16, 16, 16), torch.tensor(5))
    with pytest.raises(ValueError, match="unconditional"):
        model.predict(torch.zeros(1, 32, 64), torch.tensor(5), cond="a prompt")


def test_shipped_models_load_with_the_right_shapes(shipped):
    audio, video = shipped
    assert (audio.modality, video.modality) == ("audio", "video")
    assert audio.latent_shape() == (32, 64) and video.latent_shape() == (3, 16, 16, 16)
    for model in shipped:
        assert model.prediction_type == "sample"
        assert isinstance(model.make_scheduler(), DDPMScheduler)
        x = torch.randn(3, *model.latent_shape())
        eps = model.predict(x, torch.tensor(500))  # a scalar timestep broadcasts
        assert eps.shape == x.shape and torch.isfinite(eps).all()
    assert audio.decode(torch.zeros(2, 32, 64)).shape == (2, 32000)
    assert video.decode(torch.zeros(2, 3, 16, 16, 16)).shape == (2, 3, 16, 16, 16)
    # Two base models, the cascade's and the joint model (float16) and the pipeline's codebook
    # discriminator (float16 anchors, 9.4 MB) ship with the package: keep them in bounds.
    size = sum(p.stat().st_size for p in ASSETS_DIR.rglob("*") if p.is_file())
    assert size < 20 * 2**20


def test_shipped_models_denoise_real_clips_better_than_chance(shipped, clips):
    """At a mid noise level the trained epsilon error is well below that of predicting 0."""
    g = torch.Generator().manual_seed(0)
    for model, media in zip(shipped, (clips.audio, clips.video), strict=True):
        x0 = model.encode(media)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.full((len(x0),), 500)
        x_t = model.schedule.add_noise(x0, noise, t)
        alpha, sigma = model.schedule.alpha_sigma(t)
        eps = to_epsilon(model.predict(x_t, t), x_t, alpha, sigma, model.prediction_type)
        err = (eps - noise).pow(2).mean()
        assert err < 0.5 * noise.pow(2).mean(), model.modality


def test_sampled_batch_stays_on_the_data_range(shipped):
    audio, video = shipped
    a, v = sample_world(audio, video, batch_size=8, num_inference_steps=10, seed=0)
    assert a.shape == (8, 32, 64) and v.shape == (8, 3, 16, 16, 16)
    # Thresholded DPM-Solver++ keeps samples on the data's range (unclipped they diverge).
    assert a.abs().max() <= 1.0 + 1e-4 and v.abs().max() <= 1.0 + 1e-4
    metrics = evaluate(video.decode(v), audio.decode(a))
    assert set(metrics) >= {"validity_audio", "validity_video", "semantic", "temporal"}


def test_shipped_models_sample_valid_clips_of_every_class(shipped):
    """The shipped models alone produce clips the exact detectors accept (a random
    spectrogram or video is never valid), with the shipped sampler settings."""
    audio, video = shipped
    a, v = sample_world(audio, video, batch_size=16, num_inference_steps=25, seed=1)
    metrics = evaluate(video.decode(v), audio.decode(a))
    assert metrics["validity_audio"] >= 0.7 and metrics["validity_video"] >= 0.7, metrics
    # Independent sampling must spread over the classes (the demo relies on chance pairing).
    assert metrics["class_tv_audio"] < 0.5, metrics


def _train(tmp_path, name: str, seed: int):
    out = tmp_path / name
    result = CliRunner().invoke(
        app,
        [
            "train-base",
            "--modality",
            "video",
            "--out",
            str(out),
            "--steps",
            "3",
            "--seed",
            str(seed),
            "--batch-size",
            "4",
            "--clips-per-chunk",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def test_train_base_cli_is_reproducible_and_loadable(tmp_path):
    first, again, other = (
        _train(tmp_path, "a", 0),
        _train(tmp_path, "b", 0),
        _train(tmp_path, "c", 1),
    )
    w_first, w_again, w_other = (load_file(d / "model.safetensors") for d in (first, again, other))
    assert w_first.keys() == w_again.keys()
    assert all(torch.equal(w_first[k], w_again[k]) for k in w_first)
    assert any(not torch.equal(w_first[k], w_other[k]) for k in w_first)
    model = WorldVideoModel.from_pretrained(first)
    untrained = WorldVideoModel.from_config(model.config, seed=0)
    changed = [
        k
        for k, p in model.net.state_dict().items()
        if not torch.equal(p, untrained.net.state_dict()[k])
    ]
    assert changed, "three Adam steps must move the weights"
    assert model.config["training"]["steps"] == 3


def test_training_callback_can_stop_early_and_matches_a_shorter_run(tmp_path):
    """With a constant rate after warmup, a run stopped at step N equals an N-step run."""
    from mmdisco.world.train import TrainConfig, train_world_model

    cfg = TrainConfig(steps=4, batch_size=4, clips_per_chunk=16, warmup=2, decay=False)
    seen = []
    stopped = train_world_model(
        "video",
        cfg,
        progress=False,
        callback=lambda s, m: seen.append(s) or s >= 2,
        callback_every=1,
    )
    short = train_world_model("video", replace(cfg, steps=2), progress=False)
    assert seen == [1, 2] and stopped.config["training"]["steps"] == 2
    for k, p in stopped.net.state_dict().items():
        assert torch.equal(p, short.net.state_dict()[k]), k
