"""LTX-2, the joint audio-video model, on tiny random components.

With the discriminator off, mmdisco's joint sampler over LTX-2's two views reproduces
``LTX2Pipeline``: one generator (video noise drawn first), the pipeline's shifted sigmas,
CFG at each modality's scale, STG, modality guidance and rescaling; final latents and
decoded media agree. With a discriminator, both modalities move.
"""

from __future__ import annotations

import pytest
import torch

from _tiny_sa3_ltx2 import LTX2_VIDEO, save_ltx2
from mmdisco.base_models import load_base_model
from mmdisco.base_models.ltx2 import LTX2Model, LTX2View
from mmdisco.sampling import Stream, joint_sample

PROMPTS = ["a dog barks", "hammer hits wood"]
STEPS = 2
CFG = {"audio": 7.0, "video": 3.0}  # the pipeline's defaults
PIPELINE_ONLY = ("num_frames", "height", "width", "frame_rate", "max_sequence_length")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_ltx2(tmp_path_factory.mktemp("ltx2") / "ltx2")


@pytest.fixture(scope="module")
def model(folder) -> LTX2Model:
    return load_base_model("ltx2", str(folder), stg_blocks=[1], **LTX2_VIDEO)


def streams(model: LTX2Model, generator: torch.Generator, cfg: dict[str, float] = CFG):
    cond, uncond = model.encode_prompt_pair(PROMPTS)
    return [
        Stream(
            model=view,
            scheduler=model.make_scheduler(),
            cond=cond,
            uncond=uncond,
            cfg_scale=cfg[view.modality],
            guidance_scale=50.0,
            generator=generator,
            disc_text=view.pooled_text_embedding(cond),
        )
        for view in (model.audio, model.video)
    ]


def run_pipeline(model: LTX2Model, output_type: str, **extras):
    pipe = model.pipe
    pipe.scheduler = model.make_scheduler()
    guidance = {k: v for k, v in model.guidance.items() if k != "stg_blocks"}
    return pipe(
        PROMPTS,
        negative_prompt="",
        num_inference_steps=STEPS,
        guidance_scale=CFG["video"],
        audio_guidance_scale=CFG["audio"],
        spatio_temporal_guidance_blocks=list(model.guidance["stg_blocks"]),
        generator=torch.Generator().manual_seed(0),
        output_type=output_type,
        **guidance,
        **{k: v for k, v in LTX2_VIDEO.items()},
        **extras,
    )


def test_views_share_the_joint_model(model):
    assert isinstance(model.audio, LTX2View) and model.audio.joint is model.video.joint
    assert model.video.latent_shape() == (4, 3, 16, 16)  # 5 frames / 2 + 1, 32 px / 2
    assert model.audio.latent_shape() == (2, 5, 2)  # 0.2 s at 25 latent frames/s, 8 mels / 4
    assert model.guidance["stg_scale"] == 1.0 and model.guidance["modality_scale"] == 3.0
    with pytest.raises(TypeError, match="joint model"):
        model.latent_shape()
    with pytest.raises(NotImplementedError, match="together"):
        model.audio.predict(torch.zeros(1, 2, 5, 2), torch.tensor(500.0), None)


def test_unguided_sampling_reproduces_the_pipeline_with_all_its_guidance(model):
    audio, video = streams(model, torch.Generator().manual_seed(0))
    a, v = joint_sample(audio, video, None, batch_size=2, num_inference_steps=STEPS, progress=False)
    assert a.shape == (2, *model.audio.latent_shape()) and v.shape == (
        2,
        *model.video.latent_shape(),
    )
    latents = run_pipeline(model, "latent")
    torch.testing.assert_close(model.video_vae_latents(v), latents.frames, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.audio_vae_latents(a), latents.audio, rtol=1e-4, atol=1e-5)
    media = run_pipeline(model, "pt")
    frames = (model.video.decode(v) / 2 + 0.5).clamp(0, 1).transpose(1, 2)  # (B, F, 3, H, W)
    torch.testing.assert_close(frames, media.frames, rtol=1e-4, atol=1e-4)
    wave = model.audio.decode(a)
    assert wave.shape == media.audio.shape
    torch.testing.assert_close(
        wave, media.audio, rtol=1e-4, atol=1e-4 * float(media.audio.abs().max())
    )


def test_each_guidance_extra_changes_the_prediction(model):
    """STG, modality guidance and rescaling each move the step: none is silently ignored."""
    cond, uncond = model.encode_prompt_pair(PROMPTS)
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, *model.audio.latent_shape(), generator=g)
    v = torch.randn(2, *model.video.latent_shape(), generator=g)
    t = torch.tensor(700.0)

    def predict(**guidance):
        saved = dict(model.guidance)
        model.guidance.update(guidance)
        try:
            return model.predict_pair(a, v, t, t, cond, uncond, (CFG["audio"], CFG["video"]))
        finally:
            model.guidance.clear()
            model.guidance.update(saved)

    full = predict()
    for off in (
        {"stg_scale": 0.0, "audio_stg_scale": 0.0},
        {"modality_scale": 1.0, "audio_modality_scale": 1.0},
        {"guidance_rescale": 0.0, "audio_guidance_rescale": 0.0},
    ):
        partial = predict(**off)
        for x, y in zip(full, partial, strict=True):
            assert not torch.allclose(x, y, atol=1e-5), off


def test_guidance_moves_both_modalities(model):
    def disc(audio, video, log_snr_a, log_snr_v, **kw):
        assert kw["text_audio"].shape == (2, 16) and kw["text_video"].shape == (2, 16)
        return 5.0 * audio.flatten(1).tanh().mean(1) * video.flatten(1).tanh().mean(1)

    runs = []
    for d in (None, disc):
        audio, video = streams(
            model, torch.Generator().manual_seed(0), cfg={"audio": 1.0, "video": 1.0}
        )
        runs.append(
            joint_sample(audio, video, d, batch_size=2, num_inference_steps=1, progress=False)
        )
    for plain, guided in zip(*runs, strict=True):
        assert torch.isfinite(guided).all()
        assert not torch.allclose(plain, guided, atol=1e-4)


def test_encode_decode_round_shapes(model):
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(1, 3, LTX2_VIDEO["num_frames"], 32, 32, generator=g) * 2 - 1
    z = model.video.encode(frames)
    assert z.shape == (1, *model.video.latent_shape())
    assert model.video.decode(z).shape == frames.shape
    wave = 0.1 * torch.randn(1, 2, 3200, generator=g)  # 0.2 s at 16 kHz
    za = model.audio.encode(wave)
    assert za.shape == (1, *model.audio.latent_shape())
    assert model.audio.encode(wave[:, 0]).shape == za.shape
    assert model.audio.decode(za).shape[:2] == (1, 2)


def test_bad_sizes_and_options_name_the_field(model):
    with pytest.raises(ValueError, match="num_frames=6"):
        LTX2Model(model.pipe, num_frames=6, height=32, width=32)
    with pytest.raises(ValueError, match="height=31"):
        LTX2Model(model.pipe, num_frames=5, height=31, width=32)
    with pytest.raises(ValueError, match="stg_sclae"):
        LTX2Model(model.pipe, num_frames=5, height=32, width=32, stg_sclae=1.0)
