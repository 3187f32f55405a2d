"""Training the MMDisCo discriminator: L = L_D + dlsm_weight * L_DLSM on real and fake pairs.

The base models stay frozen and enter only through their noise schedules and, for L_DLSM,
their epsilon predictions (:func:`mmdisco.diffusion.to_epsilon` converts other
parameterisations). Training runs through Hugging Face Accelerate, so
``accelerate launch --num_processes N ...`` scales one command to several processes.

Exact resumption without pickle: every random number of step ``s`` on rank ``r`` (the
batch, timesteps and noise, dropout) comes from seeds derived from ``(seed, s, r)``, so
``step`` *is* the RNG and data-order state. A checkpoint is a directory with
``model.safetensors``, ``optimizer.safetensors`` (the optimizer's tensors, flattened) and
``state.json`` (step, config, the optimizer's non-tensor state), written under a temporary
name and renamed into place, so a killed run never leaves a checkpoint that looks complete.

Gradients are averaged across processes by an explicit all-reduce rather than a DDP wrapper:
L_DLSM differentiates the discriminator's input-gradient (double backprop), which DDP's
gradient hooks do not support reliably.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from mmdisco.base_models.base import BaseModel
from mmdisco.diffusion import NoiseSchedule, to_epsilon
from mmdisco.io import save_tensors_atomic, write_json_atomic
from mmdisco.training.data import BatchOrder, PairData
from mmdisco.training.fakes import derive_seed
from mmdisco.training.losses import EpsFn, mmdisco_loss

CHECKPOINT_DIR = "checkpoints"
# Settings that may change between a run and its resumption without changing its result.
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "log_every", "keep_checkpoints"}


@dataclass
class TrainConfig:
    """Discriminator training settings (JSON-able; stored in every checkpoint).

    ``batch_size`` is the *global* number of real pairs (and of fake pairs) per step, split
    evenly across processes, so a run's result does not depend on how many processes run it
    (up to floating-point summation order).
    """

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3  # Adam, as in the paper
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # or "cosine" (to lr_min_ratio * lr at the last step)
    lr_min_ratio: float = 0.1
    warmup_steps: int = 0
    dlsm_weight: float = 1.0
    use_d: bool = True
    use_dlsm: bool = True
    shared_timesteps: bool = True
    # Fractions of the noise schedule (1 = pure noise) training draws noise levels from; a
    # discriminator only needs to be right where it guides (GuidanceOptions.window).
    noise_range: tuple[float, float] = (0.0, 1.0)
    # "fixed": fake pairs as generated; "shuffle": every step re-pairs fake audio and fake
    # video at random. Independent samples stay independent under any pairing, so for
    # unconditional fakes shuffling gives N^2 fake pairs from N samples of each model.
    fake_pairing: str = "fixed"
    grad_clip: float | None = 1.0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON gives lists
        self.noise_range = tuple(self.noise_range)
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}"
            )
        if self.fake_pairing not in ("fixed", "shuffle"):
            raise ValueError(
                f"fake_pairing must be 'fixed' or 'shuffle', got {self.fake_pairing!r}"
            )
        if self.steps < 0 or self.batch_size <= 0:
            raise ValueError(
                f"need steps >= 0 and batch_size > 0, got {self.steps}, {self.batch_size}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**d)

    def lr_at(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.lr_schedule == "constant" or self.steps <= 1:
            return self.lr * warm
        progress = min(step / (self.steps - 1), 1.0)
        ratio = self.lr_min_ratio + (1 - self.lr_min_ratio) * 0.5 * (
            1 + math.cos(math.pi * progress)
        )
        return self.lr * warm * ratio


@dataclass
class TrainResult:
    discriminator: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    start_step: int = 0


def epsilon_fn(model: BaseModel, cond: Any = None) -> EpsFn:
    """A frozen base model as ``eps(x_t, t)``, whatever its parameterisation."""
    schedule, ptype = model.schedule, model.prediction_type

    def eps(x_t: Tensor, t: Tensor) -> Tensor:
        out = model.predict(x_t, t, cond)
        if ptype == "epsilon":
            return out
        alpha, sigma = schedule.alpha_sigma(t)
        return to_epsilon(out, x_t, alpha.to(x_t.device), sigma.to(x_t.device), ptype)

    return eps


# --------------------------------------------------------------------------------------------
# Checkpoints: safetensors + JSON
# --------------------------------------------------------------------------------------------


def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able rest."""
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {"param_groups": state_dict["param_groups"], "state": {}}
    for pid, per_param in state_dict["state"].items():
        entry: dict[str, Any] = {}
        for name, value in per_param.items():
            if torch.is_tensor(value):
                key = f"state.{pid}.{name}"
                tensors[key] = value
                entry[name] = {"tensor": key}
            else:
                entry[name] = {"value": value}
        meta["state"][str(pid)] = entry
    return tensors, meta


