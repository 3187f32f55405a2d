"""Discriminators built from others (mmdisco.discriminator.composite): pooled inputs,
summed logits, and the one loader."""

from __future__ import annotations

import pytest
import torch


def test_pooled_discriminator_round_trip_and_spread_gradient(tmp_path):
    from mmdisco.discriminator import SummedDiscriminators, load_discriminator
    from mmdisco.guidance import discriminator_gradients
    from mmdisco.world.recipes import build_discriminator

    disc = build_discriminator(
        "mlp",
        (32, 64),
        (3, 16, 16, 16),
        seed=1,
        video_pool=4,
        audio_pool=4,
        channels=8,
        channel_mult=(1, 2),
        norm_groups=4,
        time_embed_dim=16,
        fusion_product=True,
    )
    with torch.no_grad():  # zero-initialised output layers: make every branch live
        for p in disc.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    disc.save_pretrained(tmp_path)
    loaded = load_discriminator(tmp_path).eval()
    disc.eval()
    g = torch.Generator().manual_seed(0)
    audio, video = torch.randn(3, 32, 64, generator=g), torch.randn(3, 3, 16, 16, 16, generator=g)
    snr = torch.tensor([2.0, 0.0, -3.0])
    out = discriminator_gradients(disc, audio, video, snr, snr)
    torch.testing.assert_close(
        discriminator_gradients(loaded, audio, video, snr, snr).logits, out.logits
    )
    # Average pooling spreads each pooled cell's gradient evenly over the cell.
    cells_a = out.grad_audio.reshape(3, 32, 16, 4)
    torch.testing.assert_close(cells_a, cells_a[..., :1].expand_as(cells_a))
    cells_v = out.grad_video.reshape(3, 3, 16, 4, 4, 4, 4)
    torch.testing.assert_close(cells_v, cells_v[:, :, :, :, :1, :, :1].expand_as(cells_v))
    assert out.grad_audio.abs().sum() > 0 and out.grad_video.abs().sum() > 0

    summed = SummedDiscriminators(disc, loaded)
    torch.testing.assert_close(summed(audio, video, snr, snr), 2 * out.logits)
    summed.save_pretrained(tmp_path / "summed")
    reloaded = load_discriminator(tmp_path / "summed").eval()
    assert isinstance(reloaded, SummedDiscriminators) and len(reloaded.discs) == 2
    torch.testing.assert_close(reloaded(audio, video, snr, snr), 2 * out.logits)


def test_bad_pooling_file_is_named(tmp_path):
    from mmdisco.discriminator import load_discriminator
    from mmdisco.errors import InputError
    from mmdisco.world.recipes import build_discriminator

    disc = build_discriminator(
        "mlp",
        (32, 64),
        (3, 16, 16, 16),
        seed=1,
        video_pool=4,
        channels=8,
        channel_mult=(1, 2),
        norm_groups=4,
        time_embed_dim=16,
    )
    disc.save_pretrained(tmp_path)
    (tmp_path / "pooling.json").write_text('{"video_pool": 0, "audio_pool": 1}')
    with pytest.raises(InputError, match=r"pooling\.json"):
        load_discriminator(tmp_path)
