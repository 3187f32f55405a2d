"""Best-of-N and SIR: SIR with weights exp(log ratio) turns product-of-marginals candidates
into draws from the joint (a discrete joint known exactly); best-of-N keeps the top logit."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mmdisco.diffusion import DiscreteSchedule
from mmdisco.resampling import score_pairs, select, t0_log_snr

K = 4  # categories per modality


def _joint() -> Tensor:
    """p(a, v): 0.85 on the diagonal, the rest spread; marginals not uniform."""
    g = torch.Generator().manual_seed(0)
    table = torch.rand(K, K, generator=g, dtype=torch.float64) * 0.15 / K**2
    table += torch.diag(torch.tensor([0.3, 0.25, 0.2, 0.1], dtype=torch.float64))
    return table / table.sum()


def test_sir_with_the_exact_log_ratio_draws_from_the_joint() -> None:
    joint = _joint()
    p_a, p_v = joint.sum(1), joint.sum(0)
    log_ratio = (joint / (p_a[:, None] * p_v[None])).log()
    g = torch.Generator().manual_seed(1)
    outputs, candidates = 20000, 64
    a = torch.multinomial(p_a, outputs * candidates, True, generator=g).view(outputs, candidates)
    v = torch.multinomial(p_v, outputs * candidates, True, generator=g).view(outputs, candidates)
    logits = log_ratio[a, v]
    chosen = select(logits, mode="sir", generator=g)
    rows = torch.arange(outputs)
    counts = torch.zeros(K, K, dtype=torch.float64)
    counts.index_put_((a[rows, chosen], v[rows, chosen]), torch.ones(outputs, dtype=torch.float64),
                      accumulate=True)  # fmt: skip
    tv = 0.5 * (counts / outputs - joint).abs().sum()
    assert tv < 0.03, tv
    # One candidate is no resampling at all: the product of the marginals.
    first = select(logits, 1, mode="sir", generator=g)
    assert (first == 0).all()
    independent = 0.5 * (torch.outer(p_a, p_v) - joint).abs().sum()
    assert independent > 0.5  # so the match above is not trivially close


def test_argmax_keeps_the_top_logit_among_the_first_n() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0, 9.0], [3.0, -1.0, 4.0, 2.0]])
    assert select(logits).tolist() == [3, 2]
    assert select(logits, 1).tolist() == [0, 0]
    assert select(logits, 3).tolist() == [1, 2]


@pytest.mark.parametrize(
    ("logits", "kwargs", "match"),
    [
        (torch.zeros(2, 3), {"mode": "best"}, "mode must be one of"),
        (torch.zeros(3), {}, r"logits must have shape \(B, N\), got \(3,\)"),
        (torch.zeros(2, 3), {"num_candidates": 4}, r"num_candidates must lie in \[1, 3\], got 4"),
    ],
)
def test_select_checks_its_inputs(logits, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        select(logits, **kwargs)


def test_score_pairs_batches_and_passes_levels_and_per_pair_inputs() -> None:
    seen = []

    def disc(a, v, snr_a, snr_v, text_audio=None):
        seen.append((snr_a, snr_v))
        return (a * v).sum(1) + snr_a - 2 * snr_v + text_audio[:, 0]

    g = torch.Generator().manual_seed(0)
    a, v, text = (torch.randn(10, 3, generator=g) for _ in range(3))
    scores = score_pairs(disc, a, v, 1.5, -0.5, batch_size=4, text_audio=text)
    torch.testing.assert_close(scores, (a * v).sum(1) + 1.5 + 1.0 + text[:, 0])
    assert [s[0].shape[0] for s in seen] == [4, 4, 2]
    with pytest.raises(ValueError, match="10 audio samples but 9 video samples"):
        score_pairs(disc, a, v[:9], 0.0, 0.0)


def test_t0_log_snr_is_the_first_timestep_of_the_schedule() -> None:
    class Model:
        schedule = DiscreteSchedule.cosine(1000)

    expected = float(Model.schedule.log_snr(torch.tensor([0]))[0])
    assert t0_log_snr(Model()) == pytest.approx(expected)
    assert 8.0 < expected < 20.0  # nearly clean, inside the clip
