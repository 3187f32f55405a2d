"""One on-disk cache for everything computed once and read many times (fakes, real latents).

A cache is a directory of safetensors shards and a JSON manifest::

    manifest.json              format, fingerprint of the inputs, shard entries, complete
    shard-00000.safetensors    tensors of shard 0, per-shard strings in its metadata
    progress-rank0.json        entries a running process has written since the manifest
    .lock                      pid and host of the run writing it

Shard ``k``'s content is a function of ``k`` and the cache's inputs alone, so a cache can be
filled in any order, by any number of processes, over any number of interruptions.

:class:`ShardWriter` opens a cache for writing: it takes the lock, removes temporary files
that killed runs left, refuses to continue a cache made from other inputs (the fingerprint
says which differ), and counts a shard as done only if its sha256 still matches. Under
``torch.distributed`` (e.g. ``accelerate launch``) process ``r`` of ``w`` writes the shards
``k`` with ``k % w == r``, recording each in its own progress file; :meth:`ShardWriter.finish`
merges them into the manifest. :func:`read_shards` loads a complete cache, checking every
shard's sha256, and refuses NaN or infinite tensors (the writer refuses them too).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mmdisco.errors import InputError, MissingInputError, MMDiscoError, check_memory
from mmdisco.io import (
    DirectoryLock,
    load_tensors,
    read_json,
    remove_orphans,
    save_tensors_atomic,
    sha256_file,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PROGRESS = "progress-rank{rank}.json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def distributed() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside torch.distributed)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if distributed()[1] > 1:
        torch.distributed.barrier()


def _from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every process."""
    if distributed()[1] == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def on_rank0(fn: Callable[[], Any]) -> None:
    """Run ``fn`` on rank 0 only; an expected failure there is raised on every process (so
    no process waits forever for one that has given up)."""
    error = None
    if distributed()[0] == 0:
        try:
            fn()
        except MMDiscoError as err:
            error = err
    message = _from_rank0(None if error is None else str(error))
    if error is not None:
        raise error
    if message is not None:
        raise MMDiscoError(message)


def fingerprint_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: was X, now Y`` for every input that differs (nested keys dotted, long values
    shortened)."""

    def flat(value: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(value, dict) and value:
            return {
                k: v
                for key, item in value.items()
                for k, v in flat(item, f"{prefix}{key}.").items()
            }
        return {prefix.rstrip("."): value}

    def short(value: Any) -> str:
        text = json.dumps(value, sort_keys=True, default=str)
        return text if len(text) <= 80 else text[:77] + "..."

    before, after = flat(jsonable(dict(old))), flat(jsonable(dict(new)))
    return [
        f"{k}: was {short(before.get(k))}, now {short(after.get(k))}"
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k)
    ]


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, other objects strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def read_manifest(directory: Path, kind: str) -> dict[str, Any] | None:
    """The manifest of a cache of format ``kind``; None if there is none yet."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != kind:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise InputError(
            f"not a cache of format {kind!r} (found {found!r}); use another directory, or "
            "delete this one to rebuild it",
            str(path),
        )
    return manifest


