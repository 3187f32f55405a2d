"""Training the MMDisCo discriminator: L = L_D + dlsm_weight * L_DLSM on real and fake pairs.

The base models stay frozen and enter only through their noise schedules and, for L_DLSM,
their epsilon predictions (:func:`mmdisco.training.losses.epsilon_fn` converts other
parameterisations). Training runs through Hugging Face Accelerate, so
``accelerate launch --num_processes N ...`` scales one command to several processes; the
processes share gradients and statistics through :mod:`mmdisco.training.distributed`.
Every random number of a step is derived from ``(seed, step, rank)``, so a run resumes
exactly from its last checkpoint (:mod:`mmdisco.training.checkpoints`).

With ``refine_steps`` the contrastive objective's ``steps`` are followed by a refinement
(:func:`~mmdisco.training.losses.refinement_loss`): the network as trained so far is frozen
as a reference, written to ``refine_reference.safetensors`` in the run directory so that a
resumed run reads the same one, and training goes on against the fakes that reference
confuses with each real pair, with a fresh optimiser at ``refine_lr``.

Memory: each process's share of a step runs as ``grad_accum`` equal micro-batches whose
gradients add up to the whole batch's (both loss terms are means, so the micro-batch losses
are averaged); ``gradient_checkpointing`` recomputes the discriminator's residual blocks in
the backward pass; ``mixed_precision="bf16"`` autocasts the loss's forward and backward (the
weights, Adam and the gradient sum stay float32). ``mmdisco train --dry-run`` measures what a
step needs (:mod:`mmdisco.training.memory`).
"""

from __future__ import annotations

import copy
import math
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
from mmdisco.io import DirectoryLock, load_tensors, save_tensors_atomic, write_json_atomic
from mmdisco.seeding import derive_seed
from mmdisco.shards import on_rank0
from mmdisco.training.bank import NoiseBank
from mmdisco.training.checkpoints import (
    CHECKPOINT_DIR,
    latest_checkpoint,
    load_checkpoint,
    open_run,
    prune_checkpoints,
    run_input_defaults,
    run_inputs,
    save_checkpoint,
    with_resume_advice,
)
from mmdisco.training.contrastive import CaptionGroups, check_groups
from mmdisco.training.data import BatchOrder, PairData
from mmdisco.training.distributed import all_reduce_mean, broadcast_parameters, sync_gradients
from mmdisco.training.losses import (
    BankRows,
    LossConfig,
    LossOutput,
    epsilon_fn,
    mmdisco_loss,
    refinement_loss,
)
from mmdisco.training.optim import OPTIMIZERS, build_optimizer

