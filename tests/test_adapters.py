"""Adapters for real diffusers base models, exercised on tiny random components.

The key property: with the discriminator off, mmdisco's joint sampler reproduces each
adapter's own diffusers pipeline (same seed, scheduler, steps and CFG scale). Components are
built here (tiny configs, tokenizers from a small vocabulary), saved with ``save_pretrained``
and loaded back through each adapter's ``from_pretrained``; nothing touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDPMScheduler,
    DPMSolverMultistepScheduler,
)

from _tiny import (
    AUFFUSION,
    LTX_VIDEO,
    VIDEO,
    save_animatediff,
    save_audioldm,
    save_audioldm2,
    save_auffusion,
    save_ltx,
    save_spectrogram_image,
    save_stable_audio,
)
from mmdisco.base_models import load_base_model
from mmdisco.base_models.auffusion import (
    SpectrogramImageConfig,
    image_to_mel,
    mel_to_image,
)
from mmdisco.base_models.stable_audio import CosineDPMSolverScheduler, CosineSchedule
from mmdisco.data import ClipDataset, ClipSpec, cache_latents, collate, load_latent_cache
from mmdisco.diffusion import DiscreteSchedule
from mmdisco.media import write_mp4
from mmdisco.sampling import Stream, joint_sample

PROMPTS = ["a dog barks", "hammer hits wood"]
STEPS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "audioldm": save_audioldm(root / "audioldm"),
        "audioldm2": save_audioldm2(root / "audioldm2"),
        "animatediff": save_animatediff(root / "animatediff"),
        "auffusion": save_auffusion(root / "auffusion"),
        "spectrogram_image": save_spectrogram_image(root / "spectrogram_image"),
        "stable_audio": save_stable_audio(root / "stable_audio"),
        "ltx_video": save_ltx(root / "ltx_video"),
    }


@pytest.fixture(scope="module")
def models(folders):
    opts = {
        "audioldm": dict(n_fft=16),
        "audioldm2": dict(n_fft=16),
        "animatediff": dict(VIDEO),
        "ltx_video": dict(LTX_VIDEO, fps=25.0),
        "auffusion": AUFFUSION,
    }
    return {
        name: load_base_model(name, str(path), **opts.get(name, {}))
        for name, path in folders.items()
    }


# ---------------------------------------------------------------- pipeline references


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def initial_latents(name: str, model, seed: int) -> torch.Tensor | None:
    """A spectrogram-image model's space is the transpose of its pipeline's latents, so the same
    noise laid out as the pipeline draws it is handed to both (the others draw their own)."""
    if name != "spectrogram_image":
        return None
    c, t, f = model.latent_shape()
    return torch.randn(len(PROMPTS), c, f, t, generator=generator(seed))


def reference(name: str, model, scheduler, cfg: float, seed: int) -> torch.Tensor:
    """The adapter's own diffusers pipeline, run with ``scheduler``: latents where the pipeline
    can return them, else its decoded media."""
    pipe = model.pipe
    pipe.scheduler = scheduler
    common = dict(
        num_inference_steps=STEPS, guidance_scale=cfg, generator=generator(seed), return_dict=False
    )
    if name == "audioldm":  # no latent output: catch the final latents in the callback
        final = []
        audio = pipe(PROMPTS, callback=lambda i, t, x: final.append(x), callback_steps=1, **common)
        return final[-1], torch.as_tensor(audio[0])
    if name == "audioldm2":
        return pipe(PROMPTS, output_type="latent", **common)[0]
    if name == "animatediff":
        return pipe(PROMPTS, output_type="latent", **VIDEO, **common)[0]
    if name == "spectrogram_image":
        latents = initial_latents(name, model, seed)
        out = pipe(PROMPTS, output_type="latent", height=8, width=16, latents=latents, **common)
        return out[0]
    if name == "stable_audio":
        return pipe(PROMPTS, output_type="latent", **common)[0]
    if name == "ltx_video":
        return pipe(PROMPTS, negative_prompt="", output_type="latent", **LTX_VIDEO, **common)[0]
    raise AssertionError(name)


def stream(model, scheduler, cfg: float, seed: int, scale: float = 1.0) -> Stream:
    cond, uncond = model.encode_prompt_pair(PROMPTS)
    return Stream(
        model=model,
        scheduler=scheduler,
        cond=cond,
        uncond=uncond,
        cfg_scale=cfg,
        guidance_scale=scale,
        generator=generator(seed),
        disc_text=model.pooled_text_embedding(cond),
        disc_text_uncond=model.pooled_text_embedding(uncond),
    )


def comparable(name: str, model, latents: torch.Tensor) -> torch.Tensor:
    if name == "ltx_video":
        return model.pack(latents)
    if name == "spectrogram_image":
        return latents.transpose(-1, -2)
    return latents


PAIRS = [
    # (audio, scheduler class or None = the model's own, cfg), (video, ..., cfg)
    (("audioldm", DPMSolverMultistepScheduler, 2.5), ("animatediff", DDPMScheduler, 7.5)),
    (("spectrogram_image", DPMSolverMultistepScheduler, 8.0), ("ltx_video", None, 3.0)),
    (("stable_audio", None, 7.0), ("animatediff", DPMSolverMultistepScheduler, 1.0)),
    (("audioldm2", DPMSolverMultistepScheduler, 3.5), ("ltx_video", None, 1.0)),
]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0][0]}+{p[1][0]}")
def test_unguided_joint_sampling_reproduces_each_pipeline(models, pair):
    runs = {}
    for (name, cls, cfg), seed in zip(pair, (0, 1), strict=True):
        model = models[name]
        s = stream(model, model.make_scheduler(cls), cfg, seed)
        noise = initial_latents(name, model, seed)
        s.latents = None if noise is None else noise.transpose(-1, -2)
        runs[name] = (model, cls, cfg, seed, s)
    (a_name, a_run), (v_name, v_run) = runs.items()
    a, v = joint_sample(
        a_run[4], v_run[4], None, batch_size=len(PROMPTS), num_inference_steps=STEPS, progress=False
    )
    for name, latents in ((a_name, a), (v_name, v)):
        model, cls, cfg, seed, _ = runs[name]
        assert latents.shape == (len(PROMPTS), *model.latent_shape())
        expected = reference(name, model, model.make_scheduler(cls), cfg, seed)
        if name == "audioldm":  # the decoded waveforms agree too (tiny vocoder: tiny values)
            expected, audio = expected
            got_audio = model.decode(latents)
            assert got_audio.shape == audio.shape
            scale = float(audio.abs().max())
            torch.testing.assert_close(got_audio, audio, rtol=1e-4, atol=1e-4 * scale)
        got = comparable(name, model, latents)
        assert got.shape == expected.shape, name
        torch.testing.assert_close(
            got, expected.float(), rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}"
        )


def lockstep_scheduler(model):
    """DPM-Solver++ for discrete-time models (PNDM takes one step more), else the model's own."""
    if isinstance(model.schedule, DiscreteSchedule):
        return model.make_scheduler(DPMSolverMultistepScheduler)
    return model.make_scheduler()


