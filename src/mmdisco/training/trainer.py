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

Memory: each process's share of a step runs as ``grad_accum`` equal micro-batches whose
gradients add up to the whole batch's (both loss terms are means, so the micro-batch losses
are averaged); ``gradient_checkpointing`` recomputes the discriminator's residual blocks in
the backward pass; ``mixed_precision="bf16"`` autocasts the loss's forward and backward (the
weights, Adam and the gradient sum stay float32). ``mmdisco train --dry-run`` measures what a
step needs (:mod:`mmdisco.training.memory`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mmdisco.base_models.base import BaseModel
from mmdisco.diffusion import to_epsilon
from mmdisco.errors import (
    InputError,
    NonFiniteError,
    check_bool,
    check_choice,
    check_float,
    check_fraction_range,
    check_int,
    check_memory,
)
from mmdisco.io import (
    TMP_MARK,
    DirectoryLock,
    load_tensors,
    read_json,
    remove_orphans,
    save_tensors_atomic,
    state_dict_mismatches,
    umask,
    write_json_atomic,
)
from mmdisco.seeding import derive_seed
from mmdisco.shards import fingerprint_differences, jsonable, on_rank0
from mmdisco.training.bank import BankRows, NoiseBank
from mmdisco.training.data import BatchOrder, PairData
from mmdisco.training.losses import EpsFn, mmdisco_loss

CHECKPOINT_DIR = "checkpoints"
INPUTS_FILE = "inputs.json"  # what the run is made from (see run_inputs)
# Settings that may change between a run and its resumption without changing its result.
RESUMABLE_CHANGES = {
    "steps",
    "checkpoint_every",
    "log_every",
    "keep_checkpoints",
    "gradient_checkpointing",
}
MIXED_PRECISION = {"no": None, "bf16": torch.bfloat16}


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
    # Fraction of pairs with one modality held clean (log-SNR at the clip), so that the same
    # discriminator also guides conditional generation with a clean given modality.
    clean_prob: float = 0.0
    # Fractions of the noise schedule (1 = pure noise) training draws noise levels from; a
    # discriminator only needs to be right where it guides (GuidanceOptions.window).
    noise_range: tuple[float, float] = (0.0, 1.0)
    # "fixed": fake pairs as generated; "shuffle": every step re-pairs fake audio and fake
    # video at random. Independent samples stay independent under any pairing, so for
    # unconditional fakes shuffling gives N^2 fake pairs from N samples of each model.
    fake_pairing: str = "fixed"
    # Real pairs per step in L_DLSM when it reads a noise bank (None: batch_size). L_DLSM's
    # double backward is the costly part of a step; a smaller batch buys it cheaply.
    dlsm_batch_size: int | None = None
    grad_clip: float | None = 1.0
    # Memory (module docstring): micro-batches per step and process, activation
    # checkpointing of the discriminator, "no" or "bf16" autocast.
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        """Every number checked (type, finiteness, range) before any work is done."""
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        self.lr = check_float("lr", self.lr, 0.0, open_min=True)
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise InputError(f"must be a pair [beta1, beta2], got {self.betas!r}", "betas")
        self.betas = tuple(
            check_float(f"betas[{i}]", b, 0.0, 1.0, open_max=True) for i, b in enumerate(self.betas)
        )
        self.weight_decay = check_float("weight_decay", self.weight_decay, 0.0)
        check_choice("lr_schedule", self.lr_schedule, ("constant", "cosine"))
        self.lr_min_ratio = check_float("lr_min_ratio", self.lr_min_ratio, 0.0, 1.0)
        check_int("warmup_steps", self.warmup_steps, 0)
        self.dlsm_weight = check_float("dlsm_weight", self.dlsm_weight, 0.0)
        for name in ("use_d", "use_dlsm", "shared_timesteps", "gradient_checkpointing"):
            check_bool(name, getattr(self, name))
        if not (self.use_d or self.use_dlsm):
            raise InputError("use_d and use_dlsm are both false: there is nothing to train")
        self.noise_range = check_fraction_range("noise_range", self.noise_range)
        self.clean_prob = check_float("clean_prob", self.clean_prob, 0.0, 1.0)
        check_choice("fake_pairing", self.fake_pairing, ("fixed", "shuffle"))
        if self.dlsm_batch_size is not None:
            check_int("dlsm_batch_size", self.dlsm_batch_size, 1)
        if self.grad_clip is not None:
            self.grad_clip = check_float("grad_clip", self.grad_clip, 0.0, open_min=True)
        check_int("grad_accum", self.grad_accum, 1)
        check_choice("mixed_precision", self.mixed_precision, tuple(MIXED_PRECISION))
        check_int("checkpoint_every", self.checkpoint_every, 1)
        check_int("keep_checkpoints", self.keep_checkpoints, 1)
        check_int("log_every", self.log_every, 1)
        check_int("seed", self.seed, 0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        if not isinstance(d, dict):
            raise InputError(f"a TrainConfig must be a mapping of fields, got {d!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown field; expected one of {sorted(known)}", unknown[0])
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
    """Write ``directory/step-XXXXXXX`` atomically (temporary directory, then rename).

    Non-finite weights are refused (:class:`~mmdisco.errors.NonFiniteError`): a checkpoint
    is always one a run can resume from."""
    final = directory / f"step-{step:08d}"
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".{final.name}{TMP_MARK}"))
    try:
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
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
    state = read_json(path / "state.json")
    try:
        saved = TrainConfig.from_dict(state["config"]).to_dict()
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"is not a checkpoint this version can read ({err})", str(path)) from None
    diff = {
        k: (saved[k], v)
        for k, v in config.to_dict().items()
        if k not in RESUMABLE_CHANGES and saved[k] != v
    }
    if diff:
        raise InputError(
            f"settings differ (saved, now): {diff}; use the saved settings, or another output "
            "directory to start fresh",
            f"cannot resume from {path}",
        )
    device = next(model.parameters()).device
    weights, _ = load_tensors(path / "model.safetensors", device)
    problems = state_dict_mismatches(model.state_dict(), weights)
    if problems:
        raise InputError("does not fit this discriminator: " + "; ".join(problems), str(path))
    model.load_state_dict(weights)
    tensors, _ = load_tensors(path / "optimizer.safetensors", device)
    optimizer.load_state_dict(unflatten_optimizer_state(tensors, state["optimizer"]))
    return int(state["step"])


