"""MMDisCo's audio-video discriminator: two FiLM residual streams and a fusion head."""

from mmdisco.discriminator.config import AUDIO_KINDS, FUSIONS, DiscriminatorConfig
from mmdisco.discriminator.model import Discriminator
from mmdisco.io import state_dict_mismatches

__all__ = [
    "AUDIO_KINDS",
    "FUSIONS",
    "Discriminator",
    "DiscriminatorConfig",
    "state_dict_mismatches",
]
