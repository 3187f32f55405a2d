"""mmdisco: joint audio-video generation from two frozen single-modal diffusion models."""

__version__ = "0.1.0"

from mmdisco.discriminator import Discriminator, DiscriminatorConfig  # noqa: F401
