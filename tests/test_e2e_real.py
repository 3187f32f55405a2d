"""End to end through the YAML config and the CLI, on tiny random real-model pipelines.

AudioLDM + AnimateDiff (epsilon models): real clips written as mp4 files with captions ->
``cache-latents`` -> ``generate-fakes`` -> ``train`` -> ``sample``, and the mp4 files it writes
read back with sound of the right length. Stable Audio (v-prediction on a cosine path) + LTX
(flow matching): guided sampling through the same config path. Nothing touches the network.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from safetensors.torch import load_file
from typer.testing import CliRunner

from _tiny import (
    LTX_VIDEO,
    audioldm_animatediff_experiment,
    save_animatediff,
    save_audioldm,
    save_ltx,
    save_stable_audio,
)
from mmdisco.base_models.loading import ConfiguredModel, load_models
from mmdisco.cli import app
from mmdisco.config import ConfigError, load_experiment
from mmdisco.data import load_latent_cache
from mmdisco.discriminator import Discriminator, load_discriminator
from mmdisco.errors import InputError
from mmdisco.experiment import check_clip_spec, sample_from_config
from mmdisco.media import load_given, media_spec, read_mp4, write_mp4
from mmdisco.training.fakes import load_fakes

CAPTIONS = ["a dog barks", "hammer hits wood", "cat runs"]
AUDIO_SECONDS = 0.5  # AudioLDM: 2000 mel frames at hop 4 -> latent (4, 1000, 4)
SMALL_DISC = dict(
    channels=8,
    channel_mult=[1],
    blocks_per_level=1,
    time_embed_dim=16,
    norm_groups=4,
    audio_dilation_cycle=1,
    fusion="mlp",
    fusion_width=16,
    fusion_layers=1,
    fusion_heads=2,
    num_positions=8,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code != 0:
        raise AssertionError(f"mmdisco {' '.join(map(str, args))} failed:\n{result.output}")
    return result.output


def write_clips(folder: Path) -> Path:
    """One-second clips with sound and a JSONL manifest of captions."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, caption in enumerate(CAPTIONS):
        frames = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
        audio = (0.3 * rng.standard_normal(16000)).astype(np.float32)
        write_mp4(folder / f"clip{i}.mp4", frames, 8, audio, sample_rate=16000)
        rows.append(json.dumps({"path": f"clip{i}.mp4", "caption": caption, "start": 0.25}))
    (folder / "clips.jsonl").write_text("\n".join(rows))
    return folder / "clips.jsonl"


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def assert_mp4(path: Path, seconds: float, frames: int, fps: float) -> None:
    clip = read_mp4(path)
    assert clip.frames.shape[0] == frames
    assert clip.fps == pytest.approx(fps)
    assert clip.audio is not None
    assert len(clip.audio) / clip.sample_rate == pytest.approx(seconds, abs=0.01)
    assert np.abs(clip.audio).max() > 0


