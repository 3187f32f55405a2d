"""The Wan adapter against diffusers' WanPipeline, on tiny random components built here.

Three checkpoints' shapes: Wan 2.1 T2V (16-channel VAE, one transformer), Wan 2.2 A14B (two
experts split at ``boundary_ratio``, the low-noise one with its own CFG scale) and Wan 2.2
TI2V-5B (48-channel VAE compressing space by 16, per-token timesteps). With the discriminator
off, mmdisco's joint sampler must give the pipeline's final latents and decoded frames; the
audio partner is a silent flow model that the video stream never sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from torch import Tensor
from transformers import UMT5Config, UMT5EncoderModel

from _tiny import SilentFlowAudio as Silence
from _tiny import generator, t5_tokenizer
from mmdisco.base_models import load_base_model
from mmdisco.base_models.wan import WanModel
from mmdisco.diffusion import FlowSchedule
from mmdisco.sampling import Stream, joint_sample

PROMPTS = ["a dog barks", "hammer hits wood"]
STEPS = 3
TEXT_LEN = 16
SIZES = {  # num_frames, height, width
    "wan21": dict(num_frames=9, height=16, width=16),
    "wan22_a14b": dict(num_frames=9, height=16, width=16),
    "wan22_ti2v": dict(num_frames=5, height=32, width=32),
}

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_transformer(channels: int) -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=channels,
        out_channels=channels,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=1,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )


def tiny_vae(z_dim: int) -> AutoencoderKLWan:
    torch.manual_seed(0)
    if z_dim == 16:  # Wan 2.1 / 2.2 A14B; random statistics, so normalising is not a no-op
        g = torch.Generator().manual_seed(1)
        stats = dict(
            latents_mean=(0.3 * torch.randn(16, generator=g)).tolist(),
            latents_std=(1.0 + 0.5 * torch.rand(16, generator=g)).tolist(),
        )
        return AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            **stats,
        )
    return AutoencoderKLWan(  # Wan 2.2 TI2V-5B: 48 channels, patchified, 16x in space
        base_dim=3,
        z_dim=48,
        in_channels=12,
        out_channels=12,
        is_residual=True,
        patch_size=2,
        latents_mean=[0.1] * 48,
        latents_std=[1.5] * 48,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        temperal_downsample=[False, True, True],
    )


def save_wan(path: Path, variant: str) -> Path:
    tokenizer = t5_tokenizer(max_length=TEXT_LEN)
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    channels = 48 if variant == "wan22_ti2v" else 16
    extra: dict[str, Any] = {}
    if variant == "wan22_a14b":
        second = tiny_transformer(channels)
        with torch.no_grad():  # a different low-noise expert
            for p in second.parameters():
                p.mul_(-1.0)
        extra = dict(transformer_2=second, boundary_ratio=0.875)
    if variant == "wan22_ti2v":
        extra = dict(expand_timesteps=True)
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=tiny_vae(channels),
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        ),
        transformer=tiny_transformer(channels),
        **extra,
    )
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wan")
    return {name: save_wan(root / name, name) for name in SIZES}


def load(folders, name: str, **kw: Any) -> WanModel:
    return load_base_model(
        "wan", str(folders[name]), max_sequence_length=TEXT_LEN, **SIZES[name], **kw
    )


@pytest.fixture(scope="module")
def models(folders) -> dict[str, WanModel]:
    return {name: load(folders, name) for name in SIZES}


def video_stream(model: WanModel, cfg: float, seed: int, scale: float = 1.0) -> Stream:
    cond, uncond = model.encode_prompt_pair(PROMPTS)
    return Stream(
        model,
        model.make_scheduler(),
        cond=cond,
        uncond=uncond,
        cfg_scale=cfg,
        guidance_scale=scale,
        generator=generator(seed),
        disc_text=cond.pooled,
        disc_text_uncond=uncond.pooled,
    )


def sample(model: WanModel, cfg: float, disc: Any = None, scale: float = 1.0) -> Tensor:
    audio = Stream(Silence(), Silence().make_scheduler(), generator=generator(0))
    _, video = joint_sample(
        audio,
        video_stream(model, cfg, seed=1, scale=scale),
        disc,
        batch_size=len(PROMPTS),
        num_inference_steps=STEPS,
        progress=False,
    )
    return video


def pipeline_run(model: WanModel, cfg: float, **kw: Any) -> tuple[Tensor, Tensor]:
    """WanPipeline's final latents (caught at its last step) and decoded frames."""
    final: list[Tensor] = []

    def catch(pipe, i, t, tensors):
        final.append(tensors["latents"])
        return tensors

    pipe = model.pipe
    pipe.scheduler = model.make_scheduler()
    frames = pipe(
        PROMPTS,
        negative_prompt="",
        num_inference_steps=STEPS,
        guidance_scale=cfg,
        generator=generator(1),
        max_sequence_length=TEXT_LEN,
        output_type="pt",
        callback_on_step_end=catch,
        return_dict=False,
        **SIZES[_name(model)],
        **kw,
    )[0]
    return final[-1], frames