MIXED_PRECISION = {"no": None, "bf16": torch.bfloat16}
# The contrastive recipe (TrainConfig.contrastive): what learnt the continuous world's density
# ratio with the shared-latent network (docs/training_the_discriminator.md, fifth round).
CONTRASTIVE: dict[str, Any] = {
    "objective": "infonce",
    "group_size": 32,
    "optimizer": "adamw",
    "lr": 2e-3,
    "weight_decay": 1.0,
    "lr_schedule": "cosine",
    "lr_min_ratio": 0.0,
    "use_dlsm": False,
    "grad_clip": None,
}
# The recipe's second phase, in tenths of its first (the world's network: 1500 steps of
# hard-negative refinement after 16000; docs/training_the_discriminator.md, eighth round).
REFINE_FRACTION = 0.1
REFERENCE_NAME = "refine_reference.safetensors"  # the frozen network the refinement reads


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
    # "adam": weight_decay is an L2 term on every parameter (the paper's optimiser); "adamw":
    # decoupled decay on linear and convolution weights only (mmdisco.training.optim)
    optimizer: str = "adam"
    lr_schedule: str = "constant"  # or "cosine" (to lr_min_ratio * lr at the last step)
    lr_min_ratio: float = 0.1
    warmup_steps: int = 0
    dlsm_weight: float = 1.0
    # L_D's form: "bce", real pairs against fake pairs (the paper's); "infonce", each real
    # pair against fake clips of its caption, in groups of group_size pairs that share one
    # noise level and their negatives (mmdisco.training.contrastive). The default stays
    # "bce" so that a run saved before the field existed resumes as it was trained.
    objective: str = "bce"
    group_size: int = 32
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
    # > 0: after ``steps``, this many steps of hard-negative refinement (objective "infonce"
    # only; mmdisco.training.contrastive.hard_negative_info_nce): a frozen copy of the network
    # as trained so far picks each real pair's ``refine_negatives`` negatives among
    # ``refine_pool`` fake clips of its group's caption, where it confuses them with the real
    # pair; the optimiser restarts at ``refine_lr`` with a cosine decay to 0.
    refine_steps: int = 0
    refine_lr: float = 3e-4
    refine_pool: int = 32
    refine_negatives: int = 31

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
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("objective", self.objective, ("bce", "infonce"))
        check_int("group_size", self.group_size, 1)
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
        if self.objective == "infonce" and self.clean_prob > 0:
            message = "objective 'infonce' holds no modality clean; set it to 0"
            raise InputError(message, "clean_prob")
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
        check_int("refine_steps", self.refine_steps, 0)
        self.refine_lr = check_float("refine_lr", self.refine_lr, 0.0, open_min=True)
        check_int("refine_pool", self.refine_pool, 1)
        check_int("refine_negatives", self.refine_negatives, 1)
        if self.refine_steps and not (self.objective == "infonce" and self.use_d):
            message = "refines the contrastive objective: it needs objective 'infonce'"
            raise InputError(message, "refine_steps")
        if self.refine_steps and self.use_dlsm:
            message = "the refinement trains the contrastive term alone: set use_dlsm false"
            raise InputError(message, "refine_steps")

    @classmethod
    def contrastive(cls, **changes: Any) -> TrainConfig:
        """The contrastive recipe (:data:`CONTRASTIVE`): symmetric InfoNCE against fakes of
        the same caption in groups of 32 that share a noise level, AdamW 2e-3 with a cosine
        decay and decay 1.0 on layer weights, no L_DLSM, no clipping; then hard-negative
        refinement for a tenth as many steps (unless ``refine_steps`` is given)."""
        settings = {**CONTRASTIVE, **changes}
        steps = settings.get("steps", cls.steps)
        settings.setdefault("refine_steps", max(1, round(REFINE_FRACTION * steps)))
        return cls(**settings)

    @property
    def total_steps(self) -> int:
        """Training's steps and the refinement's after them."""
        return self.steps + self.refine_steps

    def refining(self, step: int) -> bool:
        """Whether step ``step`` (from 0) is one of the refinement's."""
        return self.refine_steps > 0 and step >= self.steps

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
        if self.refining(step):
            done = (step - self.steps) / self.refine_steps
            return self.refine_lr * 0.5 * (1 + math.cos(math.pi * done))
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