def workflow_data(tmp_path: Path, dtype: str | None = None, **sections: dict) -> dict:
    """The tiny AudioLDM + AnimateDiff workflow's config, on clips written under
    ``tmp_path``; ``sections`` replace whole sections."""
    manifest = write_clips(tmp_path / "clips")
    root = tmp_path / "run"
    data = {
        "name": "tiny_audioldm_animatediff",
        "output_dir": str(root),
        "audio": {
            "adapter": "audioldm",
            "path": str(save_audioldm(tmp_path / "audioldm")),
            "cfg_scale": 2.5,
            "torch_dtype": dtype,
            "options": {"n_fft": 16, "audio_length_in_s": AUDIO_SECONDS},
        },
        "video": {
            "adapter": "animatediff",
            "path": str(save_animatediff(tmp_path / "animatediff")),
            "cfg_scale": 7.5,
            "torch_dtype": dtype,
            "options": {"num_frames": 4, "height": 16, "width": 16, "fps": 8.0},
        },
        "data": {
            "source": str(manifest),
            "cache_dir": str(root / "cache"),
            "duration": AUDIO_SECONDS,
            "fps": 8.0,
            "size": 16,
            "sample_rate": 16000,
            "shard_size": 2,
            "batch_size": 2,
        },
        "discriminator": {
            "audio_channels": 4,
            "video_channels": 4,
            "audio_kind": "2d",
            "text_dim_audio": 32,
            "text_dim_video": 32,
            **SMALL_DISC,
        },
        "train": {"steps": 3, "batch_size": 2, "checkpoint_every": 3, "log_every": 1},
        "fakes": {"num_samples": 4, "out_dir": str(root / "fakes"), "batch_size": 4},
        "sampling": {
            "num_inference_steps": 3,
            "guidance_scale_audio": 30.0,
            "guidance_scale_video": 30.0,
            "batch_size": 2,
        },
    }
    return {**data, **sections}


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_audioldm_animatediff_cache_fakes_train_sample(tmp_path, dtype):
    """The whole workflow, with both base models' weights in float32 or in bfloat16."""
    root = tmp_path / "run"
    data = workflow_data(tmp_path, dtype)
    config = write_config(tmp_path / "experiment.yaml", data)

    # 1. real clips -> latents, captions -> both models' pooled text embeddings
    invoke("cache-latents", "--config", config)
    real = load_latent_cache(root / "cache")
    assert real.captions == CAPTIONS
    assert real.audio.shape == (3, 4, 1000, 4) and real.video.shape == (3, 4, 4, 8, 8)
    assert set(real.cond) == {"text_audio", "text_video"}

    # 2. fakes: each model conditioned on a real caption, with its own CFG scale
    invoke("generate-fakes", "--config", config)
    fakes = load_fakes(root / "fakes")
    assert fakes.captions == [*CAPTIONS, CAPTIONS[0]]
    assert fakes.audio.shape == (4, 4, 1000, 4) and torch.isfinite(fakes.audio).all()
    assert fakes.manifest["fingerprint"]["cfg_scale_audio"] == 2.5
    assert fakes.manifest["fingerprint"]["cfg_scale_video"] == 7.5

    # 3. train on cached latents; captions reach the discriminator, 10 % dropped
    invoke("train", "--config", config)
    disc = Discriminator.from_pretrained(root / "discriminator")
    assert disc.config.text_dim_audio == 32 and disc.config.text_drop_prob == 0.1
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["step-00000003"]

    # 4. guided and independent samples from the same seeds, written as mp4 with sound
    out = invoke("sample", "--config", config, "--prompt", "a dog barks", "--prompt", "cat runs")
    paths = sorted((root / "samples").glob("*.mp4"))
    assert [p.name for p in paths] == [
        "guided-000.mp4",
        "guided-001.mp4",
        "independent-000.mp4",
        "independent-001.mp4",
    ]
    assert all(str(p) in out for p in paths)
    for path in paths:
        assert_mp4(path, AUDIO_SECONDS, frames=4, fps=8.0)
    guided, plain = read_mp4(paths[0]), read_mp4(paths[2])
    assert not np.array_equal(guided.frames, plain.frames)

    # The same run in process: unguided samples repeat exactly, guidance moves both streams.
    cfg = load_experiment(config)
    runs = sample_from_config(cfg, ["a dog barks", "cat runs"], tmp_path / "again", progress=False)
    again = read_mp4(tmp_path / "again" / "independent-000.mp4")
    # Pipelines loaded twice may round differently in the last bit; the pixels agree.
    assert np.abs(again.frames.astype(int) - plain.frames.astype(int)).max() <= 2
    ind, gui = runs["independent"], runs["guided"]
    assert not torch.allclose(ind.audio_latents, gui.audio_latents)
    assert not torch.allclose(ind.video_latents, gui.video_latents)

    # Video-to-audio through the config: the given clip is kept, one prompt per given file.
    given = write_mp4(tmp_path / "given.mp4", torch.rand(3, 4, 16, 16) * 2 - 1, fps=8.0)
    v2a = sample_from_config(
        cfg,
        ["a dog barks"],
        tmp_path / "v2a",
        progress=False,
        given=("video", [given]),
        given_mode="renoise",
    )
    audio_model, video_model = load_models(cfg)
    media = load_given([given], "video", media_spec(audio_model, video_model))
    expected = video_model.encode(media)
    torch.testing.assert_close(v2a["guided"].video_latents, expected)
    assert not torch.allclose(v2a["guided"].audio_latents, v2a["independent"].audio_latents)
    with pytest.raises(ConfigError, match="2 prompts for 1 given video files"):
        sample_from_config(cfg, ["a", "b"], tmp_path / "x", given=("video", [given]))
    with pytest.raises(InputError, match=r"given\.mp4: more than 2 frames; the model makes 2"):
        short = replace(
            cfg, video=replace(cfg.video, options={**cfg.video.options, "num_frames": 2})
        )
        sample_from_config(short, None, tmp_path / "y", given=("video", [given]))

    # The config's sampler for discrete-time models, and clear errors naming the fields.
    audio, video = load_models(cfg)
    sampler = cfg.sampling.make_scheduler(audio)
    assert isinstance(sampler, DPMSolverMultistepScheduler)
    assert sampler.config.solver_order == 2 and sampler.config.algorithm_type == "dpmsolver++"
    ddim = replace(cfg, sampling=replace(cfg.sampling, scheduler="DDIMScheduler"))
    assert isinstance(ddim.sampling.make_scheduler(video), DDIMScheduler)
    short = replace(cfg.sampling, scheduler="ddim")  # the short names of the CLI and the world
    assert isinstance(short.make_scheduler(video), DDIMScheduler)
    with pytest.raises(ConfigError, match=r"sampling\.scheduler: no diffusers scheduler"):
        replace(cfg.sampling, scheduler="NopeScheduler").make_scheduler(audio)
    with pytest.raises(InputError, match=r"scheduler.*'Nope'"):
        replace(cfg.sampling, scheduler="Nope")
    with pytest.raises(ConfigError, match=r"data\.size is 32 but video\.options\.height is 16"):
        check_clip_spec(replace(cfg, data=replace(cfg.data, size=32)), audio, video)
    bad = replace(cfg, discriminator={**cfg.discriminator, "audio_channels": 8})
    with pytest.raises(ConfigError, match=r"discriminator\.audio_channels is 8 but audio latents"):
        bad.discriminator_config_for(audio, video)


