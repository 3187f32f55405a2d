"""Half precision and devices: every adapter runs with float16 / bfloat16 weights on float32
inputs and returns float32, the discriminator never sees a half tensor, a model that cannot
run in its dtype fails at load naming model and dtype, and ``.to()`` moves everything an
adapter owns (shown on the meta device)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from torch import nn

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
from mmdisco.base_models.loading import check_compute
from mmdisco.config import BaseModelConfig, ConfigError
from mmdisco.sampling import Stream, joint_sample

SAVERS = {
    "audioldm": save_audioldm,
    "audioldm2": save_audioldm2,
    "auffusion": save_auffusion,
    "spectrogram_image": save_spectrogram_image,
    "stable_audio": save_stable_audio,
    "animatediff": save_animatediff,
    "ltx_video": save_ltx,
}
OPTIONS = {
    "audioldm": dict(n_fft=16),
    "audioldm2": dict(n_fft=16),
    "auffusion": AUFFUSION,
    "animatediff": VIDEO,
    "ltx_video": LTX_VIDEO,
}
# bfloat16 keeps 8 bits of mantissa, float16 11; errors compound over a few layers.
TOLERANCE = {torch.bfloat16: 0.08, torch.float16: 0.01}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {name: save(root / name) for name, save in SAVERS.items()}


def load(folders, name, dtype=None):
    kwargs = dict(OPTIONS.get(name, {}))
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    return load_base_model(name, str(folders[name]), **kwargs)


def media_for(model, generator):
    if model.modality == "video":
        return torch.rand(1, 3, model.num_frames, model.height, model.width, generator=generator)
    if model.latent_shape()[0] == 3:  # Stable Audio: stereo waveforms
        return 0.3 * torch.randn(1, 2, 8, generator=generator)
    return 0.3 * torch.randn(1, model.num_samples, generator=generator)


def assert_near(got, want, tolerance, what):
    assert got.dtype == torch.float32, what
    scale = want.abs().max().clamp_min(1e-6)
    error = (got - want).abs().max() / scale
    assert error < tolerance, f"{what}: relative error {error:.4f}"
    assert not torch.equal(got, want), f"{what}: identical, so not computed in half precision"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", list(SAVERS))
def test_adapter_runs_in_half_precision(folders, name, dtype):
    """float32 noise and prompts in, float32 out, close to the float32 model's answers."""
    full, half = load(folders, name), load(folders, name, dtype)
    assert half.dtype == dtype
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *full.latent_shape(), generator=g)
    scheduler = full.make_scheduler()
    scheduler.set_timesteps(3)
    t = scheduler.timesteps[1]
    prompts = ["a dog barks", ""]
    want = full.predict(x, t, full.encode_prompt(prompts))
    assert_near(half.predict(x, t, half.encode_prompt(prompts)), want, TOLERANCE[dtype], name)
    media = media_for(full, g)
    assert_near(half.encode(media), full.encode(media), 4 * TOLERANCE[dtype], f"{name} encode")
    decoded = half.decode(x[:1])
    assert decoded.dtype == torch.float32 and torch.isfinite(decoded).all()


def test_discriminator_and_guidance_stay_float32(folders):
    """Half-precision base models, float32 latents, discriminator inputs and corrections."""
    audio = load(folders, "audioldm", torch.bfloat16)
    video = load(folders, "animatediff", torch.bfloat16)
    seen = []

    def disc(a, v, snr_a, snr_v, **kw):
        seen.append((a.dtype, v.dtype, kw["text_audio"].dtype, kw["text_video"].dtype))
        return (a.flatten(1).tanh().mean(1) * v.flatten(1).tanh().mean(1)) * 5

    streams = []
    for seed, model in enumerate((audio, video)):
        cond, uncond = model.encode_prompt_pair(["a dog barks"])
        streams.append(
            Stream(
                model,
                model.make_scheduler(DPMSolverMultistepScheduler),
                cond,
                uncond,
                cfg_scale=3.0,
                guidance_scale=20.0,
                generator=torch.Generator().manual_seed(seed),
                disc_text=model.pooled_text_embedding(cond),
            )
        )
    a, v = joint_sample(*streams, disc, batch_size=1, num_inference_steps=3, progress=False)
    assert a.dtype == v.dtype == torch.float32
    assert torch.isfinite(a).all() and torch.isfinite(v).all()
    assert seen and all(d == (torch.float32,) * 4 for d in seen)


def test_a_model_that_cannot_run_fails_at_load_naming_model_and_dtype(folders):
    spec = BaseModelConfig("audioldm", str(folders["audioldm"]), torch_dtype="bfloat16")
    model = load(folders, "audioldm", torch.bfloat16)
    check_compute("audio", spec, model)  # a healthy model passes
    model.pipe.unet.conv_out.to(torch.float64)  # weights of mixed dtypes
    with pytest.raises(ConfigError) as err:
        check_compute("audio", spec, model)
    message = str(err.value)
    assert message.startswith(f"audio (audioldm from '{folders['audioldm']}', torch_dtype bfloat16")
    assert "one denoiser step failed" in message


def owned_modules(obj, seen=None) -> list[nn.Module]:
    """Every nn.Module reachable from an adapter's attributes (independently of modules())."""
    seen = set() if seen is None else seen
    found = []
    values = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
    if hasattr(obj, "components"):
        values += list(obj.components.values())
    for value in values:
        items = value.values() if isinstance(value, dict) else value
        for item in items if isinstance(items, (list, tuple, type({}.values()))) else [value]:
            if id(item) in seen:
                continue
            seen.add(id(item))
            if isinstance(item, nn.Module):
                found.append(item)
            elif hasattr(item, "components"):  # a pipeline
                found += owned_modules(item, seen)
    return found


@pytest.mark.parametrize("name", list(SAVERS))
def test_to_moves_everything_an_adapter_owns(folders, name):
    model = load(folders, name)
    cond = model.encode_prompt(["a dog"])  # on the CPU; predict must move it
    modules = owned_modules(model)
    assert len(modules) >= 3
    if name in ("auffusion", "spectrogram_image"):
        assert any(m is model.vocoder for m in modules)
    model.to("meta")
    assert model.device.type == "meta"
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            assert tensor.device.type == "meta", (name, type(module).__name__)
    # Prediction then runs on the meta device (shapes only): nothing it uses was left behind.
    x = torch.zeros(1, *model.latent_shape(), device="meta")
    out = model.predict(x, torch.tensor(1), cond)
    assert out.device.type == "meta" and out.shape == x.shape