class Trainer:
    """One training run of ``discriminator`` on ``real`` and ``fake`` pairs: its optimiser,
    its processes, its batch orders and where its checkpoints and logs go (``out``)."""

    def __init__(
        self,
        discriminator: nn.Module,
        audio_model: BaseModel,
        video_model: BaseModel,
        real: PairData,
        fake: PairData,
        config: TrainConfig,
        *,
        accelerator: Any,
        out: Path | None = None,
        bank: NoiseBank | None = None,
    ) -> None:
        self.discriminator, self.config = discriminator, config
        self.audio_model, self.video_model = audio_model, video_model
        self.real, self.fake, self.bank = real, fake, bank
        self.accelerator, self.out = accelerator, out
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.device, self.main = accelerator.device, accelerator.is_main_process
        self.checkpoints = out / CHECKPOINT_DIR if out is not None else None
        self.reference: nn.Module | None = None  # the refinement's frozen network
        discriminator.to(self.device).train()
        broadcast_parameters(discriminator, self.world)
        self.optimizer = build_optimizer(
            discriminator, config.optimizer, config.lr, config.betas, config.weight_decay
        )
        self.captions = (
            CaptionGroups.of(real.captions, fake.captions)
            if config.objective == "infonce" and config.use_d
            else None
        )
        self.orders = tuple(
            BatchOrder(len(data), config.batch_size, derive_seed(config.seed, k))
            for k, data in ((1, real), (2, fake), (3, fake))
        )
        if bank is not None:
            dlsm_batch = config.dlsm_batch_size or config.batch_size
            self.orders += (BatchOrder(len(bank), dlsm_batch, derive_seed(config.seed, 4)),)

    def run_inputs(self) -> dict[str, Any]:
        """What this run is made from (:func:`~mmdisco.training.checkpoints.run_inputs`)."""
        inputs = run_inputs(
            self.discriminator,
            self.audio_model,
            self.video_model,
            self.real,
            self.fake,
            self.config,
        )
        if self.bank is not None:
            inputs["bank"] = self.bank.manifest.get("fingerprint")
        return inputs

    def input_defaults(self) -> dict[str, Any]:
        """What a run recorded before a setting existed ran with (:func:`run_input_defaults`)."""
        return run_input_defaults(self.discriminator, self.config)

    def resume(self) -> int:
        """Load the latest checkpoint, if any; the step to continue from."""
        if self.checkpoints is None or (latest := latest_checkpoint(self.checkpoints)) is None:
            return 0
        return load_checkpoint(latest, self.discriminator, self.optimizer, self.config)

    def start_refinement(self, step: int) -> None:
        """Freeze the reference the refinement reads. At its first step that is the network
        as trained so far (written next to the checkpoints, so that a resumed run reads the
        same one) and the optimiser's moments restart; later, the one written then."""
        reference = copy.deepcopy(self.discriminator).eval().requires_grad_(False)
        path = self.out / REFERENCE_NAME if self.out is not None else None
        if step == self.config.steps:
            if path is not None and self.main:
                save_tensors_atomic(path, reference.state_dict())
            self.accelerator.wait_for_everyone()
            config = self.config
            self.optimizer = build_optimizer(
                self.discriminator,
                config.optimizer,
                config.refine_lr,
                config.betas,
                config.weight_decay,
            )
        elif path is None:
            raise ValueError("resuming a refinement needs the run directory that began it")
        else:
            state, _ = load_tensors(path, self.device)
            reference.load_state_dict(state)
        self.reference = reference

    def check(self, fake_cfg_scales: tuple[float, float] | None) -> None:
        """Refuse settings this run cannot honour; warn about mismatched CFG scales and about
        caption groups that lack fakes."""
        config = self.config
        local = config.batch_size // self.world
        if local % config.grad_accum:
            raise ValueError(
                f"grad_accum={config.grad_accum} must divide each process's batch "
                f"(batch_size {config.batch_size} / {self.world} processes = {local})"
            )
        if config.objective == "infonce" and config.use_d:
            micro = (
                f"each micro-batch (batch_size {config.batch_size} / {self.world} processes"
                f" / grad_accum {config.grad_accum})"
            )
            check_groups(local // config.grad_accum, config.group_size, micro)
        if self.captions is not None and (problem := self.captions.coverage_warning()):
            warnings.warn(problem, stacklevel=3)
        if self.captions is not None and config.refine_steps:
            counts = [len(rows) for rows in self.captions.fake_rows.values()]
            short = sum(c < config.refine_pool for c in counts)
            if 4 * short > len(counts):
                warnings.warn(
                    f"{short} of {len(counts)} captions "
                    f"have fewer fakes than refine_pool={config.refine_pool}, so the "
                    "refinement's candidates repeat the same clips; generate more fakes per "
                    "caption (fakes.per_caption) or lower train.refine_pool",
                    stacklevel=3,
                )
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(self.discriminator)
        if self.real.captions is not None and config.use_dlsm and fake_cfg_scales is not None:
            check_cfg_scales(self.audio_model, self.video_model, fake_cfg_scales)
        if config.fake_pairing == "shuffle" and self.fake.cond:
            raise ValueError(
                "fake_pairing='shuffle' re-pairs fake audio and video, which would separate "
                f"them from their per-pair inputs {sorted(self.fake.cond)}; use "
                "fake_pairing='fixed'"
            )

    def step(self, step: int) -> tuple[Tensor, Tensor]:
        """Optimiser step ``step``: the mean ``(total, L_D, L_DLSM, accuracy)`` and the
        gradient norm (:func:`train_step`)."""
        refining = self.config.refining(step)
        if refining and self.reference is None:
            self.start_refinement(step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr_at(step)
        batches = micro_batches(
            self.real,
            self.fake,
            self.orders,
            self.config,
            step,
            self.rank,
            self.world,
            self.device,
            self.bank,
            self.captions,
            refining=refining,
        )
        try:
            return train_step(
                self.discriminator,
                self.optimizer,
                self.audio_model,
                self.video_model,
                batches,
                self.config,
                step,
                self.rank,
                self.world,
                reference=self.reference if refining else None,
            )
        except NonFiniteError as err:
            raise with_resume_advice(err, self.checkpoints) from None

    def record(self, step: int, running: Tensor, steps: int, grad_norm: Tensor) -> dict[str, float]:
        """The log record of ``step``: the statistics summed in ``running`` over ``steps``
        steps, averaged over steps and processes."""
        mean = all_reduce_mean(running.to(self.device), self.world).cpu() / steps
        return {
            "step": step,
            "loss": mean[0].item(),
            "loss_d": mean[1].item(),
            "loss_dlsm": mean[2].item(),
            "accuracy": mean[3].item(),
            "grad_norm": float(grad_norm),
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def save(self, step: int) -> None:
        """Checkpoint ``step`` (rank 0 writes, every process waits)."""
        if self.checkpoints is None:
            return
        if self.main:
            save_checkpoint(self.checkpoints, self.discriminator, self.optimizer, step, self.config)
            prune_checkpoints(self.checkpoints, self.config.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def fit(
        self,
        *,
        resume: bool = True,
        progress: bool = True,
        stop_after: int | None = None,
        fake_cfg_scales: tuple[float, float] | None = None,
    ) -> TrainResult:
        """Train until ``config.total_steps`` (or ``stop_after``) steps are done: ``steps``
        of the objective, then ``refine_steps`` of the refinement."""
        config = self.config
        step = start_step = self.resume() if resume else 0
        self.check(fake_cfg_scales)
        writer = self._open_log(step)
        total = config.total_steps
        end = total if stop_after is None else min(total, stop_after)
        show = progress and self.main
        bar = tqdm(total=total, initial=step, disable=not show, desc="train", unit="step")
        history: list[dict[str, float]] = []
        start_time = time.perf_counter()
        running, n_running = torch.zeros(4, dtype=torch.float64), 0
        while step < end:
            if config.refining(step) and step in (start_step, config.steps):
                bar.set_description("refine")
            stats, grad_norm = self.step(step)
            step += 1
            running += stats.double().cpu()
            n_running += 1
            if step % config.log_every == 0 or step == end:
                record = self.record(step, running, n_running, grad_norm)
                history.append(record)
                running.zero_()
                n_running = 0
                if self.main:
                    bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}")
                    _log_scalars(writer, record)
            bar.update(1)
            if step % config.checkpoint_every == 0 or step in (end, config.steps):
                self.save(step)
        bar.close()
        if writer is not None:
            writer.close()
        return TrainResult(
            self.discriminator, history, time.perf_counter() - start_time, start_step
        )

    def _open_log(self, step: int) -> Any:
        """Rank 0's TensorBoard writer (None without an output directory)."""
        if not (self.main and self.out is not None):
            return None
        from torch.utils.tensorboard import SummaryWriter

        self.out.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(str(self.out / "logs"), purge_step=step)
        write_json_atomic(self.out / "train_config.json", self.config.to_dict())
        return writer


def _log_scalars(writer: Any, record: dict[str, float]) -> None:
    if writer is not None:
        for key, value in record.items():
            if key != "step":
                writer.add_scalar(f"train/{key}", value, record["step"])


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
    save_as: str | None = None,
) -> TrainResult:
    """Train ``discriminator`` in place; checkpoints and TensorBoard logs go under ``out_dir``,
    and with ``save_as`` the trained discriminator goes to ``out_dir/save_as`` (written while
    ``out_dir`` is still locked, so another run never finds it half written).

    ``real`` and ``fake`` are pairs in the base models' spaces. With ``resume`` and an
    existing checkpoint in ``out_dir``, training continues from it and ends with the same
    weights an uninterrupted run would have. ``stop_after`` stops (after checkpointing) once
    that many steps are done, as if the run had been killed: for tests and time-sliced jobs.
    ``fake_cfg_scales`` are the CFG scales the fakes were sampled with (audio, video); with
    captioned real pairs, a base model whose ``cfg_scale`` differs is warned about
    (:func:`check_cfg_scales`). A checkpoint of a run made from other inputs
    (:func:`~mmdisco.training.checkpoints.run_inputs`) is refused; ``out_dir`` is locked
    while training (a second run on it stops at once); a non-finite loss or gradient stops
    training before the update, keeping the last good checkpoint. ``bank``
    (:func:`mmdisco.training.bank.load_noise_bank`, built from ``real``) makes L_DLSM read
    the base models' predictions instead of calling them.
    """
    from accelerate import Accelerator

    if bank is not None:
        _check_bank(bank, real, config, _text_drop_prob(discriminator))
    pair_bytes = 4 * (real.audio[0].numel() + real.video[0].numel())
    # A step holds real and fake batches, their noised copies and the activations' inputs.
    check_memory(8 * config.batch_size * pair_bytes, "batch_size")
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    out = Path(out_dir) if out_dir is not None else None
    trainer = Trainer(
        discriminator,
        audio_model,
        video_model,
        real,
        fake,
        config,
        accelerator=accelerator,
        out=out,
        bank=bank,
    )

    def fit() -> TrainResult:
        return trainer.fit(
            resume=resume, progress=progress, stop_after=stop_after, fake_cfg_scales=fake_cfg_scales
        )

    if out is None:
        return fit()
    lock, inputs = DirectoryLock(out), trainer.run_inputs()

    def lock_and_open() -> None:
        lock.acquire()
        try:
            open_run(out, inputs, resume=resume, defaults=trainer.input_defaults())
        except BaseException:
            lock.release()
            raise

    on_rank0(lock_and_open)
    try:
        result = fit()
        if save_as is not None and accelerator.is_main_process:
            discriminator.save_pretrained(out / save_as)
        return result
    finally:
        lock.release()


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
    captions: CaptionGroups | None = None,
    *,
    refining: bool = False,
) -> list[tuple[PairData, PairData, BankRows | None]]:
    """This process's real and fake pairs of ``step``, as ``grad_accum`` equal parts. With
    ``captions`` (the contrastive objective on captioned pairs) each part's groups are
    redrawn so that a group's real pairs and fakes share one caption
    (:meth:`CaptionGroups.regroup`, seeded by ``(seed, step, rank, part)``). ``refining``:
    each group's fakes are ``config.refine_pool`` candidates (of its caption; without
    captions, drawn from all fakes), so a part holds more fakes than real pairs."""
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
    for micro, (i_real, i_fake, i_video, i_bank) in enumerate(zip(*indices, rows, strict=True)):
        g = torch.Generator().manual_seed(derive_seed(config.seed, step, rank, micro, 5))
        pool = config.refine_pool if refining else None
        if captions is not None:
            i_real, i_fake = captions.regroup(i_fake, config.group_size, g, pool)
        elif refining:
            groups = len(i_real) // config.group_size
            i_fake = torch.randint(len(fake), (groups * config.refine_pool,), generator=g)
        f = fake.take(i_fake, device)
        if config.fake_pairing == "shuffle" and captions is None:
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
    *,
    reference: nn.Module | None = None,
) -> tuple[Tensor, Tensor]:
    """One optimiser step on ``batches`` (micro-batches of equal size, each ``(real, fake)``
    or ``(real, fake, bank rows)``): gradients of the mean
    loss accumulated, averaged over processes, clipped, applied. Returns the mean
    ``(total, L_D, L_DLSM, accuracy)`` and the gradient norm before clipping. With a frozen
    ``reference`` the loss is the refinement's (:func:`refinement_loss`; the fakes are each
    group's candidates).

    Every random number is a function of ``(config.seed, step, rank)`` (and the micro-batch
    index when there is more than one).
    """
    device = next(discriminator.parameters()).device
    optimizer.zero_grad(set_to_none=True)
    stats = torch.zeros(4, device=device)
    for micro, (real, fake, *bank_rows) in enumerate(batches):
        seed_key = (step, rank, micro) if len(batches) > 1 else (step, rank)
        loss = _micro_batch_loss(
            discriminator,
            audio_model,
            video_model,
            MicroBatch(real, fake, bank_rows[0] if bank_rows else None),
            config,
            seed_key=seed_key,
            reference=reference,
        )
        (loss.total / len(batches)).backward()
        correct = (loss.logits_real > 0).sum() + (loss.logits_fake <= 0).sum()
        accuracy = correct / (len(loss.logits_real) + len(loss.logits_fake))
        stats += torch.stack([loss.total.detach(), loss.d, loss.dlsm, accuracy]).float()
    sync_gradients(discriminator, world)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        discriminator.parameters(), config.grad_clip or float("inf")
    )
    if device.type != "meta":  # (the memory estimate runs this step on the meta device)
        _stop_if_not_finite(stats[0] / len(batches), grad_norm, step, world)
    optimizer.step()
    return stats / len(batches), grad_norm


