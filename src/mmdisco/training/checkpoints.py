"""Training checkpoints and run identity: safetensors + JSON, no pickle.

Exact resumption without pickle: every random number of step ``s`` on rank ``r`` (the
batch, timesteps and noise, dropout) comes from seeds derived from ``(seed, s, r)``, so
``step`` *is* the RNG and data-order state. A checkpoint is a directory with
``model.safetensors``, ``optimizer.safetensors`` (the optimizer's tensors, flattened) and
``state.json`` (step, config, the optimizer's non-tensor state), written under a temporary
name and renamed into place, so a killed run never leaves a checkpoint that looks complete.

A run directory also holds ``inputs.json`` (:func:`run_inputs`): what the run is made from.
A run resumes only from checkpoints of a run made from the same inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from mmdisco.errors import InputError, NonFiniteError
from mmdisco.io import (
    TMP_MARK,
    load_tensors,
    read_json,
    remove_orphans,
    save_tensors_atomic,
    state_dict_mismatches,
    umask,
    write_json_atomic,
)
from mmdisco.shards import fingerprint_differences, jsonable

if TYPE_CHECKING:
    from mmdisco.base_models.base import BaseModel
    from mmdisco.training.data import PairData

CHECKPOINT_DIR = "checkpoints"
INPUTS_FILE = "inputs.json"  # what the run is made from (see run_inputs)
# Settings that may change between a run and its resumption without changing its result.
RESUMABLE_CHANGES = {
    "steps",
    "checkpoint_every",
    "log_every",
    "keep_checkpoints",
    "gradient_checkpointing",
    "refine_steps",
}


class RunConfig(Protocol):
    """A JSON-able run config (e.g. :class:`~mmdisco.training.trainer.TrainConfig`)."""

    def to_dict(self) -> dict[str, Any]: ...


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
    config: RunConfig,
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


def _complete_checkpoints(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("step-*") if (p / "state.json").exists())


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint in ``directory`` (temporary ones are ignored)."""
    if not directory.exists():
        return None
    done = _complete_checkpoints(directory)
    return done[-1] if done else None


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` complete checkpoints."""
    done = _complete_checkpoints(directory)
    for old in done[: max(len(done) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: Any
) -> int:
    """Restore model and optimizer from ``path``; returns the step to continue from.

    ``config`` (with ``to_dict`` and a ``from_dict`` class method) must equal the saved one
    but for :data:`RESUMABLE_CHANGES`."""
    state = read_json(path / "state.json")
    try:
        saved = type(config).from_dict(state["config"]).to_dict()
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
    config: RunConfig,
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


def run_input_defaults(discriminator: nn.Module, config: RunConfig) -> dict[str, Any]:
    """The defaults of the settings and of the discriminator's config fields, in the shape of
    :func:`run_inputs`: what a run recorded before a field existed ran with."""
    return {
        "settings": {
            k: v for k, v in _field_defaults(config).items() if k not in RESUMABLE_CHANGES
        },
        "discriminator": {"config": _field_defaults(getattr(discriminator, "config", None))},
    }


def _field_defaults(config: Any) -> dict[str, Any]:
    if not dataclasses.is_dataclass(config):
        return {}
    defaults = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return jsonable(defaults)


def _fill_missing(recorded: Any, defaults: dict[str, Any]) -> Any:
    """``recorded`` with the keys it lacks taken from ``defaults`` (nested dicts merged)."""
    if not isinstance(recorded, dict):
        return recorded
    filled = dict(recorded)
    for key, value in defaults.items():
        if key not in filled:
            filled[key] = value
        elif isinstance(value, dict):
            filled[key] = _fill_missing(filled[key], value)
    return filled


def open_run(
    out: Path,
    inputs: dict[str, Any],
    *,
    resume: bool,
    defaults: dict[str, Any] | None = None,
) -> None:
    """Rank 0, holding the run's lock: remove what killed runs left, and refuse to resume a
    run that was made from other inputs. A field the recorded inputs lack (a run started by a
    version without it) counts as its value in ``defaults`` (:func:`run_input_defaults`)."""
    for directory in (out, out / CHECKPOINT_DIR):
        remove_orphans(directory)
    path = out / INPUTS_FILE
    if resume and latest_checkpoint(out / CHECKPOINT_DIR) is not None and path.exists():
        recorded = _fill_missing(read_json(path), defaults or {})
        differences = fingerprint_differences(recorded, inputs)
        if differences:
            raise InputError(
                "holds a run made from other inputs ("
                + "; ".join(differences)
                + f"); use another output directory, or delete {out / CHECKPOINT_DIR} to "
                "start fresh",
                str(out),
            )
    write_json_atomic(path, jsonable(inputs))


def with_resume_advice(err: NonFiniteError, checkpoints: Path | None) -> NonFiniteError:
    """``err`` with where the run can resume from (its last good checkpoint, if any)."""
    latest = latest_checkpoint(checkpoints) if checkpoints is not None else None
    where = (
        f"the last good checkpoint, {latest}, is kept; run the same command again to resume from it"
        if latest is not None
        else "no checkpoint was written yet"
    )
    return NonFiniteError(
        f"{err}, and {where}. Check the real and fake data for NaN, or lower the learning rate"
    )
