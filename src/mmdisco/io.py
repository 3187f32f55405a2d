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
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmdisco.errors import (
    BusyError,
    InputError,
    MissingInputError,
    NonFiniteError,
    check_memory,
)

if TYPE_CHECKING:  # torch is imported where tensors are handled: `study export` needs none
    import torch
    from torch import Tensor, nn

logger = logging.getLogger(__name__)

TMP_MARK = ".tmp-"  # in every temporary name, so that orphans can be found and removed
LOCK_NAME = ".lock"


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only on success.

    ``suffix`` matters to writers that pick a format from the file name (e.g. ``.mp4``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TMP_MARK}", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # on disk before it takes the final name
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a matplotlib figure to ``path`` as a PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_tensors_atomic(
    path: str | os.PathLike,
    tensors: dict[str, Tensor],
    metadata: dict[str, str] | None = None,
    finite: bool = True,
) -> None:
    """``safetensors.torch.save_file`` through :func:`atomic_path`; with ``finite`` (the
    default) a tensor holding NaN or infinity is refused before anything is written."""
    from safetensors.torch import save_file

    if finite:
        check_finite(tensors, str(path))
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def load_tensors(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    finite: bool = True,
    keys: list[str] | None = None,
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a missing, corrupt or (with ``finite``)
    non-finite file raises an error naming it. ``keys``: those that must be present."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise InputError(f"not a readable safetensors file ({err})", str(path)) from None
    missing = sorted(set(keys or ()) - set(tensors))
    if missing:
        raise InputError(f"has no tensor {missing[0]!r} (found {sorted(tensors)})", str(path))
    if finite:
        check_finite(tensors, str(path))
    return tensors, metadata


def check_finite(tensors: Mapping[str, Tensor], where: str) -> None:
    """Raise :class:`NonFiniteError` naming ``where`` and the first tensor with NaN or inf."""
    import torch

    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise NonFiniteError(f"{key!r} holds {bad} NaN or infinite values", where)


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file; a missing or malformed file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"not valid JSON ({err})", str(path)) from None


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file that must hold an object (a config, a manifest), as a dict."""
    data = read_json(path)
    if not isinstance(data, dict):
        found = type(data).__name__
        raise InputError(f"must hold a JSON object of settings, found a {found}", str(path))
    return data


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_digest(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over the names, shapes, dtypes and bytes of ``tensors`` (an input's identity)."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(value.shape)}:{value.dtype};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().data)
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


CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_pretrained(
    directory: str | os.PathLike,
    config: dict[str, Any],
    module: nn.Module,
    dtype: torch.dtype | None = None,
    *,
    metadata: dict[str, str] | None = None,
) -> Path:
    """``config.json`` and ``model.safetensors`` of ``module`` in ``directory`` (atomically;
    floating-point weights cast to ``dtype`` if given, e.g. ``torch.float16`` to save space).
    The one writer of every model folder in the library."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / CONFIG_NAME, config)
    state = {
        k: v.detach().to(dtype if dtype is not None and v.is_floating_point() else v.dtype)
        for k, v in module.state_dict().items()
    }
    save_tensors_atomic(directory / WEIGHTS_NAME, state, metadata=metadata)
    return directory


