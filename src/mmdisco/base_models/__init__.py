"""Frozen single-modal base models behind one black-box interface, and their adapters."""

from __future__ import annotations

from typing import Any

from mmdisco.base_models.base import BaseModel, PromptEmbeds

ADAPTERS: dict[str, str] = {
    "audioldm": "mmdisco.base_models.audioldm:AudioLDMModel",
    "audioldm2": "mmdisco.base_models.audioldm:AudioLDM2Model",
    "auffusion": "mmdisco.base_models.auffusion:SpectrogramImageModel",
    "spectrogram_image": "mmdisco.base_models.auffusion:SpectrogramImageModel",
    "stable_audio": "mmdisco.base_models.stable_audio:StableAudioModel",
    "animatediff": "mmdisco.base_models.animatediff:AnimateDiffModel",
    "ltx_video": "mmdisco.base_models.ltx:LTXVideoModel",
    # The synthetic world's base models (src/mmdisco/assets/world/{audio,video}).
    "world_audio": "mmdisco.world.models:WorldAudioModel",
    "world_video": "mmdisco.world.models:WorldVideoModel",
}


def adapter_class(name: str) -> type[BaseModel]:
    """The adapter class registered under ``name`` (imported on demand)."""
    import importlib

    if name not in ADAPTERS:
        raise ValueError(f"unknown base model adapter {name!r}; known: {sorted(ADAPTERS)}")
    module, cls = ADAPTERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_base_model(name: str, path: str, **kwargs: Any) -> BaseModel:
    """``adapter_class(name).from_pretrained(path, **kwargs)``."""
    return adapter_class(name).from_pretrained(path, **kwargs)


__all__ = ["ADAPTERS", "BaseModel", "PromptEmbeds", "adapter_class", "load_base_model"]