def _stop_if_not_finite(loss: Tensor, grad_norm: Tensor, step: int, world: int) -> None:
    """Stop before a non-finite update reaches the weights (and so any checkpoint); every
    process sees the same decision."""
    bad = (~torch.isfinite(torch.stack([loss, grad_norm.to(loss)]))).any().float()
    if all_reduce_mean(bad, world).item() > 0:
        raise NonFiniteError(
            f"step {step + 1}: the loss is {loss.item():.4g} and the gradient norm "
            f"{grad_norm.item():.4g}; training stopped before updating the weights"
        )


@dataclass
class MicroBatch:
    """One micro-batch of a step: real pairs, fake pairs and, with a noise bank, the bank
    rows L_DLSM reads instead of calling the base models."""

    real: PairData
    fake: PairData
    bank_rows: BankRows | None = None


def _drop_captions(
    discriminator: nn.Module, real: PairData, config: TrainConfig, seed_key: tuple[int, ...]
) -> tuple[dict[str, Any], list[str] | None]:
    """The real pairs' discriminator inputs and captions after the discriminator's caption
    dropout. Which captions it drops is decided here, so that L_DLSM pairs a dropped caption
    with the unconditional prediction, as guidance will."""
    cond_real, captions = dict(real.cond), real.captions
    device = next(discriminator.parameters()).device
    drop_prob = _text_drop_prob(discriminator)
    if captions is not None and cond_real and drop_prob > 0:
        g = torch.Generator().manual_seed(derive_seed(config.seed, *seed_key, 2))
        drop = torch.rand(len(captions), generator=g) < drop_prob
        cond_real["text_drop"] = drop.to(device)
        captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
    return cond_real, captions


