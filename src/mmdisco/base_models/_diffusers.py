"""Shared plumbing for adapters that wrap a diffusers pipeline."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mmdisco.base_models.base import BaseModel


class DiffusersAdapter(BaseModel):
    """A :class:`BaseModel` backed by a diffusers pipeline ``self.pipe`` (kept in eval mode)."""

    pipe: Any
    denoiser_name: str = "unet"

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        pipe.set_progress_bar_config(disable=True)
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False).eval()
        self.scheduler_config = dict(pipe.scheduler.config)
        self.scheduler_config["_class_name"] = type(pipe.scheduler).__name__

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    def to(self, device: torch.device | str) -> DiffusersAdapter:
        self.pipe.to(device)
        return self

    def batch_timesteps(self, t: Tensor | float, batch: int) -> Tensor:
        """Scheduler timesteps (scalar or ``(B,)``) as a ``(B,)`` tensor on the model's device."""
        t = torch.as_tensor(t, device=self.device)
        return t.reshape(-1).expand(batch) if t.numel() == 1 else t

    def encode_prompt_pair(self, prompts: list[str]) -> tuple[Any, Any]:
        """Conditional and unconditional ("") conditioning for classifier-free guidance.

        Adapters whose pipeline builds the unconditional input from the conditional batch
        (AudioLDM 2 pads it to the prompts' length) override this to match it exactly.
        """
        return self.encode_prompt(prompts), self.encode_prompt([""] * len(prompts))

    def pooled_text_embedding(self, cond: Any) -> Tensor | None:
        return getattr(cond, "pooled", None)


def masked_mean(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``(B, L, D)`` over the tokens that ``mask`` (B, L) keeps."""
    if mask is None:
        return hidden.mean(dim=1)
    w = mask.to(hidden.dtype)[..., None]
    return (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)
