"""MMDisCo's audio-video discriminator: two FiLM residual streams and a fusion head,
the codebook discriminator, and the one loader for every saved kind."""

from mmdisco.discriminator.codebook import CodebookConfig, CodebookDiscriminator
from mmdisco.discriminator.composite import (
    PooledDiscriminator,
    SummedDiscriminators,
    build_discriminator,
    load_discriminator,
    text_dims,
)
from mmdisco.discriminator.config import AUDIO_KINDS, FUSIONS, DiscriminatorConfig
from mmdisco.discriminator.model import Discriminator
from mmdisco.io import state_dict_mismatches

__all__ = [
    "AUDIO_KINDS",
    "FUSIONS",
    "CodebookConfig",
    "CodebookDiscriminator",
    "Discriminator",
    "DiscriminatorConfig",
    "PooledDiscriminator",
    "SummedDiscriminators",
    "build_discriminator",
    "load_discriminator",
    "state_dict_mismatches",
    "text_dims",
]
