"""The presets as the reference release runs them, and the checks that refuse a config whose
models, samplers or clips do not fit together (before any work)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from _tiny import (
    LTX_VIDEO,
    VIDEO,
    audioldm_animatediff_experiment,
    save_animatediff,
    save_audioldm,
    save_ltx,
)
from mmdisco.base_models import load_base_model
from mmdisco.base_models.loading import load_models
from mmdisco.config import ConfigError, experiment_from_dict, load_experiment
from mmdisco.data import ClipDataset, ClipSpec, cache_latents, load_latent_cache
from mmdisco.data.clips import read_clip
from mmdisco.experiment import check_clip_spec
from mmdisco.media import write_mp4

CONFIGS = Path(__file__).parents[1] / "configs"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["audioldm_animatediff", "auffusion_animatediff"])
def test_presets_follow_the_reference_release(name):
    path = CONFIGS / f"{name}.yaml"
    cfg = load_experiment(path)
    assert cfg.sampling.scheduler == "DDPMScheduler" and cfg.sampling.num_inference_steps == 50
    assert not cfg.sampling.cfg_on_discriminator  # the recipe's network reads no text
    assert (cfg.sampling.guidance_scale_audio, cfg.sampling.guidance_scale_video) == (1.0, 1.0)
    assert cfg.video.path == "SG161222/Realistic_Vision_V5.1_noVAE"
    assert cfg.video.options["motion_adapter"] == "guoyww/animatediff-motion-adapter-v1-5-2"
    assert cfg.data.posterior == "sample" and cfg.data.audio_peak == "model"
    train = cfg.train_config()
    assert train.batch_size == 32 and train.batch_size % train.grad_accum == 0
    if name == "audioldm_animatediff":
        assert cfg.audio.path == "cvssp/audioldm-m-full"
        assert (cfg.audio.cfg_scale, cfg.video.cfg_scale) == (2.5, 7.5)
        assert (cfg.clip_spec().audio_peak, cfg.clip_spec().remove_dc) == (0.5, True)
    else:
        assert cfg.audio.adapter == "auffusion" and cfg.audio.cfg_scale == 8.0
        assert (cfg.clip_spec().audio_peak, cfg.clip_spec().remove_dc) == (0.95, False)
    # Every deliberate difference from the release is listed in the file itself.
    text = path.read_text()
    assert "Deliberate differences from the reference release" in text
    assert text.count("\n#  ") >= 5


@pytest.mark.parametrize(
    "name",
    [
        "audioldm_animatediff",
        "auffusion_animatediff",
        "wan_stableaudio3",
        "wan22_stableaudio3",
        "hunyuan15_stableaudio3",
    ],
)
def test_presets_train_the_recipe_proven_on_the_continuous_world(name):
    """Presets of two independent base models train what learnt the continuous world's ratio:
    its network family and objective, its optimiser settings; groups fill micro-batches."""
    from mmdisco.discriminator.shared_latent import CONV_NETWORK
    from mmdisco.training.trainer import CONTRASTIVE
    from mmdisco.world.continuous_eval import RECIPES

    cfg = load_experiment(CONFIGS / f"{name}.yaml")
    disc = cfg.discriminator
    assert disc["preset"] == "shared_latent"
    for key in ("encoder", "head", "num_codes", "num_factors", "depth", "video_pool"):
        assert disc.get(key, CONV_NETWORK[key]) == CONV_NETWORK[key], key
    train = cfg.train_config()
    for key, value in CONTRASTIVE.items():
        if key != "group_size":  # a micro-batch of 32 holds 4 groups of 8 captions
            assert getattr(train, key) == value, key
    # the library's recipe is the one the continuous world's benchmark ran
    assert (RECIPES["conv"].lr, RECIPES["conv"].weight_decay) == (train.lr, train.weight_decay)
    assert (train.batch_size // train.grad_accum) % train.group_size == 0
    assert not cfg.sampling.cfg_on_discriminator


def test_the_joint_model_preset_keeps_binary_cross_entropy():
    """LTX-2's fakes are the joint model's own pairs: the ratio to learn is p / p_joint, which
    re-pairing fakes as negatives would not give."""
    train = load_experiment(CONFIGS / "ltx2_mmdisco.yaml").train_config()
    assert train.objective == "bce"


def tiny_config(tmp_path: Path, **changes) -> dict:
    return audioldm_animatediff_experiment(tmp_path, **changes)


def test_samplers_must_take_the_same_steps(tmp_path):
    """'default' pairs AudioLDM's DDIM (50 steps) with SD's PNDM (51): refused at load."""
    data = tiny_config(tmp_path, sampling={"scheduler": "default", "num_inference_steps": 50})
    animatediff = Path(data["video"]["path"])
    config = json.loads((animatediff / "scheduler" / "scheduler_config.json").read_text())
    config.update(_class_name="PNDMScheduler", skip_prk_steps=True, steps_offset=1)
    (animatediff / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    index = json.loads((animatediff / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "PNDMScheduler"]  # as SD 1.5 ships
    (animatediff / "model_index.json").write_text(json.dumps(index))
    cfg = experiment_from_dict(data)
    with pytest.raises(
        ConfigError,
        match=r"the audio model's DDPMScheduler takes 50 steps and "
        r"the video model's PNDMScheduler 51",
    ):
        load_models(cfg)
    load_models(replace(cfg, sampling=replace(cfg.sampling, scheduler="DDPMScheduler")))


def test_clip_duration_must_match_the_audio_model(tmp_path):
    cfg = experiment_from_dict(tiny_config(tmp_path, data={"duration": 1.0, "fps": 4.0}))
    audio, video = load_models(cfg)
    with pytest.raises(
        ConfigError,
        match=r"data\.duration is 1\.0 s but the audio model "
        r"generates 0\.5 s",
    ):
        check_clip_spec(cfg, audio, video)


def test_config_fields_for_loudness_and_posterior(tmp_path):
    cfg = experiment_from_dict(tiny_config(tmp_path, data={"audio_peak": 0.8}))
    assert cfg.clip_spec().audio_peak == 0.8 and not cfg.clip_spec().remove_dc
    cfg = experiment_from_dict(tiny_config(tmp_path, data={"audio_peak": None}))
    assert cfg.clip_spec().audio_peak is None
    with pytest.raises(ConfigError, match=r"data\.audio_peak: must be 'model', a number or null"):
        experiment_from_dict(tiny_config(tmp_path, data={"audio_peak": "loud"}))
    with pytest.raises(
        ConfigError, match=r"data\.posterior: must be one of 'sample', 'mode', got 'mean'"
    ):
        experiment_from_dict(tiny_config(tmp_path, data={"posterior": "mean"}))


def write_clip(path: Path, scale: float, offset: float) -> Path:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
    audio = (offset + scale * np.sin(np.arange(16000) / 7.0)).astype(np.float32)
    return write_mp4(path, frames, 8, audio, sample_rate=16000)


def test_peak_normalisation_of_clips(tmp_path):
    from mmdisco.data.clips import ClipItem

    item = ClipItem(write_clip(tmp_path / "quiet.mp4", 0.05, 0.02), "a", 0.0)
    spec = ClipSpec(duration=0.5, fps=8.0, size=16, sample_rate=16000)
    raw = read_clip(item, spec).audio
    assert raw.abs().max() < 0.1 and raw.mean() > 0.01
    audioldm = read_clip(item, replace(spec, audio_peak=0.5, remove_dc=True)).audio
    assert audioldm.abs().max().item() == pytest.approx(0.5, abs=1e-6)
    assert abs(audioldm.mean().item()) < 1e-6
    auffusion = read_clip(item, replace(spec, audio_peak=0.95)).audio
    assert auffusion.abs().max().item() == pytest.approx(0.95, abs=1e-6)
    torch.testing.assert_close(auffusion / auffusion.abs().max(), raw / raw.abs().max())


def test_posterior_samples_are_seeded_per_clip_and_resume_identically(tmp_path):
    for i in range(3):
        write_clip(tmp_path / f"c{i}.mp4", 0.3, 0.0)
    rows = [{"path": f"c{i}.mp4", "caption": "a dog", "start": 0.25} for i in range(3)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    audio = load_base_model(
        "audioldm", str(save_audioldm(tmp_path / "a")), n_fft=16, audio_length_in_s=0.5
    )
    video = load_base_model("animatediff", str(save_animatediff(tmp_path / "v")), **VIDEO)
    spec = ClipSpec(duration=0.5, fps=8.0, size=16, sample_rate=16000)
    caches = {}
    for name, posterior in (("one", "sample"), ("two", "sample"), ("mode", "mode")):
        dataset = ClipDataset(tmp_path / "m.jsonl", replace(spec, posterior=posterior), seed=3)
        cache_latents(dataset, audio, video, tmp_path / name, shard_size=1, progress=False)
        caches[name] = load_latent_cache(tmp_path / name)
    torch.testing.assert_close(caches["one"].audio, caches["two"].audio)
    torch.testing.assert_close(caches["one"].video, caches["two"].video)
    assert not torch.allclose(caches["one"].audio, caches["mode"].audio)
    # A resumed cache draws the same samples as an uninterrupted one.
    (tmp_path / "one" / "shard-00001.safetensors").unlink()
    dataset = ClipDataset(tmp_path / "m.jsonl", spec, seed=3)
    cache_latents(dataset, audio, video, tmp_path / "one", shard_size=1, progress=False)
    torch.testing.assert_close(load_latent_cache(tmp_path / "one").video, caches["two"].video)


def test_ltx_refuses_shapes_its_vae_cannot_take(tmp_path):
    path = str(save_ltx(tmp_path / "ltx"))
    with pytest.raises(ValueError, match=r"height=30: LTX-Video needs a positive multiple of 4 "):
        load_base_model("ltx_video", path, **{**LTX_VIDEO, "height": 30})
    with pytest.raises(
        ValueError, match=r"num_frames=10: LTX-Video needs 4k \+ 1 frames .*e\.g\. 9"
    ):
        load_base_model("ltx_video", path, **{**LTX_VIDEO, "num_frames": 10})


def test_audioldm2_with_a_gpt2model_language_model(tmp_path):
    """Released AudioLDM 2 checkpoints store GPT2Model; it loads as GPT2LMHeadModel."""
    from transformers import GPT2LMHeadModel

    from _tiny import save_audioldm2

    path = save_audioldm2(tmp_path / "ldm2")
    reference = load_base_model("audioldm2", str(path), n_fft=16)
    lm = GPT2LMHeadModel.from_pretrained(path / "language_model")
    lm.transformer.save_pretrained(path / "language_model")  # as released: a GPT2Model
    index = json.loads((path / "model_index.json").read_text())
    index["language_model"] = ["transformers", "GPT2Model"]
    (path / "model_index.json").write_text(json.dumps(index))
    assert json.loads((path / "language_model" / "config.json").read_text())["architectures"] == [
        "GPT2Model"
    ]
    model = load_base_model("audioldm2", str(path), n_fft=16)
    assert isinstance(model.pipe.language_model, GPT2LMHeadModel)
    got = model.encode_prompt(["a dog barks"]).hidden_states
    torch.testing.assert_close(got, reference.encode_prompt(["a dog barks"]).hidden_states)


def test_preset_yaml_round_trips(tmp_path):
    data = yaml.safe_load((CONFIGS / "audioldm_animatediff.yaml").read_text())
    again = experiment_from_dict(load_experiment(CONFIGS / "audioldm_animatediff.yaml").to_dict())
    assert again.to_dict() == experiment_from_dict(data).to_dict()
