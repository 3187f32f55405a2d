"""Trained base models for the continuous world, and sampling with them."""

from __future__ import annotations

import pytest
import torch

from mmdisco.world.continuous import ContinuousWorldConfig, generate_continuous_clips
from mmdisco.world.continuous_models import (
    ContinuousBaseConfig,
    ContinuousBaseModel,
    train_continuous_base,
)
from mmdisco.world.continuous_ratio import ContinuousWorldTerms, log_marginal
from mmdisco.world.continuous_sampling import sample_continuous, world_schedule_abar
from mmdisco.world.train import TrainConfig
from test_continuous_world import SMALL

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(modality: str = "audio") -> ContinuousBaseModel:
    shape = SMALL.audio_shape if modality == "audio" else SMALL.video_shape
    torch.manual_seed(0)
    return ContinuousBaseModel(
        ContinuousBaseConfig(modality, shape, num_tokens=SMALL.num_frames, width=16)
    )


def test_the_schedules_log_snrs_map_to_their_timesteps() -> None:
    abar = world_schedule_abar()
    t = torch.tensor([0, 1, 250, 999])
    log_snr = torch.log(abar[t] / (1 - abar[t]))
    got = _model().timestep(log_snr)
    assert torch.allclose(got, t.float(), atol=1e-3)
    # halfway in log-SNR between two steps is halfway between them
    mid = (log_snr[2] + torch.log(abar[251] / (1 - abar[251]))) / 2
    assert float(_model().timestep(mid.reshape(1))) == pytest.approx(250.5, abs=1e-3)


def test_the_score_gives_back_the_predicted_clean_clip(tmp_path) -> None:
    """The sampler recovers ``x0 = (x_t + sigma^2 score) / alpha``: it must be the model's own
    prediction (clamped to the clips' range); and the model round-trips through disk."""
    model = _model("video")
    x_t = torch.randn(3, *SMALL.video_shape)
    log_snr = torch.tensor([0.7])
    alpha2 = torch.sigmoid(log_snr.double())
    x0 = (x_t.double() + (1 - alpha2) * model.score(x_t, log_snr)) / alpha2.sqrt()
    assert torch.allclose(x0.float(), model(x_t, log_snr).clamp(-1, 1), atol=1e-5)
    model.save_pretrained(tmp_path / "video")
    again = ContinuousBaseModel.from_pretrained(tmp_path / "video")
    assert again.config == model.config
    assert torch.allclose(again(x_t, log_snr), model(x_t, log_snr))


def test_sampling_with_given_scores_equals_sampling_with_the_exact_ones() -> None:
    terms = ContinuousWorldTerms(SMALL)

    def exact(modality: str):
        def score(x: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
            x = x.detach().double().requires_grad_()
            (g,) = torch.autograd.grad(log_marginal(terms, x, log_snr, modality).sum(), x)
            return g

        return score

    a, v = sample_continuous(terms, 3, 0, steps=5)
    a2, v2 = sample_continuous(terms, 3, 0, steps=5, base=(exact("audio"), exact("video")))
    assert torch.allclose(a, a2, atol=1e-5) and torch.allclose(v, v2, atol=1e-5)


def test_training_lowers_the_denoising_loss() -> None:
    first, later = (
        train_continuous_base(
            "audio",
            TrainConfig(steps=steps, batch_size=16, clips_per_chunk=64, warmup=1),
            SMALL,
            progress=False,
        )
        for steps in (2, 150)
    )
    assert later.config.training["steps"] == 150 and "cpu_seconds" in later.config.training
    clean = generate_continuous_clips(64, 5, SMALL).audio
    gen = torch.Generator().manual_seed(0)
    noised = 0.8 * clean + 0.6 * torch.randn(clean.shape, generator=gen)
    log_snr = torch.tensor([float(torch.log(torch.tensor(0.64 / 0.36)))])
    errors = [((m(noised, log_snr) - clean) ** 2).mean().item() for m in (first, later)]
    assert errors[1] < 0.5 * errors[0]


def test_the_shipped_base_models_make_valid_clips_that_agree_only_by_chance() -> None:
    """32 independent pairs from the shipped models (25 steps): the detectors find a valid
    clip in nearly every one (the benchmark's 256 pairs per seed: see its report), and
    audio and video agree on their event times about as rarely as independent clips do."""
    from mmdisco.world.continuous_detectors import agreement, detect_continuous
    from mmdisco.world.continuous_models import load_continuous_base_models

    config = ContinuousWorldConfig()
    terms = ContinuousWorldTerms(config)
    audio_model, video_model = load_continuous_base_models()
    assert audio_model.config.latent_shape == config.audio_shape
    a, v = sample_continuous(terms, 32, 3, steps=25, base=(audio_model.score, video_model.score))
    da, dv = detect_continuous(a, "audio", terms), detect_continuous(v, "video", terms)
    assert da.valid.float().mean() >= 0.9 and dv.valid.float().mean() >= 0.9
    assert agreement(da, dv, config)["temporal"].float().mean() <= 0.25
