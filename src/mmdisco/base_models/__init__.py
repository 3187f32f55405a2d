"""Frozen single-modal base models behind one black-box interface, and their adapters."""

from __future__ import annotations

from typing import Any

from mmdisco.base_models.base import BaseModel, PromptEmbeds

ADAPTERS: dict[str, str] = {
    "audioldm": "mmdisco.base_models.audioldm:AudioLDMModel",
    "audioldm2": "mmdisco.base_models.audioldm:AudioLDM2Model",
    "auffusion": "mmdisco.base_models.auffusion:AuffusionModel",
    "spectrogram_image": "mmdisco.base_models.auffusion:SpectrogramImageModel",
    "stable_audio": "mmdisco.base_models.stable_audio:StableAudioModel",
    "stable_audio_3": "mmdisco.base_models.stable_audio3:StableAudio3Model",
    "animatediff": "mmdisco.base_models.animatediff:AnimateDiffModel",
    "ltx_video": "mmdisco.base_models.ltx:LTXVideoModel",
    "ltx2": "mmdisco.base_models.ltx2:LTX2Model",
    "wan": "mmdisco.base_models.wan:WanModel",
    "hunyuan_video_15": "mmdisco.base_models.hunyuan_video:HunyuanVideo15Model",
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


def check_options(name: str, options: dict[str, Any]) -> None:
    """Refuse options that would run code from a checkpoint, and options nobody reads.

    Raises ``ValueError`` whose message starts with the offending key.
    """
    from mmdisco.base_models._diffusers import CODE_OPTIONS, LOADER_OPTIONS

    allowed = set(getattr(adapter_class(name), "options", ())) | LOADER_OPTIONS
    for key in options:
        if key in CODE_OPTIONS:
            raise ValueError(
                f"{key}: refused; a config may not load code from a checkpoint (diffusers would "
                "import and run Python files shipped with it)"
            )
        if key in ("use_safetensors", "torch_dtype"):
            hint = "allow_bin_weights" if key == "use_safetensors" else "torch_dtype"
            raise ValueError(f"{key}: set it with the model's {hint!r} field, not in options")
        if key not in allowed:
            raise ValueError(
                f"{key}: unknown option for adapter {name!r}; allowed: {sorted(allowed)}"
            )


def load_base_model(
    name: str, path: str, *, allow_bin_weights: bool = False, **options: Any
) -> BaseModel:
    """``adapter_class(name).from_pretrained(path, **options)``, safely.

    Weights are read from ``.safetensors`` files only. ``allow_bin_weights=True`` also
    accepts legacy ``.bin`` checkpoints (read by ``torch.load(weights_only=True)``, which
    refuses arbitrary pickled objects); use it only for checkpoints that ship no
    safetensors. Options are checked by :func:`check_options`; ``torch_dtype`` is passed on.
    """
    from mmdisco.base_models._diffusers import DiffusersAdapter

    dtype = options.pop("torch_dtype", None)
    check_options(name, options)
    cls = adapter_class(name)
    if dtype is not None:
        options["torch_dtype"] = dtype
    if issubclass(cls, DiffusersAdapter):  # the others read safetensors only anyway
        options["use_safetensors"] = None if allow_bin_weights else True
    return cls.from_pretrained(path, **options)


__all__ = [
    "ADAPTERS",
    "BaseModel",
    "PromptEmbeds",
    "adapter_class",
    "check_options",
    "load_base_model",
]
