"""The codebook discriminator: with one anchor per clip and the coupling counted from the
pairs it is the exact density ratio of a finite paired world, at every noise level."""

import pytest
import torch
import torch.nn.functional as F

from mmdisco.discriminator import load_discriminator
from mmdisco.discriminator.codebook import CodebookConfig, CodebookDiscriminator, kmeans
from mmdisco.guidance import discriminator_gradients
from mmdisco.world.ratio import ExactLogRatio

A_SHAPE, V_SHAPE = (2, 8), (3, 2, 4, 4)


def _world(n: int = 6, seed: int = 0, pool: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` paired points; the video is constant on ``pool x pool`` cells."""
    g = torch.Generator().manual_seed(seed)
    audio = 2 * torch.randn(n, *A_SHAPE, generator=g)
    c, f, h, w = V_SHAPE
    coarse = 2 * torch.randn(n, c, f, h // pool, w // pool, generator=g)
    video = coarse.repeat_interleave(pool, -1).repeat_interleave(pool, -2)
    return audio, video


def _per_clip(audio: torch.Tensor, video: torch.Tensor, pool: int = 1) -> CodebookDiscriminator:
    """One anchor per clip, uniform priors, coupling counted from the pairs themselves."""
    n = len(audio)
    disc = CodebookDiscriminator(CodebookConfig(A_SHAPE, V_SHAPE, n, n, video_pool=pool))
    with torch.no_grad():
        disc.audio_codebook.copy_(audio.flatten(1))
        disc.video_codebook.copy_(F.avg_pool3d(video, (1, pool, pool)).flatten(1))
    return disc.couple(audio, video)


def _noised(audio, video, log_snr, seed=1, shuffle=False):
    g = torch.Generator().manual_seed(seed)
    if shuffle:
        video = video[torch.randperm(len(video), generator=g)]
    alpha, sigma = torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()
    a = alpha * audio + sigma * torch.randn(audio.shape, generator=g)
    v = alpha * video + sigma * torch.randn(video.shape, generator=g)
    return a, v


@pytest.mark.parametrize("pool", [1, 2])
@pytest.mark.parametrize("log_snr", [-6.0, -1.0, 2.0, 6.0])
def test_per_clip_codebook_is_the_exact_ratio(pool, log_snr):
    """Logits and input-gradients equal the closed form, for real and for mismatched pairs
    (at log-SNR 6 a mismatched pair's ratio is far below what float64 holds as a number),
    and with pooled video when the clips are constant on the pooled cells."""
    audio, video = _world(pool=pool)
    disc, exact = _per_clip(audio, video, pool), ExactLogRatio(audio, video)
    lam = torch.tensor(log_snr)
    for shuffle in (False, True):
        a, v = _noised(audio, video, lam, shuffle=shuffle)
        ours = discriminator_gradients(disc, a, v, lam, lam)
        ref = discriminator_gradients(exact, a, v, lam, lam)
        torch.testing.assert_close(ours.logits, ref.logits, rtol=1e-4, atol=1e-3)
        for name in ("grad_audio", "grad_video"):
            g_ours, g_ref = getattr(ours, name), getattr(ref, name)
            scale = g_ref.flatten(1).norm(dim=1).clamp_min(1e-6)[:, None]
            err = (g_ours - g_ref).flatten(1).norm(dim=1)[:, None] / scale
            assert err.max() < 1e-3, (name, err.max())
    if log_snr == 6.0:
        assert ours.logits.min() < -700  # the log-space sum, not an underflow floor


def test_pair_logits_score_every_pairing_as_forward_does():
    audio, video = _world(n=5)
    disc = _per_clip(audio, video)
    lam = torch.linspace(-3, 3, 5)
    a, v = _noised(audio, video, torch.tensor(0.5))
    grid = disc.pair_logits(a, v, lam, lam)
    assert grid.shape == (5, 5)
    for i in range(5):
        for j in range(5):
            lam_v = lam[j : j + 1]
            one = disc(a[i : i + 1], v[j : j + 1], lam[i : i + 1], lam_v)
            torch.testing.assert_close(grid[i, j], one[0], rtol=1e-5, atol=1e-4)


def test_coupling_from_pairs_has_structural_zeros():
    """Unseen code pairs (also codes no real pair uses) are off the support, get no
    gradient, and training never revives them."""
    audio, video = _world(n=4)
    disc = CodebookDiscriminator(CodebookConfig(A_SHAPE, V_SHAPE, 5, 5))
    with torch.no_grad():  # a fifth anchor per modality that no real pair is near
        disc.audio_codebook.copy_(torch.cat([audio.flatten(1), 50 + audio[:1].flatten(1)]))
        disc.video_codebook.copy_(torch.cat([video.flatten(1), 50 + video[:1].flatten(1)]))
    disc.couple(audio, video)
    w = disc.coupling * disc.config.coupling_gain
    support = w > -1e3
    assert support.sum() == 4 and support.diagonal()[:4].all() and not support[4].any()
    # log P(j,k) / P(j) P(k) of four equally likely pairs: log 4 on the diagonal
    torch.testing.assert_close(w.diagonal()[:4], torch.full((4,), 4.0).log())
    a, v = _noised(audio, video, torch.tensor(0.0), shuffle=True)
    logits = disc(a, v, torch.tensor(0.0), torch.tensor(0.0))
    (logits * torch.arange(4.0)).sum().backward()
    assert disc.coupling.grad[~support].abs().max() == 0
    assert disc.coupling.grad[support].abs().max() > 0


def test_logit_is_zero_at_pure_noise_and_finite_everywhere():
    audio, video = _world()
    disc = _per_clip(audio, video)
    lam = torch.tensor(-30.0)  # alpha ~ 3e-7: the posterior is the prior
    a, v = _noised(audio, video, lam, shuffle=True)
    assert disc(a, v, lam, lam).abs().max() < 1e-4


def test_from_samples_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = 10 * torch.randn(6, 16, generator=g)
    points = centres.repeat(20, 1) + 0.1 * torch.randn(120, 16, generator=g)
    assign, counts = kmeans(points, 6, torch.Generator().manual_seed(1))
    assert sorted(counts.tolist()) == [20] * 6
    # points of one centre share a cluster, and different centres do not
    assert all(assign[i::6].unique().numel() == 1 for i in range(6))
    assert assign[:6].unique().numel() == 6
    audio, video = _world(n=6)
    samples_a = audio.repeat(10, 1, 1) + 0.01 * torch.randn(60, *A_SHAPE, generator=g)
    samples_v = video.repeat(10, 1, 1, 1, 1) + 0.01 * torch.randn(60, *V_SHAPE, generator=g)
    disc = CodebookDiscriminator.from_samples(
        CodebookConfig(A_SHAPE, V_SHAPE, 6, 6), samples_a, samples_v, seed=0, assign_pool=1
    )
    nearest = torch.cdist(disc.audio_codebook.detach(), audio.flatten(1)).min(1)
    assert nearest.values.max() < 0.05 and nearest.indices.unique().numel() == 6
    with pytest.raises(ValueError, match=r"video samples must have shape \(N, 3, 2, 4, 4\)"):
        CodebookDiscriminator.from_samples(disc.config, samples_a, samples_v[:, :, :1])


def test_save_and_load_round_trip(tmp_path):
    audio, video = _world()
    disc = _per_clip(audio, video)
    disc.save_pretrained(tmp_path / "d")
    loaded = load_discriminator(tmp_path / "d")
    assert isinstance(loaded, CodebookDiscriminator) and loaded.config == disc.config
    a, v = _noised(audio, video, torch.tensor(1.0), shuffle=True)
    lam = torch.tensor(1.0)
    torch.testing.assert_close(loaded(a, v, lam, lam), disc(a, v, lam, lam))


def test_bad_config_and_inputs_are_named():
    with pytest.raises(ValueError, match="video_pool=3 must divide"):
        CodebookConfig(A_SHAPE, V_SHAPE, video_pool=3)
    with pytest.raises(ValueError, match="audio_codes must be a positive int"):
        CodebookConfig(A_SHAPE, V_SHAPE, audio_codes=0)
    disc = CodebookDiscriminator(CodebookConfig(A_SHAPE, V_SHAPE, 3, 3))
    with pytest.raises(ValueError, match=r"audio must have shape \(B, 2, 8\)"):
        disc(torch.zeros(1, 2, 7), torch.zeros(1, *V_SHAPE), 0.0, 0.0)
    with pytest.raises(ValueError, match="unconditional"):
        disc(torch.zeros(1, *A_SHAPE), torch.zeros(1, *V_SHAPE), 0.0, 0.0, text="a dog")
