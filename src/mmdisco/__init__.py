"""mmdisco: joint audio-video generation from two frozen single-modal diffusion models.

The public names are imported on first use (PEP 562), so ``import mmdisco.cli`` or
``import mmdisco.errors`` does not pay for torch and diffusers.
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "Discriminator": "mmdisco.discriminator",
    "DiscriminatorConfig": "mmdisco.discriminator",
    "MMDisCoPipeline": "mmdisco.pipeline",
    "MMDisCoPipelineOutput": "mmdisco.pipeline",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'mmdisco' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
