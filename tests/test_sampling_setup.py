"""The one sampling setup: SamplingConfig, the scheduler resolver, build_stream and
sample_batches (checked against joint_sample on streams built by hand)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import Tensor

from _shrink import ShrinkModel
from mmdisco.base_models.loading import cfg_mix, make_scheduler
from mmdisco.errors import ConfigError, InputError
from mmdisco.sampling import SamplingConfig, Stream, joint_sample, sample_batches
from mmdisco.seeding import derive_seed


def product_disc(a: Tensor, v: Tensor, snr_a: Tensor, snr_v: Tensor) -> Tensor:
    """A logit coupling the two modalities, so that guidance moves both."""
    return torch.tanh(a.flatten(1).mean(1) * v.flatten(1).mean(1))


def models() -> tuple[ShrinkModel, ShrinkModel]:
    return ShrinkModel("audio", (2, 3), 1.0), ShrinkModel("video", (3, 2), -1.0)


def test_scheduler_names_short_or_diffusers_resolve_alike() -> None:
    audio, _ = models()
    assert isinstance(make_scheduler(audio), DDPMScheduler)  # "default": the model's own
    short, long = make_scheduler(audio, "ddim"), make_scheduler(audio, "DDIMScheduler")
    assert isinstance(short, DDIMScheduler) and dict(short.config) == dict(long.config)
    dpm = SamplingConfig(scheduler="dpm", solver_order=3).make_scheduler(audio)
    assert isinstance(dpm, DPMSolverMultistepScheduler) and dpm.config.solver_order == 3
    # Options a class does not take are not passed to it (DDIM has no solver order).
    assert isinstance(SamplingConfig(scheduler="ddim").make_scheduler(audio), DDIMScheduler)
    with pytest.raises(ConfigError, match=r"sampling\.scheduler: no diffusers scheduler named"):
        make_scheduler(audio, "NopeScheduler")
    with pytest.raises(InputError, match=r"scheduler.*'nope'"):
        SamplingConfig(scheduler="nope")


def test_cfg_mix() -> None:
    cond, uncond = torch.tensor([3.0, -1.0]), torch.tensor([1.0, 1.0])
    torch.testing.assert_close(cfg_mix(uncond, cond, 2.5), torch.tensor([6.0, -4.0]))
    torch.testing.assert_close(cfg_mix(uncond, cond, 1.0), cond)


def by_hand(sampling: SamplingConfig, n: int, seed: int, batch: int, disc) -> tuple[Tensor, ...]:
    """joint_sample batch by batch, streams built by hand from the documented seeds."""
    out_a, out_v = [], []
    for b, start in enumerate(range(0, n, batch)):
        streams = [
            Stream(
                model,
                DDIMScheduler.from_config(model.scheduler_config),
                guidance_scale=scale,
                generator=torch.Generator().manual_seed(derive_seed(seed, b, k)),
            )
            for k, (model, scale) in enumerate(zip(models(), (2.0, 0.5), strict=True))
        ]
        a, v = joint_sample(
            *streams,
            disc,
            batch_size=min(batch, n - start),
            num_inference_steps=sampling.num_inference_steps,
            progress=False,
        )
        out_a.append(a)
        out_v.append(v)
    return torch.cat(out_a), torch.cat(out_v)


@pytest.mark.parametrize("disc", [None, product_disc])
def test_sample_batches_is_joint_sample_per_batch(disc) -> None:
    sampling = SamplingConfig(
        num_inference_steps=4,
        scheduler="ddim",
        guidance_scale_audio=2.0,
        guidance_scale_video=0.5,
        batch_size=2,
        seed=3,
    )
    a, v = sample_batches(*models(), 5, sampling, discriminator=disc)
    ref_a, ref_v = by_hand(sampling, 5, 3, 2, disc)
    torch.testing.assert_close(a, ref_a)
    torch.testing.assert_close(v, ref_v)
    # Guidance moved the samples (the comparison above is not vacuous).
    if disc is not None:
        plain_a, _ = sample_batches(*models(), 5, sampling)
        assert not torch.allclose(a, plain_a)


def test_sliding_window_setting_guides_through_windows() -> None:
    """``sampling.sliding_window`` wraps the discriminator in SlidingWindow: the same samples
    as that wrapper passed by hand, and not those of the discriminator on the whole clip."""
    from mmdisco.discriminator.sliding import SlidingWindow

    long = ShrinkModel("audio", (2, 8), 1.0), ShrinkModel("video", (3, 4, 2), -1.0)
    common = dict(num_inference_steps=3, scheduler="ddim", guidance_scale_audio=4.0, seed=2)
    windowed = SamplingConfig(**common, sliding_window=[4, 2], sliding_overlap=0.5)
    assert windowed.sliding_window == (4, 2)
    plain = SamplingConfig(**common)
    a, v = sample_batches(*long, 3, windowed, discriminator=product_disc)
    by_hand_disc = SlidingWindow(product_disc, (4, 2), overlap=0.5)
    ref_a, ref_v = sample_batches(*long, 3, plain, discriminator=by_hand_disc)
    torch.testing.assert_close(a, ref_a)
    torch.testing.assert_close(v, ref_v)
    whole_a, _ = sample_batches(*long, 3, plain, discriminator=product_disc)
    assert not torch.allclose(a, whole_a)
    unguided_a, _ = sample_batches(*long, 3, windowed)  # no discriminator: nothing to wrap
    torch.testing.assert_close(unguided_a, sample_batches(*long, 3, plain)[0])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sliding_window", [4], r"sliding_window: must be \[audio, video\] latent frames"),
        ("sliding_window", [4, 0], r"sliding_window\[1\]: must be >= 1, got 0"),
        ("sliding_window", "64", r"sliding_window: must be a non-empty list of integers"),
        ("sliding_overlap", 1.0, "sliding_overlap: must be >= 0.0 and < 1.0, got 1.0"),
    ],
)
def test_bad_sliding_window_settings_are_named(field, value, message) -> None:
    with pytest.raises(InputError, match=message):
        SamplingConfig(**{field: value})


def test_sample_batches_keeps_given_clips_and_checks_them() -> None:
    sampling = SamplingConfig(num_inference_steps=3, scheduler="ddpm", batch_size=2)
    given = torch.randn(3, 3, 2)
    a, v = sample_batches(*models(), 3, sampling, given=("video", given))
    torch.testing.assert_close(v, given)
    assert a.shape == (3, 2, 3) and torch.isfinite(a).all()
    with pytest.raises(InputError, match="4 pairs requested but 3 given video clips"):
        sample_batches(*models(), 4, sampling, given=("video", given))


def test_library_modules_do_not_import_the_layers_above() -> None:
    code = (
        "import sys, mmdisco.metrics.convert, mmdisco.config, mmdisco.pipeline, "
        "mmdisco.training.memory, mmdisco.training.fakes\n"
        "bad = [m for m in ('mmdisco.cli', 'mmdisco.experiment') if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
