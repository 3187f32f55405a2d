"""joint_sample is faithful to diffusers when unguided and consistent across parameterisations."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    SchedulerMixin,
    UNet1DModel,
    UNet2DModel,
    UniPCMultistepScheduler,
)
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from mmdisco.base_models.base import BaseModel
from mmdisco.diffusion import LOG_SNR_LIMIT, FlowSchedule, from_epsilon
from mmdisco.sampling import GuidanceOptions, Stream, joint_sample

STEPS = 8


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_unet2d(seed: int, channels: int = 3) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()


def tiny_unet1d(seed: int) -> UNet1DModel:
    torch.manual_seed(seed)
    return UNet1DModel(
        sample_size=32,
        in_channels=2,
        out_channels=2,
        block_out_channels=(32, 32),
        down_block_types=("DownBlock1DNoSkip", "DownBlock1D"),
        up_block_types=("UpBlock1D", "UpBlock1DNoSkip"),
        mid_block_type="UNetMidBlock1D",
        extra_in_channels=64,
        use_timestep_embedding=False,
        time_embedding_type="fourier",
        flip_sin_to_cos=True,
    ).eval()


class UNetModel(BaseModel):
    """A diffusers UNet as a base model; ``cond`` (a number) is added to the output so that
    classifier-free guidance has something to mix."""

    def __init__(self, unet: nn.Module, scheduler: SchedulerMixin, modality: str) -> None:
        self.unet, self.modality = unet, modality
        self.scheduler_config = {**scheduler.config, "_class_name": type(scheduler).__name__}

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        out = self.unet(x_t, t).sample
        return out if cond is None else out + cond

    def latent_shape(self) -> tuple[int, ...]:
        size = self.unet.config.sample_size
        channels = self.unet.config.in_channels
        return (channels, size) if isinstance(self.unet, UNet1DModel) else (channels, size, size)


class EquivalentModel(BaseModel):
    """An epsilon model re-expressed in another parameterisation (same schedule)."""

    def __init__(self, base: UNetModel, prediction_type: str) -> None:
        self.base, self.modality = base, base.modality
        self.scheduler_config = {**base.scheduler_config, "prediction_type": prediction_type}

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        alpha, sigma = self.schedule.alpha_sigma(torch.as_tensor(t).expand(x_t.shape[0]))
        return from_epsilon(
            self.base.predict(x_t, t, cond), x_t, alpha, sigma, self.prediction_type
        )

    def latent_shape(self) -> tuple[int, ...]:
        return self.base.latent_shape()


class CoupledDisc(nn.Module):
    """h = a . W v + text_audio . P_a a + text_video . P_v v (smooth, couples the modalities).

    Its input-gradients are linear in each text input, which the CFG-mixing test relies on.
    """

    def __init__(self, dim_a: int, dim_v: int, dim_text: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(dim_a, dim_v, generator=g) / (dim_a * dim_v) ** 0.5)
        self.p_a = nn.Parameter(torch.randn(dim_text, dim_a, generator=g) / dim_a**0.5)
        self.p_v = nn.Parameter(torch.randn(dim_text, dim_v, generator=g) / dim_v**0.5)

    def forward(self, a, v, snr_a, snr_v, text_audio=None, text_video=None) -> Tensor:
        a, v = a.flatten(1), v.flatten(1)
        h = torch.einsum("bi,ij,bj->b", torch.tanh(a), self.w, v) * (1 + 0.01 * snr_a)
        if text_audio is not None:
            h = h + ((text_audio @ self.p_a) * a).sum(1)
        if text_video is not None:
            h = h + ((text_video @ self.p_v) * v).sum(1)
        return h


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _streams(sched_cls=DDPMScheduler, audio_1d: bool = False, **sched_kwargs):
    """Two tiny UNet base models with fresh schedulers and seeded generators."""
    sched_a = sched_cls(num_train_timesteps=100, **sched_kwargs)
    sched_v = sched_cls(num_train_timesteps=100, **sched_kwargs)
    unet_a = tiny_unet1d(0) if audio_1d else tiny_unet2d(0, channels=2)
    audio = Stream(UNetModel(unet_a, sched_a, "audio"), sched_a, generator=_gen(10))
    video = Stream(UNetModel(tiny_unet2d(1), sched_v, "video"), sched_v, generator=_gen(11))
    return audio, video


def _disc(audio: Stream, video: Stream) -> CoupledDisc:
    dim = [int(torch.tensor(s.model.latent_shape()).prod()) for s in (audio, video)]
    return CoupledDisc(*dim)


def _reference_loop(unet, scheduler, shape, seed: int, steps: int) -> Tensor:
    """diffusers' documented sampling loop, written out."""
    generator = _gen(seed)
    scheduler.set_timesteps(steps)
    x = randn_tensor(shape, generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = unet(scheduler.scale_model_input(x, t), t).sample
        extra = {"generator": generator} if isinstance(scheduler, DDPMScheduler) else {}
        x = scheduler.step(out, t, x, **extra).prev_sample
    return x


def _to_image(x: Tensor):
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("sched_cls", [DDPMScheduler, DDIMScheduler])
def test_unguided_matches_ddpm_pipeline(sched_cls) -> None:
    audio, video = _streams(sched_cls)
    a, v = joint_sample(audio, video, batch_size=2, num_inference_steps=STEPS, progress=False)
    for stream, x, seed in ((audio, a, 10), (video, v, 11)):
        pipe = DDPMPipeline(
            unet=stream.model.unet, scheduler=sched_cls.from_config(stream.scheduler.config)
        )
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(batch_size=2, generator=_gen(seed), num_inference_steps=STEPS, output_type="np")
        torch.testing.assert_close(torch.from_numpy(_to_image(x)), torch.from_numpy(ref.images))


def test_unguided_matches_ddim_pipeline() -> None:
    audio, video = _streams(DDIMScheduler)
    _, v = joint_sample(audio, video, batch_size=2, num_inference_steps=STEPS, progress=False)
    pipe = DDIMPipeline(
        unet=video.model.unet, scheduler=DDIMScheduler.from_config(video.scheduler.config)
    )
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        batch_size=2, generator=_gen(11), num_inference_steps=STEPS, output_type="np", eta=0.0
    )
    torch.testing.assert_close(torch.from_numpy(_to_image(v)), torch.from_numpy(ref.images))


