"""Shared plumbing for adapters that wrap a diffusers pipeline.

Precision: the pipeline's weights may be float16 or bfloat16, but everything mmdisco does
around them (noise, scheduler steps, the discriminator and its gradient) stays float32.
:meth:`DiffusersAdapter.model_input` casts what enters a network to the network's dtype and
adapters return float32, so a half-precision model never sees a float32 tensor and the
sampler never sees a half one.
"""

from __future__ import annotations

from typing import Any, Self

import torch
from torch import Tensor, nn

from mmdisco.base_models.base import BaseModel

# Keyword arguments of diffusers' / transformers' ``from_pretrained`` that a config may set.
# Anything else is refused: ``custom_pipeline`` and ``trust_remote_code`` would run code
# from the checkpoint, and unknown keys are more likely typos than intent.
LOADER_OPTIONS = frozenset(
    {"variant", "revision", "cache_dir", "local_files_only", "low_cpu_mem_usage"}
)
CODE_OPTIONS = frozenset({"custom_pipeline", "trust_remote_code", "custom_revision"})


class DiffusersAdapter(BaseModel):
    """A :class:`BaseModel` backed by a diffusers pipeline ``self.pipe`` (kept in eval mode).

    ``options`` names the keyword arguments the adapter consumes itself (the rest of what
    ``from_pretrained`` accepts is :data:`LOADER_OPTIONS`). Modules the adapter owns outside
    the pipeline (a separate vocoder, condition adapters) go in ``self.extra_modules`` so that
    :meth:`to` and :meth:`modules` see them.
    """

    pipe: Any
    denoiser_name: str = "unet"
    options: tuple[str, ...] = ()

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.extra_modules: dict[str, nn.Module] = {}
        pipe.set_progress_bar_config(disable=True)
        for module in pipe.components.values():
            if isinstance(module, nn.Module):
                module.requires_grad_(requires_grad=False).eval()
        self.scheduler_config = dict(pipe.scheduler.config)
        self.scheduler_config["_class_name"] = type(pipe.scheduler).__name__

    @classmethod
    def load_pipeline(cls, pipeline_cls: Any, path_or_repo_id: str, kwargs: dict[str, Any]) -> Self:
        """``cls`` around ``pipeline_cls.from_pretrained`` (safetensors unless ``kwargs`` says
        otherwise), the adapter's own ``options`` taken out of ``kwargs`` first."""
        options = {k: kwargs.pop(k) for k in cls.options if k in kwargs}
        kwargs.setdefault("use_safetensors", True)
        return cls(pipeline_cls.from_pretrained(path_or_repo_id, **kwargs), **options)

    @property
    def denoiser(self) -> nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    def modules(self) -> dict[str, nn.Module]:
        """Every network this adapter owns, by name: the pipeline's and its own."""
        owned = {k: m for k, m in self.pipe.components.items() if isinstance(m, nn.Module)}
        return {**owned, **self.extra_modules}

    def add_module(self, name: str, module: nn.Module) -> nn.Module:
        """Own ``module`` (frozen, eval mode) alongside the pipeline's components."""
        self.extra_modules[name] = module.requires_grad_(requires_grad=False).eval()
        return module

    def to(self, device: torch.device | str) -> DiffusersAdapter:
        """Move every owned module to ``device`` (dtypes are kept)."""
        for module in self.modules().values():
            module.to(device)
        return self

    def model_input(self, x: Tensor) -> Tensor:
        """``x`` on the denoiser's device and in its dtype."""
        return x.to(self.device, self.dtype)

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
        """``cond.pooled`` in float32 (the discriminator's precision)."""
        pooled = getattr(cond, "pooled", None)
        return None if pooled is None else pooled.float()


def loader_kwargs(kwargs: dict[str, Any], *names: str) -> dict[str, Any]:
    """The ``from_pretrained`` arguments among ``kwargs`` that sub-loads (a motion adapter, a
    vocoder, a scheduler config) take too: dtype, safetensors policy and where files live."""
    shared = ("torch_dtype", "use_safetensors", "cache_dir", "local_files_only", "revision")
    return {k: kwargs[k] for k in (*shared, *names) if k in kwargs}


def vae_latents(posterior: Any, generator: torch.Generator | None) -> Tensor:
    """The posterior's mode, or a sample drawn with ``generator`` (float32 either way)."""
    return (posterior.mode() if generator is None else posterior.sample(generator)).float()


def masked_mean(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``(B, L, D)`` over the tokens that ``mask`` (B, L) keeps."""
    if mask is None:
        return hidden.mean(dim=1)
    w = mask.to(hidden.dtype)[..., None]
    return (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)