def test_the_contrastive_recipe_trains_and_samples_through_the_config(tmp_path):
    """The shared-latent network with the contrastive objective, from the YAML: its latent
    shapes come from the base models (time is axis 1 of AudioLDM's (C, T, F) latent), each
    group's fakes share its real pairs' caption, and the trained network guides sampling."""
    root = tmp_path / "run"
    data = workflow_data(
        tmp_path,
        discriminator={
            "preset": "shared_latent",
            "encoder": "conv",
            "head": "aligned",
            "width": 8,
            "num_codes": 4,
            "audio_time_axis": 1,
        },
        train={
            "steps": 2,
            "batch_size": 2,
            "objective": "infonce",
            "group_size": 2,
            "optimizer": "adamw",
            "weight_decay": 1.0,
            "use_dlsm": False,
            "refine_steps": 1,
            "refine_pool": 2,
            "refine_negatives": 3,
            "checkpoint_every": 2,
            "log_every": 1,
        },
    )
    data["sampling"] = {**data["sampling"], "batch_size": 1}
    data["fakes"] = {**data["fakes"], "num_samples": 6, "per_caption": 2}
    config = write_config(tmp_path / "experiment.yaml", data)
    invoke("cache-latents", "--config", config)
    invoke("generate-fakes", "--config", config)
    assert load_fakes(root / "fakes").captions == [c for c in CAPTIONS for _ in range(2)]
    with warnings.catch_warnings():  # every caption has two fakes: no group lacks negatives
        warnings.filterwarnings("error", message=".*fake of their caption|.*no fake has")
        invoke("train", "--config", config)
    disc = load_discriminator(root / "discriminator")
    assert type(disc).__name__ == "SharedLatentDiscriminator"
    refined = load_file(root / "checkpoints" / "step-00000003" / "model.safetensors")
    assert (root / "refine_reference.safetensors").is_file()  # the refinement's frozen copy
    for key, value in disc.state_dict().items():  # the saved network is the refined one
        assert torch.equal(value, refined[key]), key
    assert disc.config.audio_shape == (4, 1000, 4) and disc.config.video_shape == (4, 4, 8, 8)
    cfg = load_experiment(config)
    runs = sample_from_config(cfg, ["a dog barks"], tmp_path / "samples", progress=False)
    assert not torch.allclose(runs["independent"].audio_latents, runs["guided"].audio_latents)
    bad = replace(cfg, discriminator={**cfg.discriminator, "audio_time_axis": 5})
    with pytest.raises(ConfigError, match=r"discriminator.*audio_time_axis 5 is not an axis"):
        bad.discriminator_config_for(*load_models(cfg))


