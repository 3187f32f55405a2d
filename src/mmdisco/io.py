"""Atomic file writes and checksums: nothing a run has written is ever left half-written.

Every persisted artefact (weights, configs, caches, reports, media) goes through
:func:`atomic_path`: it is written to a temporary file in the target's folder and moved onto
the target with ``os.replace`` only once complete, so a killed run leaves either the old file
or the new one, never a truncated file that later looks complete.
:func:`state_dict_mismatches` is the check loaders run before trusting a weights file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor, nn


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only on success.

    ``suffix`` matters to writers that pick a format from the file name (e.g. ``.mp4``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # on disk before it takes the final name
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_tensors_atomic(
    path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file`` through :func:`atomic_path`."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_dict_mismatches(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> list[str]:
    """Human-readable differences between two state dicts (missing, unexpected, shapes)."""
    limit = 10

    def listed(kind: str, keys: list[str]) -> list[str]:
        if not keys:
            return []
        more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
        return [f"{kind} keys: {', '.join(keys[:limit])}{more}"]

    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: config expects {tuple(expected[k].shape)}, file has {tuple(found[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if expected[k].shape != found[k].shape
    ]
    return (
        listed("missing", missing)
        + listed("unexpected", unexpected)
        + [f"shape mismatch {s}" for s in shapes[:limit]]
        + ([f"(+{len(shapes) - limit} more shape mismatches)"] if len(shapes) > limit else [])
    )


def save_pretrained(
    directory: str | os.PathLike, config: dict[str, Any], module: nn.Module
) -> None:
    """``config.json`` and ``model.safetensors`` of ``module`` in ``directory`` (atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / "config.json", config)
    save_tensors_atomic(directory / "model.safetensors", module.state_dict())


def load_pretrained(
    directory: str | os.PathLike, build: Callable[[dict[str, Any]], nn.Module], what: str
) -> nn.Module:
    """The module ``build(config)`` with the weights :func:`save_pretrained` wrote; missing
    files and weights that do not fit the config are errors naming the file."""
    directory = Path(directory)
    config_file, weights = directory / "config.json", directory / "model.safetensors"
    for file in (config_file, weights):
        if not file.is_file():
            raise FileNotFoundError(f"{directory}: no {file.name} (expected {what})")
    module = build(json.loads(config_file.read_text()))
    state = load_file(str(weights))
    problems = state_dict_mismatches(module.state_dict(), state)
    if problems:
        raise ValueError(f"{weights} does not match {config_file}:\n  " + "\n  ".join(problems))
    module.load_state_dict(state)
    return module