def run_inputs(
    discriminator: nn.Module,
    audio_model: BaseModel,
    video_model: BaseModel,
    real: PairData,
    fake: PairData,
    config: TrainConfig,
) -> dict[str, Any]:
    """What a training run is made from: its data (hashed), settings, discriminator
    architecture and base models. A run resumes only from a checkpoint with the same."""
    architecture = {k: list(v.shape) for k, v in discriminator.state_dict().items()}
    disc_config = getattr(discriminator, "config", None)
    settings = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES}
    return {
        "real": real.digest(),
        "fake": fake.digest(),
        "settings": settings,
        "discriminator": {
            "class": type(discriminator).__name__,
            "config": disc_config.to_dict() if hasattr(disc_config, "to_dict") else None,
            "architecture": hashlib.sha256(json.dumps(architecture).encode()).hexdigest(),
        },
        "audio_model": audio_model.fingerprint(),
        "video_model": video_model.fingerprint(),
    }


def _open_run(out: Path, inputs: dict[str, Any], resume: bool) -> None:
    """Rank 0, holding the run's lock: remove what killed runs left, and refuse to resume a
    run that was made from other inputs."""
    for directory in (out, out / CHECKPOINT_DIR):
        remove_orphans(directory)
    path = out / INPUTS_FILE
    if resume and latest_checkpoint(out / CHECKPOINT_DIR) is not None and path.exists():
        differences = fingerprint_differences(read_json(path), inputs)
        if differences:
            raise InputError(
                "holds a run made from other inputs ("
                + "; ".join(differences)
                + f"); use another output directory, or delete {out / CHECKPOINT_DIR} to "
                "start fresh",
                str(out),
            )
    write_json_atomic(path, jsonable(inputs))