class ShardWriter:
    """Fill a cache's missing shards; see the module doc. Use as a context manager::

        with ShardWriter(out, "mmdisco-fakes/2", fingerprint, num_shards) as cache:
            for index in cache.pending():
                cache.write(index, make_tensors(index), count=...)
            manifest = cache.finish(n=...)

    ``entry_ok`` adds a check of a recorded entry (e.g. its pair count) to its sha256.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        kind: str,
        fingerprint: Mapping[str, Any],
        num_shards: int,
        entry_ok: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.kind, self.num_shards = kind, num_shards
        self.fingerprint = jsonable(dict(fingerprint))
        self.entry_ok = entry_ok or (lambda entry: True)
        self.rank, self.world = distributed()
        self.lock = DirectoryLock(self.directory)
        self.done: dict[int, dict[str, Any]] = {}
        self.written: list[dict[str, Any]] = []

    # -- opening ---------------------------------------------------------------------------

    def __enter__(self) -> ShardWriter:
        on_rank0(self._open)
        if self.rank != 0:
            manifest = read_manifest(self.directory, self.kind) or {}
            self.done = {e["index"]: e for e in manifest.get("shards", [])}
        return self

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            remove_orphans(self.directory)
            manifest = read_manifest(self.directory, self.kind)
            if manifest is not None:
                differences = fingerprint_differences(manifest["fingerprint"], self.fingerprint)
                if differences:
                    raise InputError(
                        "was made from other inputs ("
                        + "; ".join(differences)
                        + "); use another directory, or delete this one to start fresh",
                        str(self.directory),
                    )
            entries = list((manifest or {}).get("shards", []))
            for path in sorted(self.directory.glob(PROGRESS.format(rank="*"))):
                progress = read_json(path)
                entries += progress.get("shards", []) if isinstance(progress, dict) else []
            self.done = {
                e["index"]: e
                for e in entries
                if isinstance(e, dict) and e.get("index", -1) < self.num_shards and self._ok(e)
            }
            self._write_manifest(complete=False)
            for path in self.directory.glob(PROGRESS.format(rank="*")):
                path.unlink()
        except BaseException:
            self.lock.release()
            raise

    def _ok(self, entry: dict[str, Any]) -> bool:
        if not self.entry_ok(entry):
            return False
        if entry.get("file") is None:
            return True
        path = self.directory / entry["file"]
        return path.is_file() and sha256_file(path) == entry.get("sha256")

    def _write_manifest(self, complete: bool, **summary: Any) -> dict[str, Any]:
        manifest = {
            "format": self.kind,
            "fingerprint": self.fingerprint,
            "num_shards": self.num_shards,
            "shards": [self.done[i] for i in sorted(self.done)],
            "complete": complete,
            **summary,
        }
        write_json_atomic(self.directory / MANIFEST, manifest)
        return manifest

    # -- writing ---------------------------------------------------------------------------

    def pending(self) -> list[int]:
        """This process's shards that are still missing."""
        return [k for k in range(self.rank, self.num_shards, self.world) if k not in self.done]

    def write(
        self,
        index: int,
        tensors: Mapping[str, Tensor] | None,
        metadata: Mapping[str, str] | None = None,
        **info: Any,
    ) -> dict[str, Any]:
        """Write shard ``index`` (``None``: a shard with nothing in it) and record it with
        ``info``. NaN or infinity in a tensor is refused before anything is written."""
        entry: dict[str, Any] = {"index": index, "file": None, "sha256": None, **info}
        entry["rank"] = self.rank  # which process wrote it (of how many: "world")
        entry["world"] = self.world
        if tensors:
            path = self.directory / shard_name(index)
            save_tensors_atomic(path, dict(tensors), dict(metadata or {}) or None)
            entry.update(file=path.name, sha256=sha256_file(path))
        self.done[index] = entry
        self.written.append(entry)
        progress = self.directory / PROGRESS.format(rank=self.rank)
        write_json_atomic(progress, {"shards": self.written})
        return entry

    def finish(
        self, summary: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Merge every process's shards into the manifest (marked complete when every shard
        is there; ``summary`` of the shard entries adds fields); returns it on every
        process."""
        _barrier()
        if self.rank == 0:
            for path in sorted(self.directory.glob(PROGRESS.format(rank="*"))):
                for entry in read_json(path).get("shards", []):
                    self.done[entry["index"]] = entry
            complete = len(self.done) == self.num_shards
            entries = [self.done[i] for i in sorted(self.done)]
            self._write_manifest(complete, **(summary(entries) if summary else {}))
            for path in self.directory.glob(PROGRESS.format(rank="*")):
                path.unlink()
        _barrier()
        return read_manifest(self.directory, self.kind) or {}

    def __exit__(self, *exc: object) -> None:
        if self.rank == 0:
            self.lock.release()


def write_counted_shards(
    directory: str | os.PathLike,
    kind: str,
    fingerprint: Mapping[str, Any],
    n: int,
    shard_size: int,
    make_shard: Callable[[int, int, int], tuple[Mapping[str, Tensor], Mapping[str, str] | None]],
    desc: str,
    progress: bool = True,
) -> dict[str, Any]:
    """Fill a cache of ``n`` items in shards of ``shard_size`` (the last one shorter):
    ``make_shard(index, start, count)`` returns shard ``index``'s tensors and metadata. A
    shard counts as done only if it holds the count it should; returns the manifest."""
    counts = [min(shard_size, n - start) for start in range(0, n, shard_size)]
    writer = ShardWriter(
        directory,
        kind,
        fingerprint,
        len(counts),
        entry_ok=lambda entry: entry.get("count") == counts[entry["index"]],
    )
    with writer:
        pending = writer.pending()
        bar = tqdm(total=sum(counts[i] for i in pending), disable=not progress, desc=desc)
        for index in pending:
            tensors, metadata = make_shard(index, index * shard_size, counts[index])
            writer.write(index, tensors, metadata, count=counts[index])
            bar.update(counts[index])
        bar.close()
        return writer.finish(lambda shards: {"n": n})


@dataclass
class Shards:
    """A complete cache in memory: each key's tensors concatenated over the shards, and
    each shard's metadata (in shard order)."""

    tensors: dict[str, Tensor]
    metadata: list[dict[str, str]]
    manifest: dict[str, Any]


def read_shards(
    directory: str | os.PathLike, kind: str, build_hint: str, verify: bool = True
) -> Shards:
    """Load a complete cache of format ``kind``, checking each shard's sha256 (``verify``)
    and that every tensor is finite. ``build_hint`` says how to build or finish it."""
    directory = Path(directory)
    manifest = read_manifest(directory, kind)
    if manifest is None:
        raise MissingInputError(f"{directory}: no {MANIFEST}; {build_hint}")
    if not manifest.get("complete"):
        raise InputError(f"the cache is incomplete; {build_hint} to resume it", str(directory))
    entries = [e for e in manifest["shards"] if e.get("file") is not None]
    files = [directory / e["file"] for e in entries]
    check_memory(sum(f.stat().st_size for f in files if f.is_file()), f"loading {directory}")
    parts: dict[str, list[Tensor]] = {}
    metadata = []
    for entry in entries:
        path = directory / entry["file"]
        if verify and (not path.is_file() or sha256_file(path) != entry["sha256"]):
            raise InputError(
                f"missing or changed since {directory / MANIFEST} was written (sha256); "
                f"{build_hint} to rebuild it",
                str(path),
            )
        tensors, meta = load_tensors(path)
        for key, value in tensors.items():
            parts.setdefault(key, []).append(value)
        metadata.append(meta)
    if not parts:
        raise InputError("the cache holds nothing (every item was skipped)", str(directory))
    counts = {key: len(values) for key, values in parts.items()}
    if len(set(counts.values())) > 1:
        raise InputError(f"shards differ in their tensors ({counts})", str(directory))
    tensors = {key: torch.cat(values) for key, values in parts.items()}
    return Shards(tensors, metadata, manifest)