@pytest.mark.parametrize("sched_cls", [DPMSolverMultistepScheduler, UniPCMultistepScheduler])
def test_unguided_matches_reference_loop(sched_cls) -> None:
    audio, video = _streams(sched_cls)
    a, v = joint_sample(audio, video, batch_size=2, num_inference_steps=STEPS, progress=False)
    for stream, x, seed in ((audio, a, 10), (video, v, 11)):
        scheduler = sched_cls.from_config(stream.scheduler.config)
        shape = (2, *stream.model.latent_shape())
        ref = _reference_loop(stream.model.unet, scheduler, shape, seed, STEPS)
        torch.testing.assert_close(x, ref)


def test_unguided_unet1d_matches_reference_loop() -> None:
    audio, video = _streams(DDPMScheduler, audio_1d=True)
    a, _ = joint_sample(audio, video, batch_size=2, num_inference_steps=4, progress=False)
    scheduler = DDPMScheduler.from_config(audio.scheduler.config)
    ref = _reference_loop(audio.model.unet, scheduler, (2, 2, 32), 10, 4)
    torch.testing.assert_close(a, ref)


def _run(audio, video, disc=None, steps: int = STEPS, **options) -> tuple[Tensor, Tensor]:
    for s, seed in ((audio, 10), (video, 11)):
        s.generator = _gen(seed)
    return joint_sample(
        audio,
        video,
        disc,
        batch_size=3,
        num_inference_steps=steps,
        options=GuidanceOptions(**options),
        progress=False,
    )