def coupled_disc(audio, video, log_snr_a, log_snr_v, **kw):
    """A fixed discriminator whose audio gradient depends on the video and vice versa."""
    assert kw["text_audio"].shape[0] == audio.shape[0]
    return 5.0 * audio.flatten(1).tanh().mean(1) * video.flatten(1).tanh().mean(1)


def test_guided_sampling_moves_every_adapter(models):
    for a_name, v_name in (
        ("audioldm", "animatediff"),
        ("stable_audio", "ltx_video"),
        ("auffusion", "animatediff"),
        ("spectrogram_image", "ltx_video"),
    ):
        a_model, v_model = models[a_name], models[v_name]
        outs = []
        for disc in (None, coupled_disc):
            a_s = stream(a_model, lockstep_scheduler(a_model), 2.0, 0, scale=50.0)
            v_s = stream(v_model, lockstep_scheduler(v_model), 2.0, 1, scale=50.0)
            outs.append(
                joint_sample(a_s, v_s, disc, batch_size=2, num_inference_steps=2, progress=False)
            )
        for plain, guided in zip(*outs, strict=True):
            assert torch.isfinite(guided).all()
            assert not torch.allclose(plain, guided), (a_name, v_name)


def test_encode_decode_shapes_and_media(models):
    audioldm = models["audioldm"]
    wave = 0.1 * torch.randn(2, audioldm.num_samples, generator=generator(0))
    z = audioldm.encode(wave)
    assert z.shape == (2, *audioldm.latent_shape())
    assert audioldm.decode(z).shape == (2, audioldm.num_samples)

    auff = models["auffusion"]
    z = auff.encode(0.1 * torch.randn(2, auff.num_samples, generator=generator(1)))
    assert z.shape == (2, *auff.latent_shape())
    assert auff.decode(z).shape == (2, auff.num_samples)

    ldm2 = models["audioldm2"]
    z = ldm2.encode(0.1 * torch.randn(2, ldm2.num_samples, generator=generator(5)))
    assert z.shape == (2, *ldm2.latent_shape())
    assert ldm2.decode(z).shape == (2, ldm2.num_samples)

    anim = models["animatediff"]
    video = torch.rand(2, 3, 4, 16, 16, generator=generator(2)) * 2 - 1
    z = anim.encode(video)
    assert z.shape == (2, *anim.latent_shape())
    assert anim.decode(z).shape == video.shape

    ltx = models["ltx_video"]
    video = torch.rand(1, 3, 9, 32, 32, generator=generator(3)) * 2 - 1
    z = ltx.encode(video)
    assert z.shape == (1, *ltx.latent_shape())
    assert ltx.decode(z).shape == video.shape
    torch.testing.assert_close(ltx.unpack(ltx.pack(z)), z)

    sa = models["stable_audio"]
    z = sa.encode(torch.randn(2, 2, 8, generator=generator(4)))
    assert z.shape == (2, *sa.latent_shape())
    assert sa.decode(z).shape[:2] == (2, 2)


