"""Configs cannot run code: adapter options are an allow-list, ``custom_pipeline`` and
``trust_remote_code`` are refused before anything loads, and weights come from safetensors
unless a model's ``allow_bin_weights`` opts in to legacy ``.bin`` files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from diffusers import AudioLDMPipeline

from _tiny import save_audioldm
from mmdisco.base_models import check_options, load_base_model
from mmdisco.base_models.loading import load_models
from mmdisco.config import ConfigError, load_experiment

PRESET = Path(__file__).parents[1] / "configs" / "audioldm_animatediff.yaml"


def preset_with(tmp_path: Path, **audio: object) -> Path:
    data = yaml.safe_load(PRESET.read_text())
    data["audio"].update(audio)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("key", ["custom_pipeline", "trust_remote_code"])
def test_options_that_run_code_are_refused_at_config_load(tmp_path, key):
    code = tmp_path / "evil"
    code.mkdir()
    marker = tmp_path / "ran"
    (code / "pipeline.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    options = {"audio_length_in_s": 2.0, key: str(code) if key == "custom_pipeline" else True}
    with pytest.raises(ConfigError, match=rf"audio\.options\.{key}: refused; a config may not"):
        load_experiment(preset_with(tmp_path, options=options))
    assert not marker.exists()


def test_unknown_options_are_refused_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"^audio_lenght_in_s: unknown option for adapter"):
        check_options("audioldm", {"audio_lenght_in_s": 2.0})
    with pytest.raises(ValueError, match="set it with the model's 'allow_bin_weights' field"):
        check_options("audioldm", {"use_safetensors": False})
    check_options("audioldm", {"audio_length_in_s": 2.0, "variant": "fp16", "revision": "main"})
    check_options("animatediff", {"motion_adapter": "x", "num_frames": 16})


def test_bin_weights_need_the_explicit_opt_out(tmp_path):
    folder = save_audioldm(tmp_path / "safe")
    pipe = AudioLDMPipeline.from_pretrained(folder)
    legacy = tmp_path / "legacy"
    pipe.save_pretrained(legacy, safe_serialization=False)
    # diffusers' models are now pickles (transformers 5 always writes safetensors).
    assert not list((legacy / "unet").glob("*.safetensors")) and list(legacy.rglob("*.bin"))
    with pytest.raises((OSError, ValueError), match=r"safetensors|\.safetensors"):
        load_base_model("audioldm", str(legacy), n_fft=16)
    model = load_base_model("audioldm", str(legacy), allow_bin_weights=True, n_fft=16)
    reference = load_base_model("audioldm", str(folder), n_fft=16)
    for a, b in zip(model.pipe.unet.parameters(), reference.pipe.unet.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_the_config_path_refuses_bin_weights_and_names_the_model(tmp_path):
    folder = save_audioldm(tmp_path / "safe")
    legacy = tmp_path / "legacy"
    AudioLDMPipeline.from_pretrained(folder).save_pretrained(legacy, safe_serialization=False)
    config = preset_with(tmp_path, path=str(legacy), options={"n_fft": 16}, torch_dtype=None)
    cfg = load_experiment(config)
    with pytest.raises(ConfigError, match=r"^audio: cannot load adapter 'audioldm'"):
        load_models(cfg)