def test_cfg_folded_into_configured_model(tmp_path):
    """What generate-fakes samples: each model's own CFG; cond=None is the empty prompt."""
    from mmdisco.base_models import load_base_model

    model = load_base_model(
        "audioldm", str(save_audioldm(tmp_path / "a")), n_fft=16, audio_length_in_s=0.01
    )
    wrapped = ConfiguredModel(model, cfg_scale=3.0)
    x = torch.randn(2, *model.latent_shape(), generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    cond, uncond = model.encode_prompt_pair(CAPTIONS[:2])
    c, u = model.predict(x, t, cond), model.predict(x, t, uncond)
    torch.testing.assert_close(
        wrapped.predict(x, t, wrapped.encode_prompt(CAPTIONS[:2])), u + 3 * (c - u)
    )
    torch.testing.assert_close(wrapped.predict(x, t, None), u)


def test_stable_audio_ltx_guided_sampling_through_config(tmp_path):
    """v-prediction (Stable Audio) and flow matching (LTX) through the config path."""
    root = tmp_path / "run"
    data = {
        "name": "tiny_stable_audio_ltx",
        "output_dir": str(root),
        "audio": {
            "adapter": "stable_audio",
            "path": str(save_stable_audio(tmp_path / "stable_audio")),
            "cfg_scale": 7.0,
        },
        "video": {
            "adapter": "ltx_video",
            "path": str(save_ltx(tmp_path / "ltx")),
            "cfg_scale": 3.0,
            "options": {**LTX_VIDEO, "fps": 25.0},
        },
        "data": {"source": str(tmp_path / "none.csv"), "cache_dir": str(root / "cache")},
        "discriminator": {
            "audio_channels": 3,
            "video_channels": 8,
            "audio_kind": "1d",
            "audio_downsample": 1,
            "text_dim_audio": 4,
            "text_dim_video": 32,
            **SMALL_DISC,
        },
        "sampling": {
            "scheduler": "DPMSolverMultistepScheduler",  # both keep their own: not discrete
            "num_inference_steps": 3,
            "guidance_scale_audio": 30.0,
            "guidance_scale_video": 30.0,
            "batch_size": 2,
        },
    }
    config = write_config(tmp_path / "experiment.yaml", data)
    cfg = load_experiment(config)
    audio, video = load_models(cfg)
    assert audio.prediction_type == "v_prediction" and video.prediction_type == "flow"
    torch.manual_seed(0)
    Discriminator(cfg.discriminator_config_for(audio, video)).save_pretrained(root / "disc")

    out = invoke(
        "sample", "--config", config, "--discriminator", root / "disc", "--prompt", "a dog barks"
    )
    paths = sorted((root / "samples").glob("*.mp4"))
    assert [p.name for p in paths] == ["guided-000.mp4", "independent-000.mp4"]
    assert all(str(p) in out for p in paths)
    runs = sample_from_config(cfg, ["a dog barks"], tmp_path / "again", root / "disc")
    ind, gui = runs["independent"], runs["guided"]
    # Decoded at the model's 4 Hz (the tiny decoder gives 7 of 8 samples), written at 16 kHz.
    seconds = gui.audio.shape[-1] / gui.sample_rate
    assert gui.sample_rate == audio.sample_rate == 4 and seconds == pytest.approx(1.75)
    for path in paths:
        assert_mp4(path, seconds, frames=LTX_VIDEO["num_frames"], fps=25.0)
    assert torch.isfinite(gui.audio_latents).all() and torch.isfinite(gui.video_latents).all()
    assert not torch.allclose(ind.audio_latents, gui.audio_latents)
    assert not torch.allclose(ind.video_latents, gui.video_latents)


def test_bad_yaml_field_is_named_by_the_cli(tmp_path):
    preset = Path(__file__).parents[1] / "configs" / "audioldm_animatediff.yaml"
    data = yaml.safe_load(preset.read_text())
    data["audio"]["cfg_scal"] = 2.0
    config = write_config(tmp_path / "bad.yaml", data)
    for command in ("cache-latents", "generate-fakes", "train", "sample"):
        result = CliRunner().invoke(app, [command, "--config", str(config)])
        assert result.exit_code == 2, (command, result.output)
        assert "audio.cfg_scal: unknown field" in result.output
        assert str(config) in result.output
    data["audio"].pop("cfg_scal")
    data["sampling"]["guidance_scale_video"] = "high"
    config = write_config(tmp_path / "bad.yaml", data)
    result = CliRunner().invoke(app, ["train", "--config", str(config)])
    assert result.exit_code == 2
    assert "sampling.guidance_scale_video: expected float" in result.output


def launch(*args: str) -> subprocess.CompletedProcess:
    """``accelerate launch`` with 2 CPU processes (gloo) of ``python -m mmdisco.cli``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes"]
    cmd += ["2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--main_process_port", str(port), "-m", "mmdisco.cli", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_processes_fill_one_resumable_cache(tmp_path):
    """cache-latents and generate-fakes under `accelerate launch`: each process writes its
    own shards (shard k by rank k % 2) of one cache, resuming what a one-process run left."""
    root = tmp_path / "run"
    data = audioldm_animatediff_experiment(  # 3 latent shards, 4 fake shards
        tmp_path,
        AUDIO_SECONDS,
        data={
            "source": str(write_clips(tmp_path / "clips")),
            "cache_dir": str(root / "cache"),
            "fps": 8.0,
            "sample_rate": 16000,
            "shard_size": 1,
            "batch_size": 2,
        },
        fakes={"num_samples": 4, "out_dir": str(root / "fakes"), "batch_size": 4},
        sampling={"num_inference_steps": 3},
    )
    config = write_config(tmp_path / "experiment.yaml", data)
    invoke("cache-latents", "--config", config)
    invoke("generate-fakes", "--config", config)
    first_real, first_fake = load_latent_cache(root / "cache"), load_fakes(root / "fakes")
    # Lose some shards (as a killed run would not have written them), keep the others.
    kept = {}
    for cache, lost in (("cache", (0, 1)), ("fakes", (1, 2))):
        for path in sorted((root / cache).glob("shard-*.safetensors")):
            if int(path.stem[-5:]) in lost:
                path.unlink()
            else:
                kept[path] = path.stat().st_mtime_ns
    summaries = {"cache-latents": "real pairs cached", "generate-fakes": "fake pairs"}
    for stage, summary in summaries.items():
        assert launch(stage, "--config", config).stdout.count(summary) == 1  # main process only
    for path, mtime in kept.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
    for cache, lost in (("cache", (0, 1)), ("fakes", (1, 2))):
        manifest = json.loads((root / cache / "manifest.json").read_text())
        assert manifest["complete"] and not list((root / cache).glob("progress-*"))
        redone = {
            e["index"]: (e["rank"], e["world"]) for e in manifest["shards"] if e["world"] == 2
        }
        assert redone == {k: (k % 2, 2) for k in lost}
    real, fake = load_latent_cache(root / "cache"), load_fakes(root / "fakes")
    assert real.captions == first_real.captions and fake.captions == first_fake.captions
    torch.testing.assert_close(real.audio, first_real.audio)
    torch.testing.assert_close(real.video, first_real.video)
    torch.testing.assert_close(fake.audio, first_fake.audio)
    torch.testing.assert_close(fake.video, first_fake.video)
