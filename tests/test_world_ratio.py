"""The world's exact log density ratio and the calibration report built on it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mmdisco.discriminator import Discriminator
from mmdisco.world import WorldConfig
from mmdisco.world.calibration import calibrate, plot_calibration
from mmdisco.world.models import load_world_models
from mmdisco.world.ratio import ExactLogRatio, all_clips

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = WorldConfig(num_classes=2, num_frames=8, frame_size=8, events_per_clip=1)
IDENTITY = SimpleNamespace(encode=lambda x: x)


def _small_points() -> tuple[torch.Tensor, torch.Tensor]:
    clips = all_clips(SMALL)
    # Keep the audio short: every 50th sample still tells classes and onsets apart.
    return clips.audio[:, ::50].double(), clips.video.double()


def _noisy(x0: torch.Tensor, log_snr: float, generator: torch.Generator) -> torch.Tensor:
    alpha = math.sqrt(1 / (1 + math.exp(-log_snr)))
    sigma = math.sqrt(1 / (1 + math.exp(log_snr)))
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    return alpha * x0 + sigma * noise


def _brute_force(audio, video, points_a, points_v, log_snr: float) -> torch.Tensor:
    """log p(a, v) - log p(a) - log p(v) from full Gaussian densities (normalisers included)."""
    alpha = math.sqrt(1 / (1 + math.exp(-log_snr)))
    var = 1 / (1 + math.exp(log_snr))

    def log_kernel(x, points):
        x, points = x.flatten(1), points.flatten(1)
        sq = (x[:, None, :] - alpha * points[None]).pow(2).sum(-1)
        return -sq / (2 * var) - 0.5 * x.shape[1] * math.log(2 * math.pi * var)

    ka, kv = log_kernel(audio, points_a), log_kernel(video, points_v)
    log_n = math.log(points_a.shape[0])
    joint = torch.logsumexp(ka + kv, 1) - log_n
    return joint - (torch.logsumexp(ka, 1) - log_n) - (torch.logsumexp(kv, 1) - log_n)


def test_all_clips_enumerates_the_support_once():
    clips = all_clips()
    config = WorldConfig()
    assert len(clips) == config.num_classes * len(config.event_support) == 264
    keys = {(int(c), tuple(e.tolist())) for c, e in zip(clips.classes, clips.events, strict=True)}
    assert len(keys) == 264
    moving = all_clips(WorldConfig(random_x=True))
    assert len(moving) == 264 * (config.frame_size - config.object_size + 1)


@pytest.mark.parametrize("log_snr", [-4.0, -1.0, 0.5, 3.0])
def test_ratio_equals_brute_force_on_a_small_world(log_snr):
    points_a, points_v = _small_points()
    ratio = ExactLogRatio(points_a, points_v)
    g = torch.Generator().manual_seed(0)
    real = torch.randint(len(points_a), (6,), generator=g)
    fake = torch.randint(len(points_a), (6,), generator=g)
    audio = _noisy(points_a[real], log_snr, g)
    video = _noisy(points_v[torch.cat([real[:3], fake[3:]])], log_snr, g)
    lam = torch.full((6,), log_snr, dtype=torch.float64)
    expected = _brute_force(audio, video, points_a, points_v, log_snr)
    got = ratio(audio, video, lam, lam)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-8)


def test_input_gradient_equals_finite_differences():
    points_a, points_v = _small_points()
    ratio = ExactLogRatio(points_a, points_v)
    g = torch.Generator().manual_seed(1)
    audio = _noisy(points_a[:4], -1.5, g).requires_grad_()
    video = _noisy(points_v[torch.tensor([0, 5, 2, 9])], -1.5, g).requires_grad_()
    lam_a, lam_v = torch.full((4,), -1.5), torch.full((4,), -2.0)
    grad_a, grad_v = torch.autograd.grad(ratio(audio, video, lam_a, lam_v).sum(), (audio, video))
    eps = 1e-6
    for x, grad in ((audio, grad_a), (video, grad_v)):
        direction = torch.randn(x.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            plus = ratio(*(_shifted(audio, video, x, eps * direction)), lam_a, lam_v)
            minus = ratio(*(_shifted(audio, video, x, -eps * direction)), lam_a, lam_v)
        numeric = (plus - minus) / (2 * eps)
        analytic = (grad * direction).flatten(1).sum(1)
        torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-7)


def _shifted(audio, video, which, delta):
    return (audio + delta, video) if which is audio else (audio, video + delta)


def test_ratio_vanishes_at_pure_noise_and_equals_log_n_for_matched_clean_pairs():
    points_a, points_v = _small_points()
    ratio = ExactLogRatio(points_a, points_v)
    g = torch.Generator().manual_seed(2)
    audio, video = torch.randn(5, *points_a.shape[1:], generator=g), points_v[:5].float()
    noise = torch.full((5,), -20.0)
    assert ratio(audio, video, noise, noise).abs().max() < 1e-6
    clean = torch.full((5,), 20.0)
    matched = ratio(points_a[:5].float(), points_v[:5].float(), clean, clean)
    torch.testing.assert_close(
        matched, torch.full((5,), math.log(len(points_a))), atol=1e-4, rtol=0
    )
    mismatched = ratio(points_a[:5].float(), points_v[5:10].float(), clean, clean)
    assert (mismatched < -100).all()


def test_ratio_refuses_wrong_shapes_and_conditioning():
    points_a, points_v = _small_points()
    ratio = ExactLogRatio(points_a, points_v)
    lam = torch.zeros(2)
    with pytest.raises(ValueError, match=r"video must have shape \(B, 3, 8, 8, 8\)"):
        ratio(points_a[:2], points_v[:2, :, :4], lam, lam)
    with pytest.raises(ValueError, match="unconditional"):
        ratio(points_a[:2], points_v[:2], lam, lam, text_audio=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="same, non-zero number"):
        ExactLogRatio(points_a[:3], points_v[:4])


@pytest.fixture(scope="module")
def world():
    audio_model, video_model = load_world_models()
    clips = all_clips()
    real = (audio_model.encode(clips.audio[::4]), video_model.encode(clips.video[::4]))
    shuffled = torch.randperm(len(real[1]), generator=torch.Generator().manual_seed(3))
    fake = (real[0], real[1][shuffled])
    exact = ExactLogRatio.from_world(audio_model, video_model)
    return audio_model, video_model, exact, real, fake


def test_calibration_scores_the_exact_ratio_perfectly_and_a_random_network_near_zero(
    world, tmp_path
):
    audio_model, video_model, exact, real, fake = world
    schedules = (audio_model.schedule, video_model.schedule)
    levels = (0.5, 0.9)
    perfect = calibrate(exact, exact, real, fake, *schedules, noise_levels=levels)
    for row in perfect:
        assert row["logit_corr"] == pytest.approx(1.0, abs=1e-9)
        assert row["cos_audio"] == pytest.approx(1.0, abs=1e-9)
        assert row["gain_audio"] == pytest.approx(1.0, abs=1e-9)
        assert row["accuracy"] == row["bayes_accuracy"] and row["bce"] == row["bayes_bce"]
    # The video's clip is certain long before the audio's: its exact gradient only matters
    # at high noise, and the report says so instead of averaging cosines of zero vectors.
    assert perfect[0]["frac_video"] < 0.05 and perfect[1]["frac_video"] > 0.3
    assert perfect[1]["cos_video"] == pytest.approx(1.0, abs=1e-9)

    torch.manual_seed(0)
    random = Discriminator.for_shapes(
        audio_model.latent_shape(),
        video_model.latent_shape(),
        channels=8,
        channel_mult=(1,),
        norm_groups=4,
        time_embed_dim=16,
        fusion_width=16,
    ).eval()
    rows = calibrate(random, exact, real, fake, *schedules, noise_levels=levels)
    for row in rows:
        assert abs(row["cos_audio"]) < 0.2
        assert row["bayes_accuracy"] > 0.8 and row["accuracy"] < row["bayes_accuracy"]
    path = plot_calibration(tmp_path / "calibration.png", {"exact": perfect, "random": rows})
    assert path.stat().st_size > 1000


def test_no_cosine_is_reported_over_fewer_than_min_pairs():
    from mmdisco.world.calibration import GRAD_FLOOR, MIN_PAIRS, _cosine

    ref = torch.zeros(100, 4)
    ref[: MIN_PAIRS - 1, 0] = 1.0  # one pair short of a measurable cosine
    sigma = torch.ones(100)
    cos, frac, gain = _cosine(ref.clone(), ref, sigma)
    assert cos is None and gain is None and frac == pytest.approx((MIN_PAIRS - 1) / 100)
    ref[MIN_PAIRS - 1, 0] = 2 * GRAD_FLOOR
    cos, frac, gain = _cosine(-ref, ref, sigma)
    assert cos == pytest.approx(-1.0) and gain == pytest.approx(1.0)
