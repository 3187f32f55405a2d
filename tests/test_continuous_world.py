"""The continuous world: rendering, detectors, and the exact log ratio against brute force."""

import math

import pytest
import torch

from mmdisco.errors import InputError
from mmdisco.world.continuous import (
    ContinuousWorldConfig,
    event_times_of,
    generate_continuous_clips,
    render_audio,
    render_video,
)
from mmdisco.world.continuous_detectors import (
    ContinuousDetection,
    agreement,
    continuous_chance_levels,
    detect_continuous,
    evaluate_continuous,
)
from mmdisco.world.continuous_ratio import (
    ContinuousLogRatio,
    ContinuousWorldTerms,
    log_integral,
    log_marginal,
)

SMALL = ContinuousWorldConfig(
    num_classes=2,
    shades_per_class=2,
    num_frames=5,
    time_steps_per_frame=2,
    min_event_spacing=1.0,
    n_bands=8,
    decays=(1.0, 2.0),
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def terms() -> ContinuousWorldTerms:
    return ContinuousWorldTerms()


def test_clips_are_seeded_in_range_and_on_the_lattice() -> None:
    config = ContinuousWorldConfig()
    a, b = generate_continuous_clips(64, 5), generate_continuous_clips(64, 5)
    assert torch.allclose(a.video, b.video) and torch.allclose(a.audio, b.audio)
    assert a.video.shape == (64, *config.video_shape) and a.audio.shape == (64, *config.audio_shape)
    for x in (a.video, a.audio):
        assert x.min() >= -1.0 and x.max() <= 1.0
    assert torch.all(a.video[..., -1, :] == 0.0)  # the square never covers the floor row
    times = event_times_of(a.pairs, config)
    assert torch.all(times[:, 1] - times[:, 0] >= config.min_event_spacing - 1e-9)
    steps = times * config.time_steps_per_frame
    assert torch.allclose(steps, steps.round())
    assert len(set(a.positions.tolist())) == 64  # the nuisance is continuous


def test_sub_frame_shifts_move_the_clips_less_than_whole_frames() -> None:
    config = ContinuousWorldConfig()
    n = 3
    shade, pos = torch.full((n,), 3), torch.full((n,), 2.0)
    gain, decay = torch.full((n,), 1.5), torch.zeros(n, dtype=torch.long)
    steps = config.time_steps_per_frame
    pairs = torch.tensor([config.event_pairs.index((i, i + 2 * steps)) for i in (0, 1, steps)])
    for clip in (
        render_video(shade, pairs, pos, config),
        render_audio(shade, pairs, gain, decay, config),
    ):
        sub, whole = (clip[1] - clip[0]).norm(), (clip[2] - clip[0]).norm()
        assert 0 < sub < 0.5 * whole


def test_detectors_read_world_clips_exactly(terms: ContinuousWorldTerms) -> None:
    clips = generate_continuous_clips(32, 11)
    da = detect_continuous(clips.audio, "audio", terms)
    dv = detect_continuous(clips.video, "video", terms)
    for d in (da, dv):
        assert d.valid.all() and torch.equal(d.shades, clips.shades)
        assert torch.equal(d.pairs, clips.pairs)
    assert torch.equal(da.decays, clips.decays)
    assert torch.allclose(da.nuisance, clips.gains, atol=1e-6)
    assert torch.allclose(dv.nuisance, clips.positions, atol=1e-6)
    scores = evaluate_continuous(clips.audio, clips.video, terms)
    assert scores == {
        "semantic": 1.0,
        "temporal": 1.0,
        "validity_audio": 1.0,
        "validity_video": 1.0,
    }


def test_noise_and_garbage_are_invalid(terms: ContinuousWorldTerms) -> None:
    clips = generate_continuous_clips(16, 2)
    gen = torch.Generator().manual_seed(0)
    noisy = clips.video + 0.2 * torch.randn(clips.video.shape, generator=gen)
    assert not detect_continuous(noisy, "video", terms).valid.any()
    garbage = torch.rand(clips.audio.shape, generator=gen) * 2 - 1
    assert not detect_continuous(garbage, "audio", terms).valid.any()


def test_chance_levels_match_shuffled_pairs() -> None:
    config = ContinuousWorldConfig()
    exact = continuous_chance_levels(config)
    clips = generate_continuous_clips(4096, 4, config)
    truth = ContinuousDetection(
        torch.ones(len(clips), dtype=torch.bool),
        torch.zeros(len(clips)),
        clips.shades,
        clips.pairs,
        clips.positions,
        clips.decays,
    )
    hits = {"semantic": 0.0, "temporal": 0.0}
    for shift in range(1, 9):  # independent partners: every clip against other clips
        partner = ContinuousDetection(*(t.roll(shift, 0) for t in vars(truth).values()))
        for key, value in agreement(truth, partner, config).items():
            hits[key] += float(value.double().mean()) / 8
    assert hits["semantic"] == pytest.approx(exact["semantic"], abs=0.01)
    assert hits["temporal"] == pytest.approx(exact["temporal"], abs=0.01)
    assert exact["semantic"] == pytest.approx((1 / 4) * 22 / 64)


@pytest.mark.parametrize("k", [1e-3, 0.5, 30.0, 3000.0])
@pytest.mark.parametrize("b", [-200.0, -3.0, 0.0, 4.0, 150.0])
def test_log_integral_matches_quadrature(b: float, k: float) -> None:
    u = torch.linspace(0, 1, 200001, dtype=torch.float64)
    f = b * u - k * u**2
    m = f.max()
    trapz = torch.trapezoid(torch.exp(f - m), u).log() + m
    got = log_integral(
        torch.tensor(0.7, dtype=torch.float64),
        torch.tensor(b, dtype=torch.float64),
        torch.tensor(k, dtype=torch.float64),
    )
    assert float(got) == pytest.approx(0.7 + float(trapz), abs=1e-4)


def _brute_force(a, v, lam, config, m=301):
    """log p(a, v), log p(a), log p(v) (up to common constants) by enumerating every shared
    state and a fine trapezoid grid over position and gain."""
    alpha, var = math.sqrt(1 / (1 + math.exp(-lam))), 1 / (1 + math.exp(lam))
    num_pairs = len(config.event_pairs)
    shades = torch.arange(config.num_shades).repeat_interleave(num_pairs)
    pairs = torch.arange(num_pairs).repeat(config.num_shades)
    pos = torch.linspace(0, config.frame_size - config.object_size, m, dtype=torch.float64)
    w_pos = torch.full((m,), 1.0 / (m - 1), dtype=torch.float64)
    w_pos[[0, -1]] /= 2
    gains = torch.linspace(config.gain_min, config.gain_max, m, dtype=torch.float64)

    def log_lik(x, clips, weights):  # (S*, M) clean clips -> log sum_n w_n N(x; alpha x0, var)
        d = (x - alpha * clips).pow(2).flatten(2).sum(-1)
        return torch.logsumexp(-d / (2 * var) + weights.log(), dim=1)

    states = len(shades)
    vid = render_video(
        shades.repeat_interleave(m), pairs.repeat_interleave(m), pos.repeat(states), config
    )
    lv = log_lik(v, vid.double().reshape(states, m, *config.video_shape), w_pos)
    la = []
    for d in range(len(config.decays)):
        dec = torch.full((states * m,), d)
        aud = render_audio(
            shades.repeat_interleave(m),
            pairs.repeat_interleave(m),
            gains.repeat(states),
            dec,
            config,
        )
        la.append(log_lik(a, aud.double().reshape(states, m, *config.audio_shape), w_pos))
    la = torch.logsumexp(torch.stack(la), 0) - math.log(len(config.decays))
    return (
        torch.logsumexp(la + lv, 0)
        - torch.logsumexp(la, 0)
        - torch.logsumexp(lv, 0)
        + math.log(states)
    )


@pytest.mark.parametrize("lam", [-1.0, 2.0])
def test_log_ratio_matches_brute_force_enumeration(lam: float) -> None:
    clips = generate_continuous_clips(3, 7, SMALL)
    ratio = ContinuousLogRatio(SMALL)
    alpha, sigma = math.sqrt(1 / (1 + math.exp(-lam))), math.sqrt(1 / (1 + math.exp(lam)))
    gen = torch.Generator().manual_seed(1)
    audio = alpha * clips.audio.double() + sigma * torch.randn(
        clips.audio.shape, generator=gen, dtype=torch.float64
    )
    video = alpha * clips.video.double() + sigma * torch.randn(
        clips.video.shape, generator=gen, dtype=torch.float64
    )
    video = video[[0, 2, 1]]  # one real pair, two mismatched
    audio.requires_grad_(True)
    video.requires_grad_(True)
    got = ratio(audio, video, torch.tensor(lam), torch.tensor(lam))
    g_a, g_v = torch.autograd.grad(got.sum(), (audio, video))
    for i in range(3):
        a, v = audio[i].detach().requires_grad_(True), video[i].detach().requires_grad_(True)
        want = _brute_force(a, v, lam, SMALL)
        w_a, w_v = torch.autograd.grad(want, (a, v))
        assert float(got[i].detach()) == pytest.approx(float(want.detach()), abs=2e-3)
        for g, w in ((g_a[i], w_a), (g_v[i], w_v)):
            assert (g - w).norm() <= 1e-3 * w.norm() + 1e-8


def test_log_marginal_gradient_is_the_score_of_its_density() -> None:
    terms = ContinuousWorldTerms(SMALL)
    clips = generate_continuous_clips(2, 3, SMALL)
    x = 0.8 * clips.video.double() + 0.6 * torch.randn(clips.video.shape, dtype=torch.float64)
    x.requires_grad_(True)
    lam = torch.tensor(math.log(0.64 / 0.36))
    value = log_marginal(terms, x, lam, "video")
    (grad,) = torch.autograd.grad(value.sum(), x)
    step = 1e-6 * torch.randn(x.shape, dtype=torch.float64)
    moved = log_marginal(terms, x.detach() + step, lam, "video")
    assert torch.allclose(
        moved - value.detach(), (grad * step).flatten(1).sum(1), rtol=1e-3, atol=1e-8
    )
    # a density: at pure-noise-like levels it approaches the standard normal's
    z = torch.randn(4, *SMALL.video_shape, dtype=torch.float64)
    near_noise = log_marginal(terms, z, torch.tensor(-30.0), "video")
    normal = -0.5 * z.pow(2).flatten(1).sum(1) - 0.5 * z[0].numel() * math.log(2 * math.pi)
    assert torch.allclose(near_noise, normal, atol=1e-6)


def test_calibrate_scores_the_continuous_ratio_against_itself() -> None:
    from mmdisco.diffusion import schedule_from_scheduler_config
    from mmdisco.world.calibration import calibrate
    from mmdisco.world.models import SCHEDULER_CONFIG

    ratio = ContinuousLogRatio(SMALL)
    real = generate_continuous_clips(8, 1, SMALL)
    fake_a = generate_continuous_clips(8, 2, SMALL).audio
    fake_v = generate_continuous_clips(8, 3, SMALL).video
    schedule = schedule_from_scheduler_config(SCHEDULER_CONFIG)
    (row,) = calibrate(
        ratio,
        ratio,
        (real.audio, real.video),
        (fake_a, fake_v),
        schedule,
        schedule,
        noise_levels=(0.5,),
    )
    assert row["logit_corr"] == pytest.approx(1.0, abs=1e-6)
    assert row["cos_audio"] == pytest.approx(1.0, abs=1e-6)
    assert row["accuracy"] == row["bayes_accuracy"]


def test_guidance_window_guides_only_the_steps_inside_it() -> None:
    from mmdisco.world.continuous_sampling import sample_continuous

    terms, ratio = ContinuousWorldTerms(SMALL), ContinuousLogRatio(SMALL)

    def sample(disc, window=(0.0, 1.0)):
        return torch.cat(
            [x.flatten(1) for x in sample_continuous(terms, 3, 5, disc, 1.0, 4, window=window)], 1
        )

    free, guided = sample(None), sample(ratio)
    # 4 steps at t/T 0.999, 0.666, 0.333, 0: (0.4, 0.6) holds none of them, (0, 0.5) two
    assert torch.allclose(sample(ratio, (0.4, 0.6)), free)
    assert torch.allclose(sample(ratio, (0.0, 1.0)), guided)
    low = sample(ratio, (0.0, 0.5))
    assert not torch.allclose(low, free, atol=1e-3) and not torch.allclose(low, guided, atol=1e-3)
    with pytest.raises(InputError, match="window"):
        sample(ratio, (0.6, 0.4))


def test_a_scale_per_modality_guides_only_the_modalities_it_names() -> None:
    from mmdisco.world.continuous_sampling import sample_continuous

    terms, ratio = ContinuousWorldTerms(SMALL), ContinuousLogRatio(SMALL)

    def sample(disc, scale):
        return sample_continuous(terms, 3, 5, disc, scale, 4)

    free_a, free_v = sample(None, 1.0)
    both_a, both_v = sample(ratio, 1.0)
    # a modality's update reads only its own score: an unguided one is left as it was
    audio_only_a, audio_only_v = sample(ratio, (1.0, 0.0))
    video_only_a, video_only_v = sample(ratio, (0.0, 1.0))
    assert torch.allclose(audio_only_v, free_v) and torch.allclose(video_only_a, free_a)
    assert not torch.allclose(audio_only_a, free_a, atol=1e-3)
    assert not torch.allclose(video_only_v, free_v, atol=1e-3)
    same_a, same_v = sample(ratio, (1.0, 1.0))
    assert torch.allclose(same_a, both_a) and torch.allclose(same_v, both_v)
    with pytest.raises(ValueError, match="audio, video"):
        sample(ratio, (1.0, 1.0, 1.0))


@pytest.mark.parametrize("lam", [-2.0, 1.0, 4.0])
def test_exact_guided_scores_equal_marginal_scores_plus_the_ratio_gradient(lam: float) -> None:
    from mmdisco.world.continuous_ratio import exact_guided_scores
    from mmdisco.world.continuous_sampling import base_scores, guided_scores

    terms, ratio = ContinuousWorldTerms(SMALL), ContinuousLogRatio(SMALL)
    real = generate_continuous_clips(4, 1, SMALL)
    alpha, sigma = math.sqrt(1 / (1 + math.exp(-lam))), math.sqrt(1 / (1 + math.exp(lam)))
    gen = torch.Generator().manual_seed(0)
    a, v = (
        alpha * x.double() + sigma * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        for x in (real.audio, real.video)
    )
    log_snr = torch.tensor([lam])
    scale = (0.5, 2.0)
    marginal = base_scores(terms, a, v, log_snr, None)
    a_, v_ = a.clone().requires_grad_(), v.clone().requires_grad_()
    ratio_grad = torch.autograd.grad(ratio(a_, v_, log_snr, log_snr).sum(), (a_, v_))
    got = exact_guided_scores(terms, a, v, log_snr, scale)
    for m in range(2):
        want = marginal[m] + scale[m] * ratio_grad[m]
        assert torch.allclose(got[m], want, rtol=1e-9, atol=1e-9 * want.abs().max())
    # the sampler takes this path for the world's own ratio (float32 inputs on the other)
    via_sampler = guided_scores(terms, a, v, log_snr, ratio, scale)
    assert all(torch.allclose(g, w) for g, w in zip(via_sampler, got, strict=True))
    # and the generic path for anything else, to float32 precision
    generic = guided_scores(terms, a, v, log_snr, lambda *x: ratio(*x), scale)
    for g, w in zip(generic, got, strict=True):
        assert (g - w).norm() <= 1e-4 * w.norm()