def _name(model: WanModel) -> str:
    if model.boundary_ratio is not None:
        return "wan22_a14b"
    return "wan22_ti2v" if model.pipe.config.expand_timesteps else "wan21"


@pytest.mark.parametrize("name", list(SIZES))
def test_unguided_joint_sampling_reproduces_wan_pipeline(models, name):
    model = models[name]
    latents = sample(model, cfg=5.0)
    assert latents.shape == (len(PROMPTS), *model.latent_shape())
    expected, frames = pipeline_run(model, cfg=5.0)
    torch.testing.assert_close(latents, expected.float(), rtol=1e-4, atol=1e-5)
    # The pipeline's frames are (B, F, 3, H, W) in [0, 1]; the adapter's (B, 3, F, H, W).
    decoded = model.decode(latents).permute(0, 2, 1, 3, 4) / 2 + 0.5
    assert decoded.shape == frames.shape
    torch.testing.assert_close(decoded, frames.float(), rtol=1e-4, atol=1e-4)


def test_a14b_low_noise_expert_has_its_own_cfg_scale(folders, models):
    """``guidance_scale_2`` reaches the sampler's CFG below the boundary, as in WanPipeline."""
    model = load(folders, "wan22_a14b", guidance_scale_2=2.0)
    assert model.cfg_scale_at(torch.tensor(900), 5.0) == 5.0
    assert model.cfg_scale_at(torch.tensor(600), 5.0) == 2.0
    per_sample = model.cfg_scale_at(torch.tensor([900, 600]), 5.0)
    assert per_sample.flatten().tolist() == [5.0, 2.0] and per_sample.shape == (2, 1, 1, 1, 1)
    latents = sample(model, cfg=5.0)
    expected, _ = pipeline_run(model, cfg=5.0, guidance_scale_2=2.0)
    torch.testing.assert_close(latents, expected.float(), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(latents, sample(models["wan22_a14b"], cfg=5.0))


def test_configured_a14b_mixes_each_sample_at_its_experts_scale(folders):
    """Training batches mix noise levels: each sample gets its expert's CFG scale."""
    from mmdisco.base_models.loading import ConfiguredModel

    model = load(folders, "wan22_a14b", guidance_scale_2=2.0)
    cond, uncond = model.encode_prompt_pair(PROMPTS)
    x = torch.randn(2, *model.latent_shape(), generator=generator(7))
    t = torch.tensor([900, 600])
    got = ConfiguredModel(model, 5.0).predict(x, t, (cond, uncond))
    c, u = model.predict(x, t, cond), model.predict(x, t, uncond)
    want = torch.stack([u[0] + 5.0 * (c[0] - u[0]), u[1] + 2.0 * (c[1] - u[1])])
    torch.testing.assert_close(got, want)


def test_wan_scheduler_is_a_flow_model(models):
    model = models["wan21"]
    assert model.prediction_type == "flow"
    assert isinstance(model.schedule, FlowSchedule)
    scheduler = model.make_scheduler()
    assert isinstance(scheduler, UniPCMultistepScheduler) and scheduler.config.flow_shift == 3.0


def test_two_experts_split_at_the_boundary(models):
    """A14B: timesteps at or above 875 go to ``transformer``, the rest to ``transformer_2``;
    a batch straddling the boundary gets each sample's own expert."""
    model = models["wan22_a14b"]
    assert model.boundary_timestep == pytest.approx(875.0)
    assert model.expert(torch.tensor(875)) is model.pipe.transformer
    assert model.expert(torch.tensor(874)) is model.pipe.transformer_2
    cond = model.encode_prompt(PROMPTS)
    x = torch.randn(2, *model.latent_shape(), generator=generator(3))
    t = torch.tensor([900, 300])
    both = model.predict(x, t, cond)
    for i in range(2):
        alone = model.predict(x[i : i + 1], t[i : i + 1], model.encode_prompt(PROMPTS[i : i + 1]))
        torch.testing.assert_close(both[i : i + 1], alone, rtol=1e-5, atol=1e-6)
    high = model.predict(x[1:], torch.tensor([900]), model.encode_prompt(PROMPTS[1:]))
    assert not torch.allclose(high, both[1:])  # the two experts differ


def test_per_token_timesteps_equal_one_timestep(models):
    """TI2V-5B's per-token timesteps (all equal for text to video) give what one per sample
    gives: the adapter feeds the transformer the pipeline's layout, not a different model."""
    model = models["wan22_ti2v"]
    cond = model.encode_prompt(PROMPTS)
    x = torch.randn(2, *model.latent_shape(), generator=generator(4))
    t = torch.tensor([700, 700])
    tokens = model.predict(x, t, cond)
    single = model.pipe.transformer(
        hidden_states=x, timestep=t, encoder_hidden_states=cond.hidden_states, return_dict=False
    )[0]
    torch.testing.assert_close(tokens, single.float(), rtol=1e-4, atol=1e-5)


def test_guided_sampling_moves_wan(models):
    def coupled(audio, video, snr_a, snr_v, **kw):
        return (
            5.0 * audio.flatten(1).tanh().mean(1) * video.flatten(1).tanh().mean(1)
            + video.sum((1, 2, 3, 4)).tanh()
        )

    model = models["wan21"]
    plain, guided = sample(model, 2.0), sample(model, 2.0, disc=coupled, scale=20.0)
    assert torch.isfinite(guided).all()
    assert not torch.allclose(plain, guided)


def test_encode_decode_and_prompts(models):
    for name, model in models.items():
        f, h, w = SIZES[name]["num_frames"], SIZES[name]["height"], SIZES[name]["width"]
        video = torch.rand(1, 3, f, h, w, generator=generator(5)) * 2 - 1
        z = model.encode(video)
        assert z.shape == (1, *model.latent_shape()), name
        assert model.decode(z).shape == video.shape, name
        cond = model.encode_prompt(PROMPTS)
        assert cond.hidden_states.shape == (2, TEXT_LEN, 32)
        assert not torch.allclose(cond.pooled[0], cond.pooled[1])
    assert models["wan22_ti2v"].latent_shape() == (48, 2, 2, 2)


def test_bad_sizes_and_options_are_named(tmp_path):
    path = str(save_wan(tmp_path / "wan", "wan21"))
    with pytest.raises(ValueError, match=r"height=20: .* multiple of 16"):
        load_base_model("wan", path, num_frames=9, height=20, width=16)
    with pytest.raises(ValueError, match=r"num_frames=8: Wan needs 4k \+ 1 frames.*e.g. 5"):
        load_base_model("wan", path, num_frames=8, height=16, width=16)
    with pytest.raises(ValueError, match="guidance_scale_2: only a two-expert"):
        load_base_model("wan", path, num_frames=9, height=16, width=16, guidance_scale_2=3.0)


# bfloat16 keeps 8 bits of mantissa, float16 11 (as tests/test_precision.py).
TOLERANCE = {torch.bfloat16: 0.08, torch.float16: 0.01}


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("name", ["wan21", "wan22_a14b"])
def test_wan_runs_in_half_precision(folders, models, name, dtype):
    """float32 noise and prompts in, float32 out, close to the float32 model's answers."""
    full, half = models[name], load(folders, name, torch_dtype=dtype)
    assert half.dtype == dtype
    x = torch.randn(2, *full.latent_shape(), generator=generator(6))
    t = torch.tensor([950, 400])  # both experts of A14B
    want = full.predict(x, t, full.encode_prompt(PROMPTS))
    got = half.predict(x, t, half.encode_prompt(PROMPTS))
    assert got.dtype == torch.float32 and not torch.equal(got, want)
    assert (got - want).abs().max() / want.abs().max() < TOLERANCE[dtype]
    assert half.decode(x[:1]).dtype == torch.float32


def test_to_meta_moves_every_expert(folders):
    model = load(folders, "wan22_a14b")
    cond = model.encode_prompt(PROMPTS[:1])
    model.to("meta")
    for name in ("transformer", "transformer_2", "vae", "text_encoder"):
        assert next(getattr(model.pipe, name).parameters()).device.type == "meta", name
    x = torch.zeros(1, *model.latent_shape(), device="meta")
    out = model.predict(x, torch.tensor(1), cond)
    assert out.device.type == "meta" and out.shape == x.shape
