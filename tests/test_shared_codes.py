"""The shared-codes ceiling (``benchmarks/shared_codes.py``): its codes are the clusters they
claim, pooling is exact where a code's mass underflows, one code per state is the exact
ratio and two groups are the product of the two marginal posteriors' agreements."""

import math

import pytest
import torch

from _scripts import load_benchmark
from mmdisco.diffusion import schedule_from_scheduler_config
from mmdisco.world.continuous import ContinuousWorldConfig, generate_continuous_clips
from mmdisco.world.continuous_ratio import (
    ContinuousLogRatio,
    ContinuousWorldTerms,
    state_log_likelihoods,
)
from mmdisco.world.models import SCHEDULER_CONFIG

CONFIG = ContinuousWorldConfig()


@pytest.fixture(scope="module")
def sc():
    return load_benchmark("shared_codes")


def _noised_pairs(n: int, fraction: float, seed: int):
    """Real pairs and independent ones, noised to t/T = ``fraction`` (float64)."""
    real = generate_continuous_clips(n, seed, CONFIG)
    other = generate_continuous_clips(n, seed + 1, CONFIG)
    audio = torch.cat([real.audio, real.audio]).double()
    video = torch.cat([real.video, other.video]).double()
    schedule = schedule_from_scheduler_config(SCHEDULER_CONFIG)
    t = schedule.timesteps_from_fraction(torch.full((len(audio),), fraction))
    gen = torch.Generator().manual_seed(seed)
    noised = [
        schedule.add_noise(x, torch.randn(x.shape, generator=gen, dtype=x.dtype), t)
        for x in (audio, video)
    ]
    return noised[0], noised[1], schedule.log_snr(t).double()


@pytest.mark.parametrize(
    ("shade_bin", "time_bin"), [(1, 1), (1, 2), (1, 6), (2, 1), (8, 1), (1, 0), (0, 1), (0, 0)]
)
def test_codes_are_the_binned_states(sc, shade_bin, time_bin):
    index = sc.code_index(CONFIG, shade_bin, time_bin)
    pairs = CONFIG.event_pairs
    keys = [
        (
            s // shade_bin if shade_bin else 0,
            (t1 // time_bin, t2 // time_bin) if time_bin else 0,
        )
        for s in range(CONFIG.num_shades)
        for t1, t2 in pairs
    ]
    assert len(index) == CONFIG.num_shades * len(pairs)
    assert int(index.max()) + 1 == len(set(keys))
    # two states share a code exactly when their binned keys agree
    by_key: dict = {}
    for key, code in zip(keys, index.tolist(), strict=True):
        assert by_key.setdefault(key, code) == code
    assert len(set(by_key.values())) == len(by_key)


def test_pooling_matches_a_dense_sum_where_masses_underflow(sc):
    gen = torch.Generator().manual_seed(0)
    states, codes = 60, 7
    index = torch.randint(codes, (states,), generator=gen)
    index[:codes] = torch.arange(codes)  # every code has a state
    logits = 20 * torch.randn(3, states, generator=gen, dtype=torch.float64)
    logits[:, index == 3] -= 5000.0  # code 3's mass is exp(-5000) of the rest: 0 in float64
    pooled = sc.pooled_log_probs(logits, index, codes)
    log_post = logits - torch.logsumexp(logits, 1, keepdim=True)
    for k in range(codes):
        dense = torch.logsumexp(log_post[:, index == k], 1)
        torch.testing.assert_close(pooled[:, k], dense, rtol=1e-12, atol=1e-9)
    assert torch.all(pooled[:, 3] < -4000) and torch.isfinite(pooled).all()


def test_one_code_per_state_is_the_exact_ratio(sc):
    audio, video, log_snr = _noised_pairs(6, 0.3, 5)
    head = sc.PooledLogRatio(CONFIG, ((1, 1),))
    exact = ContinuousLogRatio(CONFIG)
    values = []
    for fn in (head, exact):
        a, v = audio.clone().requires_grad_(), video.clone().requires_grad_()
        h = fn(a, v, log_snr, log_snr)
        values.append((h.detach(), *torch.autograd.grad(h.sum(), (a, v))))
    for mine, theirs in zip(values[0], values[1], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-9)


def test_two_groups_multiply_the_marginal_posteriors_agreements(sc):
    audio, video, log_snr = _noised_pairs(4, 0.5, 7)
    head = sc.PooledLogRatio(CONFIG, ((1, sc.ALL), (sc.ALL, 1)))
    terms = ContinuousWorldTerms(CONFIG)
    shape = (len(audio), CONFIG.num_shades, len(CONFIG.event_pairs))
    post = [
        torch.log_softmax(state_log_likelihoods(terms, x, log_snr, m), 1).reshape(shape)
        for x, m in ((audio, "audio"), (video, "video"))
    ]
    expected = 0.0
    for axis, count in ((2, CONFIG.num_shades), (1, len(CONFIG.event_pairs))):
        q_a, q_v = (torch.logsumexp(p, axis) for p in post)
        expected = expected + torch.logsumexp(q_a + q_v, 1) + math.log(count)
    torch.testing.assert_close(head(audio, video, log_snr, log_snr), expected, rtol=0, atol=1e-9)
    assert head.codes == [CONFIG.num_shades, len(CONFIG.event_pairs)]


def test_the_report_has_every_row_and_a_figure(sc, tmp_path):
    report = sc.run(sc.QUICK_HEADS, 4, 0)
    assert list(report["rows"]) == list(sc.QUICK_HEADS)
    exact_row = report["rows"]["every state"]
    assert exact_row["codes"] == [CONFIG.num_shades * len(CONFIG.event_pairs)]
    for level, row in exact_row["calibration"].items():
        assert row["logit_corr"] == pytest.approx(1.0, abs=1e-6), level
    text = sc.markdown(report)
    for name in report["rows"]:
        assert f"| {name} |" in text
    assert sc.figure(report, tmp_path / "report.png").stat().st_size > 0