def _prune(directory: Path, keep: int) -> None:
    done = sorted(p for p in directory.glob("step-*") if (p / "state.json").exists())
    for old in done[: max(len(done) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _with_resume_advice(err: NonFiniteError, ckpt_dir: Path | None) -> NonFiniteError:
    latest = latest_checkpoint(ckpt_dir) if ckpt_dir is not None else None
    where = (
        f"the last good checkpoint, {latest}, is kept; run the same command again to resume from it"
        if latest is not None
        else "no checkpoint was written yet"
    )
    return NonFiniteError(
        f"{err}, and {where}. Check the real and fake data for NaN, or lower the learning rate"
    )


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


def enable_gradient_checkpointing(discriminator: nn.Module) -> None:
    """Turn on activation checkpointing in ``discriminator`` (or the one it wraps)."""
    for module in (discriminator, getattr(discriminator, "disc", None)):
        if hasattr(module, "enable_gradient_checkpointing"):
            module.enable_gradient_checkpointing()
            return
    raise ValueError(
        f"gradient_checkpointing: {type(discriminator).__name__} does not support activation "
        "checkpointing (mmdisco.Discriminator does)"
    )


def check_cfg_scales(
    audio_model: BaseModel, video_model: BaseModel, fake_cfg_scales: tuple[float, float]
) -> None:
    """L_D learns the ratio between real pairs and fakes sampled with CFG; L_DLSM corrects
    the base model's prediction. Both aim at the same ratio only if that prediction is the
    one the fakes were sampled with (same CFG scale): warn when it is not."""
    for name, model, scale in zip(
        ("audio", "video"), (audio_model, video_model), fake_cfg_scales, strict=True
    ):
        used = float(getattr(model, "cfg_scale", 1.0))
        if abs(used - float(scale)) > 1e-9:
            warnings.warn(
                f"L_DLSM uses the {name} model's prediction with CFG scale {used}, but the "
                f"fakes were sampled with {scale}: the two loss terms then target different "
                f"distributions; wrap the model as ConfiguredModel(model, {scale})",
                stacklevel=3,
            )


def micro_batches(
    real: PairData,
    fake: PairData,
    orders: tuple[BatchOrder, ...],
    config: TrainConfig,
    step: int,
    rank: int,
    world: int,
    device: torch.device,
    bank: NoiseBank | None = None,
) -> list[tuple[PairData, PairData, BankRows | None]]:
    """This process's real and fake pairs of ``step``, as ``grad_accum`` equal parts."""
    real_order, fake_order, fake_video_order, *bank_order = orders
    parts = []
    indices = (
        real_order.local_batch(step, rank, world).chunk(config.grad_accum),
        fake_order.local_batch(step, rank, world).chunk(config.grad_accum),
        fake_video_order.local_batch(step, rank, world).chunk(config.grad_accum),
    )
    rows: tuple[Tensor | None, ...] = (None,) * config.grad_accum
    if bank is not None:
        rows = bank_order[0].local_batch(step, rank, world).chunk(config.grad_accum)
    for i_real, i_fake, i_video, i_bank in zip(*indices, rows, strict=True):
        f = fake.take(i_fake, device)
        if config.fake_pairing == "shuffle":
            f.video = fake.video[i_video].to(device)
        b = None if bank is None or i_bank is None else bank.rows(i_bank, real, device)
        parts.append((real.take(i_real, device), f, b))
    return parts


def train_step(
    discriminator: nn.Module,
    optimizer: torch.optim.Optimizer,
    audio_model: BaseModel,
    video_model: BaseModel,
    batches: list[tuple[PairData, PairData] | tuple[PairData, PairData, BankRows | None]],
    config: TrainConfig,
    step: int,
    rank: int = 0,
    world: int = 1,
) -> tuple[Tensor, Tensor]:
    """One optimiser step on ``batches`` (micro-batches of equal size, each ``(real, fake)``
    or ``(real, fake, bank rows)``): gradients of the mean
    loss accumulated, averaged over processes, clipped, applied. Returns the mean
    ``(total, L_D, L_DLSM, accuracy)`` and the gradient norm before clipping.

    Every random number is a function of ``(config.seed, step, rank)`` (and the micro-batch
    index when there is more than one).
    """
    device = next(discriminator.parameters()).device
    optimizer.zero_grad(set_to_none=True)
    stats = torch.zeros(4, device=device)
    for micro, (r, f, *bank_rows) in enumerate(batches):
        b = bank_rows[0] if bank_rows else None
        tag = (micro,) if len(batches) > 1 else ()
        loss = _micro_loss(
            discriminator, audio_model, video_model, r, f, b, config, (step, rank, *tag), device
        )
        (loss.total / len(batches)).backward()
        correct = (loss.logits_real > 0).sum() + (loss.logits_fake <= 0).sum()
        accuracy = correct / (len(loss.logits_real) + len(loss.logits_fake))
        stats += torch.stack([loss.total.detach(), loss.d, loss.dlsm, accuracy]).float()
    _sync_gradients(discriminator, world)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        discriminator.parameters(), config.grad_clip or float("inf")
    )
    if device.type != "meta":  # (the memory estimate runs this step on the meta device)
        _stop_if_not_finite(stats[0] / len(batches), grad_norm, step, world)
    optimizer.step()
    return stats / len(batches), grad_norm


def _check_bank(
    bank: NoiseBank, real: PairData, config: TrainConfig, text_drop_prob: float
) -> None:
    fingerprint = bank.manifest.get("fingerprint", {})
    if fingerprint.get("real") != real.digest():
        raise InputError("was built from other real pairs than this run's", "bank")
    if not config.use_dlsm:
        raise InputError("a noise bank serves L_DLSM, but use_dlsm is false", "bank")
    if config.clean_prob > 0:
        raise InputError("clean_prob > 0 needs L_DLSM computed live (no bank)", "bank")
    if real.captions is not None and text_drop_prob > 0:
        raise InputError(
            "the discriminator drops captions (text_drop_prob > 0), and the bank holds only "
            "the captioned predictions; train with L_DLSM computed live (no bank)",
            "bank",
        )


def _stop_if_not_finite(loss: Tensor, grad_norm: Tensor, step: int, world: int) -> None:
    """Stop before a non-finite update reaches the weights (and so any checkpoint); every
    process sees the same decision."""
    bad = (~torch.isfinite(torch.stack([loss, grad_norm.to(loss)]))).any().float()
    if _all_reduce_mean(bad, world).item() > 0:
        raise NonFiniteError(
            f"step {step + 1}: the loss is {loss.item():.4g} and the gradient norm "
            f"{grad_norm.item():.4g}; training stopped before updating the weights"
        )


def _text_drop_prob(discriminator: nn.Module) -> float:
    for module in (discriminator, getattr(discriminator, "disc", None)):
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "text_drop_prob"):
            return float(config.text_drop_prob)
    return 0.0


