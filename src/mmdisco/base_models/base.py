"""The black-box interface through which the sampler and the trainer see a base model.

MMDisCo never looks inside a base model: it needs its noise-model output for ``x_t`` and
``t`` (in the model's own parameterisation), the scheduler it was trained with, and ways in
and out of its space (latents). Adapters for diffusers pipelines implement this class.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import SchedulerMixin
from torch import Tensor

from mmdisco.diffusion import NoiseSchedule, prediction_type_of, schedule_from_scheduler_config


class BaseModel(ABC):
    """A frozen single-modal diffusion model.

    Subclasses set ``modality`` ("audio" or "video") and ``scheduler_config`` (a diffusers
    scheduler config dict) and implement :meth:`predict` and :meth:`latent_shape`.
    """

    modality: str
    scheduler_config: dict[str, Any]

    @property
    def prediction_type(self) -> str:
        return prediction_type_of(self.scheduler_config)

    @property
    def schedule(self) -> NoiseSchedule:
        """The forward process of ``scheduler_config``, built once per distinct config (a
        cosine schedule takes milliseconds to build, and training asks for it every step)."""
        key = json.dumps(self.scheduler_config, sort_keys=True, default=str)
        cached = self.__dict__.get("_schedule_cache")
        if cached is None or cached[0] != key:
            cached = (key, schedule_from_scheduler_config(self.scheduler_config))
            self.__dict__["_schedule_cache"] = cached
        return cached[1]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @abstractmethod
    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """The model's raw output for ``x_t`` at timestep ``t`` in :attr:`prediction_type`."""

    @abstractmethod
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one sample in the model's space (no batch axis)."""

    def make_scheduler(
        self, cls: type[SchedulerMixin] | None = None, **overrides: Any
    ) -> SchedulerMixin:
        """A fresh diffusers scheduler of class ``cls`` (default: the configured one)."""
        import diffusers

        config = dict(self.scheduler_config)
        name = config.pop("_class_name", "DDPMScheduler")
        config.pop("_diffusers_version", None)
        cls = cls or getattr(diffusers, name)
        return cls.from_config({**config, **overrides})

    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Media (waveform or frames) to the model's space. Identity for pixel/waveform models.

        Latent models return the VAE posterior's mode, or a sample from it drawn with
        ``generator`` when one is given (the reference release samples).
        """
        return media

    def decode(self, latents: Tensor) -> Tensor:
        """The model's space back to media. Identity for pixel/waveform models."""
        return latents

    def encode_prompt(self, prompts: list[str]) -> Any:
        """Conditioning for ``predict`` from text prompts ("" is the unconditional prompt)."""
        raise NotImplementedError(f"{type(self).__name__} takes no text prompt")

    def pooled_text_embedding(self, cond: Any) -> Tensor | None:
        """One vector per sample summarising ``cond``, for the discriminator's text input."""
        return None

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this model's outputs, recorded by the caches and runs made with
        it (resuming with another model is refused). Override to add the weights' identity."""
        return {
            "class": type(self).__name__,
            "latent_shape": list(self.latent_shape()),
            "scheduler": {k: v for k, v in self.scheduler_config.items() if k[0] != "_"},
        }


@dataclass
class PromptEmbeds:
    """A text encoder's output for a batch of prompts, as an adapter's ``cond``.

    ``hidden_states`` is what the denoiser attends to (``(B, L, D)``, or ``(B, D)`` for models
    conditioned on one vector); ``pooled`` is one vector per prompt for the discriminator;
    ``extra`` carries model-specific inputs (e.g. Stable Audio's duration embedding).
    """

    hidden_states: Tensor
    pooled: Tensor
    attention_mask: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.hidden_states.shape[0]

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> PromptEmbeds:
        """A copy on ``device`` whose floating-point tensors are cast to ``dtype`` (masks keep
        theirs)."""

        def move(x: Tensor | None) -> Tensor | None:
            if x is None:
                return None
            return x.to(device, dtype if x.is_floating_point() else None)

        return PromptEmbeds(
            move(self.hidden_states),
            move(self.pooled),
            move(self.attention_mask),
            {k: move(v) for k, v in self.extra.items()},
        )


def repeat_cond(cond: PromptEmbeds | Tensor, n: int) -> PromptEmbeds | Tensor:
    """One prompt's conditioning repeated to a batch of ``n`` (batched inputs pass as they are)."""
    if isinstance(cond, PromptEmbeds):
        fields = (cond.hidden_states, cond.pooled, cond.attention_mask)
        repeated = (None if x is None else _repeat(x, n) for x in fields)
        return PromptEmbeds(*repeated, {k: _repeat(v, n) for k, v in cond.extra.items()})
    if torch.is_tensor(cond):
        return _repeat(cond, n)
    raise TypeError(f"cannot repeat conditioning of type {type(cond).__name__}")


def _repeat(x: Tensor, n: int) -> Tensor:
    return x.repeat(n, *([1] * (x.ndim - 1))) if x.shape[0] == 1 else x
