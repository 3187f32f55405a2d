"""Training a network discriminator on the continuous world (tiny world, few steps)."""

import pytest
import torch

from mmdisco.discriminator.shared_latent import SharedLatentConfig, SharedLatentDiscriminator
from mmdisco.world.continuous import ContinuousWorldConfig
from mmdisco.world.continuous_ratio import ContinuousWorldTerms
from mmdisco.world.continuous_training import (
    ContinuousTrainConfig,
    dlsm_bank,
    exact_eps,
    train_continuous_discriminator,
    training_data,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ContinuousWorldConfig(
    num_classes=2,
    shades_per_class=2,
    num_frames=5,
    time_steps_per_frame=2,
    min_event_spacing=1.0,
    n_bands=8,
    decays=(1.0, 2.0),
)


def test_exact_eps_is_the_noise_at_pure_noise() -> None:
    terms = ContinuousWorldTerms(SMALL)
    x = torch.randn(3, *SMALL.audio_shape)
    eps = exact_eps(terms, x, torch.full((3,), -30.0), "audio")
    assert torch.allclose(eps, x, atol=1e-5)  # p_t is N(0, I): -sigma * score = x


def test_bank_and_all_pairs_training_learn_the_pairing() -> None:
    terms = ContinuousWorldTerms(SMALL)
    cfg = ContinuousTrainConfig(
        num_real=256,
        num_fake=256,
        steps=200,
        batch_size=32,
        lr=5e-3,
        dlsm_rows=16,
        bank_noisings=1,
        all_pairs_groups=2,
        log_snr_range=(1.0, 4.0),
        dlsm_weight=0.1,
    )
    real, fake = training_data(SMALL, cfg)
    bank = dlsm_bank(terms, *real, cfg)
    assert bank.residual_video.shape == real[1].shape and bank.log_snr.shape == (256,)
    torch.manual_seed(0)
    net = SharedLatentConfig(SMALL.audio_shape, SMALL.video_shape, width=32, head="bilinear")
    log = train_continuous_discriminator(SharedLatentDiscriminator(net), real, fake, bank, cfg)
    # 2 log 2 = 1.386 is the loss of a discriminator that learnt nothing
    assert sum(row["l_d"] for row in log[-2:]) / 2 < 1.2
