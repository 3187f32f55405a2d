"""YAML experiment configs: the paper's presets and errors that name the offending field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmdisco.config import ConfigError, experiment_from_dict, load_experiment

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_presets_carry_the_release_settings():
    """Table 6 as the reference release runs it (tests/test_presets.py has the rest)."""
    a = load_experiment(CONFIGS / "audioldm_animatediff.yaml")
    assert (a.audio.adapter, a.video.adapter) == ("audioldm", "animatediff")
    assert (a.audio.cfg_scale, a.video.cfg_scale) == (2.5, 7.5)
    assert (a.sampling.guidance_scale_audio, a.sampling.guidance_scale_video) == (1.0, 1.0)
    b = load_experiment(CONFIGS / "auffusion_animatediff.yaml")
    # AnimateDiff's own CFG and unscaled joint guidance: 8 / 8 were VideoCrafter2's.
    assert (b.audio.cfg_scale, b.video.cfg_scale) == (8.0, 7.5)
    assert (b.sampling.guidance_scale_audio, b.sampling.guidance_scale_video) == (1.0, 1.0)
    for cfg in (a, b):
        s = cfg.sampling
        assert (s.scheduler, s.num_inference_steps) == ("DDPMScheduler", 50)
        train = cfg.train_config()
        # the batch is Table 6's; the discriminator and its training are the contrastive
        # recipe's (tests/test_presets.py)
        assert train.batch_size == 32
        assert cfg.data.caption_dropout == 0.1 and cfg.fakes.num_samples == 10000
        assert cfg.discriminator_config().audio_time_axis == 1  # (C, T, F) audio latents
        assert cfg.clip_spec().num_frames == cfg.video.options["num_frames"]


def _preset() -> dict:
    return yaml.safe_load((CONFIGS / "audioldm_animatediff.yaml").read_text())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["audio"].update(cfg_scale="high"), "audio.cfg_scale: expected float"),
        (lambda d: d["audio"].update(colour=1), "audio.colour: unknown field"),
        (lambda d: d["data"].pop("source"), "data.source: required field is missing"),
        (lambda d: d["video"].update(adapter="sora"), "video.adapter: unknown adapter 'sora'"),
        (lambda d: d["sampling"].update(window=[0.5]), "sampling.window: expected a list of 2"),
        (lambda d: d["train"].update(lrr=1), r"train\.lrr: unknown field; expected one of"),
        (lambda d: d["discriminator"].update(width=-1), "discriminator.width: must be >= 1"),
        (lambda d: d["discriminator"].update(channels=8), "discriminator.channels: unknown field"),
        (lambda d: d["data"].update(caption_dropout=1.5), r"data\.caption_dropout: must be >= 0"),
        (lambda d: d["train"].update(steps=-1), "train.steps: must be >= 1, got -1"),
        # Degenerate numbers are refused when the file is read, not mid-run.
        (lambda d: d["train"].update(checkpoint_every=0), "train.checkpoint_every: must be >= 1"),
        (lambda d: d["train"].update(log_every=0), "train.log_every: must be >= 1, got 0"),
        (lambda d: d["train"].update(noise_range=[0.9, 0.1]), r"train\.noise_range: must satisfy"),
        (
            lambda d: d["sampling"].update(guidance_scale_audio=float("nan")),
            "sampling.guidance_scale_audio: must be finite, got nan",
        ),
        (lambda d: d["video"].update(cfg_scale=float("inf")), "video.cfg_scale: must be finite"),
        (lambda d: d["sampling"].update(num_inference_steps=0), "sampling.num_inference_steps"),
        (lambda d: d["fakes"].update(num_samples=0), "fakes.num_samples: must be >= 1, got 0"),
        (
            lambda d: d.update(discriminator={"preset": "text_to_av", "channel_mult": "12"}),
            "discriminator.channel_mult: must be a non-empty list of integers, got '12'",
        ),
        (
            lambda d: d.update(discriminator={"preset": "text_to_av", "channels": 2**20}),
            r"discriminator: needs an estimated [0-9.]+ [TP]B of memory, more than this machine",
        ),
    ],
)
def test_errors_name_the_field(edit, message):
    data = _preset()
    edit(data)
    with pytest.raises(ConfigError, match=rf"^preset\.yaml: {message}"):
        experiment_from_dict(data, "preset.yaml")


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such experiment config"):
        load_experiment(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("audio: [unclosed")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_experiment(tmp_path / "bad.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match=r"empty\.yaml: name: required field is missing"):
        load_experiment(tmp_path / "empty.yaml")


def test_round_trip_through_dict():
    cfg = load_experiment(CONFIGS / "auffusion_animatediff.yaml")
    again = experiment_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg
