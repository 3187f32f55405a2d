"""MMDisCoPipeline: equality with joint_sample, save/load round trips, errors, the shipped one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDPMScheduler
from safetensors import safe_open

from _tiny import audioldm_animatediff_experiment
from conftest import STEPS, WINDOW, live
from mmdisco.config import BaseModelConfig, ConfigError
from mmdisco.pipeline import (
    INDEX_NAME,
    WORLD_PIPELINE,
    MMDisCoPipeline,
    PipelineConfig,
    read_index,
)
from mmdisco.sampling import GuidanceOptions, Stream, joint_sample
from mmdisco.world.models import ASSETS_DIR, load_world_models

pytestmark = pytest.mark.usefixtures("one_thread")


def reference(pipe: MMDisCoPipeline, seed: int, batch: int, scales=(300.0, 300.0), disc=True):
    """joint_sample by hand: one generator shared by both streams, as the pipeline does."""
    g = torch.Generator().manual_seed(seed)
    streams = [
        Stream(m, m.make_scheduler(DDPMScheduler), generator=g, guidance_scale=s)
        for m, s in zip((pipe.audio_model, pipe.video_model), scales, strict=True)
    ]
    return joint_sample(
        *streams,
        pipe.discriminator if disc else None,
        batch_size=batch,
        num_inference_steps=STEPS,
        options=GuidanceOptions(window=WINDOW),
        progress=False,
    )


def test_call_equals_joint_sample_for_the_same_seed(world_pipe):
    a, v = reference(world_pipe, seed=3, batch=2)
    out = world_pipe(
        num_samples=2, generator=torch.Generator().manual_seed(3), output_type="latent"
    )
    torch.testing.assert_close(out.waveforms, a)
    torch.testing.assert_close(out.frames, v)

    # Scales of 0 are the unguided sample of the same seed; guidance moves both streams.
    plain = world_pipe(
        num_samples=2,
        audio_guidance_scale=0.0,
        video_guidance_scale=0.0,
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
    )
    ref_a, ref_v = reference(world_pipe, seed=3, batch=2, disc=False)
    torch.testing.assert_close(plain.waveforms, ref_a)
    torch.testing.assert_close(plain.frames, ref_v)
    assert (plain.waveforms - a).abs().max() > 1e-2 and (plain.frames - v).abs().max() > 1e-2

    # Decoded outputs: diffusers' layouts, the models' rate and frame rate.
    decoded = world_pipe(num_samples=2, generator=torch.Generator().manual_seed(3))
    assert decoded.waveforms.shape == (2, 32000) and decoded.sample_rate == 16000
    assert decoded.frames.shape == (2, 16, 16, 16, 3) and decoded.fps == 8.0
    assert decoded.frames.min() >= 0.0 and decoded.frames.max() <= 1.0
    np.testing.assert_allclose(
        decoded.waveforms, world_pipe.audio_model.decode(a).numpy(), rtol=1e-5, atol=1e-5
    )
    pt = world_pipe(num_samples=2, generator=torch.Generator().manual_seed(3), output_type="pt")
    torch.testing.assert_close(pt.frames, (v.clamp(-1, 1) + 1).permute(0, 2, 1, 3, 4) / 2)
    waves, frames = world_pipe(
        num_samples=2, generator=torch.Generator().manual_seed(3), return_dict=False
    )
    np.testing.assert_allclose(frames, decoded.frames)
    np.testing.assert_allclose(waves, decoded.waveforms)


def test_one_generator_per_pair_does_not_depend_on_the_batch(world_pipe):
    gens = [torch.Generator().manual_seed(s) for s in (11, 12, 13)]
    batch = world_pipe(num_samples=3, generator=gens, output_type="latent")
    alone = world_pipe(generator=[torch.Generator().manual_seed(12)], output_type="latent")
    torch.testing.assert_close(batch.waveforms[1:2], alone.waveforms, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(batch.frames[1:2], alone.frames, rtol=1e-4, atol=1e-4)
    # No generator: the index's seed, so a call is reproducible.
    first, again = world_pipe(output_type="latent"), world_pipe(output_type="latent")
    torch.testing.assert_close(first.frames, again.frames)


def test_save_load_round_trip_and_relocation(world_pipe, tmp_path):
    models = tmp_path / "tree" / "models"
    shutil.copytree(ASSETS_DIR / "audio", models / "audio")
    shutil.copytree(ASSETS_DIR / "video", models / "video")
    audio, video = load_world_models(directory=models)
    config = PipelineConfig(
        BaseModelConfig("world_audio", str(models / "audio")),
        BaseModelConfig("world_video", str(models / "video")),
        sampling=world_pipe.config.sampling,
    )
    pipe = MMDisCoPipeline(audio, video, world_pipe.discriminator, config)
    pipe.set_progress_bar_config(disable=True)
    folder = pipe.save_pretrained(tmp_path / "tree" / "pipe")
    index = json.loads((folder / INDEX_NAME).read_text())
    assert index["_class_name"] == "MMDisCoPipeline"
    # Base models beside the folder are named relatively, so the tree can move.
    assert index["audio"]["path"] == "../models/audio"
    assert index["video"] == {
        "adapter": "world_video",
        "path": "../models/video",
        "cfg_scale": 1.0,
        "torch_dtype": None,
        "options": {},
        "allow_bin_weights": False,
    }
    assert index["sampling"]["window"] == list(WINDOW)
    moved = shutil.move(tmp_path / "tree", tmp_path / "elsewhere")
    loaded = MMDisCoPipeline.from_pretrained(Path(moved) / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config == read_index(Path(moved) / "pipe")
    state, state2 = world_pipe.discriminator.state_dict(), loaded.discriminator.state_dict()
    assert state.keys() == state2.keys()
    for k in state:
        torch.testing.assert_close(state2[k], state[k])
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    torch.testing.assert_close(
        loaded(generator=g(), output_type="latent").frames,
        world_pipe(generator=g(), output_type="latent").frames,
    )

    # Saved again from where it was loaded: still relative; float16 halves the weights.
    again = loaded.save_pretrained(Path(moved) / "pipe16", dtype=torch.float16)
    assert json.loads((again / INDEX_NAME).read_text())["audio"]["path"] == "../models/audio"
    with safe_open(again / "discriminator" / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118
    half = MMDisCoPipeline.from_pretrained(again).discriminator
    for k, v in half.state_dict().items():
        assert v.dtype == torch.float32
        torch.testing.assert_close(v, state[k], rtol=1e-3, atol=1e-3)

    # A folder far away names the base models by absolute path.
    far = world_pipe.save_pretrained(tmp_path / "far")
    assert json.loads((far / INDEX_NAME).read_text())["audio"]["path"] == str(
        (ASSETS_DIR / "audio").resolve()
    )


def test_folders_that_are_not_pipelines_give_clear_errors(world_pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such pipeline folder: .*nowhere"):
        MMDisCoPipeline.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        FileNotFoundError,
        match=r"empty is not an MMDisCo pipeline folder: it "
        r"has no model_index\.json",
    ):
        MMDisCoPipeline.from_pretrained(tmp_path / "empty")

    folder = world_pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((folder / INDEX_NAME).read_text())

    def broken(change: dict, name: str) -> Path:
        bad = tmp_path / name
        shutil.copytree(folder, bad)
        (bad / INDEX_NAME).write_text(json.dumps({**index, **change}))
        return bad

    diffusers_index = broken({"_class_name": "AudioLDMPipeline"}, "diffusers")
    with pytest.raises(
        ConfigError,
        match="describes a 'AudioLDMPipeline', not an "
        "'MMDisCoPipeline': load a diffusers pipeline as a base model",
    ):
        MMDisCoPipeline.from_pretrained(diffusers_index)
    bad_scale = broken({"audio": {**index["audio"], "cfg_scale": "high"}}, "scale")
    with pytest.raises(
        ConfigError,
        match=r"model_index\.json: audio\.cfg_scale: expected "
        "float, got 'high'",
    ):
        MMDisCoPipeline.from_pretrained(bad_scale)
    unknown = broken({"sampling": {**index["sampling"], "stepz": 3}}, "unknown")
    with pytest.raises(ConfigError, match=r"sampling\.stepz: unknown field"):
        MMDisCoPipeline.from_pretrained(unknown)
    no_model = broken({"video": {**index["video"], "path": str(tmp_path / "gone")}}, "model")
    with pytest.raises(
        ConfigError,
        match=r"model_index\.json: video: cannot load adapter "
        "'world_video' from .*gone",
    ):
        MMDisCoPipeline.from_pretrained(no_model)
    no_disc = broken({"discriminator": "missing"}, "disc")
    with pytest.raises(FileNotFoundError, match="names the discriminator folder 'missing'"):
        MMDisCoPipeline.from_pretrained(no_disc)
    (no_disc / INDEX_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match=r"model_index\.json: not valid JSON"):
        MMDisCoPipeline.from_pretrained(no_disc)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_inference_steps": -1}, "num_inference_steps must be a positive integer, got -1"),
        ({"num_inference_steps": 2.5}, "num_inference_steps must be a positive integer"),
        ({"audio_guidance_scale": float("nan")}, "audio_guidance_scale must be a finite number"),
        ({"video_cfg_scale": -1.0}, "video_cfg_scale must be >= 0, got -1.0"),
        ({"guidance_window": (0.8, 0.2)}, r"guidance_window must satisfy 0 <= lo <= hi <= 1"),
        ({"num_samples": 0}, "num_samples must be a positive integer, got 0"),
        ({"output_type": "pil"}, r"output_type must be one of \('np', 'pt', 'latent'\)"),
        ({"prompt": "a dog"}, "the audio base model .* is unconditional and takes no prompt"),
        (
            {"num_samples": 2, "generator": [torch.Generator()]},
            "got 1 generators for a batch of 2 pairs",
        ),
    ],
)
def test_bad_arguments_are_refused_by_name(world_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        world_pipe(**kwargs)


def test_save_writes_mp4_with_sound(world_pipe, tmp_path):
    from mmdisco.media import read_mp4

    out = world_pipe(num_samples=2, generator=torch.Generator().manual_seed(0))
    paths = out.save(tmp_path, prefix="pair", upscale=4)
    assert [p.name for p in paths] == ["pair-000.mp4", "pair-001.mp4"]
    clip = read_mp4(paths[1], downscale=4)
    assert clip.frames.shape == (16, 16, 16, 3) and clip.fps == 8.0
    assert abs(len(clip.audio) - 32000) < 800 and clip.sample_rate == 16000
    expected = np.round(out.frames[1] * 255)
    assert np.abs(clip.frames.astype(float) - expected).mean() < 8  # H.264 at crf 10
    with pytest.raises(ValueError, match="latent outputs cannot be saved"):
        world_pipe(output_type="latent").save(tmp_path)


def test_devices_and_memory_options_forward_to_the_parts(world_pipe, monkeypatch):
    calls = []
    for model in (world_pipe.audio_model, world_pipe.video_model):
        monkeypatch.setattr(model, "to", lambda d, m=model: calls.append((m.modality, d)) or m)
    assert world_pipe.to("cpu") is world_pipe
    assert calls == [("audio", "cpu"), ("video", "cpu")]
    with pytest.raises(
        NotImplementedError, match="WorldAudioModel, WorldVideoModel cannot offload"
    ):
        world_pipe.enable_model_cpu_offload()
    offloads = []
    for model in (world_pipe.audio_model, world_pipe.video_model):
        monkeypatch.setattr(
            model,
            "enable_model_cpu_offload",
            lambda gpu_id, device, m=model: offloads.append((m.modality, gpu_id, device)),
            raising=False,
        )
    monkeypatch.setattr(world_pipe.discriminator, "to", lambda d: offloads.append(("disc", d)))
    world_pipe.enable_model_cpu_offload(gpu_id=1)
    assert offloads == [
        ("audio", 1, "cuda"),
        ("video", 1, "cuda"),
        ("disc", torch.device("cuda", 1)),
    ]
    monkeypatch.undo()

    # Guidance slicing: the discriminator gradient chunk by chunk, the same samples.
    g = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    whole = world_pipe(num_samples=3, generator=g(), output_type="latent")
    world_pipe.enable_guidance_slicing(1)
    try:
        sliced = world_pipe(num_samples=3, generator=g(), output_type="latent")
    finally:
        world_pipe.disable_guidance_slicing()
    torch.testing.assert_close(sliced.frames, whole.frames, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sliced.waveforms, whole.waveforms, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_shipped_world_pipeline_aligns_the_pairs():
    from mmdisco.world import evaluate

    pipe = MMDisCoPipeline.from_pretrained(WORLD_PIPELINE)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.audio.path == "../audio" and pipe.config.video.path == "../video"
    recorded = json.loads((WORLD_PIPELINE / "eval.json").read_text())
    for key, value in recorded["demo_row_float32"].items():
        assert abs(recorded["stored_weights"][key] - value) <= 0.02, key

    gens = lambda: [torch.Generator().manual_seed(s) for s in range(24)]  # noqa: E731
    guided = pipe(num_samples=24, generator=gens(), output_type="pt")
    plain = pipe(
        num_samples=24,
        generator=gens(),
        output_type="pt",
        audio_guidance_scale=0,
        video_guidance_scale=0,
    )

    def scores(out):
        video = out.frames.permute(0, 2, 1, 3, 4) * 2 - 1  # back to (B, 3, F, H, W) in [-1, 1]
        return evaluate(video, out.waveforms)

    s_guided, s_plain = scores(guided), scores(plain)
    # Measured here: semantic 0.25 -> 0.75, temporal 0.19 -> 0.90 (24 pairs).
    assert s_guided["semantic"] >= s_plain["semantic"] + 0.3
    assert s_guided["temporal"] >= s_plain["temporal"] + 0.4
    assert s_guided["validity_audio"] >= 0.8 and s_guided["validity_video"] >= 0.8


def test_real_preset_models_through_the_pipeline(tmp_path):
    from mmdisco.base_models.loading import prompt_pair
    from mmdisco.discriminator import Discriminator

    disc = live(
        Discriminator.for_shapes(
            (4, 1000, 4),
            (4, 4, 8, 8),
            head="mlp",
            channels=8,
            channel_mult=[1],
            blocks_per_level=1,
            time_embed_dim=16,
            norm_groups=4,
            audio_dilation_cycle=1,
            fusion_width=16,
            fusion_layers=1,
            text_dim_audio=32,
            text_dim_video=32,
        )
    )
    disc.save_pretrained(tmp_path / "disc")
    data = audioldm_animatediff_experiment(
        tmp_path,
        sampling={
            "num_inference_steps": 3,
            "guidance_scale_audio": 30.0,
            "guidance_scale_video": 30.0,
        },
    )
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data))
    pipe = MMDisCoPipeline.from_experiment(tmp_path / "tiny.yaml", tmp_path / "disc")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        ["a dog barks", "cat runs"],
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )

    # The same run by hand: prompts with their CFG, the pooled text for the discriminator.
    g = torch.Generator().manual_seed(0)
    streams = []
    for model, cfg_scale in ((pipe.audio_model, 2.5), (pipe.video_model, 7.5)):
        cond, uncond = prompt_pair(model, ["a dog barks", "cat runs"])
        streams.append(
            Stream(
                model,
                pipe.config.sampling.make_scheduler(model),
                cond,
                uncond,
                cfg_scale,
                30.0,
                g,
                disc_text=model.pooled_text_embedding(cond),
            )
        )
    a, v = joint_sample(
        *streams, pipe.discriminator, batch_size=2, num_inference_steps=3, progress=False
    )
    torch.testing.assert_close(out.waveforms, a)
    torch.testing.assert_close(out.frames, v)

    # Round trip through a folder; a negative prompt replaces the empty one.
    loaded = MMDisCoPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "pipe"))
    loaded.set_progress_bar_config(disable=True)
    again = loaded(
        ["a dog barks", "cat runs"],
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )
    torch.testing.assert_close(again.frames, out.frames)
    negative = loaded(
        ["a dog barks", "cat runs"],
        negative_prompt="loud",
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )
    assert (negative.frames - out.frames).abs().max() > 1e-3
    decoded = loaded("a dog barks", num_samples=2, generator=torch.Generator().manual_seed(1))
    assert decoded.waveforms.shape[0] == 2 and decoded.frames.shape[:2] == (2, 4)
    with pytest.raises(ValueError, match="needs a prompt"):
        loaded()
    with pytest.raises(ValueError, match="negative_prompt has 3 entries for 2 prompts"):
        loaded(["a", "b"], negative_prompt=["x", "y", "z"])


def test_saving_over_another_kind_of_discriminator_leaves_only_the_new_one(tmp_path, world_pipe):
    """The shipped pipeline once held summed parts; a codebook saved over it must load as
    itself, not as the stale parts."""
    from mmdisco.discriminator import CodebookConfig, CodebookDiscriminator, SummedDiscriminators
    from mmdisco.pipeline import MMDisCoPipeline

    audio, video = world_pipe.audio_model, world_pipe.video_model
    summed = MMDisCoPipeline(
        audio, video, SummedDiscriminators(world_pipe.discriminator), world_pipe.config
    )
    summed.save_pretrained(tmp_path)
    assert (tmp_path / "discriminator" / "summed.json").exists()
    codebook = CodebookDiscriminator(
        CodebookConfig(audio.latent_shape(), video.latent_shape(), 3, 3)
    )
    MMDisCoPipeline(audio, video, codebook, world_pipe.config).save_pretrained(tmp_path)
    loaded = MMDisCoPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.discriminator, CodebookDiscriminator)
    assert sorted(p.name for p in (tmp_path / "discriminator").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