def load_pretrained(
    directory: str | os.PathLike, build: Callable[[dict[str, Any]], nn.Module], what: str
) -> nn.Module:
    """The module ``build(config)`` with the weights :func:`save_pretrained` wrote (cast to
    the module's dtypes); missing files and weights that do not fit the config are errors
    naming the file. The one reader of every model folder in the library."""
    directory = Path(directory)
    config_file, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for file in (config_file, weights):
        if not file.is_file():
            raise MissingInputError(f"{directory}: no {file.name} (expected {what})")
    try:
        module = build(read_json_object(config_file))
    except InputError:
        raise
    except (KeyError, ValueError, TypeError) as err:
        raise InputError(f"invalid config for {what} ({err})", str(config_file)) from err
    state, _ = load_tensors(weights)  # refuses NaN / inf: they would poison sampling
    problems = state_dict_mismatches(module.state_dict(), state)
    if problems:
        raise InputError(f"does not match {config_file}:\n  " + "\n  ".join(problems), str(weights))
    module.load_state_dict(state)
    return module


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for a module built from one config
    dataclass (``to_dict`` / ``from_dict``): ``cls(config_class.from_dict(config.json))``."""

    config_class: Any
    pretrained_what: str = "a model"  # for error messages: "expected <what>"
    pretrained_metadata: dict[str, str] | None = None

    @classmethod
    def num_parameters_for(cls, config: Any) -> int | None:
        """The parameter count of a module with ``config``, without allocating it (None:
        unknown); ``from_pretrained`` refuses a config too large for this machine."""
        return None

    def save_pretrained(
        self, directory: str | os.PathLike, dtype: torch.dtype | None = None
    ) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (atomically);
        ``dtype`` stores the weights in that type (``from_pretrained`` casts them back)."""
        module: Any = self
        save_pretrained(
            directory, module.config.to_dict(), module, dtype, metadata=self.pretrained_metadata
        )

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu"):
        """Load what :meth:`save_pretrained` wrote; errors name missing files and bad keys."""

        def build(config: dict[str, Any]) -> nn.Module:
            parsed = cls.config_class.from_dict(config)
            count = cls.num_parameters_for(parsed)
            if count is not None:  # the weights built and the weights read, in float32
                where = f"{Path(directory) / CONFIG_NAME} ({count / 1e6:,.1f}M parameters)"
                check_memory(8 * count, where)
            return cls(parsed)  # type: ignore[return-value]

        return load_pretrained(directory, build, cls.pretrained_what).to(device)


def remove_orphans(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and folders that killed writers left in ``directory``
    (names with :data:`TMP_MARK`). Call it only while holding the directory's lock."""
    directory = Path(directory)
    removed = []
    found = {p for pattern in (f".*{TMP_MARK}*", f"{TMP_MARK}*") for p in directory.glob(pattern)}
    for path in sorted(found) if directory.is_dir() else ():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        logger.info("%s: removed %d temporary files of an interrupted run", directory, len(removed))
    return removed


class DirectoryLock:
    """An exclusive lock on a directory: ``directory/.lock`` holds the writer's pid and host.

    The lock file is created complete (written under a temporary name, then hard-linked into
    place, which fails if it exists). A lock whose process is gone (same host, pid not
    running) is stale and is taken over; one held by a live process, or by another host
    (whose processes cannot be checked), raises :class:`~mmdisco.errors.BusyError`.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.owner = {"pid": os.getpid(), "host": socket.gethostname()}
        self.held = False

    def acquire(self) -> DirectoryLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        info = {**self.owner, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f"{LOCK_NAME}{TMP_MARK}")
        try:
            os.fchmod(fd, 0o644)  # readable by other users' runs, which check the holder
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(info))
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    self.held = True
                    return self
                except FileExistsError:
                    self._take_over_if_stale()
        finally:
            os.unlink(tmp)
        raise BusyError(f"{self.path}: could not be taken (it keeps reappearing)")

    def _take_over_if_stale(self) -> None:
        holder = self._holder()
        same_host = holder.get("host") == self.owner["host"]
        if holder and not (same_host and not _pid_alive(holder.get("pid"))):
            pid, host, started = holder.get("pid"), holder.get("host"), holder.get("started")
            raise BusyError(
                f"{self.directory} is being written by process {pid} on {host} (since "
                f"{started}); wait for it to finish, or delete {self.path} if that process "
                "is gone"
            )
        # Stale: move it aside under a unique name first, so that of two processes taking
        # it over at once, only one removes it (the other finds it gone and retries).
        aside = self.directory / f".lock{TMP_MARK}{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read_lock(aside) != holder:  # someone else's fresh lock: put it back
            with suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        logger.warning("%s: removed the stale lock of process %s", self.directory, holder)

    def _holder(self) -> dict[str, Any]:
        return _read_lock(self.path)

    def release(self) -> None:
        if self.held and {k: self._holder().get(k) for k in self.owner} == self.owner:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