def test_window_excludes_steps() -> None:
    audio, video = _streams(DDIMScheduler)
    disc = _disc(audio, video)
    plain = _run(audio, video)
    empty = _run(audio, video, disc, window=(1.0, 1.0))  # t / T < 1 at every step
    full = _run(audio, video, disc)
    late = _run(audio, video, disc, window=(0.0, 0.5))
    for x, y in zip(plain, empty, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    for x, y, z in zip(plain, full, late, strict=True):
        assert (x - y).abs().max() > 1e-3 and (y - z).abs().max() > 1e-4
        assert (x - z).abs().max() > 1e-4


def test_bad_numbers_are_refused_before_sampling() -> None:
    from mmdisco.sampling import GuidanceOptions, joint_sample

    with pytest.raises(ValueError, match=r"window\[0\]: must be >= 0\.0 and <= 1\.0, got 1\.5"):
        GuidanceOptions(window=(1.5, 2.0))
    with pytest.raises(ValueError, match="chunk_size: must be >= 1, got 0"):
        GuidanceOptions(chunk_size=0)
    audio, video = _streams(DDIMScheduler)
    with pytest.raises(ValueError, match="num_inference_steps: must be >= 1, got 0"):
        joint_sample(audio, video, num_inference_steps=0, progress=False)
    audio.guidance_scale = float("nan")
    with pytest.raises(ValueError, match="audio guidance_scale: must be finite, got nan"):
        joint_sample(audio, video, num_inference_steps=2, progress=False)


def test_chunked_gradient_equals_unchunked() -> None:
    audio, video = _streams(DDPMScheduler)
    disc = _disc(audio, video)
    full = _run(audio, video, disc)
    chunked = _run(audio, video, disc, chunk_size=2)
    for x, y in zip(full, chunked, strict=True):
        torch.testing.assert_close(x, y)


def test_cfg_on_discriminator_mixes_corrections() -> None:
    audio, video = _streams(DDIMScheduler)
    disc = _disc(audio, video)
    g = _gen(3)
    cond = {k: torch.randn(3, 4, generator=g) for k in ("a", "v", "ua", "uv")}
    for s, key, scale in ((audio, "a", 2.0), (video, "v", 3.5)):
        s.cond, s.uncond, s.cfg_scale = 0.05, 0.0, scale
        s.disc_text, s.disc_text_uncond = cond[key], cond["u" + key]
    mixed = _run(audio, video, disc, cfg_on_discriminator=True)
    # h's gradient is linear in the text, so mixing corrections equals mixing texts.
    for s, key in ((audio, "a"), (video, "v")):
        s.disc_text = cond["u" + key] + s.cfg_scale * (cond[key] - cond["u" + key])
    by_text = _run(audio, video, disc)
    for x, y in zip(mixed, by_text, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    for s, key in ((audio, "a"), (video, "v")):
        s.disc_text = cond[key]
    unmixed = _run(audio, video, disc)
    assert (mixed[0] - unmixed[0]).abs().max() > 1e-4


@pytest.mark.parametrize("ptype", ["v_prediction", "sample"])
def test_other_parameterisations_get_epsilon_consistent_corrections(ptype: str) -> None:
    """A v-/x0-prediction model sampled with a discriminator (DDIM, eta 0) gives the same pairs
    as the equivalent epsilon model with the same discriminator."""
    kwargs = {"clip_sample": False, "set_alpha_to_one": False}
    audio, video = _streams(DDIMScheduler, **kwargs)
    disc = _disc(audio, video)
    eps_run = _run(audio, video, disc)
    for s in (audio, video):
        s.model = EquivalentModel(s.model, ptype)
        s.scheduler = DDIMScheduler(num_train_timesteps=100, prediction_type=ptype, **kwargs)
    other_run = _run(audio, video, disc)
    plain = _run(audio, video)
    for x, y, z in zip(eps_run, other_run, plain, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
        assert (x - z).abs().max() > 1e-3  # the discriminator did act


def test_flow_model_correction_is_delta_eps_over_one_minus_t() -> None:
    """Euler on a flow model with guidance: u_hat = u + d_eps / (1 - s), d_eps = -lambda s grad h;
    at s = 1 (pure noise) it divides by the alpha the discriminator is told (its log-SNR clip,
    s * exp(-LOG_SNR_LIMIT / 2)), so nothing becomes NaN."""
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=100)
    sched_v = FlowMatchEulerDiscreteScheduler(num_train_timesteps=100)
    audio = Stream(UNetModel(tiny_unet2d(0, 2), sched, "audio"), sched, guidance_scale=1.5)
    video = Stream(UNetModel(tiny_unet2d(1), sched_v, "video"), sched_v, guidance_scale=0.5)
    disc = _disc(audio, video)
    a_out, v_out = _run(audio, video, disc, steps=6)
    assert torch.isfinite(a_out).all() and torch.isfinite(v_out).all()

    flow = FlowSchedule(100)
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=100)
    ref.set_timesteps(6)
    a = randn_tensor((3, 2, 8, 8), generator=_gen(10))
    v = randn_tensor((3, 3, 8, 8), generator=_gen(11))
    for i, t in enumerate(ref.timesteps):
        s, s_next = ref.sigmas[i], ref.sigmas[i + 1]
        u_a, u_v = audio.model.predict(a, t), video.model.predict(v, t)
        snr = flow.log_snr(t).expand(3)
        with torch.enable_grad():
            a_, v_ = a.clone().requires_grad_(), v.clone().requires_grad_()
            g_a, g_v = torch.autograd.grad(disc(a_, v_, snr, snr).sum(), (a_, v_))
        seen = max(1 - s, s * math.exp(-LOG_SNR_LIMIT / 2))
        u_a = u_a - 1.5 * s * g_a / seen
        u_v = u_v - 0.5 * s * g_v / seen
        a, v = a + (s_next - s) * u_a, v + (s_next - s) * u_v
    torch.testing.assert_close(a_out, a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(v_out, v, rtol=1e-4, atol=1e-5)


def test_mismatched_step_counts_raise() -> None:
    audio, video = _streams(DDPMScheduler)
    video.scheduler = DDPMScheduler(num_train_timesteps=100, timestep_spacing="leading")
    video.scheduler.set_timesteps = lambda n, device=None: DDPMScheduler.set_timesteps(
        video.scheduler, n + 1, device=device
    )
    with pytest.raises(ValueError, match="disagree on the number of steps"):
        joint_sample(audio, video, num_inference_steps=4, progress=False)


# -- edge cases -------------------------------------------------------------------------------


def test_given_latents_are_scaled_by_init_noise_sigma() -> None:
    """As diffusers' prepare_latents: unit-variance latents times init_noise_sigma (Euler's
    is 1.32 here), so giving the noise equals letting the generator draw it."""
    from diffusers import EulerDiscreteScheduler

    drawn = _streams(EulerDiscreteScheduler)
    given = _streams(EulerDiscreteScheduler)
    assert drawn[0].scheduler.init_noise_sigma > 1.3
    for s, seed in zip(given, (10, 11), strict=True):
        s.latents = randn_tensor((3, *s.model.latent_shape()), generator=_gen(seed))
        s.generator = _gen(99)  # unused by Euler's deterministic steps
    for x, y in zip(_run(*drawn, steps=3), _run(*given, steps=3), strict=True):
        torch.testing.assert_close(x, y)


def test_window_is_judged_on_each_modality_own_noise_level(monkeypatch) -> None:
    """With 'leading' audio and 'trailing' video timesteps the two noise levels straddle the
    window's edge at some steps: each modality is corrected only inside the window itself."""
    import mmdisco.sampling as sampling

    audio, video = _streams(DDIMScheduler)
    video.scheduler = DDIMScheduler(num_train_timesteps=100, timestep_spacing="trailing")
    applied = []
    original = sampling._apply

    def spy(schedule, ptype, out, delta, t):
        applied.append((out.shape[1], int(t)))  # 2 channels: audio, 3: video
        return original(schedule, ptype, out, delta, t)

    monkeypatch.setattr(sampling, "_apply", spy)
    _run(audio, video, _disc(audio, video), window=(0.0, 0.5))
    audio_steps = [t for c, t in applied if c == 2]
    video_steps = [t for c, t in applied if c == 3]
    audio.scheduler.set_timesteps(STEPS)
    video.scheduler.set_timesteps(STEPS)
    assert audio_steps == [int(t) for t in audio.scheduler.timesteps if t / 100 <= 0.5]
    assert video_steps == [int(t) for t in video.scheduler.timesteps if t / 100 <= 0.5]
    assert len(audio_steps) != len(video_steps)  # the old rule (audio's level) gave equal lists


def test_discriminator_runs_in_eval_mode_and_keeps_its_mode() -> None:
    audio, video = _streams(DDIMScheduler)
    disc = _disc(audio, video)
    modes = []
    disc.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    disc.train()
    _run(audio, video, disc, steps=2)
    assert modes and not any(modes)
    assert disc.training


def test_only_batched_keyword_tensors_are_chunked() -> None:
    audio, video = _streams(DDIMScheduler)
    inner = _disc(audio, video)
    seen = []

    def disc(a, v, snr_a, snr_v, shared, per_sample):
        seen.append((tuple(shared.shape), tuple(per_sample.shape), a.shape[0]))
        return inner(a, v, snr_a, snr_v) + (per_sample * a.flatten(1)[:, :4]).sum(1) * shared[0]

    extra = {"shared": torch.ones(4), "per_sample": torch.randn(3, 4, generator=_gen(0))}
    full = _run(audio, video, disc, steps=2, extra=extra)
    chunked = _run(audio, video, disc, steps=2, extra=extra, chunk_size=2)
    for x, y in zip(full, chunked, strict=True):
        torch.testing.assert_close(x, y)
    assert {(s, p, b) for s, p, b in seen} == {
        ((4,), (3, 4), 3),
        ((4,), (2, 4), 2),
        ((4,), (1, 4), 1),
    }


def test_cfg_on_discriminator_needs_an_unconditional_input() -> None:
    audio, video = _streams(DDIMScheduler)
    disc = _disc(audio, video)
    with pytest.raises(ValueError, match="neither stream gives the discriminator a conditional"):
        _run(audio, video, disc, cfg_on_discriminator=True)
    audio.disc_text = torch.zeros(3, 4)
    audio.cfg_scale = 3.0
    with pytest.raises(ValueError, match=r"audio stream has cfg_scale 3\.0 but no unconditional"):
        _run(audio, video, disc, cfg_on_discriminator=True)
    audio.cond, audio.uncond = 0.05, 0.0
    a, _ = _run(audio, video, disc, cfg_on_discriminator=True)
    assert torch.isfinite(a).all()