def _micro_batch_loss(
    discriminator: nn.Module,
    audio_model: BaseModel,
    video_model: BaseModel,
    batch: MicroBatch,
    config: TrainConfig,
    *,
    seed_key: tuple[int, ...],
    reference: nn.Module | None = None,
) -> LossOutput:
    """The objective on one micro-batch (with ``reference``, the refinement's). ``seed_key``
    is ``(step, rank[, micro-batch])``: the noise, dropout and caption drops are drawn from
    seeds derived from it."""
    device = next(discriminator.parameters()).device
    cond_real, captions = _drop_captions(discriminator, batch.real, config, seed_key)
    eps_a = eps_v = None
    if config.use_dlsm and batch.bank_rows is None:
        # L_DLSM corrects the prediction the sampler uses: the one for the pair's caption.
        cond_a = None if captions is None else audio_model.encode_prompt(captions)
        cond_v = None if captions is None else video_model.encode_prompt(captions)
        eps_a, eps_v = epsilon_fn(audio_model, cond_a), epsilon_fn(video_model, cond_v)
    step_rank, micro = seed_key[:2], seed_key[2:]
    generator = None  # the meta device (memory estimates) draws nothing
    if device.type != "meta":
        generator = torch.Generator(device).manual_seed(
            derive_seed(config.seed, *step_rank, 0, *micro)
        )
    autocast = MIXED_PRECISION[config.mixed_precision]
    precision = torch.autocast(device.type, autocast) if autocast else nullcontext()
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), precision:
        torch.manual_seed(derive_seed(config.seed, *step_rank, 1, *micro))  # dropout, if any
        inputs = (
            batch.real.audio,
            batch.real.video,
            batch.fake.audio,
            batch.fake.video,
            audio_model.schedule,
            video_model.schedule,
            LossConfig.of(config),
        )
        if reference is not None:
            return refinement_loss(
                discriminator,
                reference,
                *inputs,
                config.refine_negatives,
                cond_real=cond_real,
                generator=generator,
            )
        return mmdisco_loss(
            discriminator,
            *inputs,
            eps_audio=eps_a,
            eps_video=eps_v,
            cond_real=cond_real,
            cond_fake=batch.fake.cond,
            bank=batch.bank_rows,
            generator=generator,
        )


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


def _text_drop_prob(discriminator: nn.Module) -> float:
    for module in (discriminator, getattr(discriminator, "disc", None)):
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "text_drop_prob"):
            return float(config.text_drop_prob)
    return 0.0
