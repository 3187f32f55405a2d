"""Peak memory of a training step, measured without running it: on the meta device.

:class:`MemoryTracker` is a ``TorchDispatchMode`` that counts the bytes of every tensor
storage alive while it is active (what an allocator must hold, before its rounding and
fragmentation) and their peak. On the meta device tensors have shapes and no data, so a
whole training step of the real-size discriminator and base models, with the real optimizer,
runs in seconds on any machine and yields the step's peak memory per device:
:func:`estimate_step_memory`. ``mmdisco train --config C.yaml --dry-run`` prints it.

The same tracker on real CPU tensors counts the same bytes (tests/test_memory.py checks the
meta estimate against a measured run's tracker and peak RSS). On a GPU, add the CUDA context
(about 0.5 GiB) and the caching allocator's fragmentation (typically 5-15 %).
"""

from __future__ import annotations

import copy
import dataclasses
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from mmdisco.base_models.base import repeat_cond
from mmdisco.base_models.loading import ModelSpecs, configured, load_models
from mmdisco.data.cache import TEXT_KEYS
from mmdisco.errors import ConfigError
from mmdisco.training.data import PairData

GIB = 2**30


class DryRunSpec(ModelSpecs, Protocol):
    """What the dry run reads of an experiment (:class:`mmdisco.config.ExperimentConfig`);
    a protocol, so that this layer never imports the config."""

    name: str

    def train_config(self) -> Any: ...

    def discriminator_config_for(self, audio: Any, video: Any) -> Any: ...


