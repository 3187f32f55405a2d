"""Training options that save memory (gradient accumulation, activation checkpointing, bf16
autocast) and the two loss terms kept consistent: L_DLSM uses the unconditional prediction for
pairs whose caption the discriminator dropped, and the fakes' CFG scale."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import mmdisco.training.trainer as trainer
from mmdisco.base_models.base import BaseModel
from mmdisco.discriminator import Discriminator
from mmdisco.training.data import PairData
from mmdisco.training.losses import LossOutput
from mmdisco.training.trainer import TrainConfig, train_discriminator, train_step

A_SHAPE, V_SHAPE = (4, 8, 8), (4, 4, 8, 8)

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(BaseModel):
    """A denoiser that records the prompts it is conditioned on (cond is the prompt list)."""

    scheduler_config = {  # noqa: RUF012
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": 100,
        "beta_schedule": "linear",
    }

    def __init__(self, modality: str, shape: tuple[int, ...]) -> None:
        self.modality, self.shape, self.prompts = modality, shape, []

    def encode_prompt(self, prompts: list[str]) -> list[str]:
        self.prompts.append(list(prompts))
        return list(prompts)

    def predict(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        bias = torch.tensor([0.0 if p == "" else 0.1 for p in cond]).view(
            -1, *[1] * len(self.shape)
        )
        return 0.5 * x_t + bias

    def latent_shape(self) -> tuple[int, ...]:
        return self.shape


def disc(text: bool = True, drop: float = 0.0, seed: int = 0) -> Discriminator:
    torch.manual_seed(seed)
    changes = {"text_dim_audio": 3, "text_dim_video": 3, "text_drop_prob": drop} if text else {}
    d = Discriminator.for_shapes(A_SHAPE, V_SHAPE, **changes)
    for p in d.parameters():  # leave the zero-initialised start, so every weight matters
        torch.nn.init.normal_(p, 0.0, 0.05)
    return d


def pairs(n: int, seed: int, captions: bool = True) -> PairData:
    g = torch.Generator().manual_seed(seed)
    text = {k: torch.randn(n, 3, generator=g) for k in ("text_audio", "text_video")}
    caps = [f"caption {i}" for i in range(n)] if captions else None
    return PairData(
        torch.randn(n, *A_SHAPE, generator=g), torch.randn(n, *V_SHAPE, generator=g), text, caps
    )


def step_once(d, config, batches, models=None):
    models = models or (Recorder("audio", A_SHAPE), Recorder("video", V_SHAPE))
    optimizer = torch.optim.Adam(d.parameters(), lr=config.lr)
    stats, norm = train_step(d, optimizer, *models, batches, config, step=3)
    return stats, norm


def test_accumulated_micro_batches_equal_one_full_batch(monkeypatch):
    """With a loss free of random draws, k micro-batches give the full batch's step."""

    def loss(disc, ra, rv, fa, fv, *args, cond_real, cond_fake, **kwargs):
        cond_real = {k: v for k, v in cond_real.items() if k != "text_drop"}
        h_real = disc(ra, rv, torch.zeros(len(ra)), torch.zeros(len(ra)), **cond_real)
        h_fake = disc(fa, fv, torch.zeros(len(fa)), torch.zeros(len(fa)), **cond_fake)
        d = F.softplus(-h_real).mean() + F.softplus(h_fake).mean()
        return LossOutput(d, d.detach(), d.detach() * 0, h_real.detach(), h_fake.detach())

    monkeypatch.setattr(trainer, "mmdisco_loss", loss)
    real, fake = pairs(8, 0), pairs(8, 1, captions=False)
    one = disc(text=True)
    config = TrainConfig(batch_size=8, lr=0.01)
    stats_1, norm_1 = step_once(one, config, [(real, fake)])
    four = disc(text=True)
    quarters = [(real.take(i), fake.take(i)) for i in torch.arange(8).chunk(4)]
    stats_4, norm_4 = step_once(four, TrainConfig(batch_size=8, grad_accum=4, lr=0.01), quarters)
    torch.testing.assert_close(norm_4, norm_1, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(stats_4[:2], stats_1[:2], rtol=1e-6, atol=1e-7)
    for a, b in zip(one.parameters(), four.parameters(), strict=True):  # (clipped) gradients
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-8)