def test_prompts_and_pooled_embeddings(models):
    for name, model in models.items():
        cond = model.encode_prompt(PROMPTS)
        pooled = model.pooled_text_embedding(cond)
        assert pooled.ndim == 2 and pooled.shape[0] == 2, name
        assert not torch.allclose(pooled[0], pooled[1]), name
    empty = models["stable_audio"].encode_prompt(["", "a dog barks"])
    assert empty.hidden_states[0].abs().sum() == 0 and empty.hidden_states[1].abs().sum() > 0


def test_spectrogram_image_round_trip():
    cfg = SpectrogramImageConfig()
    mel = torch.empty(2, 16, cfg.n_mels).uniform_(np.log(cfg.min_value), np.log(cfg.max_value))
    image = mel_to_image(mel, cfg)
    assert image.shape == (2, 3, cfg.n_mels, 16) and image.min() >= -1 and image.max() <= 1
    # Low frequencies at the bottom of the image, as Auffusion draws them.
    torch.testing.assert_close(
        image[:, 0, -1],
        (mel[..., 0] - np.log(cfg.min_value)) / (np.log(cfg.max_value) - np.log(cfg.min_value)) * 2
        - 1,
    )
    torch.testing.assert_close(image_to_mel(image, cfg), mel, rtol=1e-4, atol=1e-4)


def test_stable_audio_scheduler_and_schedule_agree(models):
    model = models["stable_audio"]
    scheduler = model.make_scheduler()
    assert isinstance(scheduler, CosineDPMSolverScheduler)
    scheduler.set_timesteps(5)
    x = torch.randn(1, 3, 4, generator=generator(0))
    for sigma, t in zip(scheduler.sigmas[:-1], scheduler.timesteps, strict=True):
        alpha, sig = CosineSchedule().alpha_sigma(t)
        # scale_model_input maps the EDM sample to the VP x_t = alpha * (x_edm).
        scheduler._step_index = None
        torch.testing.assert_close(scheduler.scale_model_input(x, t), alpha * x)
        torch.testing.assert_close(sig / alpha, sigma.reshape(1).float(), rtol=1e-4, atol=1e-4)


def test_unknown_adapter_and_bad_folder(tmp_path):
    with pytest.raises(ValueError, match="unknown base model adapter 'nope'"):
        load_base_model("nope", str(tmp_path))
    (tmp_path / "spectrogram.json").write_text(json.dumps({"n_melz": 3}))
    with pytest.raises(ValueError, match="n_melz"):
        SpectrogramImageConfig.load(str(tmp_path / "spectrogram.json"))


def test_real_clips_cached_through_adapters(models, tmp_path):
    """Captions reach both base models' text encoders and the discriminator's text inputs."""
    rng = np.random.default_rng(0)
    rows = []
    for i, caption in enumerate(PROMPTS):
        frames = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
        audio = (0.3 * rng.standard_normal(16000)).astype(np.float32)
        write_mp4(tmp_path / f"c{i}.mp4", frames, 8, audio, sample_rate=16000)
        rows.append(json.dumps({"path": f"c{i}.mp4", "caption": caption, "start": 0.25}))
    (tmp_path / "clips.jsonl").write_text("\n".join(rows))
    spec = ClipSpec(duration=0.5, fps=8.0, size=16, sample_rate=16000, posterior="mode")
    dataset = ClipDataset(tmp_path / "clips.jsonl", spec)
    audio_model, video_model = models["audioldm"], models["animatediff"]
    cache_latents(dataset, audio_model, video_model, tmp_path / "cache", progress=False)
    cache = load_latent_cache(tmp_path / "cache")
    assert cache.captions == PROMPTS
    batch = collate([dataset[0], dataset[1]])
    torch.testing.assert_close(cache.audio, audio_model.encode(batch["audio"]))
    torch.testing.assert_close(cache.video, video_model.encode(batch["video"]))
    for key, model in (("text_audio", audio_model), ("text_video", video_model)):
        pooled = model.pooled_text_embedding(model.encode_prompt(PROMPTS))
        torch.testing.assert_close(cache.cond[key], pooled)
        empty = model.pooled_text_embedding(model.encode_prompt([""]))[0]
        torch.testing.assert_close(cache.uncond[key], empty)
