"""The HunyuanVideo 1.5 adapter against diffusers' HunyuanVideo15Pipeline, on tiny random
components built here (a byte-level Qwen2 tokenizer with a chat template, ByT5 for glyphs).

With the discriminator off, mmdisco's joint sampler must give the pipeline's final latents and
decoded frames. The pipeline's VAE decoder fails on a batch of two, so its reference frames
come from its decoding step run one sample at a time (``vae.enable_slicing()``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import (
    AutoencoderKLHunyuanVideo15,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideo15Pipeline,
    HunyuanVideo15Transformer3DModel,
)
from diffusers.guiders import ClassifierFreeGuidance
from torch import Tensor
from transformers import (
    ByT5Tokenizer,
    Qwen2_5_VLTextConfig,
    Qwen2_5_VLTextModel,
    Qwen2Tokenizer,
    T5Config,
    T5EncoderModel,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from _tiny import SilentFlowAudio as Silence
from _tiny import generator
from mmdisco.base_models import load_base_model
from mmdisco.base_models.hunyuan_video import HunyuanVideo15Model, HunyuanVideo15Scheduler
from mmdisco.diffusion import FlowSchedule
from mmdisco.sampling import Stream, joint_sample

PROMPTS = ["a dog barks", 'a sign reads "wood"']  # the second has glyph text for ByT5
STEPS = 3
CFG = 6.0
SIZE = dict(num_frames=9, height=16, width=16)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

pytestmark = pytest.mark.usefixtures("one_thread")


def qwen_tokenizer() -> Qwen2Tokenizer:
    """Byte-level BPE without merges: one token per byte, plus the chat markers."""
    vocab = {c: i for i, c in enumerate(sorted(set(bytes_to_unicode().values())))}
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[special] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_hunyuan(path: Path, guider: dict[str, Any] | None = None) -> Path:
    torch.manual_seed(0)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=1,
        patch_size_t=1,
        text_embed_dim=16,
        text_embed_2_dim=32,
        image_embed_dim=12,
        rope_axes_dim=(2, 2, 4),
        target_size=16,
        task_type="t2v",
    )
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo15(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 16),
        layers_per_block=1,
        spatial_compression_ratio=4,
        temporal_compression_ratio=2,
        downsample_match_channel=False,
        upsample_match_channel=False,
    )
    tokenizer = qwen_tokenizer()
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLTextModel(
        Qwen2_5_VLTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=2,
            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            rope_theta=1000000.0,
        )
    )
    byt5 = ByT5Tokenizer()
    torch.manual_seed(0)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(byt5),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=1,
            num_heads=4,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    pipe = HunyuanVideo15Pipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=text_encoder_2,
        tokenizer_2=byt5,
        guider=ClassifierFreeGuidance(**(guider or {"guidance_scale": CFG})),
    )
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_hunyuan(tmp_path_factory.mktemp("hunyuan") / "hv15")


@pytest.fixture(scope="module")
def model(folder) -> HunyuanVideo15Model:
    return load_base_model("hunyuan_video_15", str(folder), **SIZE)


def sample(model: HunyuanVideo15Model, disc: Any = None, scale: float = 1.0) -> Tensor:
    cond, uncond = model.encode_prompt_pair(PROMPTS)
    video = Stream(
        model,
        model.make_scheduler(),
        cond=cond,
        uncond=uncond,
        cfg_scale=model.default_cfg_scale,
        guidance_scale=scale,
        generator=generator(1),
    )
    audio = Stream(Silence(), Silence().make_scheduler(), generator=generator(0))
    _, latents = joint_sample(
        audio,
        video,
        disc,
        batch_size=len(PROMPTS),
        num_inference_steps=STEPS,
        progress=False,
    )
    return latents


def pipeline_latents(model: HunyuanVideo15Model) -> Tensor:
    pipe = model.pipe
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    return pipe(
        PROMPTS,
        num_inference_steps=STEPS,
        generator=generator(1),
        output_type="latent",
        return_dict=False,
        **SIZE,
    )[0]


def pipeline_frames(model: HunyuanVideo15Model, latents: Tensor) -> Tensor:
    """The pipeline's decoding step (its step 8, verbatim), one sample at a time."""
    pipe = model.pipe
    pipe.vae.enable_slicing()
    try:
        latents = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
        video = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.video_processor.postprocess_video(video, output_type="pt")
    finally:
        pipe.vae.disable_slicing()


@pytest.fixture(scope="module")
def unguided(model) -> Tensor:
    return sample(model)


