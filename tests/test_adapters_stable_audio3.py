"""Stable Audio 3 on tiny random components: with the discriminator off, mmdisco's joint
sampler reproduces ``StableAudio3Pipeline`` for the deterministic "base" sampler (with CFG)
and for the distilled checkpoint's stochastic "ping-pong" sampler (same generator)."""

from __future__ import annotations

import pytest
import torch

from _tiny_sa3_ltx2 import SA3_SECONDS, save_stable_audio3
from mmdisco.base_models import load_base_model
from mmdisco.base_models.stable_audio3 import LogSNRFlowMatchScheduler
from mmdisco.diffusion import FlowSchedule
from mmdisco.sampling import Stream, joint_sample
from mmdisco.world.models import load_world_models

PROMPTS = ["a dog barks", "hammer hits wood"]
STEPS = 3

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("sa3")
    folders = {
        "base": save_stable_audio3(root / "base", stochastic=False),
        "medium": save_stable_audio3(root / "medium", stochastic=True),
    }
    return {
        name: load_base_model("stable_audio_3", str(path), duration=SA3_SECONDS)
        for name, path in folders.items()
    }


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sample_with_world_video(model, cfg: float, disc=None, scale: float = 1.0) -> torch.Tensor:
    """Stable Audio 3 in a joint run next to the world's video model."""
    _, video = load_world_models()
    cond, uncond = model.encode_prompt_pair(PROMPTS)
    audio = Stream(
        model=model,
        scheduler=model.make_scheduler(),
        cond=cond,
        uncond=uncond,
        cfg_scale=cfg,
        guidance_scale=scale,
        generator=generator(0),
    )
    partner = Stream(model=video, scheduler=video.make_scheduler(), generator=generator(1))
    a, _ = joint_sample(
        audio, partner, disc, batch_size=len(PROMPTS), num_inference_steps=STEPS, progress=False
    )
    return a


@pytest.mark.parametrize(("name", "cfg"), [("base", 3.0), ("base", 1.0), ("medium", 1.0)])
def test_unguided_sampling_reproduces_the_pipeline(models, name, cfg):
    model = models[name]
    latents = sample_with_world_video(model, cfg)
    assert latents.shape == (len(PROMPTS), *model.latent_shape())
    pipe = model.pipe
    pipe.scheduler = model.make_scheduler()
    expected = pipe(
        PROMPTS,
        duration=SA3_SECONDS,
        num_inference_steps=STEPS,
        guidance_scale=cfg,
        generator=generator(0),
        output_type="latent",
    ).audios
    torch.testing.assert_close(latents, expected, rtol=1e-4, atol=1e-5)
    pipe.scheduler = model.make_scheduler()
    audio = pipe(
        PROMPTS,
        duration=SA3_SECONDS,
        num_inference_steps=STEPS,
        guidance_scale=cfg,
        generator=generator(0),
    ).audios
    decoded = model.decode(latents)
    assert decoded.shape == audio.shape
    torch.testing.assert_close(decoded, audio, rtol=1e-4, atol=1e-4 * float(audio.abs().max()))


def test_medium_sampler_is_stochastic_and_uses_the_stream_generator(models):
    """The ping-pong sampler re-noises every step: the stream's generator decides the result,
    so the two samplers part ways on the same initial noise."""
    base, medium = (sample_with_world_video(models[n], 1.0) for n in ("base", "medium"))
    assert models["medium"].pipe.scheduler.config.stochastic_sampling
    assert not torch.allclose(base, medium, atol=1e-3)


def test_scheduler_sigmas_are_the_pipelines_log_snr_grid(models):
    from diffusers.pipelines.stable_audio_3.pipeline_stable_audio_3 import logsnr_sigma_schedule

    model = models["base"]
    scheduler = model.make_scheduler()
    assert isinstance(scheduler, LogSNRFlowMatchScheduler)
    scheduler.set_timesteps(5)
    expected = torch.tensor([*logsnr_sigma_schedule(5, -6.2, 2.0), 0.0])
    torch.testing.assert_close(scheduler.sigmas.float(), expected)
    # The transformer's timestep is sigma itself, on the flow path the discriminator sees.
    assert isinstance(model.schedule, FlowSchedule)
    alpha, sigma = model.schedule.alpha_sigma(scheduler.timesteps[:1])
    torch.testing.assert_close(sigma, expected[:1])
    torch.testing.assert_close(alpha, 1 - expected[:1])


def test_guidance_moves_the_sample(models):
    def disc(audio, video, log_snr_a, log_snr_v, **kw):
        return 5.0 * audio.flatten(1).tanh().mean(1) * video.flatten(1).tanh().mean(1)

    plain = sample_with_world_video(models["base"], 2.0)
    guided = sample_with_world_video(models["base"], 2.0, disc=disc, scale=50.0)
    assert torch.isfinite(guided).all()
    assert not torch.allclose(plain, guided, atol=1e-4)


def test_encode_decode_and_options(models, tmp_path):
    model = models["base"]
    wave = 0.1 * torch.randn(2, 2, int(SA3_SECONDS * model.sample_rate), generator=generator(3))
    z = model.encode(wave)
    assert z.shape == (2, *model.latent_shape())
    assert model.decode(z).shape == wave.shape
    assert model.encode(wave[:, 0]).shape == z.shape  # mono is spread over both channels
    with pytest.raises(ValueError, match="duration=0"):
        type(model)(model.pipe, duration=0)
    pooled = model.pooled_text_embedding(model.encode_prompt(PROMPTS))
    assert pooled.shape == (2, 16) and pooled.dtype == torch.float32
