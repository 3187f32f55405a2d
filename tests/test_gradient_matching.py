"""The gradient-matching diagnostic (``benchmarks/gradient_matching.py``): its loss reads the
cosine and the length of a network's input-gradient against a reference, its training
learns a known gradient field, and its report has every row."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _scripts import load_benchmark
from mmdisco.discriminator.shared_latent import SharedLatentConfig, SharedLatentDiscriminator

AUDIO, VIDEO = (2, 8), (3, 2, 4, 4)


@pytest.fixture(scope="module")
def gm():
    return load_benchmark("gradient_matching")


def _network(seed: int) -> SharedLatentDiscriminator:
    torch.manual_seed(seed)
    config = SharedLatentConfig(AUDIO, VIDEO, num_codes=8, width=32, head="bilinear")
    return SharedLatentDiscriminator(config).eval()


class Scaled(nn.Module):
    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, *args):
        return self.factor * self.model(*args)


def _gradients(model, audio, video, log_snr):
    audio, video = audio.clone().requires_grad_(True), video.clone().requires_grad_(True)
    return torch.autograd.grad(model(audio, video, log_snr, log_snr).sum(), (audio, video))


def _bank(teacher: nn.Module, n: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    audio, video = torch.randn(n, *AUDIO, generator=gen), torch.randn(n, *VIDEO, generator=gen)
    log_snr = 4 * torch.rand(n, generator=gen) - 2
    grad_audio, grad_video = _gradients(teacher, audio, video, log_snr)
    return {
        "audio": audio,
        "video": video,
        "log_snr": log_snr,
        "sigma": torch.ones(n),
        "grad_audio": grad_audio,
        "grad_video": grad_video,
    }


def test_the_loss_is_one_minus_the_cosine_plus_the_squared_log_length(gm):
    teacher = _network(0)
    bank = _bank(teacher, 32, 1)
    index = torch.arange(32)
    assert gm.gradient_matching_loss(teacher, bank, index).item() == pytest.approx(0, abs=1e-5)
    doubled = gm.gradient_matching_loss(Scaled(teacher, 2.0), bank, index).item()
    assert doubled == pytest.approx(2 * gm.LENGTH_WEIGHT * math.log(2) ** 2, rel=1e-4)
    assert gm.gradient_matching_loss(Scaled(teacher, -1.0), bank, index).item() == pytest.approx(
        4.0, rel=1e-5
    )
    # pairs whose reference is below the calibration's floor do not count
    bank["sigma"][:16] = 0.0
    flipped = {**bank, "grad_audio": bank["grad_audio"].clone()}
    flipped["grad_audio"][:16] *= -1
    assert gm.gradient_matching_loss(teacher, flipped, index).item() == pytest.approx(0, abs=1e-5)


def test_matching_learns_another_networks_gradient_field(gm):
    """A student of another initialisation, trained on a teacher's input-gradients, points
    its own where the teacher's do on points it never saw."""
    teacher, student = _network(0), _network(1)
    train, held = _bank(teacher, 512, 1), _bank(teacher, 128, 2)

    def cosine():
        grads = _gradients(student, held["audio"], held["video"], held["log_snr"])
        return [
            F.cosine_similarity(g.flatten(1), held[name].flatten(1), dim=1).mean().item()
            for g, name in zip(grads, ("grad_audio", "grad_video"), strict=True)
        ]

    before = cosine()
    losses = gm.match_gradients(student, train, steps=300, lr=3e-3)
    after = cosine()
    assert max(abs(c) for c in before) < 0.3
    assert min(after) > 0.8, (before, after)
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])


def test_the_report_has_every_row_and_reads_the_saved_network(gm, tmp_path):
    bench = load_benchmark("continuous_world")
    networks = tmp_path / "networks"
    bench.run_seed(
        0, pairs=4, steps=3, train_steps=2, codes=4, refine_steps=2, cache=networks / "seed_0"
    )
    saved = networks / "seed_0" / "refined" / "model.safetensors"
    before = saved.read_bytes()
    report = gm.run(0, bank_pairs=8, steps=2, networks=networks, pairs=8)
    assert list(report["rows"]) == [
        "contrastive",
        "contrastive + exact gradients",
        "conv, exact gradients only",
        "mlp, exact gradients only",
    ]
    assert report["bank_pairs"] == 16
    for row in report["rows"].values():
        assert list(row["cosine"]) == [str(level) for level in gm.NOISE_LEVELS]
    # the first row is the saved network as trained; the second trained it further, in memory
    from mmdisco.world.continuous import ContinuousWorldConfig
    from mmdisco.world.continuous_eval import calibrate_network, saved_network
    from mmdisco.world.continuous_ratio import ContinuousLogRatio

    config = ContinuousWorldConfig()
    model, _, _ = saved_network(networks, 0)
    own = calibrate_network(model, ContinuousLogRatio(config), config, 8, 0)
    assert report["rows"]["contrastive"]["cosine"]["0.5"]["audio"] == pytest.approx(
        next(c for c in own if c["noise_level"] == 0.5)["cos_audio"]
    )
    assert (
        report["rows"]["contrastive + exact gradients"]["cosine"]
        != report["rows"]["contrastive"]["cosine"]
    )
    assert saved.read_bytes() == before
    text = gm.markdown(report)
    for name in report["rows"]:
        assert f"| {name} |" in text
    with pytest.raises(SystemExit, match=r"continuous_world.py --seed 1"):
        gm.run(1, bank_pairs=8, steps=2, networks=networks, pairs=8)
