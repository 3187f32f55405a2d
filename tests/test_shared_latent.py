"""SharedLatentDiscriminator: the factorised form, coupling, and a short training run."""

import dataclasses

import pytest
import torch

from mmdisco.discriminator.shared_latent import SharedLatentConfig, SharedLatentDiscriminator

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = SharedLatentConfig(audio_shape=(4, 8), video_shape=(3, 2, 4, 4), num_codes=5, width=32)


def _inputs(n: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    audio = torch.randn(n, *CONFIG.audio_shape, generator=gen)
    video = torch.randn(n, *CONFIG.video_shape, generator=gen)
    return audio, video, torch.linspace(-4, 4, n), torch.linspace(-4, 4, n)


def test_logit_is_the_shared_latent_formula() -> None:
    torch.manual_seed(0)
    model = SharedLatentDiscriminator(CONFIG)
    with torch.no_grad():
        model.prior_logits.normal_()
    audio, video, snr_a, snr_v = _inputs()
    qa = torch.softmax(model.audio_encoder(audio, snr_a)[0], -1)
    qv = torch.softmax(model.video_encoder(video, snr_v)[0], -1)
    prior = torch.softmax(model.prior_logits, -1)
    want = torch.log((qa * qv / prior).sum(-1)).sum(-1)
    assert torch.allclose(model(audio, video, snr_a, snr_v), want, atol=1e-5)
    # an encoder that knows nothing gives exactly 0
    uniform = torch.full_like(qa, 1 / CONFIG.num_codes).log()
    h0 = torch.logsumexp(2 * uniform - torch.log(torch.full_like(prior, 1 / 5)), -1).sum(-1)
    assert torch.allclose(h0, torch.zeros(3), atol=1e-6)


def test_video_gradient_depends_on_the_audio() -> None:
    torch.manual_seed(1)
    model = SharedLatentDiscriminator(CONFIG)
    audio, video, snr_a, snr_v = _inputs()
    grads = []
    for a in (audio, audio.flip(0)):
        v = video.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(a, v, snr_a, snr_v).sum(), v)
        grads.append(g)
    assert (grads[0] - grads[1]).abs().max() > 1e-4


def test_training_separates_pairs_that_share_a_code() -> None:
    torch.manual_seed(2)
    model = SharedLatentDiscriminator(CONFIG)
    gen = torch.Generator().manual_seed(3)
    codes_a = torch.randn(4, *CONFIG.audio_shape, generator=gen)
    codes_v = torch.randn(4, *CONFIG.video_shape, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    lam = torch.zeros(64)
    for _ in range(150):
        k, j = torch.randint(4, (64,), generator=gen), torch.randint(4, (64,), generator=gen)
        real = model(codes_a[k], codes_v[k], lam, lam)
        fake = model(codes_a[k], codes_v[j], lam, lam)
        loss = (
            torch.nn.functional.softplus(-real).mean() + torch.nn.functional.softplus(fake).mean()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    lam4 = torch.zeros(4)
    same = model(codes_a, codes_v, lam4, lam4)
    other = model(codes_a, codes_v.roll(1, 0), lam4, lam4)
    assert (same > 1.0).all() and (other < -1.0).all()  # the exact ratio: log 4 and -inf


def test_cross_logits_match_pairwise_calls() -> None:
    torch.manual_seed(4)
    for head in ("shared_latent", "bilinear"):
        config = dataclasses.replace(CONFIG, head=head)
        model = SharedLatentDiscriminator(config)
        audio, video, _, _ = _inputs(4)
        lam = torch.tensor(1.5)
        cross = model.cross_logits(audio, video[:3], lam)
        for i in range(4):
            row = model(audio[i].expand(3, *CONFIG.audio_shape), video[:3], lam, lam)
            assert torch.allclose(cross[i], row, atol=1e-5)
