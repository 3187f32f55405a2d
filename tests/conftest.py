"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one torch thread, then restore the setting.

    On a shared CPU, thread hand-offs dominate small convolutions and matmuls (one thread was
    up to ~50x faster here); modules opt in with ``pytestmark``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- a world pipeline with a random discriminator (tests of the pipeline, the app) -----------

STEPS = 6
WINDOW = (0.3, 1.0)


def live(disc: torch.nn.Module, scale: float = 0.1, seed: int = 2) -> torch.nn.Module:
    """Perturb every weight: the output layers start at zero, which would give no gradient."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in disc.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return disc.eval()


@pytest.fixture(scope="module")
def world_pipe():
    """The world's base models, a small random discriminator (strong gradients), 6 steps."""
    from mmdisco.config import BaseModelConfig, SamplingConfig
    from mmdisco.pipeline import MMDisCoPipeline, PipelineConfig
    from mmdisco.world.models import ASSETS_DIR, load_world_models
    from mmdisco.world.recipes import build_discriminator

    audio, video = load_world_models()
    disc = live(
        build_discriminator(
            "mlp", audio.latent_shape(), video.latent_shape(), seed=1, video_pool=4,
            channels=8, channel_mult=(1, 2), norm_groups=4, time_embed_dim=16,
        ),
        scale=0.5,
    )  # fmt: skip
    config = PipelineConfig(
        BaseModelConfig("world_audio", str(ASSETS_DIR / "audio")),
        BaseModelConfig("world_video", str(ASSETS_DIR / "video")),
        sampling=SamplingConfig(
            scheduler="DDPMScheduler",
            num_inference_steps=STEPS,
            guidance_scale_audio=300.0,
            guidance_scale_video=300.0,
            window=WINDOW,
        ),
    )
    pipe = MMDisCoPipeline(audio, video, disc, config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reverse",
        action="store_true",
        help="run the tests in reverse order (a test must not depend on what ran before it)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--reverse"):
        items.reverse()