def unflatten_optimizer_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state = {
        int(pid): {
            name: tensors[v["tensor"]] if "tensor" in v else v["value"] for name, v in entry.items()
        }
        for pid, entry in meta["state"].items()
    }
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    config: TrainConfig,
) -> Path:
    """Write ``directory/step-XXXXXXX`` atomically (temporary directory, then rename)."""
    final = directory / f"step-{step:08d}"
    tmp = directory / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    opt_tensors, opt_meta = flatten_optimizer_state(optimizer.state_dict())
    save_tensors_atomic(tmp / "model.safetensors", model.state_dict())
    save_tensors_atomic(tmp / "optimizer.safetensors", opt_tensors)
    write_json_atomic(
        tmp / "state.json",
        {
            "step": step,
            "config": config.to_dict(),
            "optimizer": opt_meta,
            "rng": "derived from (config.seed, step, rank); nothing else to restore",
        },
    )
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint in ``directory`` (temporary ones are ignored)."""
    if not directory.exists():
        return None
    done = sorted(p for p in directory.glob("step-*") if (p / "state.json").exists())
    return done[-1] if done else None


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig
) -> int:
    """Restore model and optimizer from ``path``; returns the step to continue from."""
    with open(path / "state.json") as f:
        state = json.load(f)
    saved = TrainConfig.from_dict(state["config"]).to_dict()
    diff = {
        k: (saved[k], v)
        for k, v in config.to_dict().items()
        if k not in RESUMABLE_CHANGES and saved[k] != v
    }
    if diff:
        raise ValueError(f"cannot resume from {path}: settings differ (saved, now): {diff}")
    device = next(model.parameters()).device
    model.load_state_dict(load_file(path / "model.safetensors", device=str(device)))
    tensors = load_file(path / "optimizer.safetensors", device=str(device))
    optimizer.load_state_dict(unflatten_optimizer_state(tensors, state["optimizer"]))
    return int(state["step"])


def _prune(directory: Path, keep: int) -> None:
    done = sorted(p for p in directory.glob("step-*") if (p / "state.json").exists())
    for old in done[: max(len(done) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _all_reduce_mean(tensor: Tensor, world_size: int) -> Tensor:
    if world_size > 1:
        torch.distributed.all_reduce(tensor)
        tensor /= world_size
    return tensor


def _sync_gradients(model: nn.Module, world_size: int) -> None:
    """Average gradients over processes with one flat all-reduce."""
    if world_size == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.flatten() for p in params])
    _all_reduce_mean(flat, world_size)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def _broadcast_parameters(model: nn.Module, world_size: int) -> None:
    """Start every process from rank 0's weights (whatever each process initialised)."""
    if world_size > 1:
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)


