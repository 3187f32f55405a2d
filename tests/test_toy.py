"""The toy experiment: targets, metrics, networks, diffusers consistency and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from typer.testing import CliRunner

from mmdisco.cli import app
from mmdisco.guidance import discriminator_gradients
from mmdisco.toy.experiment import ALL_ROWS, METRICS, SETTINGS, gap_ratio
from mmdisco.toy.gmm import GMM, base_target, ind_target, ood_target
from mmdisco.toy.metrics import kde_log_prob, mode_balance, mode_precision, nll
from mmdisco.toy.models import (
    BaseMLP,
    MLPDiscriminator,
    ToyBaseModel,
    count_parameters,
    toy_schedule,
)
from mmdisco.toy.train import _init, train_base


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_targets_match_table5() -> None:
    ind, ood = ind_target(), ood_target()
    assert ind.means[:, 0].tolist() == [-3.0, -1.5, 0.0, 1.5, 3.0]
    assert ind.means[:, 1].tolist() == [1.5, -3.0, 3.0, 0.0, -1.5]
    assert sorted(map(tuple, ood.means.tolist())) == sorted(
        [(2.25, 2.25), (-2.25, 2.25), (2.25, -2.25), (-2.25, -2.25), (0.0, 0.0)]
    )
    # IND marginals equal the base data's modes; OOD's do not.
    assert sorted(ind.means[:, 1].tolist()) == base_target().means[:, 0].tolist()
    x = ind.sample(1000, _gen())
    counts = torch.cdist(x, ind.means).argmin(1).bincount(minlength=5)
    assert counts.tolist() == [200] * 5  # evenly sampled


def test_gmm_log_prob_matches_scipy_normal() -> None:
    from scipy.stats import multivariate_normal

    g = GMM(torch.tensor([[0.0, 0.0], [1.0, -1.0]]), std=0.3)
    x = torch.tensor([[0.1, 0.2], [2.0, -1.0]])
    expected = np.log(
        0.5 * multivariate_normal([0, 0], 0.25 * np.eye(2)).pdf(x.numpy())
        + 0.5 * multivariate_normal([1, -1], 0.25 * np.eye(2)).pdf(x.numpy())
    )
    got = g.log_prob(x, extra_std=0.4)  # 0.3^2 + 0.4^2 = 0.25
    assert torch.allclose(got, torch.from_numpy(expected), atol=1e-9)


def test_metrics_samples_on_modes() -> None:
    target = ind_target()
    at_modes = target.means.repeat(200, 1)
    assert mode_precision(at_modes, target) == 1.0
    assert mode_balance(at_modes, target) == pytest.approx(1.0)
    one_mode = target.means[:1].repeat(1000, 1)
    assert mode_precision(one_mode, target) == 1.0
    assert mode_balance(one_mode, target) == 0.0
    two_modes = target.means[:2].repeat(500, 1)
    assert mode_balance(two_modes, target) == pytest.approx(math.log(2) / math.log(5))
    off = target.means + 0.31  # just beyond 3 std (0.3) in each coordinate
    assert mode_precision(off, target) == 0.0
    assert mode_balance(off, target) == 0.0


def test_nll_ranks_gt_below_shifted_and_mode_dropping() -> None:
    target = ood_target()
    gt = target.sample(2000, _gen(1))
    ref = target.sample(2000, _gen(2))
    nll_gt = nll(gt, target, ref)
    # GT scores the analytic cross-entropy H(p, p * k_b) up to sampling noise.
    var = 0.1**2 + 0.2**2
    analytic = math.log(5) + math.log(2 * math.pi * var) + 0.1**2 / var
    assert nll_gt == pytest.approx(analytic, abs=0.05)
    assert nll(gt + 0.5, target, ref) > nll_gt + 2.0  # off the modes
    dropped = target.means[:1] + 0.1 * torch.randn(2000, 2, generator=_gen(3))
    assert mode_precision(dropped, target) > 0.95  # precise, but four modes dropped:
    assert nll(dropped, target, ref) > nll_gt + 2.0
    # The floor bounds the cost of arbitrarily far samples.
    assert nll(gt + 1e3, target, ref) <= -math.log(1e-8) + 1e-6


def test_kde_log_prob_single_point_is_gaussian() -> None:
    y = torch.tensor([[0.5, -0.5]])
    got = kde_log_prob(y, torch.zeros(1, 2), bandwidth=0.5)
    expected = -math.log(2 * math.pi * 0.25) - 0.5 * 0.5 / 0.25
    assert got.item() == pytest.approx(expected)


def test_gap_ratio() -> None:
    assert gap_ratio({"gt": 1.0, "no_joint": 11.0, "both": 1.5}) == pytest.approx(0.05)


def test_schedule_matches_diffusers_ddpm() -> None:
    model = ToyBaseModel(BaseMLP())
    scheduler = model.make_scheduler()
    assert isinstance(scheduler, DDPMScheduler)
    assert not scheduler.config.clip_sample  # the data spans +-3
    expected = scheduler.alphas_cumprod.double()
    assert torch.allclose(toy_schedule().alphas_cumprod, expected, atol=1e-7)
    assert torch.allclose(model.schedule.alphas_cumprod, expected, atol=1e-7)


def test_parameter_counts_match_table5() -> None:
    assert count_parameters(BaseMLP()) == pytest.approx(2.2e6, rel=0.02)
    assert count_parameters(MLPDiscriminator()) == pytest.approx(171e3, rel=0.02)


def test_base_time_table_equals_direct_evaluation() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = BaseMLP()
        for p in net.parameters():  # make the modulation non-trivial
            p.data.normal_(0, 0.05)
    x = torch.randn(64, 1, generator=_gen())
    t = torch.randint(500, (64,), generator=_gen(1))
    direct = net.eval()(x, t)
    net.freeze()
    assert torch.allclose(net(x, t), direct, atol=1e-5)
    assert torch.allclose(net(x, torch.tensor(7)), net(x, torch.full((64,), 7)), atol=1e-6)
    net.train()
    assert net._table is None


def test_discriminator_uses_log_snr_and_couples_modalities() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        disc = MLPDiscriminator()
        for p in disc.parameters():
            p.data.normal_(0, 0.2)
    x, y = torch.randn(8, 1, generator=_gen()), torch.randn(8, 1, generator=_gen(1))
    snr = torch.linspace(-10, 10, 8)
    logits = disc(x, y, snr, snr)
    assert logits.shape == (8,)
    # Each sample's output depends on its own log-SNR (distinct rows are embedded separately)
    # and on both time inputs.
    assert not torch.allclose(disc(x, y, snr.flip(0), snr), logits)
    assert not torch.allclose(disc(x, y, snr, snr + 1.0), logits)
    one = disc(x[:1], y[:1], snr[:1], snr[:1])
    assert torch.allclose(one, logits[:1], atol=1e-6)
    scalar = disc(x, y, torch.tensor(3.0), torch.tensor(3.0))
    assert torch.allclose(scalar, disc(x, y, torch.full((8,), 3.0), torch.full((8,), 3.0)))
    # grad_y h changes when only x changes: the guidance is joint.
    g1 = discriminator_gradients(disc, x, y, snr, snr).grad_video
    g2 = discriminator_gradients(disc, x + 1.0, y, snr, snr).grad_video
    assert not torch.allclose(g1, g2)
    with pytest.raises(ValueError, match=r"\(B, 1\)"):
        disc(torch.randn(8, 2), y, snr, snr)


def test_quick_run_writes_documented_outputs(tmp_path) -> None:
    threads = torch.get_num_threads()
    result = CliRunner().invoke(app, ["toy", "--out", str(tmp_path), "--quick"])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads  # pinned to 1 for the run only
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["machine"]["torch_threads"] == 1
    assert data["machine"]["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert set(SETTINGS) <= set(data)
    for setting in SETTINGS:
        assert set(data[setting]) == set(ALL_ROWS)
        for row in ALL_ROWS:
            assert set(data[setting][row]) == set(METRICS)
            assert all(math.isfinite(v) for v in data[setting][row].values())
        assert len(data["per_seed"][setting]["both"]["nll"]) == 1
    assert data["seconds"] > 0
    assert data["ind"]["gt"]["mode_precision"] > 0.95
    md = (tmp_path / "results.md").read_text()
    assert "| IND | L_D + L_DLSM |" in md and "18.80" in md
    assert "Computed on 1 torch thread(s)" in md
    assert (tmp_path / "scatter.png").stat().st_size > 10_000
    with np.load(tmp_path / "samples.npz") as npz:
        assert set(npz.files) == {f"{s}/{r}/0" for s in SETTINGS for r in ALL_ROWS}
        n = data["config"]["num_eval"]
        assert all(npz[k].shape == (n, 2) for k in npz.files)
        # no_joint is the same independent draw for both settings; gt differs.
        assert np.array_equal(npz["ind/no_joint/0"], npz["ood/no_joint/0"])
        assert not np.allclose(npz["ind/gt/0"], npz["ood/gt/0"])


def test_base_ema_averages_iterates() -> None:
    data = base_target().sample(64, torch.Generator().manual_seed(0))
    init = _init(BaseMLP, 3).state_dict()
    frozen = train_base(data, 4, 3, batch_size=32, ema_decay=1.0 - 1e-9).state_dict()
    moved = train_base(data, 4, 3, batch_size=32, ema_decay=0.0).state_dict()
    assert all(torch.allclose(frozen[k], init[k], atol=1e-6) for k in init)
    assert not all(torch.allclose(moved[k], init[k], atol=1e-6) for k in init)
