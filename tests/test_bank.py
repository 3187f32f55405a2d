"""The L_DLSM bank: same loss as calling the base models, resumable, and training with it
never calls a base model."""

from __future__ import annotations

import pytest
import torch

from mmdisco.errors import InputError
from mmdisco.guidance import discriminator_gradients
from mmdisco.training.bank import build_noise_bank, load_noise_bank, row_noise
from mmdisco.training.data import PairData
from mmdisco.training.losses import _bank_dlsm, dlsm_loss, epsilon_fn
from mmdisco.training.trainer import TrainConfig, train_discriminator
from test_trainer import GaussianModel, TinyDisc


class Counting(GaussianModel):
    """A base model that counts its calls."""

    calls = 0

    def predict(self, x_t, t, cond=None):
        type(self).calls += 1
        return 0.9 * super().predict(x_t, t, cond)  # an imperfect model: L_DLSM has work


def _setup(n: int = 6):
    g = torch.Generator().manual_seed(0)
    real = PairData(torch.randn(n, 4, generator=g), torch.randn(n, 6, generator=g))
    fake = PairData(torch.randn(n, 4, generator=g), torch.randn(n, 6, generator=g))
    return Counting("audio", (4,)), Counting("video", (6,)), real, fake


def test_bank_loss_equals_the_live_loss_on_the_same_noisings(tmp_path):
    audio, video, real, _ = _setup()
    build_noise_bank(audio, video, real, tmp_path, noisings=3, shard_size=5, progress=False)
    bank = load_noise_bank(tmp_path)
    assert len(bank) == 18 and bank.index.tolist() == [i % 6 for i in range(18)]
    disc = TinyDisc().eval()  # no dropout: two evaluations must agree
    rows = bank.rows(torch.tensor([0, 7, 17, 4]), real)
    # the same noisings through the base models, as the live loss computes them
    noise = [row_noise(int(s), (4,), (6,)) for s in bank.seed[[0, 7, 17, 4]].tolist()]
    n_a, n_v = torch.stack([a for a, _ in noise]), torch.stack([v for _, v in noise])
    a_t = audio.schedule.add_noise(rows.audio, n_a, rows.t_audio)
    v_t = video.schedule.add_noise(rows.video, n_v, rows.t_video)
    out = discriminator_gradients(
        disc, a_t, v_t, audio.schedule.log_snr(rows.t_audio), video.schedule.log_snr(rows.t_video)
    )
    live = dlsm_loss(
        out.grad_audio,
        out.grad_video,
        epsilon_fn(audio)(a_t, rows.t_audio),
        epsilon_fn(video)(v_t, rows.t_video),
        n_a,
        n_v,
        audio.schedule.alpha_sigma(rows.t_audio)[1],
        video.schedule.alpha_sigma(rows.t_video)[1],
    )
    banked = _bank_dlsm(disc, rows, audio.schedule, video.schedule)
    torch.testing.assert_close(banked, live, rtol=1e-5, atol=1e-6)
    assert live > 0.01  # the model is imperfect: a loss that could be wrong


def test_bank_resumes_and_refuses_other_inputs(tmp_path):
    audio, video, real, _ = _setup()
    build_noise_bank(audio, video, real, tmp_path, noisings=2, shard_size=5, progress=False)
    first = load_noise_bank(tmp_path)
    (tmp_path / "shard-00001.safetensors").unlink()  # as if killed while writing it
    Counting.calls = 0
    build_noise_bank(audio, video, real, tmp_path, noisings=2, shard_size=5, progress=False)
    assert Counting.calls == 2  # one shard again: one call per model
    again = load_noise_bank(tmp_path)
    torch.testing.assert_close(again.residual_video, first.residual_video)
    with pytest.raises(InputError, match="noisings: was 2, now 3"):
        build_noise_bank(audio, video, real, tmp_path, noisings=3, shard_size=5, progress=False)


def test_training_with_a_bank_never_calls_the_base_models(tmp_path):
    audio, video, real, fake = _setup()
    build_noise_bank(audio, video, real, tmp_path / "bank", noisings=2, progress=False)
    bank = load_noise_bank(tmp_path / "bank")
    config = TrainConfig(steps=4, batch_size=4, dlsm_batch_size=2, log_every=1)
    Counting.calls = 0
    result = train_discriminator(
        TinyDisc(), audio, video, real, fake, config, tmp_path / "run", progress=False, bank=bank
    )
    assert Counting.calls == 0 and result.history[-1]["loss_dlsm"] > 0
    train_discriminator(TinyDisc(), audio, video, real, fake, config, progress=False)
    assert Counting.calls > 0  # without the bank, L_DLSM calls them every step
    other = PairData(real.audio + 1, real.video)
    with pytest.raises(InputError, match="bank: was built from other real pairs"):
        train_discriminator(TinyDisc(), audio, video, other, fake, config, bank=bank)
