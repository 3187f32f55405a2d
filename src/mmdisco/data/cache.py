"""Real pairs encoded once into the base models' spaces: safetensors shards + a JSON manifest.

The discriminator trains on latents, so media go through each base model's ``encode`` once.
Shard ``k`` holds the clips of dataset indices ``[k * shard_size, (k + 1) * shard_size)`` that
could be decoded: ``audio`` / ``video`` latents, ``text_audio`` / ``text_video`` (the base
models' pooled embeddings of each caption, the discriminator's text input) and, in its
metadata, the captions, paths and start times. The manifest records each shard's sha256 and
the skipped files with their reasons. Every file is written to a temporary name and moved
into place, and the manifest is rewritten after each shard, so an interrupted run resumes at
the first missing shard. ``uncond.safetensors`` holds the pooled embeddings of the empty
prompt, which :func:`caption_dropout` substitutes during training.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor
from tqdm.auto import tqdm

from mmdisco.base_models.base import BaseModel
from mmdisco.data.clips import ClipDataset, collate
from mmdisco.io import save_tensors_atomic, sha256_file, write_json_atomic

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "mmdisco-latent-cache-v1"
TEXT_KEYS = ("text_audio", "text_video")


def _pooled(model: BaseModel, captions: list[str]) -> Tensor | None:
    try:
        cond = model.encode_prompt(captions)
    except NotImplementedError:
        return None
    pooled = model.pooled_text_embedding(cond)
    return None if pooled is None else pooled.float().cpu()


def _encode_shard(
    dataset: ClipDataset,
    indices: range,
    audio_model: BaseModel,
    video_model: BaseModel,
    batch_size: int,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, list[Tensor]] = {"audio": [], "video": [], **{k: [] for k in TEXT_KEYS}}
    meta: dict[str, list] = {"captions": [], "paths": [], "starts": []}
    for lo in range(indices.start, indices.stop, batch_size):
        batch = collate([dataset[i] for i in range(lo, min(lo + batch_size, indices.stop))])
        if batch is None:
            continue
        with torch.no_grad():
            for k, (key, model) in enumerate((("audio", audio_model), ("video", video_model))):
                latents = model.encode(batch[key], _posterior_generator(dataset, lo, k))
                tensors[key].append(latents.float().cpu())
        for key, model in zip(TEXT_KEYS, (audio_model, video_model), strict=True):
            pooled = _pooled(model, batch["caption"])
            if pooled is not None:
                tensors[key].append(pooled)
        meta["captions"] += batch["caption"]
        meta["paths"] += batch["path"]
        meta["starts"] += batch["start"].tolist()
    out = {k: torch.cat(v) for k, v in tensors.items() if v}
    return out, meta


def _posterior_generator(dataset: ClipDataset, index: int, modality: int) -> torch.Generator | None:
    """For ``posterior="sample"``: the draw for the batch starting at ``index`` depends only on
    the dataset seed and that index, so a resumed cache equals an uninterrupted one."""
    if dataset.spec.posterior != "sample":
        return None
    from mmdisco.training.fakes import derive_seed

    return torch.Generator().manual_seed(derive_seed(dataset.seed, index, modality, 7))


def cache_latents(
    dataset: ClipDataset,
    audio_model: BaseModel,
    video_model: BaseModel,
    out_dir: str | Path,
    shard_size: int = 256,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode ``dataset`` into ``out_dir`` (resuming a partial cache); returns the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(out_dir)
    settings = {
        "num_items": len(dataset),
        "shard_size": shard_size,
        "spec": dataset.spec.__dict__,
        "seed": dataset.seed,
    }
    if manifest is None or manifest["settings"] != settings:
        if manifest is not None:
            logger.warning("%s: settings changed; rebuilding the cache", out_dir)
        manifest = {"format": FORMAT, "settings": settings, "shards": [], "skipped": {}}
    _write_uncond(out_dir, audio_model, video_model)
    starts = range(0, len(dataset), shard_size)
    done = {e["index"]: e for e in manifest["shards"] if _shard_ok(out_dir, e)}
    for k, lo in enumerate(tqdm(starts, desc="caching latents", disable=not progress)):
        if k in done:
            continue
        indices = range(lo, min(lo + shard_size, len(dataset)))
        tensors, meta = _encode_shard(dataset, indices, audio_model, video_model, batch_size)
        name = f"shard-{k:05d}.safetensors"
        if tensors:
            path = out_dir / name
            save_tensors_atomic(path, tensors, {k: json.dumps(v) for k, v in meta.items()})
            done[k] = {
                "index": k,
                "file": name,
                "count": len(meta["paths"]),
                "sha256": sha256_file(path),
            }
        else:
            done[k] = {"index": k, "file": None, "count": 0, "sha256": None}
        manifest["skipped"].update(
            {str(dataset.items[i].path): r for i, r in dataset.skipped.items() if i in indices}
        )
        manifest["shards"] = [done[i] for i in sorted(done)]
        manifest["complete"] = len(done) == len(starts)
        write_json_atomic(out_dir / MANIFEST, manifest)
    manifest["complete"] = True
    manifest["num_pairs"] = sum(e["count"] for e in manifest["shards"])
    write_json_atomic(out_dir / MANIFEST, manifest)
    logger.info("latent cache %s: %s", out_dir, dataset.summary())
    return manifest


def _write_uncond(out_dir: Path, audio_model: BaseModel, video_model: BaseModel) -> None:
    tensors = {}
    for key, model in zip(TEXT_KEYS, (audio_model, video_model), strict=True):
        pooled = _pooled(model, [""])
        if pooled is not None:
            tensors[key] = pooled[0]
    if tensors:
        save_tensors_atomic(out_dir / "uncond.safetensors", tensors)


def _read_manifest(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / MANIFEST
    if not path.exists():
        return None
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not an mmdisco latent cache (format {manifest.get('format')!r})")
    return manifest


def _shard_ok(out_dir: Path, entry: dict[str, Any]) -> bool:
    if entry["file"] is None:
        return True
    path = out_dir / entry["file"]
    return path.is_file() and sha256_file(path) == entry["sha256"]


@dataclass
class LatentCache:
    audio: Tensor
    video: Tensor
    cond: dict[str, Tensor]  # text_audio / text_video, one row per pair
    uncond: dict[str, Tensor]  # the empty prompt's rows
    captions: list[str]
    paths: list[str]
    manifest: dict[str, Any]


def load_latent_cache(out_dir: str | Path, verify: bool = True) -> LatentCache:
    """Read a complete cache (checking each shard's sha256 by default)."""
    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir)
    if manifest is None:
        raise FileNotFoundError(f"no {MANIFEST} in {out_dir}: build it with cache_latents first")
    if not manifest.get("complete"):
        raise ValueError(f"{out_dir}: the cache is incomplete; run cache_latents again to resume")
    parts: dict[str, list[Tensor]] = {}
    captions, paths = [], []
    for entry in manifest["shards"]:
        if entry["file"] is None:
            continue
        path = out_dir / entry["file"]
        if verify and sha256_file(path) != entry["sha256"]:
            raise ValueError(f"{path}: sha256 does not match {out_dir / MANIFEST}")
        with safe_open(path, "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                parts.setdefault(key, []).append(f.get_tensor(key))
            meta = f.metadata()
        captions += json.loads(meta["captions"])
        paths += json.loads(meta["paths"])
    if not parts:
        raise ValueError(f"{out_dir}: the cache holds no pairs (every file was skipped)")
    data = {k: torch.cat(v) for k, v in parts.items()}
    uncond = {}
    if (out_dir / "uncond.safetensors").exists():
        with safe_open(out_dir / "uncond.safetensors", "pt") as f:
            uncond = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    cond = {k: data[k] for k in TEXT_KEYS if k in data}
    return LatentCache(data["audio"], data["video"], cond, uncond, captions, paths, manifest)


def caption_dropout(
    cond: dict[str, Tensor],
    uncond: dict[str, Tensor],
    probability: float,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Per pair, replace every text input by the empty prompt's with ``probability``: the
    same pairs lose their caption for both base models and the discriminator (CFG training)."""
    if not cond:
        return cond
    n = next(iter(cond.values())).shape[0]
    drop = torch.rand(n, generator=generator) < probability
    out = {}
    for key, x in cond.items():
        if key not in uncond:
            raise KeyError(f"no unconditional embedding for {key!r} (uncond.safetensors)")
        mask = drop.to(x.device).reshape(-1, *([1] * (x.ndim - 1)))
        out[key] = torch.where(mask, uncond[key].to(x), x)
    return out
