"""Training any world model on freshly generated world clips (`mmdisco train-base`).

One loop serves every kind of world model (:data:`KINDS`):

* ``audio`` / ``video``: the single-modal base models MMDisCo starts from;
* ``video-to-audio`` / ``audio-to-video``: the cascade's conditional models
  (:class:`~mmdisco.world.paired.WorldConditionalModel`), trained on pairs;
* ``joint``: the joint model trained from scratch on pairs
  (:class:`~mmdisco.world.paired.WorldJointModel`).

Every randomness (initial weights, data, timesteps, noise) derives from ``cfg.seed``, and the
run's CPU-seconds are recorded in the saved ``config.json`` (``training.cpu_seconds``), the
figure the systems benchmark reports as training cost.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdisco.diffusion import from_epsilon, prediction_type_of, schedule_from_scheduler_config
from mmdisco.errors import check_choice, check_float, check_fraction_range, check_int
from mmdisco.world.generator import WorldConfig, generate_clips
from mmdisco.world.models import MODEL_CLASSES, WorldNetwork
from mmdisco.world.paired import WorldConditionalModel, WorldJointModel

DATA_SEED_OFFSET = 1_000_003  # training data seeds stay clear of small evaluation seeds
KINDS = ("audio", "video", "video-to-audio", "audio-to-video", "joint")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train_world_model` (saved in the checkpoint's config.json)."""

    steps: int = 6000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    decay: bool = True  # cosine decay to 0.1 * lr over ``steps``; off: constant after warmup
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    clips_per_chunk: int = 1024
    passes_per_chunk: int = 2
    # Half of every batch draws t uniformly from this fraction of [0, T): the high-noise range
    # where a clip's class and events are decided, which uniform t visits too rarely.
    t_focus: tuple[float, float] | None = (0.6, 0.95)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "clips_per_chunk", "passes_per_chunk"):
            check_int(name, getattr(self, name), 1)
        check_int("warmup", self.warmup, 0)
        check_int("seed", self.seed, 0)
        check_float("lr", self.lr, 0.0, open_min=True)
        check_float("ema_decay", self.ema_decay, 0.0, 1.0, open_max=True)
        check_float("grad_clip", self.grad_clip, 0.0, open_min=True)
        if self.t_focus is not None:
            check_fraction_range("t_focus", self.t_focus)


def new_model(kind: str, world_config: WorldConfig, seed: int = 0) -> WorldNetwork:
    """A freshly initialised world model of ``kind`` for clips of ``world_config``."""
    check_choice("kind", kind, KINDS)
    if kind in MODEL_CLASSES:
        cls: Any = MODEL_CLASSES[kind]
        config = cls.default_config()
    elif kind == "joint":
        cls, config = WorldJointModel, WorldJointModel.default_config()
    else:
        cls = WorldConditionalModel
        config = cls.default_config(target=kind.split("-to-")[1])
    if "codec" in config:
        config["codec"].update(
            sample_rate=world_config.sample_rate, num_samples=world_config.num_samples
        )
    if "video" in config:
        config["video"].update(
            num_frames=world_config.num_frames,
            frame_size=world_config.frame_size,
            fps=world_config.fps,
        )
    return cls.from_config(config, seed=seed)


def _inputs(model: WorldNetwork) -> tuple[str, ...]:
    """The modalities of one training example, in the order the loss takes them: the
    denoised one first, then the given one (conditional models), or audio then video (joint)."""
    if isinstance(model, WorldConditionalModel):
        return (model.modality, model.given_modality)
    if isinstance(model, WorldJointModel):
        return ("audio", "video")
    return (model.modality,)


def sample_timesteps(
    n: int, num_steps: int, focus: tuple[float, float] | None, gen: torch.Generator
) -> Tensor:
    """``n`` training timesteps: uniform, or half uniform and half uniform in ``focus``."""
    t = torch.randint(0, num_steps, (n,), generator=gen)
    if focus is not None:
        lo, hi = round(focus[0] * num_steps), round(focus[1] * num_steps)
        focused = torch.randint(lo, hi, (n,), generator=gen)
        t = torch.where(torch.arange(n) % 2 == 1, focused, t)
    return t


def world_batches(
    model: WorldNetwork, cfg: TrainConfig, world_config: WorldConfig
) -> Iterator[tuple[Tensor, ...]]:
    """Endless minibatches in the model's spaces from freshly generated world clips: one
    tensor per modality of :func:`_inputs`, rows paired.

    Chunk ``i`` is ``generate_clips(clips_per_chunk, seed=DATA_SEED_OFFSET + 1000 * seed + i)``,
    encoded once and visited ``passes_per_chunk`` times in seeded random order.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    chunk = 0
    while True:
        clips = generate_clips(
            cfg.clips_per_chunk,
            seed=DATA_SEED_OFFSET + 1000 * cfg.seed + chunk,
            config=world_config,
        )
        with torch.no_grad():
            data = [
                model.codecs[m].encode(clips.audio if m == "audio" else clips.video).cpu()
                for m in _inputs(model)
            ]
        for _ in range(cfg.passes_per_chunk):
            order = torch.randperm(len(data[0]), generator=gen)
            for start in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
                index = order[start : start + cfg.batch_size]
                yield tuple(d[index] for d in data)
        chunk += 1


def _noised(
    x0: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: str, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``x_t`` at timesteps ``t`` and the regression target in ``prediction_type``."""
    noise = torch.randn(x0.shape, generator=gen)
    abar = alphas_cumprod[t].reshape(-1, *[1] * (x0.ndim - 1))
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    return x_t, from_epsilon(noise, x_t, abar.sqrt(), (1 - abar).sqrt(), prediction_type)