def _micro_loss(
    discriminator: nn.Module,
    audio_model: BaseModel,
    video_model: BaseModel,
    r: PairData,
    f: PairData,
    b: BankRows | None,
    config: TrainConfig,
    parts: tuple[int, ...],
    device: torch.device,
) -> Any:
    cond_real, captions = dict(r.cond), r.captions
    drop_prob = _text_drop_prob(discriminator)
    if captions is not None and cond_real and drop_prob > 0:
        # Which captions the discriminator drops is decided here, so that L_DLSM pairs a
        # dropped caption with the unconditional prediction, as guidance will.
        g = torch.Generator().manual_seed(derive_seed(config.seed, *parts, 2))
        drop = torch.rand(len(captions), generator=g) < drop_prob
        cond_real["text_drop"] = drop.to(device)
        captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
    eps_a = eps_v = None
    if config.use_dlsm and b is None:
        # L_DLSM corrects the prediction the sampler uses: the one for the pair's caption.
        cond_a = None if captions is None else audio_model.encode_prompt(captions)
        cond_v = None if captions is None else video_model.encode_prompt(captions)
        eps_a, eps_v = epsilon_fn(audio_model, cond_a), epsilon_fn(video_model, cond_v)
    generator = None  # the meta device (memory estimates) draws nothing
    if device.type != "meta":
        seed = derive_seed(config.seed, *parts[:2], 0, *parts[2:])
        generator = torch.Generator(device).manual_seed(seed)
    autocast = MIXED_PRECISION[config.mixed_precision]
    precision = torch.autocast(device.type, autocast) if autocast else nullcontext()
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), precision:
        torch.manual_seed(derive_seed(config.seed, *parts[:2], 1, *parts[2:]))  # dropout, if any
        return mmdisco_loss(
            discriminator,
            r.audio,
            r.video,
            f.audio,
            f.video,
            audio_model.schedule,
            video_model.schedule,
            eps_audio=eps_a,
            eps_video=eps_v,
            dlsm_weight=config.dlsm_weight,
            use_d=config.use_d,
            use_dlsm=config.use_dlsm,
            shared_timesteps=config.shared_timesteps,
            noise_range=tuple(config.noise_range),
            clean_prob=config.clean_prob,
            cond_real=cond_real,
            cond_fake=f.cond,
            bank=b,
            generator=generator,
        )


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
    fake_cfg_scales: tuple[float, float] | None = None,
    bank: NoiseBank | None = None,
) -> TrainResult:
    """Train ``discriminator`` in place; checkpoints and TensorBoard logs go under ``out_dir``.

    ``real`` and ``fake`` are pairs in the base models' spaces. With ``resume`` and an
    existing checkpoint in ``out_dir``, training continues from it and ends with the same
    weights an uninterrupted run would have. ``stop_after`` stops (after checkpointing) once
    that many steps are done, as if the run had been killed: for tests and time-sliced jobs.
    ``fake_cfg_scales`` are the CFG scales the fakes were sampled with (audio, video); with
    captioned real pairs, a base model whose ``cfg_scale`` differs is warned about
    (:func:`check_cfg_scales`). A checkpoint of a run made from other inputs
    (:func:`run_inputs`) is refused; ``out_dir`` is locked while training (a second run on it
    stops at once); a non-finite loss or gradient stops training before the update, keeping
    the last good checkpoint. ``bank`` (:func:`mmdisco.training.bank.load_noise_bank`, built
    from ``real``) makes L_DLSM read the base models' predictions instead of calling them.
    """
    from accelerate import Accelerator

    if bank is not None:
        _check_bank(bank, real, config, _text_drop_prob(discriminator))

    pair_bytes = 4 * (real.audio[0].numel() + real.video[0].numel())
    # A step holds real and fake batches, their noised copies and the activations' inputs.
    check_memory(8 * config.batch_size * pair_bytes, "batch_size")
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    discriminator.to(accelerator.device).train()
    _broadcast_parameters(discriminator, accelerator.num_processes)
    optimizer = torch.optim.Adam(
        discriminator.parameters(),
        lr=config.lr,
        betas=config.betas,
        weight_decay=config.weight_decay,
    )
    out = Path(out_dir) if out_dir is not None else None
    lock = DirectoryLock(out) if out is not None else None
    if out is not None:
        inputs = run_inputs(discriminator, audio_model, video_model, real, fake, config)
        if bank is not None:
            inputs["bank"] = bank.manifest.get("fingerprint")

        def open_run() -> None:
            lock.acquire()
            try:
                _open_run(out, inputs, resume)
            except BaseException:
                lock.release()
                raise

        on_rank0(open_run)
    try:
        return _train(
            discriminator, optimizer, audio_model, video_model, real, fake, config, out,
            accelerator=accelerator, resume=resume, progress=progress, stop_after=stop_after,
            fake_cfg_scales=fake_cfg_scales, bank=bank,
        )  # fmt: skip
    finally:
        if lock is not None:
            lock.release()