def test_gradient_checkpointing_changes_memory_not_the_step():
    """The full objective (L_D + L_DLSM double backward), with and without checkpointing."""
    real, fake = pairs(4, 0), pairs(4, 1, captions=False)
    base, checkpointed = disc(), disc()
    config = TrainConfig(batch_size=4, lr=0.01)
    stats, norm = step_once(base, config, [(real, fake)])
    ckpt_config = TrainConfig(batch_size=4, lr=0.01, gradient_checkpointing=True)
    trainer.enable_gradient_checkpointing(checkpointed)
    stats_c, norm_c = step_once(checkpointed, ckpt_config, [(real, fake)])
    assert checkpointed.audio_stream.gradient_checkpointing
    torch.testing.assert_close(stats_c, stats, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(norm_c, norm, rtol=1e-5, atol=1e-7)
    for a, b in zip(base.parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_keeps_float32_weights_and_close_losses():
    real, fake = pairs(4, 0), pairs(4, 1, captions=False)
    full, mixed = disc(), disc()
    stats, _ = step_once(full, TrainConfig(batch_size=4), [(real, fake)])
    stats_m, norm_m = step_once(
        mixed, TrainConfig(batch_size=4, mixed_precision="bf16"), [(real, fake)]
    )
    assert torch.isfinite(norm_m) and all(p.dtype == torch.float32 for p in mixed.parameters())
    assert (stats_m[:3] - stats[:3]).abs().max() < 0.03 * stats[:3].abs().max()
    assert not torch.equal(stats_m, stats)  # bf16 did run
    with pytest.raises(ValueError, match="mixed_precision: must be one of"):
        TrainConfig(mixed_precision="fp8")


def test_dlsm_uses_the_unconditional_prediction_for_dropped_captions():
    audio, video = Recorder("audio", A_SHAPE), Recorder("video", V_SHAPE)
    d = disc(drop=0.5)
    seen = []
    d.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs.get("text_drop")), with_kwargs=True
    )
    real, fake = pairs(16, 0), pairs(16, 1, captions=False)
    step_once(d, TrainConfig(batch_size=16), [(real, fake)], (audio, video))
    drop = seen[0]  # the real pairs' forward
    assert drop is not None and 0 < int(drop.sum()) < 16
    for model in (audio, video):
        (prompts,) = model.prompts
        assert [p == "" for p in prompts] == drop.tolist()
        assert [p for p in prompts if p] == [
            c for c, x in zip(real.captions, drop, strict=True) if not x
        ]


def test_cfg_scales_of_fakes_and_dlsm_must_agree():
    real, fake = pairs(4, 0), pairs(4, 1, captions=False)
    audio, video = Recorder("audio", A_SHAPE), Recorder("video", V_SHAPE)
    config = TrainConfig(batch_size=4, steps=1, checkpoint_every=1, log_every=1)
    with pytest.warns(UserWarning, match=r"video model's prediction with CFG scale 1\.0"):
        train_discriminator(
            disc(), audio, video, real, fake, config, progress=False, fake_cfg_scales=(1.0, 7.5)
        )
    video.cfg_scale = 7.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_discriminator(
            disc(), audio, video, real, fake, config, progress=False, fake_cfg_scales=(1.0, 7.5)
        )


def test_grad_accum_must_divide_the_batch():
    real, fake = pairs(6, 0), pairs(6, 1, captions=False)
    models = (Recorder("audio", A_SHAPE), Recorder("video", V_SHAPE))
    config = TrainConfig(batch_size=6, grad_accum=4, steps=1)
    with pytest.raises(ValueError, match=r"grad_accum=4 must divide each process's batch"):
        train_discriminator(disc(), *models, real, fake, config, progress=False)
