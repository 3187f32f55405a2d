"""Convolutional shared-latent discriminators: shapes, invariance, gradients, round trip."""

import dataclasses

import pytest
import torch

from mmdisco.discriminator.composite import load_discriminator
from mmdisco.discriminator.conv_encoders import AudioConvEncoder, VideoConvEncoder, snr_embedding
from mmdisco.discriminator.shared_latent import SharedLatentConfig, SharedLatentDiscriminator
from mmdisco.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = SharedLatentConfig(
    audio_shape=(4, 12),
    video_shape=(3, 3, 6, 10),
    num_codes=5,
    width=8,
    encoder="conv",
    head="aligned",
)
HEADS = ("shared_latent", "bilinear", "aligned")


def _inputs(config: SharedLatentConfig, n: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    audio = torch.randn(n, *config.audio_shape, generator=gen)
    video = torch.randn(n, *config.video_shape, generator=gen)
    return audio, video, torch.linspace(-4, 4, n), torch.linspace(-3, 3, n)


def _model(config: SharedLatentConfig, seed: int = 0) -> SharedLatentDiscriminator:
    torch.manual_seed(seed)
    model = SharedLatentDiscriminator(config)
    with torch.no_grad():  # FiLM starts at zero: make the log-SNR matter in the tests
        for name, p in model.named_parameters():
            if "film" in name:
                p.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize(
    ("audio_shape", "video_shape"),
    [((4, 12), (3, 3, 6, 10)), ((2, 5, 16), (4, 4, 8, 8)), ((3, 7), (2, 4, 5, 5))],
)
def test_encoders_put_both_modalities_on_the_video_frames(audio_shape, video_shape) -> None:
    emb = snr_embedding(torch.zeros(2))
    frames = video_shape[1]
    video = VideoConvEncoder(video_shape, width=8, depth=2, frame_depth=2)(
        torch.randn(2, *video_shape), emb
    )
    audio = AudioConvEncoder(audio_shape, width=8, depth=2, frame_depth=1, steps=frames)
    assert video.shape == (2, 8, frames)
    assert audio(torch.randn(2, *audio_shape), emb).shape == (2, 8, frames)
    for head, pool in zip(HEADS, ("mean", "attention", "attention"), strict=True):
        config = dataclasses.replace(
            CONFIG, audio_shape=audio_shape, video_shape=video_shape, head=head, video_pool=pool
        )
        assert _model(config)(*_inputs(config)).shape == (3,)


@pytest.mark.parametrize("pool", ["mean", "attention"])
def test_video_features_ignore_a_horizontal_shift(pool: str) -> None:
    encoder = VideoConvEncoder((3, 2, 6, 12), width=8, depth=2, frame_depth=2, pool=pool)
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_(0.0, 0.3)
    video = torch.full((2, 3, 2, 6, 12), -1.0)
    video[0, :, :, 2:4, 4:6] = 0.7  # the same square, 2 pixels apart
    video[1, :, :, 2:4, 6:8] = 0.7
    out = encoder(video, snr_embedding(torch.zeros(2)))
    assert torch.allclose(out[0], out[1], atol=1e-5)
    moved_down = video[:1].roll(1, dims=3)
    assert (encoder(moved_down, snr_embedding(torch.zeros(1)))[0] - out[0]).abs().max() > 1e-3


@pytest.mark.parametrize("head", HEADS)
def test_cross_logits_match_forward(head: str) -> None:
    model = _model(dataclasses.replace(CONFIG, head=head), seed=1)
    audio, video, _, _ = _inputs(CONFIG, n=4)
    lam = torch.tensor(0.5)
    cross = model.cross_logits(audio, video[:3], lam)
    assert cross.shape == (4, 3)
    for i in range(4):
        row = model(audio[i].expand(3, *CONFIG.audio_shape), video[:3], lam, lam)
        assert torch.allclose(cross[i], row, atol=1e-5)
    diagonal = model(audio[:3], video[:3], lam.expand(3), lam.expand(3))
    assert torch.allclose(cross[:3].diagonal(), diagonal, atol=1e-5)


@pytest.mark.parametrize("head", HEADS)
def test_input_gradient_matches_finite_differences(head: str) -> None:
    model = _model(dataclasses.replace(CONFIG, head=head), seed=2)
    audio, video, snr_a, snr_v = _inputs(CONFIG, n=2, seed=3)
    a, v = audio.clone().requires_grad_(), video.clone().requires_grad_()
    ga, gv = torch.autograd.grad(model(a, v, snr_a, snr_v).sum(), (a, v))
    gen = torch.Generator().manual_seed(4)
    da, dv = torch.randn(audio.shape, generator=gen), torch.randn(video.shape, generator=gen)
    eps = 1e-2
    with torch.no_grad():
        for x, d, g, other in ((audio, da, ga, "a"), (video, dv, gv, "v")):
            plus = x + eps * d
            minus = x - eps * d
            args = (plus, video) if other == "a" else (audio, plus)
            args_m = (minus, video) if other == "a" else (audio, minus)
            fd = (model(*args, snr_a, snr_v) - model(*args_m, snr_a, snr_v)) / (2 * eps)
            want = (g * d).flatten(1).sum(1)
            assert torch.allclose(fd, want, rtol=2e-2, atol=2e-3), (other, fd, want)


def test_video_gradient_depends_on_the_audio() -> None:
    model = _model(CONFIG, seed=5)
    audio, video, snr_a, snr_v = _inputs(CONFIG)
    grads = []
    for a in (audio, audio.flip(0)):
        v = video.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(a, v, snr_a, snr_v).sum(), v)
        grads.append(g)
    assert (grads[0] - grads[1]).abs().max() > 1e-4


def test_save_and_load_round_trip(tmp_path) -> None:
    model = _model(CONFIG, seed=6)
    model.save_pretrained(tmp_path / "disc")
    loaded = load_discriminator(tmp_path / "disc")  # the one loader knows the kind
    assert isinstance(loaded, SharedLatentDiscriminator) and loaded.config == CONFIG
    inputs = _inputs(CONFIG)
    with torch.no_grad():
        assert torch.allclose(loaded(*inputs), model(*inputs), atol=1e-6)
    wrong = dataclasses.replace(CONFIG, width=16)
    SharedLatentDiscriminator(wrong).save_pretrained(tmp_path / "other")
    (tmp_path / "disc" / "model.safetensors").replace(tmp_path / "other" / "model.safetensors")
    with pytest.raises(InputError, match="does not match"):
        SharedLatentDiscriminator.from_pretrained(tmp_path / "other")


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="encoder"):
        dataclasses.replace(CONFIG, encoder="transformer")
    with pytest.raises(ValueError, match="aligned"):
        dataclasses.replace(CONFIG, encoder="mlp")
    with pytest.raises(ValueError, match="unknown SharedLatentConfig field"):
        SharedLatentConfig.from_dict({**CONFIG.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="video_pool"):
        dataclasses.replace(CONFIG, video_pool="max")
    with pytest.raises(ValueError, match="video pool"):
        VideoConvEncoder((3, 8, 8, 8), width=8, depth=1, frame_depth=1, pool="max")
    with pytest.raises(ValueError, match=r"\(C, F, H, W\)"):
        VideoConvEncoder((3, 8, 8), width=8, depth=1, frame_depth=1)
