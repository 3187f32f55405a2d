"""Fake pairs: independent samples of the two frozen base models, cached on disk.

MMDisCo's discriminator learns to tell real pairs from pairs the base models generate
*independently* (docs/method.md). Generating those is the expensive part of training, so it is
done once, into a :mod:`mmdisco.shards` cache: shard ``k`` holds ``{"audio": (n, ...),
"video": (n, ...)}`` with its captions in the metadata, and the manifest's fingerprint
records the settings and both base models.

Each shard's random numbers come from seeds derived from ``(seed, shard index)`` alone, so
the cache does not depend on how often the run was interrupted, nor on how many processes
wrote it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from mmdisco.base_models.base import BaseModel
from mmdisco.errors import InputError, check_float, check_int, check_memory
from mmdisco.sampling import SamplingConfig, sample_batches
from mmdisco.seeding import derive_seed
from mmdisco.shards import read_shards, write_counted_shards

CACHE_FORMAT = "mmdisco-fakes/2"


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------


def generate_fakes(
    audio_model: BaseModel,
    video_model: BaseModel,
    n: int,
    out_dir: str | Path,
    *,
    seed: int = 0,
    shard_size: int = 256,
    num_inference_steps: int = 50,
    scheduler: str = "default",
    prompts: Sequence[str] | None = None,
    cfg_scale: float = 1.0,
    batch_size: int | None = None,
    progress: bool = True,
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sample ``n`` independent pairs into ``out_dir`` (resumable); returns the manifest.

    ``prompts`` (optional) are captions, one per pair (cycled if shorter than ``n``); each
    pair's two base models are conditioned on its caption, and the captions are stored with
    the latents. Re-running with the same inputs skips shards that are complete and intact;
    other inputs (settings or base models) are refused rather than mixed into one cache.
    Under ``torch.distributed`` each process samples its own shards (see
    :mod:`mmdisco.shards`).
    """
    check_int("n", n, 1)
    check_int("shard_size", shard_size, 1)
    check_int("seed", seed, 0)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    sampling = SamplingConfig(num_inference_steps=num_inference_steps, scheduler=scheduler)
    cfg_scale = check_float("cfg_scale", cfg_scale)
    if prompts is not None and len(prompts) == 0:
        raise InputError("is empty; pass None for unconditional generation", "prompts")
    pair_bytes = 4 * sum(math.prod(m.latent_shape()) for m in (audio_model, video_model))
    check_memory(2 * min(shard_size, n) * pair_bytes, "shard_size")  # a shard, and its noise
    out_dir = Path(out_dir)
    captions = None if prompts is None else [prompts[i % len(prompts)] for i in range(n)]
    fingerprint = {
        "seed": seed,
        "shard_size": shard_size,
        "num_inference_steps": num_inference_steps,
        "scheduler": scheduler,
        "cfg_scale": cfg_scale,
        "prompts": None if prompts is None else list(prompts),
        "audio_model": audio_model.fingerprint(),
        "video_model": video_model.fingerprint(),
        **(extra_config or {}),
    }

    def make_shard(index: int, start: int, count: int) -> tuple[dict, dict | None]:
        shard_captions = None if captions is None else captions[start : start + count]
        audio, video = sample_batches(
            audio_model,
            video_model,
            count,
            sampling,
            seed=derive_seed(seed, index),
            batch_size=batch_size or count,
            prompts=shard_captions,
            cfg_scales=(cfg_scale, cfg_scale),
        )
        metadata = {"captions": json.dumps(shard_captions)} if shard_captions else None
        return {"audio": audio, "video": video}, metadata

    return write_counted_shards(
        out_dir,
        CACHE_FORMAT,
        fingerprint,
        n,
        shard_size,
        make_shard,
        desc="fakes",
        progress=progress,
    )


@dataclass
class FakeCache:
    audio: Tensor
    video: Tensor
    captions: list[str] | None
    manifest: dict[str, Any]


def load_fakes(out_dir: str | Path, verify: bool = True) -> FakeCache:
    """Read a complete cache written by :func:`generate_fakes` (checking sha256 by default)."""
    hint = "run `mmdisco generate-fakes` (same settings)"
    shards = read_shards(out_dir, CACHE_FORMAT, hint, verify)
    for key in ("audio", "video"):
        if key not in shards.tensors:
            raise InputError(f"the shards hold no {key!r} tensor", str(out_dir))
    captions = [c for meta in shards.metadata for c in json.loads(meta.get("captions", "[]"))]
    audio, video = shards.tensors["audio"], shards.tensors["video"]
    return FakeCache(audio, video, captions or None, shards.manifest)