def test_unguided_joint_sampling_reproduces_hunyuan_pipeline(model, unguided):
    assert unguided.shape == (len(PROMPTS), *model.latent_shape()) == (2, 4, 5, 4, 4)
    expected = pipeline_latents(model)
    torch.testing.assert_close(unguided, expected.float(), rtol=1e-4, atol=1e-5)
    frames = pipeline_frames(model, expected)  # (B, F, 3, H, W) in [0, 1]
    decoded = model.decode(unguided).permute(0, 2, 1, 3, 4) / 2 + 0.5
    assert decoded.shape == frames.shape == (2, 9, 3, 16, 16)
    torch.testing.assert_close(decoded, frames.float(), rtol=1e-4, atol=1e-4)


def test_guidance_moves_hunyuan(model, unguided):
    """The match above is not vacuous: a discriminator moves the sample."""

    def coupled(audio, video, snr_a, snr_v, **kw):
        return video.flatten(1).tanh().mean(1) * (1 + audio.flatten(1).mean(1))

    guided = sample(model, disc=coupled, scale=50.0)
    assert torch.isfinite(guided).all() and not torch.allclose(unguided, guided)


def test_scheduler_takes_the_pipeline_sigmas(model):
    scheduler = model.make_scheduler()
    assert isinstance(scheduler, HunyuanVideo15Scheduler)
    scheduler.set_timesteps(4)
    s = torch.tensor([1.0, 0.75, 0.5, 0.25])
    shifted = 7.0 * s / (1 + 6.0 * s)
    torch.testing.assert_close(scheduler.timesteps, 1000 * shifted)
    assert model.prediction_type == "flow" and isinstance(model.schedule, FlowSchedule)


def test_prompt_crop_and_glyphs(model):
    cond = model.encode_prompt(PROMPTS)
    assert cond.hidden_states.shape == (2, model.pipe.tokenizer_max_length, 16)
    assert cond.attention_mask.shape == (2, model.pipe.tokenizer_max_length)
    glyphs = cond.extra["attention_mask_2"]
    assert glyphs[0].sum() == 0 and glyphs[1].sum() > 0  # quoted text reaches ByT5 only
    assert not torch.allclose(cond.pooled[0], cond.pooled[1])


def test_the_vae_decoder_fails_on_a_batch_and_the_adapter_decodes_one_by_one(model):
    z = torch.randn(2, *model.latent_shape(), generator=generator(2))
    with pytest.raises(RuntimeError):  # diffusers 0.42.1; drop the workaround once this passes
        model.pipe.vae.decode(z / model.pipe.vae.config.scaling_factor)
    both = model.decode(z)
    torch.testing.assert_close(both[1:], model.decode(z[1:]))
    video = torch.rand(1, 3, 9, 16, 16, generator=generator(3)) * 2 - 1
    assert model.encode(video).shape == (1, *model.latent_shape())


def test_bad_sizes_and_guider_extras_are_named(folder, tmp_path):
    with pytest.raises(ValueError, match=r"height=18: HunyuanVideo 1.5 needs a positive multiple"):
        load_base_model("hunyuan_video_15", str(folder), num_frames=9, height=18, width=16)
    with pytest.raises(ValueError, match=r"num_frames=8: .* 2k \+ 1 frames"):
        load_base_model("hunyuan_video_15", str(folder), num_frames=8, height=16, width=16)
    path = save_hunyuan(tmp_path / "rescaled", guider={"guidance_scale": CFG})
    config = json.loads((path / "guider/guider_config.json").read_text())
    config["guidance_rescale"] = 0.7
    (path / "guider/guider_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"guider/guider_config.json: guidance_rescale=0.7"):
        load_base_model("hunyuan_video_15", str(path), **SIZE)


# bfloat16 keeps 8 bits of mantissa, float16 11 (as tests/test_precision.py).
TOLERANCE = {torch.bfloat16: 0.08, torch.float16: 0.01}


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
def test_hunyuan_runs_in_half_precision(folder, model, dtype):
    """float32 noise and prompts in, float32 out, close to the float32 model's answers."""
    half = load_base_model("hunyuan_video_15", str(folder), torch_dtype=dtype, **SIZE)
    assert half.dtype == dtype
    x = torch.randn(2, *model.latent_shape(), generator=generator(6))
    t = torch.tensor(800.0)
    want = model.predict(x, t, model.encode_prompt(PROMPTS))
    got = half.predict(x, t, half.encode_prompt(PROMPTS))
    assert got.dtype == torch.float32 and not torch.equal(got, want)
    assert (got - want).abs().max() / want.abs().max() < TOLERANCE[dtype]


def test_to_meta_moves_everything_and_refuses_to_predict_there(folder):
    meta = load_base_model("hunyuan_video_15", str(folder), **SIZE)
    cond = meta.encode_prompt(PROMPTS[:1])
    meta.to("meta")
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        assert next(getattr(meta.pipe, name).parameters()).device.type == "meta", name
    x = torch.zeros(1, *meta.latent_shape(), device="meta")
    with pytest.raises(RuntimeError, match=r"cannot run on the meta device: .*data-dependent"):
        meta.predict(x, torch.tensor(1.0), cond)
