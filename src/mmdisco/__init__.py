"""mmdisco: joint audio-video generation from two frozen single-modal diffusion models."""

__version__ = "0.1.0"

from mmdisco.discriminator import Discriminator, DiscriminatorConfig  # noqa: F401


def __getattr__(name: str):
    # The pipeline pulls in diffusers; import it only when asked for.
    if name in ("MMDisCoPipeline", "MMDisCoPipelineOutput"):
        from mmdisco import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'mmdisco' has no attribute {name!r}")