class MemoryTracker(TorchDispatchMode):
    """Live and peak bytes of the tensor storages created (or :meth:`track`-ed) in it."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def track(self, tensors: Iterable[Tensor]) -> int:
        """Count tensors that existed before the tracker (weights); returns their bytes."""
        before = self.live
        for tensor in tensors:
            self._add(tensor)
        return self.live - before

    def reset_peak(self) -> None:
        self.peak = self.live

    def _add(self, tensor: Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._seen:
            return
        size = storage.nbytes()
        self._seen[storage] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, size)

    def _free(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, Tensor):
                self._add(item)
        return out


@dataclass
class MemoryEstimate:
    """Bytes one device holds at the peak of a training step (micro-batch ``batch``, times
    ``grad_accum`` per step)."""

    batch: int
    grad_accum: int
    base_models: int  # both base models' weights, resident for L_DLSM
    discriminator: int  # its weights
    optimizer: int  # Adam's two moments
    data: int  # the step's real and fake latents and text inputs
    activations: int  # the rest at the peak: one micro-batch's graph, gradients, temporaries
    peak: int
    exact: bool = True  # False when the configured precision could not be run
    fakes: int | None = None  # fake clips of a micro-batch, when not ``batch`` (refinement)

    def table(self) -> str:
        rows = [
            ("base models (weights)", self.base_models),
            ("discriminator (weights)", self.discriminator),
            ("Adam state", self.optimizer),
            ("batch (latents, text)", self.data),
            (
                f"activations + gradients ({self.batch} real + {self.fakes or self.batch} fake"
                f"{' candidates, refinement' if self.fakes else ' pairs'})",
                self.activations,
            ),
            ("peak per device", self.peak),
        ]
        lines = ["| | GiB |", "|---|---:|"]
        lines += [f"| {name} | {value / GIB:.2f} |" for name, value in rows]
        return "\n".join(lines)


class _FixedPrompts:
    """A base model whose ``encode_prompt`` returns conditioning computed beforehand (text
    encoders need data-dependent control flow, which the meta device cannot run)."""

    def __init__(self, model: Any, cond: Any) -> None:
        self._model, self._cond = model, cond

    def encode_prompt(self, prompts: list[str]) -> Any:
        return self._cond

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _batch_of(cond: Any, n: int, device: str) -> Any:
    """One prompt's conditioning (a tensor, PromptEmbeds or a tuple of them) for ``n``
    prompts, on ``device``."""
    if cond is None:
        return None
    if isinstance(cond, tuple):
        return tuple(_batch_of(c, n, device) for c in cond)
    return repeat_cond(cond, n).to(device)


def prompt_conditioning(models: Iterable[Any]) -> tuple[Any, ...]:
    """Each model's conditioning for one caption, computed where the model is (before it
    moves to the meta device, where text encoders cannot run)."""
    return tuple(model.encode_prompt(["a caption"]) for model in models)


def _weights(module: Any) -> list[Tensor]:
    if isinstance(module, nn.Module):
        return [*module.parameters(), *module.buffers()]
    modules = getattr(module, "modules", None)
    owned = modules() if callable(modules) else {}
    if not isinstance(owned, dict):
        return []
    return [t for m in owned.values() for t in (*m.parameters(), *m.buffers())]


def estimate_step_memory(
    discriminator: nn.Module,
    audio_model: Any,
    video_model: Any,
    config: Any,
    text_dims: dict[str, int] | None = None,
    prompt_conds: tuple[Any, Any] | None = None,
    device: str = "meta",
    steps: int = 2,
    refine: bool = False,
) -> MemoryEstimate:
    """Peak bytes of ``steps`` optimiser steps of ``config`` on one device (with ``refine``,
    of its refinement: ``config.refine_pool`` candidates per group and a frozen copy of the
    discriminator).

    ``discriminator`` is deep-copied to ``device`` and the base models are moved there
    (``meta``: nothing is computed or allocated); the micro-batch is ``config.batch_size //
    config.grad_accum`` (one process). ``text_dims`` gives the discriminator's text inputs
    (``{"text_audio": 512, ...}``). With ``prompt_conds`` (:func:`prompt_conditioning`),
    the real pairs carry captions and L_DLSM uses the captioned predictions. The peak is taken
    over the last step, when Adam's state exists.
    """
    from mmdisco.training.trainer import enable_gradient_checkpointing, train_step

    if device == "meta" and config.mixed_precision != "no":
        raise ValueError("autocast cannot run on the meta device; estimate mixed_precision='no'")
    micro = config.batch_size // config.grad_accum
    captions = prompt_conds is not None
    models = []
    for k, model in enumerate((audio_model, video_model)):
        if hasattr(model, "to"):
            model.to(device)
        if captions:
            model = _FixedPrompts(model, _batch_of(prompt_conds[k], micro, device))
        models.append(model)
    disc = copy.deepcopy(discriminator).to(device).train()
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(disc)
    reference, fakes = None, micro
    if refine:
        reference = copy.deepcopy(disc).requires_grad_(False)
        fakes = micro // config.group_size * config.refine_pool
    tracker = MemoryTracker()
    with tracker:
        base = tracker.track(_weights(audio_model)) + tracker.track(_weights(video_model))
        weights = tracker.track(disc.parameters())
        if reference is not None:
            weights += tracker.track(reference.parameters())
        adam = torch.optim.Adam if device != "meta" else MetaAdam
        optimizer = adam(disc.parameters(), lr=config.lr)
        batches = [
            (
                _pairs(models, micro, text_dims, device, 2 * k, captions=captions),
                _pairs(models, fakes, text_dims, device, 2 * k + 1, captions=False),
            )
            for k in range(config.grad_accum)
        ]
        data = tracker.live - base - weights
        for step in range(steps):
            if step == steps - 1:
                tracker.reset_peak()
            train_step(disc, optimizer, *models, batches, config, step, reference=reference)
        moments = sum(
            t.untyped_storage().nbytes()
            for state in optimizer.state.values()
            for t in state.values()
            if torch.is_tensor(t)
        )
    activations = tracker.peak - base - weights - moments - data
    return MemoryEstimate(
        micro,
        config.grad_accum,
        base,
        weights,
        moments,
        data,
        activations,
        tracker.peak,
        fakes=fakes if refine else None,
    )


class MetaAdam(torch.optim.Optimizer):
    """Adam's allocations without its data-dependent scalars (torch's Adam reads its step
    count with ``.item()``, which the meta device cannot): two moments per weight, created at
    the first step, and one temporary per weight during the update (single-tensor Adam, as on
    the CPU; CUDA's foreach Adam briefly holds temporaries for all weights at once)."""

    def __init__(self, params: Any, lr: float = 1e-3) -> None:
        super().__init__(params, {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["exp_avg"].lerp_(p.grad, 1 - b1)
                state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = state["exp_avg_sq"].sqrt().add_(group["eps"])
                p.addcdiv_(state["exp_avg"], denom, value=-group["lr"])


def _pairs(
    models: list[Any],
    n: int,
    text_dims: dict[str, int] | None,
    device: str,
    seed: int,
    *,
    captions: bool,
) -> PairData:
    shapes = [m.latent_shape() for m in models]
    g = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> Tensor:
        return (
            torch.randn(*shape, generator=g).to(device)
            if device != "meta"
            else torch.empty(*shape, device=device)
        )

    cond = {k: draw(n, d) for k, d in (text_dims or {}).items()}
    caps = ["a caption"] * n if captions else None
    return PairData(draw(n, *shapes[0]), draw(n, *shapes[1]), cond, caps)


# --------------------------------------------------------------------------------------------
# The dry run of an experiment config (``mmdisco train --config C.yaml --dry-run``)
# --------------------------------------------------------------------------------------------


def estimate_training_memory(
    cfg: DryRunSpec,
    processes: int = 1,
    micro_batch: int | None = None,
    models: tuple[Any, Any, tuple[Any, Any]] | None = None,
) -> MemoryEstimate:
    """Peak memory per device of one training step of ``cfg`` (``processes`` data-parallel
    processes), measured on the meta device: nothing is computed or allocated but the base
    models' weights, which are loaded (on the CPU) to learn their sizes and then moved to
    meta. ``micro_batch`` overrides the per-process micro-batch (``train.grad_accum`` adapts).
    ``models`` reuses what :func:`memory_models` returned (for several estimates).

    bfloat16 autocast cannot run on the meta device; its steps are estimated in float32,
    which bounds them from above (``MemoryEstimate.exact`` is then False). A run that ends with
    the refinement (``train.refine_steps``) gets the larger of its two steps' peaks.
    """
    from mmdisco.discriminator import build_discriminator, text_dims

    audio, video, conds = models or memory_models(cfg)
    train_cfg = cfg.train_config()
    local = train_cfg.batch_size // processes
    micro = micro_batch or local // train_cfg.grad_accum
    if micro < 1 or local % micro:
        raise ConfigError(
            f"train.batch_size {train_cfg.batch_size} over {processes} processes gives "
            f"{local} pairs per process, which micro-batches of {micro} do not divide"
        )
    dcfg = cfg.discriminator_config_for(audio, video)
    with torch.device("meta"):
        disc = build_discriminator(dcfg)
    dims = text_dims(dcfg)
    text_dims = {k: d for k, d in zip(TEXT_KEYS, dims, strict=True) if d}
    step_cfg = dataclasses.replace(train_cfg, batch_size=micro, grad_accum=1, mixed_precision="no")
    estimate = estimate_step_memory(disc, audio, video, step_cfg, text_dims, conds)
    if train_cfg.refine_steps:
        refine = estimate_step_memory(disc, audio, video, step_cfg, text_dims, conds, refine=True)
        estimate = max(estimate, refine, key=lambda e: e.peak)
    estimate.grad_accum = local // micro
    estimate.exact = train_cfg.mixed_precision == "no"
    return estimate


def memory_models(cfg: DryRunSpec) -> tuple[Any, Any, tuple[Any, Any]]:
    """The configured base models (as training uses them) and one caption's conditioning
    for each, encoded on the CPU before any estimate moves the models to the meta device."""
    audio, video = configured(cfg, *load_models(cfg))
    return audio, video, prompt_conditioning((audio, video))


def dry_run_report(cfg: DryRunSpec, processes: int = 1, memory_gib: float | None = None) -> str:
    """What ``mmdisco train --dry-run`` prints: the configured step's memory per device and,
    given a budget, the largest micro-batch that fits (accumulating to the same batch)."""
    train_cfg = cfg.train_config()
    models = memory_models(cfg)
    estimate = estimate_training_memory(cfg, processes, None, models)
    lines = [
        f"{cfg.name}: batch {train_cfg.batch_size} on {processes} process(es) = "
        f"{estimate.grad_accum} micro-batch(es) of {estimate.batch} per device; "
        f"gradient_checkpointing {train_cfg.gradient_checkpointing}, "
        f"mixed_precision {train_cfg.mixed_precision}",
        "",
        estimate.table(),
        "",
        "Live tensor bytes, measured on the meta device (a CPU step measured 1.05-1.12x this "
        "in peak RSS); on a GPU add the CUDA context (~0.5 GiB) and allocator fragmentation.",
    ]
    if not estimate.exact:
        lines.append("bf16 autocast cannot run on the meta device: figures are float32's.")
    if memory_gib is not None:
        lines.append(_micro_batch_within(cfg, processes, memory_gib, models))
    return "\n".join(lines)


def _micro_batch_within(cfg: DryRunSpec, processes: int, memory_gib: float, models: Any) -> str:
    """The largest micro-batch whose step fits in ``memory_gib``: peak memory is affine in
    the micro-batch, so two estimates give the line."""
    local = cfg.train_config().batch_size // processes
    second = next((m for m in range(2, local + 1) if local % m == 0), 1)
    one = estimate_training_memory(cfg, processes, 1, models)
    two = estimate_training_memory(cfg, processes, second, models)
    slope = (two.peak - one.peak) // max(second - 1, 1)
    fits = [
        m
        for m in range(1, local + 1)
        if local % m == 0 and one.peak + (m - 1) * slope <= memory_gib * GIB
    ]
    if not fits:
        return f"Even one pair per micro-batch needs {one.peak / GIB:.1f} GiB."
    m = max(fits)
    return (
        f"Within {memory_gib:g} GiB: micro-batches of {m} (train.grad_accum: "
        f"{local // m}), about {(one.peak + (m - 1) * slope) / GIB:.1f} GiB; each "
        f"further pair costs {slope / GIB:.2f} GiB."
    )
