"""Real pairs encoded once into the base models' spaces: a :mod:`mmdisco.shards` cache.

The discriminator trains on latents, so media go through each base model's ``encode`` once.
Shard ``k`` holds the clips of dataset indices ``[k * shard_size, (k + 1) * shard_size)`` that
could be decoded: ``audio`` / ``video`` latents, ``text_audio`` / ``text_video`` (the base
models' pooled embeddings of each caption, the discriminator's text input) and, in its
metadata, the captions, paths and start times. Its manifest entry lists the rows skipped
(row, path and reason: a file listed twice is counted twice). A clip whose latents are not
finite is skipped too, so NaN never reaches training. The fingerprint records the data (each
item's path, size, caption and start), the clip settings and both base models; resuming
with other inputs is refused. ``uncond.safetensors`` holds the pooled embeddings of the
empty prompt, which :func:`caption_dropout` substitutes during training.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mmdisco.base_models.base import BaseModel
from mmdisco.data.clips import ClipDataset, collate
from mmdisco.errors import InputError, check_int, check_memory
from mmdisco.io import load_tensors, save_tensors_atomic
from mmdisco.shards import ShardWriter, read_shards

logger = logging.getLogger(__name__)

FORMAT = "mmdisco-latent-cache/2"
TEXT_KEYS = ("text_audio", "text_video")
UNCOND = "uncond.safetensors"


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
) -> tuple[dict[str, Tensor], dict[str, Any], list[dict[str, Any]]]:
    """The shard's tensors, its metadata and its skipped rows."""
    tensors: dict[str, list[Tensor]] = {"audio": [], "video": [], **{k: [] for k in TEXT_KEYS}}
    meta: dict[str, list] = {"captions": [], "paths": [], "starts": []}
    for lo in range(indices.start, indices.stop, batch_size):
        rows = range(lo, min(lo + batch_size, indices.stop))
        clips = [dataset[i] for i in rows]
        batch = collate(clips)
        if batch is None:
            continue
        with torch.no_grad():
            encoded = {
                key: model.encode(batch[key], _posterior_generator(dataset, lo, k)).float().cpu()
                for k, (key, model) in enumerate((("audio", audio_model), ("video", video_model)))
            }
        for key, model in zip(TEXT_KEYS, (audio_model, video_model), strict=True):
            pooled = _pooled(model, batch["caption"])
            if pooled is not None:
                encoded[key] = pooled
        finite = torch.stack([v.flatten(1).isfinite().all(1) for v in encoded.values()]).all(0)
        used = [i for i, clip in zip(rows, clips, strict=True) if clip is not None]
        for i, ok in zip(used, finite.tolist(), strict=True):
            if not ok:
                dataset.skip(i, "encoded latents or text embeddings are not finite")
        for key, value in encoded.items():
            tensors[key].append(value[finite])
        for name, key in (("captions", "caption"), ("paths", "path")):
            meta[name] += [x for x, ok in zip(batch[key], finite.tolist(), strict=True) if ok]
        meta["starts"] += batch["start"][finite].tolist()
    out = {k: torch.cat(v) for k, v in tensors.items() if v and sum(len(x) for x in v)}
    skipped = [
        {"row": i, "path": str(dataset.items[i].path), "reason": dataset.skipped[i]}
        for i in indices
        if i in dataset.skipped
    ]
    return out, meta, skipped


def _posterior_generator(dataset: ClipDataset, index: int, modality: int) -> torch.Generator | None:
    """For ``posterior="sample"``: the draw for the batch starting at ``index`` depends only on
    the dataset seed and that index, so a resumed cache equals an uninterrupted one."""
    if dataset.spec.posterior != "sample":
        return None
    from mmdisco.seeding import derive_seed

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
    """Encode ``dataset`` into ``out_dir`` (resuming a partial cache); returns the manifest.

    Under ``torch.distributed`` each process encodes its own shards (:mod:`mmdisco.shards`).
    """
    check_int("shard_size", shard_size, 1)
    check_int("batch_size", batch_size, 1)
    spec = dataset.spec
    clip_bytes = 4 * (
        spec.num_samples + 3 * spec.num_frames * spec.size * (spec.width or spec.size)
    )
    latent_bytes = 4 * sum(math.prod(m.latent_shape()) for m in (audio_model, video_model))
    check_memory(batch_size * clip_bytes + shard_size * latent_bytes, "batch_size / shard_size")
    fingerprint = {
        "data": dataset.fingerprint(),
        "shard_size": shard_size,
        "audio_model": audio_model.fingerprint(),
        "video_model": video_model.fingerprint(),
    }
    starts = range(0, len(dataset), shard_size)
    with ShardWriter(out_dir, FORMAT, fingerprint, len(starts)) as writer:
        if writer.rank == 0:
            _write_uncond(Path(out_dir), audio_model, video_model)
        for k in tqdm(writer.pending(), desc="caching latents", disable=not progress):
            indices = range(starts[k], min(starts[k] + shard_size, len(dataset)))
            tensors, meta, skipped = _encode_shard(
                dataset, indices, audio_model, video_model, batch_size
            )
            metadata = {key: json.dumps(value) for key, value in meta.items()}
            writer.write(k, tensors, metadata, count=len(meta["paths"]), skipped=skipped)
        manifest = writer.finish(
            lambda shards: {
                "num_pairs": sum(e["count"] for e in shards),
                "skipped": [s for e in shards for s in e["skipped"]],
            }
        )
    used = manifest.get("num_pairs", 0)
    if used == 0 and manifest.get("complete"):
        message = f"no row gave a clip, so the cache is empty: {_skips(manifest)}"
        raise InputError(message, str(out_dir))
    logger.info("latent cache %s: %d of %d rows used", out_dir, used, len(dataset))
    return manifest


def _skips(manifest: dict[str, Any], limit: int = 3) -> str:
    """The first skipped rows and their reasons, for an error message."""
    skipped = manifest.get("skipped", [])
    shown = "; ".join(f"row {s['row'] + 1} ({s['path']}): {s['reason']}" for s in skipped[:limit])
    more = f"; and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return (shown + more) or "the data source lists no rows"


def _write_uncond(out_dir: Path, audio_model: BaseModel, video_model: BaseModel) -> None:
    tensors = {}
    for key, model in zip(TEXT_KEYS, (audio_model, video_model), strict=True):
        pooled = _pooled(model, [""])
        if pooled is not None:
            tensors[key] = pooled[0]
    if tensors:
        save_tensors_atomic(out_dir / UNCOND, tensors)


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
    hint = "run `mmdisco cache-latents` (same config)"
    shards = read_shards(out_dir, FORMAT, hint, verify)
    data = shards.tensors
    for key in ("audio", "video"):
        if key not in data:
            raise InputError(f"the shards hold no {key!r} tensor", str(out_dir))
    captions = [c for meta in shards.metadata for c in json.loads(meta["captions"])]
    paths = [p for meta in shards.metadata for p in json.loads(meta["paths"])]
    uncond = load_tensors(out_dir / UNCOND)[0] if (out_dir / UNCOND).exists() else {}
    cond = {k: data[k] for k in TEXT_KEYS if k in data}
    return LatentCache(data["audio"], data["video"], cond, uncond, captions, paths, shards.manifest)


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