def denoising_loss(
    model: WorldNetwork,
    net: nn.Module,
    batch: tuple[Tensor, ...],
    cfg: TrainConfig,
    gen: torch.Generator,
) -> Tensor:
    """The DDPM loss on the scheduler's ``prediction_type`` (the clean clip for the world).

    A joint model draws one timestep per pair for both modalities (MM-Diffusion) and sums the
    two modalities' per-element mean squared errors; a conditional model sees its given
    modality clean.
    """
    schedule = schedule_from_scheduler_config(model.scheduler_config)
    alphas_cumprod = schedule.alphas_cumprod.float()  # type: ignore[attr-defined]
    ptype = prediction_type_of(model.scheduler_config)
    t = sample_timesteps(len(batch[0]), len(alphas_cumprod), cfg.t_focus, gen)
    if isinstance(model, WorldJointModel):
        a_t, target_a = _noised(batch[0], t, alphas_cumprod, ptype, gen)
        v_t, target_v = _noised(batch[1], t, alphas_cumprod, ptype, gen)
        pred_a, pred_v = net(a_t, v_t, t.float())
        return F.mse_loss(pred_a, target_a) + F.mse_loss(pred_v, target_v)
    x_t, target = _noised(batch[0], t, alphas_cumprod, ptype, gen)
    return F.mse_loss(net(x_t, t.float(), *batch[1:]), target)


def warmup_cosine(step: int, warmup: int, steps: int, decay: bool = True) -> float:
    """The learning-rate factor of the world models: linear warmup over ``warmup`` steps,
    then a cosine decay to 0.1 at ``steps`` (constant 1 without ``decay``)."""
    if step < warmup:
        return (step + 1) / warmup
    if not decay:
        return 1.0
    frac = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))


def optimiser_step(
    loss: Tensor, net: nn.Module, opt: torch.optim.Optimizer, sched: Any, grad_clip: float
) -> None:
    """Backward, gradient clipping, the optimiser's and the schedule's step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    opt.step()
    sched.step()


def ema_step(ema: nn.Module, net: nn.Module, step: int, ema_decay: float) -> None:
    """One EMA update of ``ema`` towards ``net``, with the decay ramped up over the first
    steps (``min(ema_decay, (1 + step) / (10 + step))``)."""
    decay = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
            p_ema.lerp_(p, 1 - decay)


def train_world_model(
    kind: str,
    cfg: TrainConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    world_config: WorldConfig | None = None,
    progress: bool = True,
    callback: Callable[[int, Any], bool] | None = None,
    callback_every: int = 250,
    weights_dtype: torch.dtype | None = None,
) -> Any:
    """Train one world model of ``kind`` (:data:`KINDS`) with :func:`denoising_loss`.

    Adam with linear warmup then a constant rate (or cosine decay if ``cfg.decay``),
    gradient clipping, and an EMA of the weights (the EMA is what is returned and saved).
    The same seed gives the same weights on one machine; with a constant rate the first N
    steps of a longer run are exactly an N-step run, so a run stopped early is still
    reproducible. ``config["training"]`` records the settings, the steps run, and the
    process's CPU-seconds and wall-seconds.

    ``callback(step, ema_model)`` runs every ``callback_every`` steps (e.g. to measure
    sample validity); returning True stops training there, recorded as ``training.steps``.
    """
    from tqdm.auto import tqdm

    cfg = cfg or TrainConfig()
    world_config = world_config or WorldConfig()
    model = new_model(kind, world_config, seed=cfg.seed)
    cls, config = type(model), model.config
    net = model.net.train().requires_grad_(requires_grad=True)
    ema = copy.deepcopy(net).eval().requires_grad_(requires_grad=False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)

    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: warmup_cosine(step, cfg.warmup, cfg.steps, cfg.decay)
    )
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    batches = world_batches(model, cfg, world_config)
    steps_run = cfg.steps
    bar = tqdm(range(cfg.steps), desc=f"train-base {kind}", disable=not progress)
    for step in bar:
        loss = denoising_loss(model, net, next(batches), cfg, gen)
        optimiser_step(loss, net, opt, sched, cfg.grad_clip)
        ema_step(ema, net, step, cfg.ema_decay)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        due = callback is not None and (step + 1) % callback_every == 0
        if due and callback(step + 1, cls(config, ema)):  # type: ignore[misc]
            steps_run = step + 1
            break
    config["training"] = {
        **asdict(cfg),
        "steps": steps_run,
        "kind": kind,
        "cpu_seconds": round(time.process_time() - cpu_start, 3),
        "wall_seconds": round(time.perf_counter() - wall_start, 3),
        "threads": torch.get_num_threads(),
    }
    trained = cls(config, ema)
    if out_dir is not None:
        trained.save_pretrained(out_dir, dtype=weights_dtype)
    return trained