def _train(
    discriminator: nn.Module,
    optimizer: torch.optim.Optimizer,
    audio_model: BaseModel,
    video_model: BaseModel,
    real: PairData,
    fake: PairData,
    config: TrainConfig,
    out: Path | None,
    *,
    accelerator: Any,
    resume: bool,
    progress: bool,
    stop_after: int | None,
    fake_cfg_scales: tuple[float, float] | None,
    bank: NoiseBank | None = None,
) -> TrainResult:
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    main = accelerator.is_main_process
    ckpt_dir = out / CHECKPOINT_DIR if out is not None else None
    step = 0
    if resume and ckpt_dir is not None and (latest := latest_checkpoint(ckpt_dir)) is not None:
        step = load_checkpoint(latest, discriminator, optimizer, config)
    start_step = step
    orders = tuple(
        BatchOrder(len(data), config.batch_size, derive_seed(config.seed, k))
        for k, data in ((1, real), (2, fake), (3, fake))
    )
    if bank is not None:
        dlsm_batch = config.dlsm_batch_size or config.batch_size
        orders += (BatchOrder(len(bank), dlsm_batch, derive_seed(config.seed, 4)),)
    local = config.batch_size // world
    if local % config.grad_accum:
        raise ValueError(
            f"grad_accum={config.grad_accum} must divide each process's batch "
            f"(batch_size {config.batch_size} / {world} processes = {local})"
        )
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(discriminator)
    if real.captions is not None and config.use_dlsm and fake_cfg_scales is not None:
        check_cfg_scales(audio_model, video_model, fake_cfg_scales)
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
        try:
            stats, grad_norm = train_step(
                discriminator,
                optimizer,
                audio_model,
                video_model,
                micro_batches(real, fake, orders, config, step, rank, world, device, bank),
                config,
                step,
                rank,
                world,
            )
        except NonFiniteError as err:
            raise _with_resume_advice(err, ckpt_dir) from None
        step += 1
        running += stats.double().cpu()
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