def train_discriminator(
    discriminator: nn.Module,
    audio_model: BaseModel,
    video_model: BaseModel,
    real: PairData,
    fake: PairData,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    accelerator: Any = None,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``discriminator`` in place; checkpoints and TensorBoard logs go under ``out_dir``.

    ``real`` and ``fake`` are pairs in the base models' spaces. With ``resume`` and an
    existing checkpoint in ``out_dir``, training continues from it and ends with the same
    weights an uninterrupted run would have. ``stop_after`` stops (after checkpointing) once
    that many steps are done, as if the run had been killed: for tests and time-sliced jobs.
    """
    from accelerate import Accelerator

    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    main = accelerator.is_main_process
    discriminator.to(device).train()
    _broadcast_parameters(discriminator, world)
    optimizer = torch.optim.Adam(
        discriminator.parameters(),
        lr=config.lr,
        betas=config.betas,
        weight_decay=config.weight_decay,
    )
    out = Path(out_dir) if out_dir is not None else None
    ckpt_dir = out / CHECKPOINT_DIR if out is not None else None
    step = 0
    if resume and ckpt_dir is not None and (latest := latest_checkpoint(ckpt_dir)) is not None:
        step = load_checkpoint(latest, discriminator, optimizer, config)
    start_step = step
    eps_a = epsilon_fn(audio_model) if config.use_dlsm else None
    eps_v = epsilon_fn(video_model) if config.use_dlsm else None
    sched_a: NoiseSchedule = audio_model.schedule
    sched_v: NoiseSchedule = video_model.schedule
    real_order = BatchOrder(len(real), config.batch_size, derive_seed(config.seed, 1))
    fake_order = BatchOrder(len(fake), config.batch_size, derive_seed(config.seed, 2))
    fake_video_order = BatchOrder(len(fake), config.batch_size, derive_seed(config.seed, 3))
    if config.fake_pairing == "shuffle" and fake.cond:
        raise ValueError(
            "fake_pairing='shuffle' re-pairs fake audio and video, which would separate them "
            f"from their per-pair inputs {sorted(fake.cond)}; use fake_pairing='fixed'"
        )
    writer = None
    if main and out is not None:
        from torch.utils.tensorboard import SummaryWriter

        out.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(str(out / "logs"), purge_step=step)
        write_json_atomic(out / "train_config.json", config.to_dict())
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    bar = tqdm(
        total=config.steps, initial=step, disable=not (progress and main), desc="train", unit="step"
    )
    history: list[dict[str, float]] = []
    start_time = time.perf_counter()
    running = torch.zeros(4, dtype=torch.float64)
    n_running = 0
    while step < end:
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        r = real.take(real_order.local_batch(step, rank, world), device)
        f = fake.take(fake_order.local_batch(step, rank, world), device)
        if config.fake_pairing == "shuffle":
            f.video = fake.video[fake_video_order.local_batch(step, rank, world)].to(device)
        if config.use_dlsm and r.captions is not None:
            # L_DLSM corrects the prediction the sampler uses: the one for the pair's caption.
            eps_a = epsilon_fn(audio_model, audio_model.encode_prompt(r.captions))
            eps_v = epsilon_fn(video_model, video_model.encode_prompt(r.captions))
        generator = torch.Generator(device).manual_seed(derive_seed(config.seed, step, rank, 0))
        fork_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(derive_seed(config.seed, step, rank, 1))  # dropout, if any
            loss = mmdisco_loss(
                discriminator,
                r.audio,
                r.video,
                f.audio,
                f.video,
                sched_a,
                sched_v,
                eps_audio=eps_a,
                eps_video=eps_v,
                dlsm_weight=config.dlsm_weight,
                use_d=config.use_d,
                use_dlsm=config.use_dlsm,
                shared_timesteps=config.shared_timesteps,
                noise_range=tuple(config.noise_range),
                cond_real=r.cond,
                cond_fake=f.cond,
                generator=generator,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
        _sync_gradients(discriminator, world)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            discriminator.parameters(), config.grad_clip or float("inf")
        )
        optimizer.step()
        step += 1
        stats = torch.tensor(
            [loss.total.item(), loss.d.item(), loss.dlsm.item(), loss.accuracy], dtype=torch.float64
        )
        running += stats
        n_running += 1
        if step % config.log_every == 0 or step == end:
            mean = _all_reduce_mean(running.to(device), world).cpu() / n_running
            record = {
                "step": step,
                "loss": mean[0].item(),
                "loss_d": mean[1].item(),
                "loss_dlsm": mean[2].item(),
                "accuracy": mean[3].item(),
                "grad_norm": float(grad_norm),
                "lr": optimizer.param_groups[0]["lr"],
            }
            history.append(record)
            running.zero_()
            n_running = 0
            if main:
                bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}")
                if writer is not None:
                    for key, value in record.items():
                        if key != "step":
                            writer.add_scalar(f"train/{key}", value, step)
        bar.update(1)
        if ckpt_dir is not None and (step % config.checkpoint_every == 0 or step == end):
            if main:
                save_checkpoint(ckpt_dir, discriminator, optimizer, step, config)
                _prune(ckpt_dir, config.keep_checkpoints)
            accelerator.wait_for_everyone()
    bar.close()
    if writer is not None:
        writer.close()
    return TrainResult(discriminator, history, time.perf_counter() - start_time, start_step)
